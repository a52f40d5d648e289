"""A pixel classifier end to end: ``dlcore train --task pixels`` from GeoJSON scribbles and from a painted
label image, the registry package (bioimage.io, no pickle), and ``dlcore run`` over a slide: class map,
areas, outlines, probabilities, objects, tiling invariance and QC exclusion."""
from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import tifffile
import yaml

from dlcore.cli import main as cli_main
from dlcore.config import Config
from dlcore.errors import ParameterError, SlideError
from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.models.registry import list_models, load_task, validate_package
from dlcore.pixels.demo import CLASSES, write_scribble_demo
from dlcore.workflows import RunOptions, analyse_slide
from synthetic import write_ome_tiff


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo scribbles (IHC section, 36 strokes) trained into a fresh registry with the CLI."""
    root = tmp_path_factory.mktemp("pixels")
    folder = write_scribble_demo(root / "training")
    registry = root / "registry"
    code = cli_main(["train", str(folder), "--task", "pixels", "--name", "ihc-dab", "--colour", "hed",
                     "--scales", "1,2.5,5", "--trees", "24", "--registry", str(registry)])
    assert code == 0
    return registry, folder


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 768 x 640 slide: the IHC section's left part beside glass (white), 0.5 µm/px like the training image."""
    from skimage import data

    image = np.full((640, 768, 3), 244, np.uint8)
    image[64:576, 32:480] = data.immunohistochemistry()[:, :448]
    return write_ome_tiff(tmp_path_factory.mktemp("slide") / "ihc-slide.ome.tif", image, tile=128, levels=3), image


def test_the_package_is_a_valid_bioimageio_model_without_pickle(trained):
    registry, _ = trained
    folder = registry / "ihc-dab"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["rdf.yaml", "README.md", "cover.png", "forest.npz", "feature_importance.csv",
                            "test_input.npy", "test_output.npy", "weights_torchscript.pt"])
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    cfg = rdf["config"]["dlcore"]
    assert cfg["kind"] == "pixel_classifier" and cfg["classes"] == list(CLASSES) and cfg["mpp"] == 0.5
    assert cfg["features"]["colour"] == "hed" and cfg["features"]["scales"] == [1.0, 2.5, 5.0]
    assert cfg["halo"] >= 20 + 10  # the features' radius at sigma 5 (structure tensor: inner + outer)
    assert cfg["metrics"]["oob_accuracy"] > 0.9 and cfg["metrics"]["heldout_strokes"]["strokes_held_out"] >= 6
    assert cfg["training_data"]["labels"]["dab"]["strokes"] == 12
    report = validate_package(folder)  # bioimageio.spec, SHA-256 of every file, the TorchScript reproduces
    assert report.ok, report.problems
    assert any("torchscript" in check for check in report.checks)
    card = (folder / "README.md").read_text()
    for words in ("held-out strokes", "out-of-bag", "| dab |", "Most important features", "hed"):
        assert words in card
    rows = list(csv.DictReader(open(folder / "feature_importance.csv")))
    assert len(rows) == 3 * 3 * 8 and sum(float(r["importance"]) for r in rows) == pytest.approx(1.0, abs=1e-3)
    [record] = list_models(Config(models_dir=registry))
    assert record.kind == "pixel_classifier" and record.version == "1.0.0"


def test_the_model_loads_and_runs_with_no_unpickling(trained, monkeypatch, slide):
    registry, _ = trained

    def refuse(*args, **kwargs):
        raise AssertionError("the model tried to unpickle something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(np, "load", _no_pickle_load(np.load))
    task = load_task("ihc-dab", config=Config(models_dir=registry))
    window = slide[1][64:192, 32:160]
    [classes] = task.predict([window])
    assert classes.labels.shape == (128, 128) and set(np.unique(classes.labels)) <= {1, 2, 3}


def _no_pickle_load(real):
    def load(*args, **kwargs):
        assert kwargs.get("allow_pickle", False) is False, "np.load with allow_pickle"
        return real(*args, **kwargs)
    return load


def _run(slide_path, registry, out, **params):
    task = load_task("ihc-dab", params, config=Config(models_dir=registry))
    s = open_slide(slide_path)
    try:
        return analyse_slide(s, task, LocalFolderSink(out), options=RunOptions(workers=0))
    finally:
        s.close()


def test_run_writes_class_map_areas_outlines_and_probabilities(trained, slide, tmp_path):
    registry, _ = trained
    path, image = slide
    result = _run(path, registry, tmp_path)
    folder = tmp_path / "ihc-slide" / "ihc-dab"
    files = sorted(p.name for p in folder.iterdir())
    for name in ("labels.ome.tif", "class_outlines.geojson", "probabilities.png", "probabilities.npy", "provenance.json"):
        assert name in files
    labels = tifffile.imread(folder / "labels.ome.tif")
    assert labels.shape == image.shape[:2]
    from skimage.color import rgb2hed

    tissue = labels[64:576, 32:480]
    hed = rgb2hed(image[64:576, 32:480])
    dab_call = tissue == 1
    # where the reference deconvolution sees strong DAB the classifier says dab, and vice versa mostly
    strong = hed[..., 2] > np.quantile(hed[..., 2], 0.95)
    assert dab_call[strong].mean() > 0.9
    assert hed[..., 2][dab_call].mean() > hed[..., 2][~dab_call].mean()
    pixels = result.summary["class_pixels"]
    assert pixels["dab"] == (labels == 1).sum() and sum(pixels.values()) == (labels > 0).sum()
    probs = np.load(folder / "probabilities.npy")
    seen = ~np.isnan(probs[..., 0])
    assert probs.shape[2] == 3 and seen.mean() > 0.5 and np.abs(probs[seen].sum(axis=1) - 1).max() < 1e-3
    mean = result.summary["mean_class_probability"]
    assert set(mean) == set(CLASSES) and sum(mean.values()) == pytest.approx(1.0, abs=1e-3)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["task"]["kind"] == "pixel_classifier (semantic)" and provenance["task"]["forest_sha256"]


def test_the_class_map_does_not_depend_on_the_tiling(trained, slide, tmp_path):
    registry, _ = trained
    path, _ = slide
    _run(path, registry, tmp_path / "a", tile_size=512)
    _run(path, registry, tmp_path / "b", tile_size=96)
    a = tifffile.imread(tmp_path / "a" / "ihc-slide" / "ihc-dab" / "labels.ome.tif")
    b = tifffile.imread(tmp_path / "b" / "ihc-slide" / "ihc-dab" / "labels.ome.tif")
    both = (a > 0) & (b > 0)  # tiles without tissue are not analysed, and the two grids skip different ones
    assert both.sum() > 200_000
    assert (a[both] != b[both]).mean() < 1e-4  # float summation order may flip a pixel at a split, no more


def test_one_class_becomes_measured_objects(trained, slide, tmp_path):
    registry, _ = trained
    path, _ = slide
    result = _run(path, registry, tmp_path, objects="dab", min_size=40)
    rows = list(csv.DictReader(open(tmp_path / "ihc-slide" / "ihc-dab" / "objects.csv")))
    assert len(rows) == result.summary["objects"] >= 3
    assert min(int(r["area_px"]) for r in rows) >= 40
    labels = tifffile.imread(tmp_path / "ihc-slide" / "ihc-dab" / "labels.ome.tif")
    assert len(np.unique(labels)) - 1 == len(rows)


def test_bad_parameters_and_slides_are_refused(trained, tmp_path):
    registry, _ = trained
    config = Config(models_dir=registry)
    with pytest.raises(ParameterError, match="radius"):
        load_task("ihc-dab", {"halo": 4}, config=config)
    with pytest.raises(ParameterError, match="not a class"):
        load_task("ihc-dab", {"objects": "tumour"}, config=config)
    with pytest.raises(ParameterError, match="no parameter"):
        load_task("ihc-dab", {"threshold": 0.3}, config=config)
    grey = write_ome_tiff(tmp_path / "grey.ome.tif", np.zeros((256, 256), np.uint16), tile=128)
    task = load_task("ihc-dab", config=config)
    s = open_slide(grey)
    try:
        with pytest.raises(SlideError, match="3-channel"):
            task.check(s.info)
    finally:
        s.close()


def test_a_painted_label_image_trains_too(tmp_path, capsys):
    from skimage import data

    from PIL import Image

    image = data.immunohistochemistry()
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[20:40, 20:200] = 1
    labels[300:320, 40:300] = 1
    labels[100:110, 300:500] = 2
    labels[400:420, 300:480] = 2
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    Image.fromarray(image).save(tmp_path / "data" / "images" / "field.png")
    Image.fromarray(labels).save(tmp_path / "data" / "labels" / "field.png")
    registry = tmp_path / "registry"
    args = ["train", str(tmp_path / "data"), "--task", "pixels", "--name", "painted", "--trees", "8",
            "--scales", "1,2", "--registry", str(registry)]
    assert cli_main(args) != 0
    assert "--classes" in capsys.readouterr().err
    assert cli_main(args + ["--classes", "upper,lower"]) == 0
    assert cli_main(args + ["--classes", "upper,lower"]) == 0  # a second training is a new version
    rdf = yaml.safe_load((registry / "painted-v2" / "rdf.yaml").read_text())
    assert rdf["version"] == "2.0.0" and rdf["config"]["dlcore"]["classes"] == ["upper", "lower"]
    assert rdf["config"]["dlcore"]["mpp"] is None
