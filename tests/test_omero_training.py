"""Train_Model and Export_Annotated_Dataset against the in-process OMERO double."""
import io
import json
import zipfile

import numpy as np
import pytest
from omero.model import FileAnnotationI

from dlcore.omero import training
from dlcore.omero.annotated import AnnotationOptions, dataset_from_omero
from dlcore.train.data import load_exported
from test_omero_annotated import Omero, polygon, rect
from test_omero_scripts import _exec_script

TINY = "steps_per_epoch=2, batch_size=2, patch_size=32, channels=[4, 8], tile_size=64, halo=8, threads=1, augment=none"


def _tissue(seed):
    """Pink stroma with a purple tumour square: what the ROIs outline."""
    rng = np.random.default_rng(seed)
    image = np.empty((160, 160, 3), np.uint8)
    image[:] = (230, 160, 190)
    image[40:100, 50:110] = (120, 60, 150)
    return np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def annotated():
    om = Omero()
    images = []
    for i in range(5):
        image = om.image(f"slide {i}", levels=[_tissue(i)])
        om.roi(image, rect(50, 40, 60, 60), name="tumour")
        om.roi(image, polygon([(0, 90), (160, 90), (160, 160), (0, 160)]), name="stroma")  # under the tumour
        om.roi(image, rect(0, 0, 5, 5), name="nucleus 1", description="dlcore:nuclei-classical:run")
        images.append(image)
    return om, images


def _files(om, ns):
    out = {}
    for a in om.server.dataset_annotations(om.dataset, FileAnnotationI):
        assert a.getNs().getValue() == ns
        ofile = om.server.get("OriginalFile", a.getFile().getId().getValue())
        out[ofile.getName().getValue()] = om.server.file_bytes[ofile.getId().getValue()]
    return out


def test_export_script_attaches_a_zip_that_loads_back_identical(annotated, monkeypatch, tmp_path):
    om, images = annotated
    inputs = {"Data_Type": "Dataset", "IDs": [om.dataset], "Task": "semantic segmentation", "Class_Source": "ROI name",
              "Classes": "stroma, tumour", "Region_Margin": 0, "Description": "five test slides"}
    fake = _exec_script("Export_Annotated_Dataset.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Exported 5 samples of 5 images (classes stroma, tumour)"), message
    ann_id = fake.outputs["File_Annotation"].getValue().getId().getValue()
    [(name, data)] = _files(om, "dlcore/export").items()
    assert name == "annotated-semantic-annotated.zip" and name in message and str(ann_id) in message
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {"dataset.json", "samples.csv", "README.md"} <= set(archive.namelist())
        archive.extractall(tmp_path / "x")
    loaded = load_exported(tmp_path / "x")
    expected, _, _ = dataset_from_omero(om.conn, "Dataset", [om.dataset],
                                        AnnotationOptions("semantic", classes=("stroma", "tumour"), margin=0))
    assert loaded.classes == expected.classes == ("stroma", "tumour") and loaded.task == "semantic"
    for a, b in zip(loaded.samples, expected.samples, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.group, a.mpp) == (b.group, b.mpp)
    first = loaded.samples[0].mask
    assert first.shape == (120, 160) and (first[0:60, 50:110] == 2).all() and (first[60:] == 1).all()
    assert (first[:50, :50] == 0).all()  # above the stroma, beside the tumour: unlabelled background
    assert "five test slides" in (tmp_path / "x" / "README.md").read_text()
    assert not om.server.open_stores


def test_train_model_script_installs_a_package_and_attaches_the_report(annotated, monkeypatch, tmp_path):
    om, images = annotated
    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))
    inputs = {"Data_Type": "Image", "IDs": images, "Task": "semantic segmentation", "Class_Source": "ROI name",
              "Model_Name": "tumour-stroma", "Epochs": 2, "K_Folds": 1, "Region_Margin": 0,
              "Training_Parameters": TINY}
    fake = _exec_script("Train_Model.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Trained tumour-stroma version 1.0.0 (semantic, classes stroma, tumour) on 5 regions"), message
    assert "held-out test: " in message and "iou" in message.lower()
    assert (registry / "tumour-stroma" / "rdf.yaml").is_file()
    card = (registry / "tumour-stroma" / "README.md").read_text()
    assert f"Image:{images[0]}" in card and "dlcore" in card
    files = _files(om, "dlcore/training")
    assert set(files) == {"tumour-stroma-1.0.0-qc-report.zip", "tumour-stroma-1.0.0-model-card.md"}
    with zipfile.ZipFile(io.BytesIO(files["tumour-stroma-1.0.0-qc-report.zip"])) as archive:
        names = set(archive.namelist())
    assert {"README.md", "report/report.md", "report/report.html", "report/learning_curves.png"} <= names
    assert files["tumour-stroma-1.0.0-model-card.md"].decode() == card
    assert fake.outputs["Report"].getValue().getId().getValue() > 0
    # it belongs to alice and her group (owner.json, written before the package appeared)
    owner = json.loads((registry / "tumour-stroma" / "owner.json").read_text())
    assert owner == {"user_id": om.user, "user_name": "alice", "group_id": om.group, "group_name": "lab"}
    # Base_Model is a free string (OMERO caches parsed parameters): a model trained a minute ago is accepted
    [choice] = [p for p in training.training_params(1) if p._name == "Base_Model"]
    assert choice.values is None or not choice.values.getValue()


def test_bad_input_writes_nothing(annotated, monkeypatch, tmp_path):
    om, images = annotated
    monkeypatch.setenv("DLCORE_MODELS", str(tmp_path / "registry"))
    bare = om.image("no annotations")
    before = dict(om.server.objects)
    base = {"Task": "semantic segmentation", "Model_Name": "m", "Training_Parameters": TINY, "Epochs": 1}
    cases = [
        ({"Data_Type": "Image", "IDs": [bare]}, f"Image:{bare} no annotations has no ROIs to learn from"),
        ({"Data_Type": "Dataset", "IDs": [999]}, "Dataset 999: not found"),
        ({"Data_Type": "Image", "IDs": images, "Classes": "tumour"}, "'stroma' are on ROIs or images but not among"),
        ({"Data_Type": "Image", "IDs": images, "Model_Name": "my model"}, "without spaces"),
        ({"Data_Type": "Image", "IDs": images, "Training_Parameters": "colour=red"}, "colour unknown"),
        ({"Data_Type": "Image", "IDs": images, "Freeze_Stages": 2}, "needs a base model"),
    ]
    for extra, expected in cases:
        for script in ("Train_Model.py", "Export_Annotated_Dataset.py"):
            if script.startswith("Export") and ("Model_Name" in extra or "Training_Parameters" in extra
                                                or "Freeze_Stages" in extra):
                continue
            fake = _exec_script(script, {**base, **extra}, om.conn, monkeypatch)
            message = fake.outputs["Message"].getValue()
            assert message.startswith("Nothing was written: ") and expected in message, (script, message)
    assert om.server.objects == before
    assert not (tmp_path / "registry").exists()


def test_images_in_no_dataset_are_refused_before_reading(monkeypatch):
    om = Omero()
    orphan = om.server.add_image([np.zeros((64, 64, 3), np.uint8)], name="orphan", owner=om.user, group=om.group)
    om.roi(orphan, rect(0, 0, 10, 10), name="tumour")
    fake = _exec_script("Export_Annotated_Dataset.py", {"Data_Type": "Image", "IDs": [orphan]}, om.conn, monkeypatch)
    assert "the images are in no dataset" in fake.outputs["Message"].getValue()
    assert om.server.calls["RawPixelsStore.getTile"] == 0


def test_a_failed_upload_leaves_nothing(annotated, monkeypatch):
    om, images = annotated
    import omero_double

    real = omero_double.UpdateService.saveAndReturnArray

    def refuse_links(self, objs, ctx=None):
        raise RuntimeError("database is read-only")
    monkeypatch.setattr(omero_double.UpdateService, "saveAndReturnArray", refuse_links)
    before = set(om.server.objects)
    fake = _exec_script("Export_Annotated_Dataset.py", {"Data_Type": "Dataset", "IDs": [om.dataset]}, om.conn,
                        monkeypatch)
    assert "attaching" in fake.outputs["Message"].getValue() and "read-only" in fake.outputs["Message"].getValue()
    assert set(om.server.objects) == before
    monkeypatch.setattr(omero_double.UpdateService, "saveAndReturnArray", real)


def test_a_failed_report_upload_unregisters_the_trained_model(annotated, monkeypatch, tmp_path):
    """The Message says nothing was written: the model trained a moment ago is not left in the registry."""
    om, images = annotated
    import omero_double

    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))

    def refuse_links(self, objs, ctx=None):
        raise RuntimeError("database is read-only")
    monkeypatch.setattr(omero_double.UpdateService, "saveAndReturnArray", refuse_links)
    inputs = {"Data_Type": "Image", "IDs": images, "Task": "semantic segmentation", "Class_Source": "ROI name",
              "Model_Name": "tumour-stroma", "Epochs": 1, "K_Folds": 1, "Region_Margin": 0,
              "Training_Parameters": TINY}
    fake = _exec_script("Train_Model.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("Nothing was written: ") and "read-only" in message, message
    assert not (registry / "tumour-stroma").exists()
    assert not [p for p in registry.iterdir() if not p.name.startswith(".dlcore-registry")]
