"""Trained models belong to their user and group; the trained-model registry is shared by every node.

Two users in two groups (alice and carol in "lab", bob in "other") on the OMERO double, two processor
nodes with their own ``models_dir`` (the shipped models) and one shared ``trained_models_dir``.
"""
import json
import shutil
from pathlib import Path

import pytest

from dlcore.errors import ParameterError
from dlcore.models.ownership import Caller, can_use, check_add_version, read_owner
from dlcore.omero import scripts as dls
from test_omero_annotated import Omero, polygon, rect
from test_omero_scripts import _exec_script
from test_omero_training import TINY, _tissue

ROOT = Path(__file__).resolve().parent.parent


def _node(tmp_path, name, shared):
    """A processor node's dlcore.toml: its own models_dir (a copy of a shipped model), the shared trained dir."""
    models = tmp_path / name / "models"
    shutil.copytree(ROOT / "models" / "tissue-ihc-unet", models / "tissue-ihc-unet")
    path = tmp_path / name / "dlcore.toml"
    path.write_text(f'[dlcore]\nmodels_dir = "{models}"\ntrained_models_dir = "{shared}"\n')
    return path


@pytest.fixture
def lab(tmp_path, monkeypatch):
    om = Omero()
    images = []
    for i in range(4):
        image = om.image(f"slide {i}", levels=[_tissue(i)])
        om.roi(image, rect(50, 40, 60, 60), name="tumour")
        om.roi(image, polygon([(0, 90), (160, 90), (160, 160), (0, 160)]), name="stroma")
        images.append(image)
    other = om.server.add_group("other", "rwra--")
    bob = om.server.add_user("bob", [other])
    carol = om.server.add_user("carol", [om.group])
    shared = tmp_path / "shared-trained-models"
    nodes = {"gpu1": _node(tmp_path, "gpu1", shared), "gpu2": _node(tmp_path, "gpu2", shared)}
    monkeypatch.delenv("DLCORE_MODELS", raising=False)
    conns = {"alice": om.conn, "bob": om.server.connect(bob, other), "carol": om.server.connect(carol, om.group)}
    return om, images, conns, nodes, shared


def _script(name, inputs, conn, node, monkeypatch):
    monkeypatch.setenv("DLCORE_CONFIG", str(node))
    return _exec_script(name, inputs, conn, monkeypatch).outputs["Message"].getValue()


def _listed(conn, node, monkeypatch):
    monkeypatch.setenv("DLCORE_CONFIG", str(node))
    fake = _exec_script("List_Models.py", {}, conn, monkeypatch)
    return fake.outputs["Models"].getValue()


def test_a_model_trained_on_one_node_belongs_to_its_group_and_runs_on_another(lab, monkeypatch):
    om, images, conns, nodes, shared = lab
    train = {"Data_Type": "Image", "IDs": images, "Task": "semantic segmentation", "Class_Source": "ROI name",
             "Model_Name": "tumour-stroma", "Epochs": 1, "Region_Margin": 0, "Training_Parameters": TINY}
    message = _script("Train_Model.py", train, conns["alice"], nodes["gpu1"], monkeypatch)
    assert message.startswith("✓ Trained tumour-stroma version 1.0.0"), message
    # written to the shared folder, not into gpu1's models_dir, with its owner
    assert (shared / "tumour-stroma" / "rdf.yaml").is_file()
    assert not (nodes["gpu1"].parent / "models" / "tumour-stroma").exists()
    assert read_owner(shared / "tumour-stroma") == {"user_id": om.user, "user_name": "alice",
                                                    "group_id": om.group, "group_name": "lab"}

    # gpu2 lists and runs it for the members of lab, not for bob
    for user in ("alice", "carol"):
        text = _listed(conns[user], nodes["gpu2"], monkeypatch)
        assert "- tumour-stroma:" in text and "trained by alice in group lab" in text
        assert "- tissue-ihc-unet:" in text  # the shipped model, for everyone
    bobs = _listed(conns["bob"], nodes["gpu2"], monkeypatch)
    assert "tumour-stroma" not in bobs and "- tissue-ihc-unet:" in bobs
    monkeypatch.setenv("DLCORE_CONFIG", str(nodes["gpu2"]))
    dls._check_may_use(conns["carol"], "tumour-stroma")  # carol's group: allowed

    before = dict(om.server.objects)
    run = {"Data_Type": "Image", "IDs": [images[0]], "Model": "tumour-stroma"}
    refused = _script("Run_Model.py", run, conns["bob"], nodes["gpu2"], monkeypatch)
    assert refused.startswith("Nothing was written: model 'tumour-stroma' belongs to the group 'lab'"), refused
    assert "tissue-ihc-unet" in refused  # what bob may use instead
    assert om.server.objects == before

    # nobody else adds versions under alice's name or a shared model's name; bob cannot train from it
    registry_before = sorted(p.name for p in shared.iterdir())
    for user, extra, expected in [
        ("carol", {}, "Model_Name 'tumour-stroma' belongs to alice"),
        ("bob", {}, "Model_Name 'tumour-stroma' belongs to alice"),
        ("alice", {"Model_Name": "tissue-ihc-unet"}, "is the name of a shared model"),
        ("bob", {"Model_Name": "bobs-model", "Base_Model": "tumour-stroma"}, "belongs to the group 'lab'"),
    ]:
        message = _script("Train_Model.py", {**train, **extra}, conns[user], nodes["gpu2"], monkeypatch)
        assert message.startswith("Nothing was written: ") and expected in message, (user, message)
    assert sorted(p.name for p in shared.iterdir()) == registry_before
    assert om.server.objects == before


def test_ownership_rules():
    alice = Caller(1, "alice", frozenset({10}))
    bob = Caller(2, "bob", frozenset({20}))
    root = Caller(0, "root", frozenset({0}), is_admin=True)
    owned = {"user_id": 1, "user_name": "alice", "group_id": 10, "group_name": "lab"}
    assert can_use(None, bob) and can_use(owned, alice) and not can_use(owned, bob) and can_use(owned, root)

    class Record:
        def __init__(self, name, owner):
            self.name, self.owner = name, owner

    check_add_version("m", [Record("m", owned), Record("m-v2", owned)], alice)
    with pytest.raises(ParameterError, match="belongs to alice"):
        check_add_version("m", [Record("m", owned)], bob)
    with pytest.raises(ParameterError, match="shared model"):
        check_add_version("m", [Record("m", None)], alice)


def test_a_damaged_owner_record_is_nobody_s(tmp_path):
    (tmp_path / "owner.json").write_text("{not json")
    owner = read_owner(tmp_path)
    assert not can_use(owner, Caller(1, "alice", frozenset({10})))
    (tmp_path / "owner.json").write_text(json.dumps({"user_id": 1, "group_id": 10}))
    assert read_owner(tmp_path)["group_id"] == 10


def test_two_nodes_training_the_same_name_get_different_versions(tmp_path):
    """The registry lock (flock on the shared folder) makes choosing and writing a version one step."""
    import subprocess
    import sys

    code = (
        "import sys, time, pathlib\n"
        "from dlcore.train.registry_io import next_version, registry_lock\n"
        "reg = pathlib.Path(sys.argv[1])\n"
        "with registry_lock(reg):\n"
        "    version, folder = next_version('m', reg)\n"
        "    time.sleep(0.5)  # a slow write: without the lock the other node picks the same version\n"
        "    (reg / folder).mkdir()\n"
        "    (reg / folder / 'rdf.yaml').write_text(f'name: m\\nversion: {version}\\n')\n"
        "print(folder)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(2)]
    folders = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert folders == ["m", "m-v2"]
