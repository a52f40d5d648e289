"""The pixel classifier's TorchScript graph (:mod:`dlcore.pixels.torch_graph`) against dlcore's numpy/OpenCV
path: the same features everywhere (the image border and images smaller than a kernel included), and the
same probabilities from the saved and reloaded TorchScript module."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dlcore.errors import ModelError  # noqa: E402
from dlcore.pixels.features import COLOUR_SPACES, FeatureSpec, compute_features, pixel_rows  # noqa: E402
from dlcore.pixels.forest import CompiledForest, ForestArrays, ForestSettings, train_forest  # noqa: E402
from dlcore.pixels.torch_graph import (PixelForestModule, export_torchscript, float32_thresholds,  # noqa: E402
                                       mirror_index, torch_features)
from dlcore.io.slide import reflect_index  # noqa: E402
from synthetic import real_ihc_field  # noqa: E402

SETTINGS = ForestSettings(n_trees=8, max_depth=8)
pytestmark = [pytest.mark.filterwarnings("ignore:Some inputs do not have OOB scores:UserWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")]


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return np.ascontiguousarray(real_ihc_field()[200:296, 240:320])  # 96 x 80, glands and stroma


def _tensor(image: np.ndarray) -> torch.Tensor:
    """A raw ``(Y, X, C)`` or ``(Y, X)`` image as the graph's ``(1, C, Y, X)`` float32 input."""
    image = image[..., None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))[None]


def _forest(image: np.ndarray, spec: FeatureSpec) -> ForestArrays:
    """A small forest trained on a few thousand pixels labelled by thresholds of their brightness (3 classes)."""
    planes = compute_features(image, spec)
    rows = pixel_rows(planes)
    grey = (image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1).astype(np.float64).mean(axis=1)
            / spec.max_value)
    labels = np.digitize(grey, np.quantile(grey, [0.3, 0.7]))
    pick = np.random.default_rng(0).choice(len(rows), size=min(3000, len(rows)), replace=False)
    return ForestArrays.from_sklearn(train_forest(rows[pick], labels[pick], SETTINGS, threads=1))


def _numpy_probabilities(image: np.ndarray, spec: FeatureSpec, arrays: ForestArrays) -> np.ndarray:
    planes = compute_features(image, spec)
    proba = CompiledForest(arrays, threads=1).predict_proba(pixel_rows(planes))
    return np.moveaxis(proba.reshape(*planes.shape[1:], -1), -1, 0)


def _assert_probabilities_match(got: np.ndarray, want: np.ndarray) -> None:
    """Identical arg-max on >= 99.9 % of pixels and a mean absolute difference < 1e-3.

    Not bit-identical: torch's filters round differently from OpenCV's (about 1e-7), and a feature within
    that rounding of a split threshold can take the other branch in one tree at a rare pixel.
    """
    assert got.shape == want.shape and got.dtype == np.float32
    agree = np.mean(np.argmax(got, axis=0) == np.argmax(want, axis=0))
    assert agree >= 0.999, agree
    assert np.mean(np.abs(got - want)) < 1e-3


def test_mirror_index_is_reflect_index():
    for size, pad in ((1, 5), (3, 10), (12, 20), (80, 7)):
        want = reflect_index(np.arange(-pad, size + pad), size)
        assert np.array_equal(mirror_index(size, pad, torch.device("cpu")).numpy(), want)


@pytest.mark.parametrize("colour", COLOUR_SPACES)
def test_features_equal_numpy_path(ihc, colour):
    spec = FeatureSpec(colour=colour)  # default scales 0.7-5 (kernel radius up to 20 px) and every feature
    for image in (ihc, ihc[30:42, 50:60]):  # the second is 12 x 10: smaller than the kernels' radius
        want = compute_features(image, spec)
        got = torch_features(_tensor(image), spec)[0].numpy()
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_thresholds_round_down_to_float32():
    t64 = np.array([0.1, 0.5, -0.3, 1e-40, np.float32(0.25), 3.5e38])
    t32 = float32_thresholds(t64)
    assert t32.dtype == np.float32 and np.all(t32.astype(np.float64) <= t64)
    with np.errstate(over="ignore"):  # the float32 after 3.5e38 is inf
        x = np.nextafter(t32, np.float32(np.inf))
    assert np.all(x.astype(np.float64) > t64)
    assert np.array_equal(x <= t32, x.astype(np.float64) <= t64)


def test_torchscript_reproduces_numpy_probabilities(ihc, tmp_path):
    spec = FeatureSpec(colour="hed", scales=(0.7, 1.6, 3.5))
    arrays = _forest(ihc, spec)
    path = export_torchscript(spec, arrays, 3, tmp_path / "weights_torchscript.pt")
    loaded = torch.jit.load(str(path))
    for image in (ihc, ihc[:12, :10]):
        with torch.no_grad():
            got = loaded(_tensor(image))[0].numpy()
        _assert_probabilities_match(got, _numpy_probabilities(image, spec, arrays))
    with torch.no_grad():  # a batch of two gives each image's own probabilities
        pair = loaded(torch.cat([_tensor(ihc[:40, :40]), _tensor(ihc[40:80, 40:80])]))
        one = loaded(_tensor(ihc[40:80, 40:80]))
    assert torch.equal(pair[1], one[0])


def test_forest_leaves_are_sklearns(ihc):
    """On identical features the torch trees take scikit-learn's decisions exactly."""
    spec = FeatureSpec(colour="od", scales=(1.0,))
    arrays = _forest(ihc, spec)
    rows = pixel_rows(compute_features(ihc, spec))
    module = PixelForestModule(spec, arrays, 3, chunk=1000)  # several chunks
    with torch.no_grad():
        got = module.forest(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, CompiledForest(arrays, threads=1).predict_proba(rows), atol=1e-6)
    with torch.no_grad():  # chunks of pixels change nothing
        assert torch.equal(module(_tensor(ihc)), PixelForestModule.build(spec, arrays, 3)(_tensor(ihc)))


def test_uint16_single_channel_raw(tmp_path):
    rng = np.random.default_rng(3)
    image = (np.cumsum(rng.normal(size=(64, 56)), axis=1) * 900 + 30000).clip(0, 65535).astype(np.uint16)
    spec = FeatureSpec(colour="raw", scales=(1.0, 3.0), max_value=65535)
    np.testing.assert_allclose(torch_features(_tensor(image), spec)[0].numpy(), compute_features(image, spec),
                               rtol=1e-4, atol=1e-4)
    arrays = _forest(image, spec)
    loaded = torch.jit.load(str(export_torchscript(spec, arrays, 1, tmp_path / "grey.pt")))
    with torch.no_grad():
        got = loaded(_tensor(image))[0].numpy()
    _assert_probabilities_match(got, _numpy_probabilities(image, spec, arrays))


def test_mismatched_forest_is_refused(ihc):
    arrays = _forest(ihc, FeatureSpec(colour="od", scales=(1.0,)))
    with pytest.raises(ModelError, match="features per pixel"):
        PixelForestModule.build(FeatureSpec(colour="od", scales=(1.0, 2.0)), arrays, 3)
