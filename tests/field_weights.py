"""Weights files of imported ("field") model kinds for the tests, written without their frameworks.

Nothing here is a trained model: the weights are random (glorot-uniform kernels, as Keras initialises
them), with only the output heads' biases set so that the random network finds plausible objects.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The published 2D_versatile_he config.json (stardist 0.9.2 Config2D with its released values);
# 2D_versatile_fluo is the same with one input channel.
VERSATILE_HE_CONFIG = {
    "n_dim": 2, "axes": "YXC", "n_channel_in": 3, "n_channel_out": 33, "train_checkpoint": "weights_best.h5",
    "train_checkpoint_last": "weights_last.h5", "train_checkpoint_epoch": "weights_now.h5",
    "n_rays": 32, "grid": [2, 2], "backbone": "unet", "n_classes": None,
    "unet_n_depth": 3, "unet_kernel_size": [3, 3], "unet_n_filter_base": 32, "unet_n_conv_per_depth": 2,
    "unet_pool": [2, 2], "unet_activation": "relu", "unet_last_activation": "relu", "unet_batch_norm": False,
    "unet_dropout": 0.0, "unet_expansion": 2, "unet_prefix": "", "net_conv_after_unet": 128,
    "net_input_shape": [None, None, 3], "net_mask_shape": [None, None, 1],
    "train_shape_completion": False, "train_completion_crop": 32, "train_patch_size": [256, 256],
    "train_background_reg": 0.0001, "train_foreground_only": 0.9, "train_sample_cache": True,
    "train_dist_loss": "mae", "train_loss_weights": [1, 0.2], "train_class_weights": [1, 1],
    "train_epochs": 400, "train_steps_per_epoch": 100, "train_learning_rate": 0.0003, "train_batch_size": 4,
    "train_n_val_patches": None, "train_tensorboard": True,
    "train_reduce_lr": {"factor": 0.5, "patience": 40, "min_delta": 0}, "use_gpu": False,
}
VERSATILE_FLUO_CONFIG = {**VERSATILE_HE_CONFIG, "n_channel_in": 1, "net_input_shape": [None, None, 1]}
THRESHOLDS_HE = {"prob": 0.6924782541382084, "nms": 0.3}
THRESHOLDS_FLUO = {"prob": 0.4790714631576, "nms": 0.3}

# model.layers of StarDist2D._build for the versatile configs, in order, as Keras 2 saves them:
# (layer name, kernel shape (kh, kw, in, out)), kernel None for weightless layers.  Written out by hand
# (from the layer list of a real stardist model), independently of dlcore's own layer_specs.
STEM = "<stem>"
_VERSATILE_LAYERS = [
    ("input", None), (STEM, (3, 3, "C", 32)), (STEM, (3, 3, 32, 32)), ("max_pooling2d", None),
    ("down_level_0_no_0", (3, 3, 32, 32)), ("down_level_0_no_1", (3, 3, 32, 32)), ("max_0", None),
    ("down_level_1_no_0", (3, 3, 32, 64)), ("down_level_1_no_1", (3, 3, 64, 64)), ("max_1", None),
    ("down_level_2_no_0", (3, 3, 64, 128)), ("down_level_2_no_1", (3, 3, 128, 128)), ("max_2", None),
    ("middle_0", (3, 3, 128, 256)), ("middle_2", (3, 3, 256, 128)),
    ("up_sampling2d", None), ("concatenate", None),
    ("up_level_2_no_0", (3, 3, 256, 128)), ("up_level_2_no_2", (3, 3, 128, 64)),
    ("up_sampling2d_1", None), ("concatenate_1", None),
    ("up_level_1_no_0", (3, 3, 128, 64)), ("up_level_1_no_2", (3, 3, 64, 32)),
    ("up_sampling2d_2", None), ("concatenate_2", None),
    ("up_level_0_no_0", (3, 3, 64, 32)), ("up_level_0_no_2", (3, 3, 32, 32)),
    ("features", (3, 3, 32, 128)), ("prob", (1, 1, 128, 1)), ("dist", (1, 1, 128, 32)),
]

# The heads that make the random network find the "nuclei" of :func:`he_like_image` (chosen by trial).
# With zero biases the random relu trunk is positively homogeneous: its features vanish where the
# normalised input is near 0 (the dark nuclei) and are large on the bright background.  The 1x1 prob
# kernel is therefore made negative (-PROB_SCALE * |glorot|), so the logit PROB_BIAS - PROB_SCALE*sum|w|f
# exceeds the H&E threshold (0.69) at the nuclei only: 22 objects of about 97 px on the 30 nuclei of
# he_like_image(256), all of them on a nucleus.  The dist kernel stays random (rays vary by < 0.1 px), so
# every ray is about DIST_BIAS px long.  (For bright objects on a dark background, as fluorescence,
# these heads find the background instead.)
DIST_BIAS = 5.5
PROB_BIAS = 8.0
PROB_SCALE = 100.0


def versatile_layers(n_channel_in: int, stem_names: tuple[str, str]) -> list[tuple[str, tuple | None]]:
    """The versatile configs' Keras layers (name, kernel shape or None) for ``n_channel_in`` channels, the
    two stem convolutions named ``stem_names``."""
    names = iter(stem_names)
    layers = []
    for name, shape in _VERSATILE_LAYERS:
        if name == STEM:
            name = next(names)
        if shape is not None:
            shape = tuple(n_channel_in if v == "C" else v for v in shape)
        layers.append((name, shape))
    return layers


def write_keras_weights(path: Path, layers: list[tuple[str, tuple | None]], *, seed: int = 0,
                        biases: dict[str, float] | None = None, prob_scale: float | None = None) -> Path:
    """A Keras 2 ``save_weights`` HDF5 file (h5py only): root attrs ``layer_names``, ``backend``,
    ``keras_version``; a group per layer with attr ``weight_names``; datasets ``<layer>/<layer>/kernel:0``
    ``(kh, kw, in, out)`` (glorot-uniform; the ``prob`` kernel ``-prob_scale * |glorot|`` when ``prob_scale``
    is given) and ``<layer>/<layer>/bias:0`` (zero, or ``biases[layer]``)."""
    import h5py

    rng = np.random.default_rng(seed)
    biases = biases or {}
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.10.0"
        f.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, shape in layers:
            group = f.create_group(name)
            if shape is None:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            kh, kw, cin, cout = shape
            limit = np.sqrt(6.0 / (kh * kw * (cin + cout)))
            kernel = rng.uniform(-limit, limit, shape).astype(np.float32)
            if name == "prob" and prob_scale is not None:
                kernel = -np.abs(kernel) * np.float32(prob_scale)
            weight_names = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group.attrs["weight_names"] = weight_names
            group.create_dataset(weight_names[0].decode(), data=kernel)
            group.create_dataset(weight_names[1].decode(), data=np.full(cout, biases.get(name, 0.0), np.float32))
    return Path(path)


def write_stardist_folder(folder: Path, *, n_channel_in: int = 3, seed: int = 0,
                          stem_names: tuple[str, str] = ("conv2d", "conv2d_1"), config: dict | None = None,
                          prob_bias: float = PROB_BIAS, dist_bias: float = DIST_BIAS,
                          prob_scale: float = PROB_SCALE) -> Path:
    """A StarDist 2D model folder as stardist saves it: ``config.json`` (the versatile H&E config, or the
    fluo one for ``n_channel_in`` 1; ``config`` replaces it), ``thresholds.json`` (the published ones) and a
    random ``weights_best.h5`` for ``n_channel_in`` channels -- random, not a trained model -- whose heads
    are set (see PROB_BIAS) so that it finds the dark nuclei of :func:`he_like_image`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    he = n_channel_in == 3
    (folder / "config.json").write_text(json.dumps(config or (VERSATILE_HE_CONFIG if he else VERSATILE_FLUO_CONFIG)))
    (folder / "thresholds.json").write_text(json.dumps(THRESHOLDS_HE if he else THRESHOLDS_FLUO))
    write_keras_weights(folder / "weights_best.h5", versatile_layers(n_channel_in, stem_names), seed=seed,
                        biases={"prob": prob_bias, "dist": dist_bias}, prob_scale=prob_scale)
    return folder


def he_like_image(size: int = 256, *, n_nuclei: int = 30, radius: float = 6.0, seed: int = 0) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 H&E-like image: pink eosin background with noise and ``n_nuclei`` dark
    purple round haematoxylin "nuclei" of about ``radius`` px that do not overlap."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (235, 180, 205)
    centres: list[tuple[float, float]] = []
    for _ in range(n_nuclei * 50):
        if len(centres) == n_nuclei:
            break
        c = tuple(rng.uniform(radius + 2, size - radius - 2, 2))
        if all((c[0] - k[0]) ** 2 + (c[1] - k[1]) ** 2 > (3 * radius) ** 2 for k in centres):
            centres.append(c)
    for cy, cx in centres:
        rr, cc = disk((cy, cx), radius * rng.uniform(0.8, 1.2), shape=(size, size))
        image[rr, cc] = (90, 55, 140)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def zip_with_escape(path: Path, files: dict[str, Path]) -> Path:
    """A zip at ``path`` holding ``files`` (member name -> file) and a member ``../evil`` that would be
    written outside the folder it is unpacked into (a "zip slip")."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in files.items():
            archive.write(source, name)
        archive.writestr("../evil", "written outside the folder")
    return path


def redirect_tempdir(tmp_path: Path, monkeypatch) -> Path:
    """Make :mod:`tempfile` create its folders under a new ``tmp_path / "scratch"`` (returned), so that a
    test can see what unpacking left there."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch

