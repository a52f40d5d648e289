"""TIAToolbox's pretrained patch classifiers imported and mapped over slides (``-m field_env``).

The weights are TIAToolbox's real ``CNNModel`` architectures (ResNet-18 backbones of its
``resnet18-kather100k`` and ``resnet18-pcam`` entries) with random weights, written by
``tests/tiatoolbox_weights.py`` in the field-models environment.  Random weights classify nothing
meaningfully, so the tests check what does not depend on them: identification, the package, the
probabilities against TIAToolbox's own ``PatchPredictor`` on the same patches, tiling invariance, the
class map, heatmap and slide decision, Run_Model, and the refusals.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from dlcore.config import Config
from dlcore.errors import ModelError, ParameterError
from dlcore.fieldmodels.external import ExternalKind
from dlcore.fieldmodels.package import import_model
from dlcore.models.registry import load_task, validate_package
from field_env import field_python
from field_weights import he_like_image
from test_field_models import _registry_entries, _run, _slide
from test_fieldmodel_tiatoolbox import TEST_LICENCE, _weights

pytestmark = pytest.mark.field_env

KATHER = ("background", "normal mucosa", "debris", "tumour epithelium", "adipose", "mucus", "smooth muscle",
          "stroma", "lymphocytes")
PATCH = 224

# TIAToolbox's own PatchPredictor on patches saved as one .npy: its probabilities to another .npy
PATCH_PREDICTOR = """
import sys
import numpy as np
from tiatoolbox.models.engine.patch_predictor import PatchPredictor
patches = np.load(sys.argv[2])
predictor = PatchPredictor(model=sys.argv[4], weights=sys.argv[1], batch_size=4, verbose=False)
out = predictor.run(patches, patch_mode=True, return_probabilities=True, device="cpu")
np.save(sys.argv[3], np.asarray(out["probabilities"], np.float32))
"""


@pytest.fixture(scope="module")
def kather(tmp_path_factory) -> Path:
    return _weights("resnet18-kather100k", tmp_path_factory.mktemp("tia") / "resnet18-kather100k.pth")


@pytest.fixture(scope="module")
def installed(kather, tmp_path_factory):
    config = Config(models_dir=tmp_path_factory.mktemp("registry") / "models", device="cpu", batch_size=2)
    record = import_model("tiatoolbox", kather, publisher=TEST_LICENCE, config=config)
    return record, config


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """672 x 448 px at 0.5 µm/px, H&E-like: 3 x 2 Kather patches; its top-right patch is glass."""
    image = np.concatenate([he_like_image(448, n_nuclei=60, seed=s) for s in (1, 2)], axis=1)[:, :672]
    image[:PATCH, 2 * PATCH:] = 245  # glass: not classified (min_tissue)
    return _slide(tmp_path_factory.mktemp("slide") / "he.ome.tif", image, 0.5)


def test_import_identifies_the_kather_classifier_and_writes_a_valid_package(installed):
    record, _ = installed
    assert record.name == "resnet18-kather100k"
    report = validate_package(record.path)
    assert report.ok, report.problems
    assert any("reproduces its test output (4 patches" in c for c in report.checks), report.checks
    rdf = yaml.safe_load((record.path / "rdf.yaml").read_text())
    cfg = rdf["config"]["dlcore"]
    assert cfg["output"] == "patch_classification" and cfg["classes"] == list(KATHER)
    assert (cfg["mpp"], cfg["patch_size"], cfg["tile_size"], cfg["halo"]) == (0.5, PATCH, 4 * PATCH, 0)
    assert cfg["background_class"] == "background"
    assert cfg["runtime"]["tiatoolbox_labels"] == ["BACK", "NORM", "DEB", "TUM", "ADI", "MUC", "MUS", "STR", "LYM"]
    [output] = rdf["outputs"]
    assert output["id"] == "probabilities" and output["axes"][1]["channel_names"][3] == "tumour_epithelium"
    assert np.load(record.path / "test_output.npy").shape == (4, 9)
    assert np.load(record.path / "test_input.npy").shape == (4, 3, PATCH, PATCH)
    assert rdf["inputs"][0]["preprocessing"] == [{"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}}]
    weights = rdf["weights"]["pytorch_state_dict"]
    assert weights["architecture"]["callable"] == "CNNModel"
    assert weights["architecture"]["kwargs"] == {"backbone": "resnet18", "num_classes": 9}
    card = record.card_text()
    assert "Kather 100K" in card and "CC-BY-NC-SA-4.0" in card and "classifies its 4 synthetic test patches" in card
    assert "F1 0.990 on Kather 100K, as TIAToolbox's PatchPredictor documentation reports it" in card


def test_a_pcam_classifier_saved_under_another_name_is_identified(tmp_path):
    weights = _weights("resnet18-pcam", tmp_path / "downloaded.pth", "--seed", "2")
    inspected = ExternalKind("tiatoolbox").inspect(weights)
    assert inspected.default_name == "resnet18-pcam" and inspected.output == "patch_classification"
    assert inspected.classes == ("normal", "tumour") and inspected.background_class is None
    assert (inspected.mpp, inspected.patch_size, inspected.tile_size, inspected.halo) == (1.0, 96, 384, 0)
    assert "PatchCamelyon" in inspected.publisher.training_data


def test_probabilities_are_tiatoolbox_patch_predictors_and_do_not_depend_on_the_tiling(installed, kather, slide,
                                                                                        tmp_path):
    record, config = installed
    one, _ = _run(slide, load_task(record.name, {"device": "cpu"}, config=config), tmp_path / "one")
    six, labels = _run(slide, load_task(record.name, {"device": "cpu", "tile_size": PATCH}, config=config),
                       tmp_path / "six")
    assert (one.summary["tiles"], six.summary["tiles"]) == (1, 6)
    heat_one = np.load(one.outputs["heatmap probabilities"])
    heat_six = np.load(six.outputs["heatmap probabilities"])
    assert heat_six.shape == (2, 3, 9)
    assert np.isnan(heat_six[0, 2]).all() and not np.isnan(heat_six[1]).any()  # glass stays unclassified
    np.testing.assert_allclose(heat_one, heat_six, atol=2e-3)  # float16 on disk
    # the same patches through TIAToolbox's own engine
    image = tifffile.imread(slide)
    patches = np.stack([image[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
                        for r in range(2) for c in range(3) if (r, c) != (0, 2)])
    np.save(tmp_path / "patches.npy", patches)
    done = subprocess.run([field_python(), "-c", PATCH_PREDICTOR, str(kather), str(tmp_path / "patches.npy"),
                           str(tmp_path / "theirs.npy"), "resnet18-kather100k"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "theirs.npy")
    ours = np.stack([heat_six[r, c] for r in range(2) for c in range(3) if (r, c) != (0, 2)])
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    # the class map holds each patch's top class + 1, 0 on glass
    for r in range(2):
        for c in range(3):
            block = labels[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
            expected = 0 if (r, c) == (0, 2) else int(np.argmax(heat_six[r, c])) + 1
            assert (block == expected).all(), (r, c)
    summary = six.summary
    assert summary["tissue_patches"] == 5 and sum(summary["patch_counts"].values()) == 5
    scores = summary["slide_classification"]
    assert set(scores) == set(KATHER) - {"background"} and abs(sum(scores.values()) - 1) < 1e-3
    assert summary["tags"] == [summary["slide_class"]] and summary["slide_class"] == max(scores, key=scores.get)
    prov = six.provenance["task"]
    assert prov["imported_kind"] == "tiatoolbox" and prov["network"]["architecture"] == "CNNModel(resnet18)"
    assert prov["parameters"]["patch_size"] == PATCH


def test_parameters_are_checked(installed):
    record, config = installed
    task = load_task(record.name, {"device": "cpu", "min_tissue": 0.9}, config=config)
    assert task.min_tissue == 0.9
    with pytest.raises(ParameterError, match="min_tissue=2.0 must lie in"):
        load_task(record.name, {"device": "cpu", "min_tissue": 2}, config=config)
    with pytest.raises(ParameterError, match="multiple of the patch size 224"):
        load_task(record.name, {"device": "cpu", "tile_size": 300}, config=config)
    with pytest.raises(ParameterError, match="take no parameters besides min_tissue"):
        load_task(record.name, {"device": "cpu", "threshold": 0.3}, config=config)


def test_a_classifier_tiatoolbox_does_not_publish_is_refused_and_nothing_is_registered(kather, tmp_path):
    """A ResNet-18 CNNModel state dict cut to 5 classes: no TIAToolbox entry has 5 classes."""
    five = tmp_path / "resnet18-five.pth"
    script = ("import sys, torch; w = torch.load(sys.argv[1], weights_only=True); "
              "w['classifier.weight'] = w['classifier.weight'][:5]; w['classifier.bias'] = w['classifier.bias'][:5]; "
              "torch.save(w, sys.argv[2])")
    done = subprocess.run([field_python(), "-c", script, str(kather), str(five)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = Config(models_dir=tmp_path / "models", device="cpu")
    with pytest.raises(ModelError, match=r"patch classifier with 5 classes, but TIAToolbox's pretrained "
                                         r"classifiers have 2 \(pcam\) or 9 \(kather100k\) classes"):
        import_model("tiatoolbox", five, publisher=TEST_LICENCE, config=config)
    assert [n for n in _registry_entries(config) if not n.startswith(".")] == []


def test_run_model_classifies_an_omero_image_and_tags_it(installed, tmp_path, monkeypatch):
    """Run_Model with the imported classifier (against the OMERO double): the slide's class as a tag, the
    heatmap attached, the provenance naming the TIAToolbox entry."""
    from dlcore.omero.annotated import image_tags
    from test_omero_annotated import Omero
    from test_omero_scripts import _exec_script

    record, config = installed
    toml = tmp_path / "dlcore.toml"
    toml.write_text(f'[dlcore]\nmodels_dir = "{config.models_dir}"\ndevice = "cpu"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(toml))
    om = Omero()
    image = om.image("he", levels=[he_like_image(448, n_nuclei=60, seed=5)], mpp=0.5)
    fake = _exec_script("Run_Model.py", {"Data_Type": "Image", "IDs": [image], "Model": record.name},
                        om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("1 of 1 image analysed\n✓ Image:"), message
    tags = image_tags(om.conn, image)
    assert len(set(tags) & set(KATHER)) == 1, tags
    pairs = {nv.name: nv.value for a in om.server.annotations_of(image) if hasattr(a, "getMapValue")
             for nv in (a.getMapValue() or [])}
    assert pairs["slide class"] in tags and set(json.loads(pairs["slide classification"])) == set(KATHER[1:])
    names = [str(om.server.get("OriginalFile", a.getFile().getId().getValue()).getName().getValue())
             for a in om.server.annotations_of(image) if hasattr(a, "getFile")]
    assert any("heatmap" in n for n in names), names
    provenance = [om.server.file_bytes[a.getFile().getId().getValue()] for a in om.server.annotations_of(image)
                  if hasattr(a, "getFile") and "provenance" in str(
                      om.server.get("OriginalFile", a.getFile().getId().getValue()).getName().getValue())]
    assert provenance and json.loads(provenance[0])["task"]["network"]["pretrained"] == "resnet18-kather100k"
