"""The OMERO scripts: they parse offline without torch, and their main runs against the double."""
import subprocess
import sys
from pathlib import Path

import omero.scripts
import pytest
from omero.model import ImageI
from omero.rtypes import rstring, unwrap

from dlcore.omero import scripts as dls
from dlcore.tasks.classical import ClassicalNuclei

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "omero_scripts").rglob("*.py"))
ROOT = Path(__file__).resolve().parent.parent


def test_there_are_the_deep_learning_scripts():
    assert {p.name for p in SCRIPTS} == {"Run_Model.py", "Classical_Segmentation.py", "List_Models.py",
                                         "Train_Model.py", "Export_Annotated_Dataset.py", "QC_Slides.py",
                                         "Train_Pixel_Classifier.py", "Labels_From_Marker.py",
                                         "Train_Image_Model.py"}
    assert all(p.parent.name == "Deep_Learning" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses(path):
    params = omero.scripts.parse_file(str(path))
    assert params.name == path.name and params.version and params.authors and params.contact
    assert params.description and len(params.description) > 60
    if path.name != "List_Models.py":
        data_type = params.inputs["Data_Type"]
        assert [unwrap(v) for v in data_type.values.getValue()] == ["Image", "Dataset", "Project"]
        assert not data_type.optional and not params.inputs["IDs"].optional
        assert all(p.description for p in params.inputs.values())


def test_parsing_imports_no_torch():
    code = ("import sys, omero.scripts\n"
            + "".join(f"omero.scripts.parse_file({str(p)!r})\n" for p in SCRIPTS)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_classical_parameters_come_from_the_task_dataclass():
    params = omero.scripts.parse_file(str(ROOT / "omero_scripts/Deep_Learning/Classical_Segmentation.py")).inputs
    assert unwrap(params["Sigma"].prototype) == ClassicalNuclei.sigma == 3.0
    assert unwrap(params["Min_Size"].prototype) == ClassicalNuclei.min_size == 60
    assert [unwrap(v) for v in params["Threshold_Method"].values.getValue()] == ["kmeans", "otsu"]
    assert "Working_Pixel_Size_um" in params and "Batch_Size" not in params
    values = dls.task_values("nuclei-classical", {"Channel": "1", "Sigma": 2.0, "Threshold": None, "Min_Size": 40})
    assert values == {"channel": 1, "sigma": 2.0, "min_size": 40}


def test_run_model_takes_any_model_name_and_lists_the_installed_ones():
    """OMERO caches parsed parameters and its processor refuses a value outside ``values``
    (omero.scripts.validate_inputs): a model trained after the cache was filled must still be accepted."""
    params = omero.scripts.parse_file(str(ROOT / "omero_scripts/Deep_Learning/Run_Model.py"))
    model = params.inputs["Model"]
    assert model.values is None or not model.values.getValue()
    assert "nuclei-classical" in unwrap(model.description)
    inputs = {"Data_Type": rstring("Image"), "IDs": omero.rtypes.rlist([omero.rtypes.rlong(1)]),
              "Model": rstring("trained-a-minute-ago")}
    assert omero.scripts.validate_inputs(params, inputs) == ""


class FakeScriptClient:
    """What a script's ``omero.scripts.client`` gives: inputs in, outputs out, over one session.

    As with omero-py's client, once the session is closed (by ``closeSession()``, or by closing a
    BlitzGateway built on this client) ``setOutput`` raises ``omero.ClientError``."""

    def __init__(self, inputs):
        self.inputs, self.outputs = inputs, {}
        self.session_open = True

    def getInputs(self, unwrap=False):
        return dict(self.inputs)

    def setOutput(self, key, value):
        if not self.session_open:
            raise omero.ClientError("No session available")
        self.outputs[key] = value

    def closeSession(self):
        self.session_open = False


def _on_script_session(conn, fake):
    """``conn`` as ``BlitzGateway(client_obj=fake)`` would be: closing it closes the script's session."""
    if conn is None:
        return None
    close = conn.close

    def close_session(hard=True):
        close(hard)
        fake.closeSession()

    conn.close = close_session
    return conn


def _exec_script(name, inputs, conn, monkeypatch):
    """Execute the script file as OMERO would, with the client and connection replaced."""
    fake = FakeScriptClient(inputs)
    monkeypatch.setattr(dls, "client", lambda *a, **k: fake)
    monkeypatch.setattr(dls, "connect_client", lambda c: _on_script_session(conn, fake))
    code = (ROOT / "omero_scripts/Deep_Learning" / name).read_text()
    exec(compile(code, name, "exec"), {"__name__": "__main__"})
    return fake


def test_classical_segmentation_script_runs_and_links_outputs(monkeypatch, capsys, tmp_path):
    from omero_double import Server, demo_levels

    server = Server()
    group = server.add_group("lab")
    user = server.add_user("alice", [group])
    dataset = server.add_dataset("d", owner=user, group=group)
    image = server.add_image(demo_levels(tmp_path), name="s", owner=user, group=group, dataset=dataset)
    conn = server.connect(user, group)
    fake = _exec_script("Classical_Segmentation.py", {"Data_Type": "Dataset", "IDs": [dataset], "Sigma": 2.5,
                                                      "Max_ROIs": 50}, conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("1 of 1 image analysed") and f"Image:{image}" in message
    assert isinstance(fake.outputs["Label_Image"].getValue(), ImageI)
    assert fake.outputs["Overview"].getValue().getId().getValue() > 0
    assert len(server.rois_of(image)) == 50
    out = capsys.readouterr().out
    assert "tiles:" in out and message in out  # progress lines and the outcome on stdout
    kv = {nv.name: nv.value for a in server.annotations_of(image) if hasattr(a, "getMapValue") for nv in a.getMapValue()}
    assert '"sigma": 2.5' in kv["parameters"]


def test_scripts_set_every_output_before_the_session_closes(monkeypatch, tmp_path):
    """A gateway on the script's client closes the script's session (omero-py BlitzGateway.close ->
    closeSession): the Message must be set before that, and the session closed only at the end."""
    from omero_double import Server, demo_levels

    server = Server()
    group = server.add_group("lab")
    user = server.add_user("alice", [group])
    image = server.add_image(demo_levels(tmp_path), name="s", owner=user, group=group)
    fake = _exec_script("Classical_Segmentation.py", {"Data_Type": "Image", "IDs": [image], "Max_ROIs": 5},
                        server.connect(user, group), monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("1 of 1 image analysed")
    assert "Label_Image" in fake.outputs and not fake.session_open
    with pytest.raises(omero.ClientError):
        fake.setOutput("late", rstring("x"))


def test_run_model_script_reports_bad_input_and_writes_nothing(monkeypatch):
    from omero_double import Server

    server = Server()
    group = server.add_group("lab")
    user = server.add_user("alice", [group])
    conn = server.connect(user, group)
    before = dict(server.objects)
    fake = _exec_script("Run_Model.py", {"Data_Type": "Image", "IDs": [42], "Model": "nuclei-classical"}, conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("Nothing was written: Image 42: not found")
    fake = _exec_script("Run_Model.py", {"Data_Type": "Image", "IDs": [42], "Model": "nuclei-classical",
                                         "Model_Parameters": "sigma=-1"}, conn, monkeypatch)
    assert "sigma=-1" in fake.outputs["Message"].getValue()
    assert server.objects == before


def test_list_models_script_describes_the_builtin_pipeline(monkeypatch):
    from omero_double import Server

    server = Server()
    group = server.add_group("lab")
    fake = _exec_script("List_Models.py", {}, server.connect(server.add_user("alice", [group]), group), monkeypatch)
    text = fake.outputs["Models"].getValue()
    assert "nuclei-classical" in text and "sigma=3.0" in text


def test_parse_parameters():
    assert dls.parse_parameters("sigma=2, min_size=40, channel=dab") == {"sigma": 2, "min_size": 40, "channel": "dab"}
    assert dls.parse_parameters("channels=[4, 8], lr=0.01") == {"channels": [4, 8], "lr": 0.01}
    with pytest.raises(Exception, match="name=value"):
        dls.parse_parameters("sigma")


def test_omero_dl_targets():
    from dlcore.errors import ParameterError
    from dlcore.omero.cli_plugin import parse_targets

    assert parse_targets(["Image:1", "Dataset:2", "3"]) == {"Image": [1, 3], "Dataset": [2]}
    with pytest.raises(ParameterError, match="Image:ID"):
        parse_targets(["Plate:1"])


def test_omero_cli_loads_the_dl_plugin_installed_by_install_sh():
    """tools/install.sh copies omero/plugins/dl.py beside omero-py's plugins; the CLI then knows `omero dl`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import omero.plugins

    root = Path(__file__).resolve().parent.parent
    installed = Path(os.path.dirname(omero.plugins.__file__)) / "dl.py"
    assert installed.read_text() == (root / "omero" / "plugins" / "dl.py").read_text(), "run bash tools/install.sh"
    code = "from omero.cli import CLI; c = CLI(); c.loadplugins(); print(type(c.controls['dl']).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("DlControl")
