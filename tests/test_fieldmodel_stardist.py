"""The StarDist 2D field-model kind: importing a model folder (or zip), refusing broken ones, the Keras
weights in the torch network, and prediction with slide-level normalisation (random weights, no TF)."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import h5py
import torch

from dlcore.errors import ModelError
from dlcore.fieldmodels.stardist import KIND
from field_weights import (VERSATILE_HE_CONFIG, he_like_image, redirect_tempdir, write_stardist_folder,
                           zip_with_escape)


@pytest.fixture(scope="module")
def he_folder(tmp_path_factory) -> Path:
    return write_stardist_folder(tmp_path_factory.mktemp("he") / "2D_versatile_he")


@pytest.fixture(scope="module")
def he_net(he_folder):
    return KIND.load(he_folder, {"runtime": KIND.inspect(he_folder).runtime})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return he_like_image(256)


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


# -------------------------------------------------------------------------------------------- inspect

def test_inspect_folder(he_folder):
    inspected = KIND.inspect(he_folder)
    assert KIND.name == inspected.kind == "stardist"
    assert set(inspected.files) == {"config.json", "thresholds.json", "weights_best.h5"}
    assert all(p.is_file() for p in inspected.files.values())
    assert inspected.weights_file == "weights_best.h5" and inspected.weights_format == "keras_hdf5"
    assert inspected.in_channels == 3 and inspected.classes == ("nucleus",) and inspected.mpp is None
    assert inspected.tile_size == 512 and inspected.tile_size % 16 == 0 and inspected.halo >= 48
    runtime = inspected.runtime
    assert runtime["config"] == json.loads((he_folder / "config.json").read_text())
    assert runtime["thresholds"] == {"prob": pytest.approx(0.6924782541382084), "nms": 0.3}
    assert runtime["normalization"] == {"pmin": 1.0, "pmax": 99.8, "per_channel": True}
    assert runtime["recognised_as"] == "2D_versatile_he" and "--mpp" in runtime["note"]
    assert "2D_versatile_he" in inspected.publisher.source and inspected.publisher.licence == "BSD-3-Clause"
    assert "MoNuSeg" in inspected.publisher.training_data


@pytest.mark.parametrize("inner", ["", "2D_versatile_he/"])
def test_inspect_zip(he_folder, tmp_path, inner):
    archive = tmp_path / "python_2D_versatile_he.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("config.json", "thresholds.json", "weights_best.h5"):
            z.write(he_folder / name, inner + name)
    inspected = KIND.inspect(archive)
    assert inspected.kind == "stardist" and inspected.runtime["recognised_as"] == "2D_versatile_he"
    assert all(p.is_file() and tmp_path not in p.parents for p in inspected.files.values())
    shutil.rmtree(inspected.files["config.json"].parent if not inner else inspected.files["config.json"].parent.parent)


def test_inspect_fluo_and_weights_last(tmp_path):
    folder = write_stardist_folder(tmp_path / "fluo", n_channel_in=1, stem_names=("conv2d_1", "conv2d_2"))
    (folder / "weights_best.h5").rename(folder / "weights_last.h5")
    inspected = KIND.inspect(folder)
    assert inspected.in_channels == 1 and inspected.runtime["recognised_as"] == "2D_versatile_fluo"
    assert "DSB 2018" in inspected.publisher.training_data
    assert inspected.files["weights_best.h5"] == folder / "weights_last.h5"


def test_unknown_config_has_no_publisher(tmp_path):
    config = {**VERSATILE_HE_CONFIG, "n_rays": 16}
    folder = write_stardist_folder(tmp_path / "m", config=config)
    with pytest.raises(ModelError, match="kernel"):          # the random weights have 32 rays
        KIND.inspect(folder)


def _break_missing(folder: Path, name: str) -> None:
    (folder / name).unlink()


def _truncate(folder: Path) -> None:
    path = folder / "weights_best.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_config(folder: Path) -> None:
    write_stardist_folder(folder, n_channel_in=1, config=VERSATILE_HE_CONFIG)


def _not_h5(folder: Path) -> None:
    (folder / "weights_best.h5").write_text("<html>404 Not Found</html>")


def _config_3d(folder: Path) -> None:
    config = {**VERSATILE_HE_CONFIG, "n_dim": 3, "axes": "ZYXC", "grid": [1, 2, 2], "unet_kernel_size": [3, 3, 3]}
    (folder / "config.json").write_text(json.dumps(config))


def _multiclass(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps({**VERSATILE_HE_CONFIG, "n_classes": 5}))


def _bad_json(folder: Path) -> None:
    (folder / "thresholds.json").write_text("{prob: 0.5")


@pytest.mark.parametrize("breaker, words", [
    (lambda f: _break_missing(f, "config.json"), ["config.json", "missing"]),
    (lambda f: _break_missing(f, "thresholds.json"), ["thresholds.json", "missing"]),
    (lambda f: _break_missing(f, "weights_best.h5"), ["weights_best.h5", "no StarDist weights"]),
    (_truncate, ["weights_best.h5", "truncated"]),
    (_other_config, ["weights_best.h5", "(3, 3, 1, 32)", "(3, 3, 3, 32)", "do not belong"]),
    (_not_h5, ["weights_best.h5", "not a readable HDF5"]),
    (_config_3d, ["config.json", "3-D"]),
    (_multiclass, ["config.json", "multi-class"]),
    (_bad_json, ["thresholds.json", "not readable JSON"]),
], ids=["no-config", "no-thresholds", "no-h5", "truncated-h5", "other-config-h5", "not-h5", "3d", "multiclass",
        "bad-json"])
def test_broken_inputs_are_refused(he_folder, tmp_path, breaker, words):
    folder = _copy(he_folder, tmp_path / "m")
    breaker(folder)
    with pytest.raises(ModelError) as error:
        KIND.inspect(folder)
    for word in words:
        assert word in str(error.value)


def test_bad_zip_and_missing_path(tmp_path):
    (tmp_path / "m.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable zip"):
        KIND.inspect(tmp_path / "m.zip")
    with pytest.raises(ModelError, match="does not exist"):
        KIND.inspect(tmp_path / "nothing")


def test_a_zip_with_a_member_outside_its_folder_is_refused(he_folder, tmp_path, monkeypatch):
    scratch = redirect_tempdir(tmp_path, monkeypatch)  # the kind unpacks into a temporary folder
    archive = zip_with_escape(tmp_path / "zips" / "evil.zip",
                              {name: he_folder / name for name in ("config.json", "thresholds.json", "weights_best.h5")})
    with pytest.raises(ModelError, match=re.escape("holds a file outside its folder (../evil); refused")):
        KIND.inspect(archive)
    assert list(scratch.iterdir()) == []  # nothing written beside the unpacking folder, which is gone too
    assert sorted(p.name for p in archive.parent.iterdir()) == ["evil.zip"]


# -------------------------------------------------------------------------------------------- weights

def test_first_conv_equals_independent_computation(he_folder, he_net):
    with h5py.File(he_folder / "weights_best.h5", "r") as f:
        kernel = f["conv2d/conv2d/kernel:0"][()]          # (kh, kw, in, out)
        bias = f["conv2d/conv2d/bias:0"][()]
        dist_kernel = f["dist/dist/kernel:0"][()]
    x = np.random.default_rng(1).normal(size=(20, 24, 3)).astype(np.float32)
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    expected = bias + sum(np.einsum("yxc,co->yxo", padded[i:i + 20, j:j + 24], kernel[i, j])
                          for i in range(3) for j in range(3))
    with torch.no_grad():
        got = he_net.net.convs[0](torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(he_net.net.convs[-1].weight.numpy()[:, :, 0, 0], dist_kernel[0, 0].T)


def _model_weights_layout(folder: Path) -> None:
    """Rewrite weights_best.h5 as a full-model save (everything under a 'model_weights' group)."""
    path = folder / "weights_best.h5"
    full = folder / "full.h5"
    with h5py.File(path, "r") as src, h5py.File(full, "w") as dst:
        group = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            group.attrs[key] = value
        for name in src:
            src.copy(src[name], group, name)
        dst.attrs["model_config"] = b"{}"
    full.replace(path)


def test_stem_naming_and_full_model_layout_load_identically(he_folder, he_net, tmp_path, image):
    renamed = write_stardist_folder(tmp_path / "renamed", stem_names=("conv2d_1", "conv2d_2"))
    full = _copy(he_folder, tmp_path / "full")
    _model_weights_layout(full)
    for folder in (renamed, full):
        net = KIND.load(folder, {"runtime": KIND.inspect(folder).runtime})
        for a, b in zip(he_net.net.state_dict().values(), net.net.state_dict().values()):
            assert torch.equal(a, b)
    np.testing.assert_array_equal(net.predict([image[:64, :64]])[0], he_net.predict([image[:64, :64]])[0])


def test_load_refuses_missing_weights_and_runtime(he_folder, tmp_path):
    runtime = KIND.inspect(he_folder).runtime
    with pytest.raises(ModelError, match="weights_best.h5 is missing"):
        KIND.load(tmp_path, {"runtime": runtime})
    with pytest.raises(ModelError, match="no StarDist runtime"):
        KIND.load(he_folder, {})


# -------------------------------------------------------------------------------------------- predict

def test_predict_finds_the_nuclei(he_net, image):
    labels, odd = he_net.predict([image, image[:203, 7:257]])
    assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
    assert odd.dtype == np.int32 and odd.shape == (203, 249)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    assert 5 <= len(ids) <= 60 and np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert 30 <= areas.min() and areas.max() <= 300             # rays of about 5.5 px
    dark = image.mean(axis=2) < 140
    on_nuclei = sum(dark[labels == i].mean() > 0.5 for i in ids)
    assert on_nuclei >= 0.8 * len(ids)
    assert odd.max() > 0


def test_fit_normalises_with_the_pooled_samples(he_net, image):
    alone = he_net.predict([image])[0]
    quadrants = [image[:128, :128], image[:128, 128:], image[128:, :128], image[128:, 128:]]
    fitted = he_net.fit(quadrants)                    # pooled: the same percentiles as the whole image
    lo, hi = np.percentile(image.reshape(-1, 3).astype(np.float32), [1.0, 99.8], axis=0)
    np.testing.assert_allclose(fitted.describe()["normalization"]["lo"], lo, rtol=1e-6)
    np.testing.assert_allclose(fitted.describe()["normalization"]["hi"], hi, rtol=1e-6)
    np.testing.assert_array_equal(fitted.predict([image])[0], alone)
    assert he_net.describe()["normalization"]["fitted"] is False and he_net.lo is None   # fit returns a copy

    # a window normalised with the slide's statistics differs from one normalised with its own
    window = image[:96, :96]
    assert not np.array_equal(fitted.normalize(window), he_net.normalize(window))
    # other statistics change the result: fit is what predict uses
    darker = he_net.fit([(image * 0.5).astype(np.uint8)])
    assert not np.array_equal(darker.predict([image])[0], alone)


def test_describe(he_net, image):
    described = he_net.fit([image]).describe()
    assert described["thresholds"] == {"prob": pytest.approx(0.6924782541382084), "nms": 0.3}
    assert described["device"] == "cpu" and described["normalization"]["fitted"] is True
    assert len(described["normalization"]["lo"]) == 3
    json.dumps(described)


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 1), (64, 64, 4)])
def test_wrong_channels_are_refused(he_net, shape):
    window = np.zeros(shape, np.uint8)
    with pytest.raises(ModelError, match=r"\(Y, X, 3\)"):
        he_net.predict([window])
    with pytest.raises(ModelError, match=r"\(Y, X, 3\)"):
        he_net.fit([window])
