"""`dlcore models import`: InstanSeg TorchScript and StarDist Keras folders become registry packages that
run over slides through the engine (tiling, halos, ownership stitching), from files in the real formats
made from randomly initialised real architectures; broken, tampered or unlicensed weights are refused and
nothing is registered half-way."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from dlcore.cli import main
from dlcore.config import Config
from dlcore.errors import ModelError, ParameterError
from dlcore.fieldmodels.base import Publisher
from dlcore.fieldmodels.package import import_model
from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.models.registry import list_models, load_task, validate_package
from dlcore.workflows import RunOptions, analyse_slide
from field_weights import he_like_image, redirect_tempdir, write_stardist_folder, zip_with_escape
from instanseg_weights import write_instanseg_torchscript
from test_tiling_invariance import match_f1

APACHE = Publisher(source="InstanSeg test network (random weights)", training_data="none: random weights",
                   licence="Apache-2.0")
# random InstanSeg networks find seeds everywhere: small windows keep their objects nucleus-sized
SMALL_OBJECTS = {"window_size": 8, "peak_distance": 8}


@pytest.fixture(scope="module")
def instanseg_pt(tmp_path_factory) -> Path:
    return write_instanseg_torchscript(tmp_path_factory.mktemp("instanseg") / "instanseg.pt", pixel_size=0.5,
                                       seed_bias=4.0)


@pytest.fixture(scope="module")
def stardist_folder(tmp_path_factory) -> Path:
    return write_stardist_folder(tmp_path_factory.mktemp("stardist") / "2D_versatile_he")


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(models_dir=tmp_path / "models", device="cpu", batch_size=2)


def _slide(path: Path, image: np.ndarray, mpp: float, *, tile: int = 128) -> Path:
    tifffile.imwrite(path, image, photometric="rgb", tile=(tile, tile), ome=True,
                     metadata={"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "axes": "YXS"})
    return path


def _run(path: Path, task, out: Path):
    slide = open_slide(path)
    try:
        result = analyse_slide(slide, task, LocalFolderSink(out), options=RunOptions(detect_tissue=False))
    finally:
        slide.close()
    return result, tifffile.imread(result.outputs["label image"])


def _registry_entries(config) -> list[str]:
    root = Path(config.models_dir)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_instanseg_import_writes_a_card_and_a_valid_package(instanseg_pt, config):
    record = import_model("instanseg", instanseg_pt, name="cells-random", publisher=APACHE, config=config)
    folder = record.path
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    assert rdf["license"] == "Apache-2.0" and rdf["weights"]["torchscript"]["source"] == "instanseg.pt"
    cfg = rdf["config"]["dlcore"]
    assert cfg["kind"] == "imported" and cfg["mpp"] == 0.5 and cfg["runtime"]["kind"] == "instanseg"
    assert "weights_sha256" not in cfg["runtime"]  # the rdf's weights sha256 is the one record of it
    digest = rdf["weights"]["torchscript"]["sha256"]
    card = (folder / "README.md").read_text()
    assert digest in card and "Apache-2.0" in card and "random weights" in card
    assert "dlcore has not measured this model" in card
    assert np.load(folder / "test_output.npy").dtype == np.int32
    report = validate_package(folder)
    assert report.ok, report.problems
    assert any("reproduces its test output" in c for c in report.checks)
    assert [(m.name, m.kind) for m in list_models(config)] == [("cells-random", "imported")]


def test_instanseg_zoo_zip_takes_its_licence_and_source_from_the_rdf(instanseg_pt, config, tmp_path):
    zoo = tmp_path / "brightfield_nuclei.zip"
    rdf = {"name": "brightfield_nuclei", "version": "0.1.1", "license": "Apache-2.0",
           "description": "InstanSeg brightfield nuclei (test stand-in, random weights)",
           "authors": [{"name": "Thibaut Goldsborough"}], "training_data": {"id": "test/none"},
           "cite": [{"text": "Goldsborough et al. 2024", "doi": "10.48550/arXiv.2408.15954"}]}
    with zipfile.ZipFile(zoo, "w") as archive:
        archive.write(instanseg_pt, "brightfield_nuclei/instanseg.pt")
        archive.writestr("brightfield_nuclei/rdf.yaml", yaml.safe_dump(rdf))
    record = import_model("instanseg", zoo, config=config)
    assert record.name == "brightfield_nuclei"
    card = record.card_text()
    assert "InstanSeg model zoo: brightfield_nuclei 0.1.1 by Thibaut Goldsborough" in card
    assert "Training data**: test/none" in card and "10.48550/arXiv.2408.15954" in card


@pytest.mark.parametrize("problem", ["truncated", "not torchscript", "other torchscript", "no licence", "stardist"])
def test_bad_weights_are_refused_and_nothing_is_registered(problem, instanseg_pt, stardist_folder, config, tmp_path):
    import torch

    source, publisher, expected = tmp_path / "instanseg.pt", APACHE, None
    if problem == "truncated":
        data = instanseg_pt.read_bytes()
        source.write_bytes(data[: len(data) // 2])
        expected = "truncated, damaged or not an InstanSeg model"
    elif problem == "not torchscript":
        source.write_text("not a model")
        expected = "cannot be loaded as TorchScript"
    elif problem == "other torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 1, 3)), str(source))
        expected = "not an InstanSeg model (its module is Conv2d"
    elif problem == "no licence":
        shutil.copy(instanseg_pt, source)
        publisher, expected = None, "the weights do not state their licence; give it"
    else:
        source, expected = stardist_folder, "holds no instanseg.pt"
    before = _registry_entries(config)
    with pytest.raises(ModelError, match=re.escape(expected)):
        import_model("instanseg", source, name="broken", publisher=publisher, config=config)
    assert _registry_entries(config) == before  # no package, no scratch folder left


def test_an_instanseg_zip_with_a_member_outside_its_folder_is_refused(instanseg_pt, config, tmp_path, monkeypatch):
    scratch = redirect_tempdir(tmp_path, monkeypatch)  # the kind unpacks into a temporary folder
    zoo = zip_with_escape(tmp_path / "zoo" / "evil.zip", {"evil/instanseg.pt": instanseg_pt})
    before = _registry_entries(config)
    with pytest.raises(ModelError, match=re.escape("holds a file outside its folder (../evil); refused")):
        import_model("instanseg", zoo, name="evil", publisher=APACHE, config=config)
    assert _registry_entries(config) == before
    assert list(scratch.iterdir()) == []  # nothing written beside the unpacking folder, which is gone too
    assert sorted(p.name for p in zoo.parent.iterdir()) == ["evil.zip"]


def test_unknown_kind_and_an_installed_name_are_refused(instanseg_pt, config):
    with pytest.raises(ModelError, match="unknown model kind 'hovernet'; dlcore imports instanseg"):
        import_model("hovernet", instanseg_pt, config=config)
    import_model("instanseg", instanseg_pt, name="twice", publisher=APACHE, config=config)
    with pytest.raises(ModelError, match="'twice' is installed already; remove it first or use --force"):
        import_model("instanseg", instanseg_pt, name="twice", publisher=APACHE, config=config)
    assert import_model("instanseg", instanseg_pt, name="twice", publisher=APACHE, config=config, force=True)


def test_tampered_weights_are_refused_at_run_and_by_validation(instanseg_pt, config):
    record = import_model("instanseg", instanseg_pt, name="tamper", publisher=APACHE, config=config)
    weights = record.path / "instanseg.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="the weights were changed or damaged; install the model again"):
        load_task("tamper", {"device": "cpu"}, config=config)
    report = validate_package(record.path)
    assert not report.ok and "sha256" in " ".join(report.problems).lower(), report.problems


def test_instanseg_tiles_give_the_objects_of_the_whole_image(instanseg_pt, config, tmp_path):
    """Tiles of 128 px with a 32 px halo against one 640 px window: the same objects."""
    import_model("instanseg", instanseg_pt, name="tiling", publisher=APACHE, config=config)
    image = he_like_image(384, n_nuclei=70, seed=5)
    path = _slide(tmp_path / "slide.ome.tif", image, 0.5)
    whole, whole_labels = _run(path, load_task("tiling", {"device": "cpu", "tile_size": 640, "halo": 64,
                                                          **SMALL_OBJECTS}, config=config), tmp_path / "whole")
    tiled, tiled_labels = _run(path, load_task("tiling", {"device": "cpu", "tile_size": 128, "halo": 48,
                                                          **SMALL_OBJECTS}, config=config), tmp_path / "tiled")
    assert whole.summary["tiles"] == 1 and tiled.summary["tiles"] == 9
    assert whole.summary["objects"] > 100
    f1, tp, n_whole, n_tiled = match_f1(whole_labels, tiled_labels)
    assert f1 > 0.9, (f1, tp, n_whole, n_tiled)
    prov = tiled.provenance["task"]
    assert prov["imported_kind"] == "instanseg" and prov["network"]["normalization"]["scope"] == "slide"
    assert prov["network"]["parameters"] == SMALL_OBJECTS
    assert whole.provenance["task"]["network"]["normalization"] == prov["network"]["normalization"]


def test_stardist_thresholds_are_parameters(stardist_folder, config):
    import_model("stardist", stardist_folder, name="sd-params", mpp=0.5, config=config)
    task = load_task("sd-params", {"device": "cpu", "prob_thresh": 0.8, "nms_thresh": 0.2}, config=config)
    assert task.network.describe()["thresholds"] == {"prob": 0.8, "nms": 0.2}
    with pytest.raises(ParameterError, match="StarDist parameter prob_thresh=1.5 must be in"):
        load_task("sd-params", {"device": "cpu", "prob_thresh": 1.5}, config=config)


def test_instanseg_parameters_are_checked(instanseg_pt, config):
    import_model("instanseg", instanseg_pt, name="params", publisher=APACHE, config=config)
    with pytest.raises(ParameterError, match="InstanSeg has no parameter 'seed'; its parameters: target, min_size"):
        load_task("params", {"device": "cpu", "seed": 3}, config=config)
    with pytest.raises(ParameterError, match="target='cells': this InstanSeg model segments nuclei only"):
        load_task("params", {"device": "cpu", "target": "cells"}, config=config)


def test_stardist_folder_imports_with_its_publisher_and_runs_tiled(stardist_folder, config, tmp_path):
    record = import_model("stardist", stardist_folder, name="versatile-he", mpp=0.5, config=config)
    rdf = yaml.safe_load((record.path / "rdf.yaml").read_text())
    assert rdf["license"] == "BSD-3-Clause" and set(rdf["weights"]) == {"keras_hdf5"}
    assert {"config.json", "thresholds.json", "weights_best.h5"} <= {p.name for p in record.path.iterdir()}
    assert "MoNuSeg" in record.card_text()
    image = he_like_image(512, n_nuclei=120, seed=11)
    path = _slide(tmp_path / "he.ome.tif", image, 0.5)
    whole, whole_labels = _run(path, load_task("versatile-he", {"device": "cpu", "tile_size": 768, "halo": 96},
                                               config=config), tmp_path / "whole")
    tiled, tiled_labels = _run(path, load_task("versatile-he", {"device": "cpu", "tile_size": 192, "halo": 96},
                                               config=config), tmp_path / "tiled")
    assert whole.summary["objects"] > 30 and tiled.summary["tiles"] == 9
    f1, tp, n_whole, n_tiled = match_f1(whole_labels, tiled_labels)
    assert f1 > 0.95, (f1, tp, n_whole, n_tiled)


def test_the_command_line_imports_shows_and_runs(instanseg_pt, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    (tmp_path / "dlcore.toml").write_text(f'[dlcore]\nmodels_dir = "{models}"\ndevice = "cpu"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(tmp_path / "dlcore.toml"))
    assert main(["models", "import", "instanseg", str(instanseg_pt), "--name", "cli-model"]) == 1
    assert "give it as its publisher states it with --licence" in capsys.readouterr().err
    assert not models.exists() or not any(models.iterdir())
    assert main(["models", "import", "instanseg", str(instanseg_pt), "--name", "cli-model", "--licence", "apache-2.0",
                 "--source", "a collaborator's copy", "--training-data", "none (random)"]) == 0
    out = capsys.readouterr().out
    assert "✓ imported cli-model" in out and "reproduces its test output" in out
    assert main(["models", "show", "cli-model"]) == 0
    shown = capsys.readouterr().out
    assert "kind: imported" in shown and '"kind": "instanseg"' in shown and "a collaborator's copy" in shown
    path = _slide(tmp_path / "s.ome.tif", he_like_image(256, seed=2), 0.5)
    params = [f"--param={k}={v}" for k, v in SMALL_OBJECTS.items()]
    assert main(["run", "cli-model", str(path), "-o", str(tmp_path / "out"), "--no-tissue-detection", *params]) == 0
    result = tmp_path / "out" / "s" / "cli-model"
    provenance = json.loads((result / "provenance.json").read_text())
    assert provenance["task"]["imported_kind"] == "instanseg"
    assert (result / "objects.csv").read_text().count("\n") > 10


class _TypedDiscs:
    """A stand-in for a model that classifies its own objects (as HoVer-Net types nuclei): discs above a
    threshold, each labelled; a disc's class is "bright" or "dim" from its mean, decided per window."""

    def fit(self, samples):
        return self

    def predict(self, windows):
        from scipy import ndimage as ndi

        from dlcore.tiling.tile_objects import TypedLabels

        out = []
        for window in windows:
            grey = window[..., 0].astype(np.float32)
            labels, n = ndi.label(grey > 60)
            means = ndi.mean(grey, labels, index=np.arange(1, n + 1)) if n else np.zeros(0)
            out.append(TypedLabels(labels.astype(np.int32), np.concatenate([[0], 1 + (means > 150)]).astype(int),
                                   ("background", "dim", "bright")))
        return out

    def describe(self):
        return {"stand-in": True}


def test_a_model_that_classifies_its_objects_gives_them_its_classes_across_tiles(tmp_path):
    """Each object keeps the class the model gave it, also one trimmed where it meets a neighbour tile's."""
    import csv

    from dlcore.fieldmodels.task import FieldModelTask
    from synthetic import disc_image

    image = disc_image(256, tile=64, seed=3)
    from scipy import ndimage as ndi

    discs, n = ndi.label(image > 60)
    centres = np.array(ndi.center_of_mass(image > 60, discs, range(1, n + 1)))
    dim = np.concatenate([[False], centres[:, 1] + 0.5 >= 128])  # discs centred in the right half are dim
    image = np.where(dim[discs], 120, image).astype(np.uint8)
    path = tmp_path / "discs.ome.tif"
    tifffile.imwrite(path, image, ome=True, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "axes": "YX"})
    task = FieldModelTask(network=_TypedDiscs(), name="typed", version="1", package="-", runtime_kind="test",
                          weights_sha256="-", mpp=None, tile_size=64, halo=16, batch_size=2, in_channels=1,
                          channel_invariant=False, class_names=("background", "dim", "bright"),
                          class_colors=((0, 0, 0), (0, 0, 255), (255, 255, 0)))
    result, labels = _run(path, task, tmp_path / "out")
    assert result.summary["tiles"] == 16 and result.summary["objects"] > 40
    with open(result.outputs["measurements"]) as fh:
        rows = list(csv.DictReader(fh))
    classes = {row["class"] for row in rows}
    assert classes == {"dim", "bright"}
    counts = result.summary["objects_by_class"]  # the summary's (and OMERO key-values') per-class counts
    assert counts == {c: sum(row["class"] == c for row in rows) for c in ("bright", "dim")}
    assert result.summary["tags"] == ["bright", "dim"]  # the classes found become the image's tags in OMERO
    for row in rows:  # every object is classed by the model's own verdict, wherever its tile cut it
        x = float(row["centroid_x"])
        assert row["class"] == ("bright" if x < 128 else "dim"), row


def test_a_typed_object_trimmed_against_a_neighbours_keeps_its_model_class(tmp_path):
    """Tile 2's candidate overlaps tile 1's object by less than half: it keeps only its free pixels, is
    measured again, and keeps the class its model gave it."""
    from dlcore.io.labels import LabelCanvas
    from dlcore.tiling.grid import Tile
    from dlcore.tiling.stitch import InstanceStitcher
    from dlcore.tiling.tile_objects import TypedLabels

    canvas = LabelCanvas(tmp_path / "labels.zarr", 80, 40)
    stitcher = InstanceStitcher(canvas, factor=1.0, mpp=None, bounds=(80, 40))
    names = ("background", "tumour", "immune")
    window = np.full((60, 60, 1), 100, np.uint8)
    first = np.zeros((60, 60), np.int32)  # tile 1: core x 0..40, window x -10..50, y -10..50
    first[20:40, 40:55] = 1  # slide x 30..45, y 10..30: centroid x 37.5, tile 1 owns it
    stitcher.add(Tile(0, 0, 0, 0, 40, 40, 10), window, TypedLabels(first, np.array([0, 1]), names))
    second = np.zeros((60, 60), np.int32)  # tile 2: core x 40..80, window x 30..90
    second[20:40, 10:35] = 1  # slide x 40..65: overlaps tile 1's object on x 40..45 (5 of its 25 columns)
    records = stitcher.add(Tile(0, 1, 40, 0, 40, 40, 10), window, TypedLabels(second, np.array([0, 2]), names))
    [record] = records
    assert record.area_px == 20 * 20  # its free pixels only: x 45..65
    assert record.class_name == "immune"


def test_run_model_runs_an_imported_model_on_an_omero_image(instanseg_pt, tmp_path, monkeypatch):
    """Run_Model with an imported InstanSeg model (against the OMERO double): ROIs on the image and the
    provenance naming the imported kind and its weights' sha256."""
    from test_omero_annotated import Omero
    from test_omero_scripts import _exec_script

    config = tmp_path / "dlcore.toml"
    models = tmp_path / "models"
    config.write_text(f'[dlcore]\nmodels_dir = "{models}"\ndevice = "cpu"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(config))
    record = import_model("instanseg", instanseg_pt, name="omero-instanseg", publisher=APACHE,
                          config=Config(models_dir=models))
    om = Omero()
    image = om.image("he", levels=[he_like_image(256, n_nuclei=30, seed=4)], mpp=0.5)
    params = ", ".join(f"{k}={v}" for k, v in SMALL_OBJECTS.items())
    fake = _exec_script("Run_Model.py", {"Data_Type": "Image", "IDs": [image], "Model": "omero-instanseg",
                                         "Model_Parameters": params}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("1 of 1 image analysed\n✓ Image:"), message
    rois = om.server.rois_of(image)
    assert len(rois) > 10
    texts = json.dumps([[(nv.name, nv.value) for nv in (a.getMapValue() or [])]
                        for a in om.server.annotations_of(image) if hasattr(a, "getMapValue")])
    assert "omero-instanseg" in texts
    digest = yaml.safe_load((record.path / "rdf.yaml").read_text())["weights"]["torchscript"]["sha256"]
    attached = [a for a in om.server.annotations_of(image) if hasattr(a, "getFile")]
    provenance = [om.server.file_bytes[a.getFile().getId().getValue()] for a in attached
                  if "provenance" in str(om.server.get("OriginalFile", a.getFile().getId().getValue()).getName().getValue())]
    assert provenance and digest.encode() in provenance[0] and b'"imported_kind": "instanseg"' in provenance[0]


class _BrightnessClassifier:
    """A stand-in patch classifier: P(bright) rises with a patch's mean grey value (classes dark, bright)."""

    def fit(self, samples):
        return self

    def classify(self, patches):
        means = np.array([np.asarray(p, np.float32).mean() / 255 for p in patches], np.float32)
        return np.stack([1 - means, means], axis=1)

    def describe(self):
        return {"stand-in": True}


def test_an_imported_patch_classifier_maps_its_patches_whatever_the_tiling(tmp_path):
    """FieldPatchTask: every tissue patch gets the network's probabilities, glass patches none; the class
    map, heatmap and slide decision are the same for one tile and for six."""
    from dlcore.fieldmodels.task import FieldPatchTask

    image = np.full((64, 96, 3), 245, np.uint8)  # 2 x 3 patches of 32 px; the top-left one glass
    image[:, 32:64] = 150
    image[:, 64:] = 60
    image[32:, :32] = 100
    path = _slide(tmp_path / "patches.ome.tif", image, 0.5, tile=32)

    def task(tile_size):
        return FieldPatchTask(network=_BrightnessClassifier(), name="bright", version="1", package="-",
                              runtime_kind="test", weights_sha256="-", mpp=None, tile_size=tile_size, halo=0,
                              batch_size=2, in_channels=3, channel_invariant=False, class_names=("dark", "bright"),
                              class_colors=((0, 0, 255), (255, 255, 0)), patch_size=32)

    one, one_labels = _run(path, task(96), tmp_path / "one")
    six, six_labels = _run(path, task(32), tmp_path / "six")
    assert (one.summary["tiles"], six.summary["tiles"]) == (1, 6)
    heat = np.load(six.outputs["heatmap probabilities"])
    np.testing.assert_allclose(heat, np.load(one.outputs["heatmap probabilities"]), atol=1e-3)
    assert np.isnan(heat[0, 0]).all()
    np.testing.assert_allclose(heat[1, 0], [1 - 100 / 255, 100 / 255], atol=2e-3)
    np.testing.assert_allclose(heat[0, 1], [1 - 150 / 255, 150 / 255], atol=2e-3)
    expected = np.array([[0, 2, 1], [1, 2, 1]])  # class index + 1 per patch, 0 on glass
    assert (six_labels == np.kron(expected, np.ones((32, 32), int))).all()
    assert (one_labels == six_labels).all()
    assert six.summary["tissue_patches"] == 5 and six.summary["patch_counts"] == {"dark": 3, "bright": 2}
    assert six.summary["slide_class"] == "dark" and six.summary["tags"] == ["dark"]
    assert six.provenance["task"]["parameters"]["patch_size"] == 32


@pytest.mark.parametrize("change, message", [
    ({"patch_size": 100}, "tile_size=448 must be a multiple of patch_size=100"),
    ({"halo": 16}, "a patch classifier's patches are classified alone"),
    ({"background_class": "glass"}, "background_class='glass' is not one of the classes"),
    ({"output": "objects"}, "output='objects' must be one of"),
])
def test_an_imported_models_output_settings_are_checked(change, message):
    from dlcore.models.spec import check_dlcore_config

    cfg = {"kind": "imported", "output": "patch_classification", "mpp": 0.5, "tile_size": 448, "halo": 0,
           "classes": ["tumour", "stroma"], "patch_size": 224, "normalization": {"type": "none"},
           "runtime": {"kind": "tiatoolbox", "weights": "weights.pth"}}
    assert check_dlcore_config(dict(cfg), where="m")["output"] == "patch_classification"
    with pytest.raises(ModelError, match=re.escape(message)):
        check_dlcore_config({**cfg, **change}, where="m")
