"""The nuclei recipes' parts: MoNuSeg's layout, re-staining with exact masks, whole-image percentiles,
and a short training run of each recipe's settings through to a package the engine runs."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

from dlcore.train.data import AnnotatedDataset, Sample  # noqa: E402
from dlcore.train.restain import as_fluorescence, as_ihc, nuclear_density  # noqa: E402
from synthetic import real_ihc_field  # noqa: E402
from test_evaluate import _aperio_xml  # noqa: E402


@pytest.fixture(scope="module")
def ihc_nuclei():
    """scikit-image's real IHC section and the classical pipeline's nuclei on it."""
    from dlcore.tasks.classical import ClassicalNuclei

    image = real_ihc_field()
    return image, ClassicalNuclei().prepare([image]).segment(image)


def he_like(image, labels):
    """The IHC field with its DAB moved to eosin-like background: nuclei stay haematoxylin."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image / 255.0)
    hed[..., 1] = np.maximum(hed[..., 2], 0) + 0.05
    hed[..., 2] = 0
    return np.round(np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


def dab(image):
    from skimage.color import rgb2hed

    return rgb2hed(image / 255.0)[..., 2]


def test_as_ihc_turns_the_chosen_share_of_nuclei_brown_and_removes_eosin(ihc_nuclei):
    image, labels = ihc_nuclei
    he = he_like(image, labels)
    inside, outside = labels > 0, labels == 0
    all_positive = as_ihc(he, labels, np.random.default_rng(0), positive_fraction=(1.0, 1.0), pattern="nuclear")
    none_positive = as_ihc(he, labels, np.random.default_rng(0), positive_fraction=(0.0, 0.0), pattern="nuclear")
    assert all_positive.shape == he.shape and all_positive.dtype == np.uint8
    assert dab(all_positive)[inside].mean() > dab(all_positive)[outside].mean() + 0.02
    assert abs(dab(none_positive)[inside].mean() - dab(none_positive)[outside].mean()) < 0.005
    # the nuclei stay where the labels are: haematoxylin still marks them when none is DAB-positive
    assert nuclear_density(none_positive)[inside].mean() > 2 * nuclear_density(none_positive)[outside].mean()
    from skimage.color import rgb2hed

    assert rgb2hed(none_positive / 255.0)[..., 1].mean() < rgb2hed(he / 255.0)[..., 1].mean()
    # cytoplasmic / membranous markers: brown around the nuclei, the nuclei themselves stay blue
    cytoplasmic = as_ihc(he, labels, np.random.default_rng(0), pattern="cytoplasmic")
    assert dab(cytoplasmic)[outside].mean() > dab(cytoplasmic)[inside].mean() + 0.01
    assert nuclear_density(cytoplasmic)[inside].mean() > 2 * nuclear_density(cytoplasmic)[outside].mean()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_as_fluorescence_makes_bright_nuclei_on_a_dark_background(ihc_nuclei, dtype):
    image, labels = ihc_nuclei
    out = as_fluorescence(he_like(image, labels), np.random.default_rng(1), dtype=dtype)
    assert out.shape == labels.shape + (1,) and out.dtype == dtype
    signal = out[..., 0].astype(float)
    assert signal[labels > 0].mean() > 2 * signal[labels == 0].mean()
    if dtype == np.uint16:
        assert signal.max() > 255  # a real 16-bit range, not 8-bit values in 16 bits


def test_monuseg_layout_is_read_at_the_working_pixel_size_and_incomplete_images_skipped(tmp_path, caplog):
    from dlcore.train.recipes.monuseg import read_monuseg

    train = tmp_path / "datasets" / "MoNuSegTrainingData"
    (train / "Tissue_Images").mkdir(parents=True)
    (train / "Annotations").mkdir()
    image = np.full((80, 80, 3), 200, np.uint8)
    image[20:40, 20:40] = 60
    tifffile.imwrite(train / "Tissue_Images" / "A.tif", image)
    tifffile.imwrite(train / "Tissue_Images" / "B.tif", image)  # its outlines are missing
    (train / "Annotations" / "A.xml").write_text(_aperio_xml(
        [[(20, 20), (40, 20), (40, 40), (20, 40)], [(50, 50), (70, 50), (70, 70), (50, 70)]], mpp=0.25))
    with caplog.at_level(logging.WARNING):
        samples = read_monuseg(tmp_path, "train", mpp=0.5)
    assert [s.group for s in samples] == ["A"] and "B.tif has no outlines" in caplog.text
    sample = samples[0]
    assert sample.image.shape == (40, 40, 3) and sample.mask.shape == (40, 40) and sample.mpp == 0.5
    assert sorted(np.unique(sample.mask).tolist()) == [0, 1, 2]
    assert abs((sample.mask == 1).sum() - 100) <= 25  # 20 x 20 px at 0.25 µm/px is 10 x 10 at 0.5
    assert sample.image[15, 15].tolist() == [60, 60, 60]


def test_percentile_training_uses_the_whole_images_statistics():
    from dlcore.train.loop import Batches
    from dlcore.train.spec import TrainSpec
    from dlcore.train.targets import normalize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (96, 96, 1)).astype(np.uint16)
    image[:48] //= 8  # a dim half: a tile of it alone would be stretched differently
    labels = np.zeros((96, 96), np.int32)
    labels[10:20, 10:20] = 1
    dataset = AnnotatedDataset((Sample(image, labels, None, "x", "x"),), "instances", ("nucleus",))
    spec = TrainSpec(task="instances", name="t", patch_size=32, batch_size=2, normalization="percentile")
    batches = Batches(dataset, spec, rng)
    whole = normalize(image, "percentile")
    x, _ = next(batches.fixed_batches())
    np.testing.assert_allclose(x[0], whole[:, :32, :32], rtol=1e-6)
    assert x[0].max() < 0.2  # the dim corner stays dim, as on a slide


@pytest.mark.parametrize("recipe", ["nuclei_brightfield", "nuclei_fluorescence"])
def test_a_short_training_run_of_each_recipe_gives_a_package_the_engine_runs(tmp_path, ihc_nuclei, recipe):
    import importlib

    from dlcore.models.registry import load_task, validate_package
    from dlcore.train.api import train_model
    from dlcore.train.recipes.nuclei_fluorescence import fluorescence_samples

    module = importlib.import_module(f"dlcore.train.recipes.{recipe}")
    image, labels = ihc_nuclei
    he = he_like(image, labels)
    samples = [Sample(he[y:y + 256, x:x + 256], labels[y:y + 256, x:x + 256], None, f"ihc {y} {x}", f"g{y}{x}", 0.5)
               for y in (0, 256) for x in (0, 256)]
    if recipe == "nuclei_fluorescence":
        samples = fluorescence_samples(samples, seed=0)
    samples[-1] = Sample(*[getattr(samples[-1], f) for f in ("image", "mask", "label", "source")], "test-g", 0.5)
    dataset = AnnotatedDataset(tuple(samples), "instances", ("nucleus",))
    spec = module.spec(quick=True, dataset=dataset)
    if recipe == "nuclei_brightfield":
        assert spec.augment.ihc_probability > 0 and spec.augment.scale_jitter > 0
    else:
        assert spec.normalization == "percentile"
    result = train_model(dataset, spec=spec.__class__(**{**spec.__dict__, "test_groups": ("test-g",)}),
                         out_registry=tmp_path)
    assert validate_package(result.package_path).ok
    assert result.metrics["split"]["test"]["samples"] == 1
    config = type("C", (), {"models_dir": tmp_path, "model_roots": (tmp_path,), "device": "cpu", "batch_size": 2})()
    task = load_task(result.package_path.name, {}, config=config)
    assert task.kind == "instances" and task.network.spec.in_channels == samples[0].image.shape[-1]
    maps = task.prepare([samples[0].image]).probabilities([samples[0].image])
    assert maps[0].shape == (2, 256, 256) and np.isfinite(maps[0]).all()


def test_watershed_settings_are_chosen_on_the_validation_images(monkeypatch):
    """Touching nuclei whose shared boundary the network marks only weakly (0.35): the default boundary
    threshold (0.5) merges them, the tuned one separates them, and the grid is reported."""
    import dlcore.train.evaluate as ev
    from dlcore.train.spec import TrainSpec

    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 8:30], truth[10:30, 30:52] = 1, 2
    foreground = (truth > 0).astype(np.float32)
    boundary = np.zeros_like(foreground)
    boundary[10:30, 29:31] = 0.35  # the line between the two
    edge = (truth > 0) & ~np.pad((truth > 0)[1:-1, 1:-1] & (truth[2:, 1:-1] > 0) & (truth[:-2, 1:-1] > 0)
                                 & (truth[1:-1, 2:] > 0) & (truth[1:-1, :-2] > 0), 1)
    boundary[edge] = 0.9
    monkeypatch.setattr(ev, "predict_probabilities", lambda model, image, spec: np.stack([foreground, boundary]))
    dataset = AnnotatedDataset((Sample(np.zeros((40, 60, 3), np.uint8), truth, None, "x", "x"),), "instances",
                               ("nucleus",))
    spec = TrainSpec(task="instances", name="t", min_size=10)
    default = ev.evaluate(None, dataset, spec)[0]
    post, grid = ev.tune_postprocess(None, dataset, spec)
    assert default["n_pred"] == 1 and default["f1"] < 0.7  # merged into one
    assert post["boundary_threshold"] <= 0.3 and post["type"] == "fg_boundary_watershed"
    assert ev.evaluate(None, dataset, spec, post)[0]["f1"] == 1.0
    assert len(grid) == len(ev.BOUNDARY_THRESHOLDS) * len(ev.MIN_SEED_SIZES)
    assert {row["boundary_threshold"] for row in grid if row["f1"] == 1.0} == {0.2, 0.3}


def test_a_single_channel_model_sees_the_channel_it_is_given(tmp_path):
    """``channel``: a one-channel network runs on one channel of a multi-channel slide, the same as on
    that channel alone; a wrong index or a model of several channels is refused."""
    from dlcore.errors import ParameterError, SlideError
    from dlcore.io.slide import Level, SlideInfo
    from dlcore.models.registry import load_task
    from dlcore.train.api import train_model
    from dlcore.train.recipes.nuclei_fluorescence import spec
    from dlcore.train.spec import TrainSpec

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (64, 64, 1)).astype(np.uint16)
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 20:30] = 1
    dataset = AnnotatedDataset(tuple(Sample(image, labels, None, f"s{i}", f"g{i}") for i in range(3)), "instances",
                               ("nucleus",))
    quick = spec(quick=True)
    one = train_model(dataset, spec=TrainSpec(**{**quick.__dict__, "name": "one-channel", "test_groups": ("g2",),
                                                 "patch_size": 32}), out_registry=tmp_path)
    config = type("C", (), {"models_dir": tmp_path, "model_roots": (tmp_path,), "device": "cpu", "batch_size": 2})()
    task = load_task(one.package_path.name, {"channel": 1}, config=config)
    multiplex = np.concatenate([image // 2, image, image // 3], axis=-1)
    info = SlideInfo(name="m", identity="m", levels=(Level(64, 64, 1.0),), mpp=(0.5, 0.5),
                     channels=("CD3", "DAPI", "CK"), dtype="uint16", tile_size=(64, 64))
    task.check(info)
    alone = load_task(one.package_path.name, {}, config=config)
    np.testing.assert_allclose(task.prepare([multiplex]).probabilities([multiplex])[0],
                               alone.prepare([image]).probabilities([image])[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(SlideError, match="channel 3 does not exist"):
        load_task(one.package_path.name, {"channel": 3}, config=config).check(info)
    with pytest.raises(SlideError, match="--channel N"):
        alone.check(info)
    with pytest.raises(ParameterError, match="must be a channel index"):
        load_task(one.package_path.name, {"channel": "DAPI"}, config=config)
