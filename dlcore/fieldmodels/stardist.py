"""StarDist 2D models (the published ``2D_versatile_he`` / ``2D_versatile_fluo`` folders) without TensorFlow.

A StarDist 2D model folder holds ``config.json`` (the architecture), ``thresholds.json``
(``{"prob": ..., "nms": ...}``) and ``weights_best.h5`` (Keras 2 ``save_weights`` HDF5 layout).  This kind
reads the Keras weights with h5py into a torch re-implementation of StarDist's network (the csbdeep
U-Net of ``StarDist2D._build``: a stem of 3x3 convolutions and max-pools down to the ``grid``, the U-Net,
a ``features`` 3x3 convolution, and the 1x1 ``prob`` (sigmoid) and ``dist`` (linear) heads), and turns
its outputs into instance labels with the ``stardist`` package's own non-maximum suppression and polygon
rasterisation (``stardist.nms.non_maximum_suppression``, ``stardist.geometry.polygons_to_label``), which
import without TensorFlow.

Input normalisation is StarDist's: per-channel percentiles (1, 99.8 by default) mapped to 0 and 1.  A
network fitted on sample windows of a slide (:meth:`StarDistNetwork.fit`) uses the slide's percentiles for
every window, so tiling cannot change the answer; an unfitted one uses each window's own percentiles (what
``stardist`` does for a single image).

Supported: 2-D, single-class (``n_classes`` None), ``unet`` backbone without batch normalisation, relu
activations, grids of powers of two -- every published 2-D StarDist model.  Anything else is refused with
a :class:`ModelError`.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError
from dlcore.fieldmodels.base import Inspected, Publisher
from dlcore.models.registry import safe_extract

NAME = "stardist"
PACKAGE_WEIGHTS = "weights_best.h5"
WEIGHTS_CANDIDATES = ("weights_best.h5", "weights_last.h5")
DEFAULT_TILE = 512
DEFAULT_HALO = 48
NORMALIZATION = {"pmin": 1.0, "pmax": 99.8, "per_channel": True}
REQUIRED_KEYS = ("n_rays", "grid", "n_channel_in", "unet_n_depth", "unet_n_filter_base", "unet_kernel_size",
                 "unet_n_conv_per_depth", "net_conv_after_unet")
# Config2D defaults for the keys a config.json may leave out.
CONFIG_DEFAULTS = {"unet_pool": (2, 2), "unet_expansion": 2, "unet_prefix": "", "unet_activation": "relu",
                   "unet_last_activation": "relu", "unet_batch_norm": False, "n_classes": None, "backbone": "unet"}
AUTHORS = ("Uwe Schmidt", "Martin Weigert")
CITATION = "Schmidt et al., MICCAI 2018; Weigert et al., WACV 2020"
SOURCE = "https://github.com/stardist/stardist (stardist-models v0.1)"


# --------------------------------------------------------------------------------------------------
# Architecture and the Keras layer list
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """The parts of a StarDist 2D ``config.json`` that fix the network (defaults filled in, checked)."""

    n_channel_in: int
    n_rays: int
    grid: tuple[int, int]
    depth: int
    filter_base: int
    kernel: tuple[int, int]
    conv_per_depth: int
    pool: tuple[int, int]
    expansion: float
    prefix: str
    conv_after_unet: int

    @property
    def divisor(self) -> tuple[int, int]:
        """What each input side must be a multiple of: ``grid * pool**depth``."""
        return tuple(g * p ** self.depth for g, p in zip(self.grid, self.pool))


@dataclass(frozen=True)
class LayerSpec:
    """One weighted Keras layer: its name, role (``conv``: 3x3 relu, ``prob``, ``dist``) and shapes."""

    name: str
    role: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """The Keras kernel's shape ``(kh, kw, in, out)``."""
        return (*self.kernel, self.in_channels, self.out_channels)


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and (value & (value - 1)) == 0


def _pair(value, key: str, source: str) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"{source}: {key} is {value!r}, not a list of integers; "
                         "give the config.json the StarDist model was saved with") from None
    if len(pair) != 2:
        raise ModelError(f"{source}: {key} is {value!r}; dlcore runs StarDist 2D models only "
                         "(this looks like a StarDist 3D model)")
    return pair


def check_config(config: dict, source: str = "config.json") -> Architecture:
    """The :class:`Architecture` of a StarDist ``config.json`` dict; :class:`ModelError` (naming ``source``)
    when a key is missing or the model is not one this kind runs (3-D, multi-class, other backbone, batch
    norm, non-relu activations, grid not a power of two)."""
    if not isinstance(config, dict):
        raise ModelError(f"{source} does not hold a JSON object; give the config.json of a StarDist 2D model")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelError(f"{source} lacks {', '.join(missing)}: not a StarDist 2D config.json; "
                         "give the folder the StarDist model was saved in")
    cfg = {**CONFIG_DEFAULTS, **config}
    grid_len = len(cfg["grid"]) if isinstance(cfg["grid"], (list, tuple)) else 0
    if cfg.get("n_dim", 2) != 2 or grid_len == 3 or "Z" in str(cfg.get("axes", "")):
        raise ModelError(f"{source} describes a 3-D StarDist model (n_dim {cfg.get('n_dim')!r}, grid "
                         f"{cfg['grid']!r}); dlcore runs StarDist 2D models only; use a 2-D model such as 2D_versatile_he")
    if cfg["n_classes"] is not None:
        raise ModelError(f"{source}: n_classes is {cfg['n_classes']!r}; multi-class StarDist models are not "
                         "supported; use a single-class model (n_classes null), e.g. 2D_versatile_he")
    for key, wanted in (("backbone", "unet"), ("unet_activation", "relu"), ("unet_last_activation", "relu")):
        if cfg[key] != wanted:
            raise ModelError(f"{source}: {key} is {cfg[key]!r}; dlcore runs StarDist 2D models with "
                             f"{key} {wanted!r} only (as all published ones)")
    if cfg["unet_batch_norm"]:
        raise ModelError(f"{source}: unet_batch_norm is true; dlcore runs StarDist 2D models without batch "
                         "normalisation only (as all published ones)")
    grid = _pair(cfg["grid"], "grid", source)
    pool = _pair(cfg["unet_pool"], "unet_pool", source)
    kernel = _pair(cfg["unet_kernel_size"], "unet_kernel_size", source)
    if not all(_is_power_of_two(g) for g in grid + pool):
        raise ModelError(f"{source}: grid {list(grid)} and unet_pool {list(pool)} must be powers of two")
    if not all(k % 2 == 1 for k in kernel):
        raise ModelError(f"{source}: unet_kernel_size {list(kernel)} must be odd")
    try:
        arch = Architecture(
            n_channel_in=int(cfg["n_channel_in"]), n_rays=int(cfg["n_rays"]), grid=grid,
            depth=int(cfg["unet_n_depth"]), filter_base=int(cfg["unet_n_filter_base"]), kernel=kernel,
            conv_per_depth=int(cfg["unet_n_conv_per_depth"]), pool=pool, expansion=float(cfg["unet_expansion"]),
            prefix=str(cfg["unet_prefix"] or ""), conv_after_unet=int(cfg["net_conv_after_unet"]))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{source} has a non-numeric architecture value ({exc}); "
                         "give the config.json the StarDist model was saved with") from None
    if min(arch.n_channel_in, arch.n_rays, arch.depth, arch.filter_base, arch.conv_per_depth) < 1:
        raise ModelError(f"{source}: n_channel_in, n_rays, unet_n_depth, unet_n_filter_base and "
                         "unet_n_conv_per_depth must be positive")
    return arch


def layer_specs(arch: Architecture, stem_start: int = 0) -> list[LayerSpec]:
    """The weighted layers of ``StarDist2D._build`` in Keras ``model.layers`` order (the order
    ``load_weights`` matches them by).  The stem convolutions are unnamed in StarDist, so Keras numbers
    them: ``conv2d, conv2d_1, ...`` (``stem_start`` 0, tf.keras 2) or ``conv2d_1, conv2d_2, ...`` (1)."""
    specs: list[LayerSpec] = []
    channels = arch.n_channel_in

    def add(name: str, out: int, role: str = "conv", kernel: tuple[int, int] | None = None) -> None:
        nonlocal channels
        specs.append(LayerSpec(name, role, channels, out, kernel or arch.kernel))
        channels = out

    for i in range(_stem_steps(arch.grid) * arch.conv_per_depth):
        number = i + stem_start
        add("conv2d" if number == 0 else f"conv2d_{number}", arch.filter_base)
    width = lambda n: int(arch.filter_base * arch.expansion ** n)  # noqa: E731 - csbdeep's n_filter_base*expansion**n
    skips = []
    for n in range(arch.depth):
        for i in range(arch.conv_per_depth):
            add(f"{arch.prefix}down_level_{n}_no_{i}", width(n))
        skips.append(channels)
    for i in range(arch.conv_per_depth - 1):
        add(f"{arch.prefix}middle_{i}", width(arch.depth))
    add(f"{arch.prefix}middle_{arch.conv_per_depth}", width(max(0, arch.depth - 1)))
    for n in reversed(range(arch.depth)):
        channels += skips[n]
        for i in range(arch.conv_per_depth - 1):
            add(f"{arch.prefix}up_level_{n}_no_{i}", width(n))
        add(f"{arch.prefix}up_level_{n}_no_{arch.conv_per_depth}", width(max(0, n - 1)))
    if arch.conv_after_unet > 0:
        add("features", arch.conv_after_unet)
    trunk = channels
    add("prob", 1, "prob", (1, 1))
    channels = trunk
    add("dist", arch.n_rays, "dist", (1, 1))
    return specs


def _stem_pools(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The stem's max-pool sizes: StarDist halves each axis whose pooling has not reached ``grid`` yet."""
    pooled, pools = [1, 1], []
    while tuple(pooled) != tuple(grid):
        pool = tuple(2 if g > p else 1 for g, p in zip(grid, pooled))
        pooled = [p * q for p, q in zip(pooled, pool)]
        pools.append(pool)
    return pools


def _stem_steps(grid: tuple[int, int]) -> int:
    return len(_stem_pools(grid))


# --------------------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------------------

def _read_json(path: Path, what: str, fix: str) -> object:
    if not path.is_file():
        raise ModelError(f"{path} is missing: a StarDist model folder needs {what}; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc}); {fix}") from None


def read_config(folder: Path) -> tuple[dict, Architecture]:
    """``folder/config.json`` as a dict and its checked :class:`Architecture` (ModelError otherwise)."""
    path = folder / "config.json"
    config = _read_json(path, "the model's config.json",
                        "copy the complete model folder (config.json, thresholds.json, weights_best.h5)")
    return config, check_config(config, str(path))


def read_thresholds(folder: Path) -> dict[str, float]:
    """``folder/thresholds.json`` as ``{"prob": float, "nms": float}``, both in (0, 1) (ModelError otherwise)."""
    path = folder / "thresholds.json"
    data = _read_json(path, 'thresholds.json ({"prob": ..., "nms": ...}, written by optimize_thresholds)',
                      "copy the complete model folder, or write the thresholds its publisher states")
    try:
        thresholds = {"prob": float(data["prob"]), "nms": float(data["nms"])}
    except (TypeError, KeyError, ValueError):
        raise ModelError(f"{path} is {data!r}; it must be {{\"prob\": <0..1>, \"nms\": <0..1>}}") from None
    if not all(0.0 <= v <= 1.0 for v in thresholds.values()):
        raise ModelError(f"{path}: thresholds {thresholds} must lie between 0 and 1")
    return thresholds


def find_weights(folder: Path) -> Path:
    """The model's weights file: ``weights_best.h5``, else ``weights_last.h5`` (ModelError if neither)."""
    for name in WEIGHTS_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder} holds no StarDist weights ({' or '.join(WEIGHTS_CANDIDATES)}); copy the "
                     "complete model folder as its publisher distributes it")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_weights(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The weighted layers of a Keras 2 HDF5 weights file (``save_weights``, or a full-model save with its
    ``model_weights`` group) as ``(layer name, kernel, bias)`` in file order, the arrays fully read;
    ModelError naming the file when it is not HDF5, truncated or damaged, or not in that layout."""
    import h5py

    fix = "copy the file again from its source (the published zip), or re-save it with Keras 2 save_weights"
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                hint = (" (it looks like a Keras 3 '.weights.h5' file, whose layer order dlcore cannot recover)"
                        if "layers" in group else "")
                raise ModelError(f"{path} is HDF5 but not a Keras 2 weights file: no 'layer_names'{hint}; {fix}")
            layers = []
            for name in (_text(n) for n in group.attrs["layer_names"]):
                weight_names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
                if not weight_names:
                    continue
                arrays = {w.split("/")[-1].split(":")[0]: np.asarray(group[name][w], dtype=np.float32)
                          for w in weight_names}
                if set(arrays) != {"kernel", "bias"}:
                    raise ModelError(f"{path}: layer {name!r} holds {sorted(arrays)}, not a kernel and a bias; "
                                     "this is not a StarDist 2D network (batch norm or another architecture)")
                layers.append((name, arrays["kernel"], arrays["bias"]))
    except ModelError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(f"{path} is not a readable HDF5 weights file (truncated, damaged or another format: "
                         f"{exc}); {fix}") from None
    return layers


def check_weights(layers: list[tuple[str, np.ndarray, np.ndarray]], specs: list[LayerSpec], path: Path,
                  source: str = "config.json") -> None:
    """Raise ModelError unless ``layers`` (from :func:`read_keras_weights`) match ``specs`` one to one, by
    order as Keras does, with exactly the shapes the config implies and finite values."""
    fix = f"the weights do not belong to this {source}; copy the weights and config.json of one model together"
    if len(layers) != len(specs):
        raise ModelError(f"{path} holds {len(layers)} weighted layers but the config implies {len(specs)}; {fix}")
    for (name, kernel, bias), spec in zip(layers, specs):
        if kernel.shape != spec.kernel_shape or bias.shape != (spec.out_channels,):
            raise ModelError(f"{path}: layer {name!r} (the config's {spec.name!r}) has kernel {kernel.shape} and "
                             f"bias {bias.shape}, but the config implies {spec.kernel_shape} and "
                             f"({spec.out_channels},); {fix}")
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise ModelError(f"{path}: layer {name!r} holds NaN or infinite values; the weights are damaged "
                             "(a diverged training); use another checkpoint")


def _unzip(path: Path) -> Path:
    """Extract a model zip into a fresh temporary folder that outlives this call, and return the folder
    holding its ``config.json`` (the zip's root or its single subfolder)."""
    target = Path(tempfile.mkdtemp(prefix="dlcore-stardist-"))
    try:
        safe_extract(path, target)
    except (zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelError(f"{path} is not a readable zip ({exc}); download it again") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    found = sorted(p.parent for p in target.rglob("config.json") if len(p.relative_to(target).parts) <= 2)
    if len(found) != 1:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelError(f"{path} does not hold one StarDist model folder (config.json found {len(found)} times); "
                         "give the zip stardist-models publishes, or the unpacked folder")
    return found[0]


def model_folder(path: Path) -> Path:
    """The StarDist model folder ``path`` names: the folder itself, the folder of a file in it
    (``config.json``, a ``.h5``), or the unpacked contents of a model ``.zip``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path} does not exist; give a StarDist model folder or its .zip")
    if path.is_dir():
        return path
    if path.suffix.lower() == ".zip":
        return _unzip(path)
    if path.name in ("config.json", "thresholds.json") or path.suffix.lower() == ".h5":
        return path.parent
    raise ModelError(f"{path} is neither a StarDist model folder nor its .zip; give the folder holding "
                     "config.json, thresholds.json and weights_best.h5")


# --------------------------------------------------------------------------------------------------
# Known published models (recognised by configuration: their weights' sha256 are not known here)
# --------------------------------------------------------------------------------------------------

_VERSATILE = Architecture(n_channel_in=3, n_rays=32, grid=(2, 2), depth=3, filter_base=32, kernel=(3, 3),
                          conv_per_depth=2, pool=(2, 2), expansion=2.0, prefix="", conv_after_unet=128)
KNOWN_MODELS = {
    "2D_versatile_he": (
        _VERSATILE,
        Publisher(source=f"StarDist 2D_versatile_he, {SOURCE}",
                  training_data="MoNuSeg 2018 and TNBC H&E nuclei (as stated by the StarDist authors)",
                  licence="BSD-3-Clause", citation=CITATION, authors=AUTHORS),
        "the publisher trained it on MoNuSeg/TNBC H&E images at roughly 40x (about 0.25 µm/px); the "
        "config states no pixel size, so give --mpp"),
    "2D_versatile_fluo": (
        Architecture(**{**_VERSATILE.__dict__, "n_channel_in": 1}),
        Publisher(source=f"StarDist 2D_versatile_fluo, {SOURCE}",
                  training_data="a subset of the DSB 2018 nuclei (fluorescence) data (as stated by the StarDist "
                                "authors)",
                  licence="BSD-3-Clause", citation=CITATION, authors=AUTHORS),
        "the publisher trained it on a subset of the DSB 2018 fluorescence nuclei images of various "
        "magnifications; the config states no pixel size, so give --mpp"),
}


def recognise(arch: Architecture) -> tuple[str | None, Publisher | None, str]:
    """``(name, publisher, note)`` of the published model whose architecture ``arch`` equals, else
    ``(None, None, "")``.  Only the configuration is compared: a retrained model of the same shape is
    recognised too, which the note and the card say."""
    for name, (known, publisher, note) in KNOWN_MODELS.items():
        if arch == known:
            return name, publisher, note
    return None, None, ""


# --------------------------------------------------------------------------------------------------
# The torch network
# --------------------------------------------------------------------------------------------------

def build_network(arch: Architecture):
    """A torch module computing StarDist 2D's ``(prob, dist)`` for ``arch``: NCHW float input with sides
    multiple of ``arch.divisor``; outputs ``prob`` (N,1,H/gy,W/gx) in [0,1] and ``dist`` (N,n_rays,H/gy,W/gx)
    in full-resolution pixels.  Weights are uninitialised until :func:`load_keras_weights`."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class StarDistUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.arch = arch
            self.specs = layer_specs(arch)
            self.convs = nn.ModuleList(
                nn.Conv2d(s.in_channels, s.out_channels, s.kernel, padding=(s.kernel[0] // 2, s.kernel[1] // 2))
                for s in self.specs)

        def forward(self, x):
            convs = iter(self.convs)
            relu = lambda t: F.relu(next(convs)(t))  # noqa: E731
            for pool in _stem_pools(arch.grid):
                for _ in range(arch.conv_per_depth):
                    x = relu(x)
                x = F.max_pool2d(x, pool)
            skips = []
            for _ in range(arch.depth):
                for _ in range(arch.conv_per_depth):
                    x = relu(x)
                skips.append(x)
                x = F.max_pool2d(x, arch.pool)
            for _ in range(arch.conv_per_depth):
                x = relu(x)
            for n in reversed(range(arch.depth)):
                x = torch.cat([F.interpolate(x, scale_factor=arch.pool, mode="nearest"), skips[n]], 1)
                for _ in range(arch.conv_per_depth):
                    x = relu(x)          # unet_last_activation is relu too
            if arch.conv_after_unet > 0:
                x = relu(x)
            return torch.sigmoid(next(convs)(x)), next(convs)(x)

    return StarDistUNet().eval().requires_grad_(False)


def load_keras_weights(net, path: Path, source: str = "config.json"):
    """Copy a Keras 2 HDF5 weights file into ``net`` (from :func:`build_network`), layer by layer in
    order as Keras ``load_weights`` does (so the stem's naming does not matter), kernels
    ``(kh,kw,in,out)`` -> ``(out,in,kh,kw)``; ModelError when the file does not fit.  Returns ``net``."""
    import torch

    layers = read_keras_weights(path)
    check_weights(layers, net.specs, path, source)
    with torch.no_grad():
        for conv, (_, kernel, bias) in zip(net.convs, layers):
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(bias))
    return net


# --------------------------------------------------------------------------------------------------
# The field network
# --------------------------------------------------------------------------------------------------

class StarDistNetwork:
    """A loaded StarDist 2D model: ``(Y, X, C)`` windows -> ``(Y, X)`` int32 instance labels.

    Normalisation maps each channel's ``lo``/``hi`` percentiles (``pmin``/``pmax``) to 0/1.  After
    :meth:`fit` they are the slide's (fixed for every window); without it each window's own are used
    (stardist's single-image behaviour, which makes the result depend on the tiling).
    """

    def __init__(self, net, arch: Architecture, thresholds: dict, normalization: dict, device: str = "cpu",
                 lo: np.ndarray | None = None, hi: np.ndarray | None = None, batch_size: int = 4) -> None:
        self.net = net
        self.arch = arch
        self.thresholds = {"prob": float(thresholds["prob"]), "nms": float(thresholds["nms"])}
        self.normalization = {**NORMALIZATION, **(normalization or {})}
        self.device = device
        self.lo = lo
        self.hi = hi
        self.batch_size = batch_size

    # -- normalisation ------------------------------------------------------------------------------
    def _as_yxc(self, window: np.ndarray) -> np.ndarray:
        """``window`` as (Y, X, C) with C the model's channels (a 2-D window counts as one channel)."""
        window = np.asarray(window)
        if window.ndim == 2:
            window = window[..., None]
        if window.ndim != 3 or window.shape[2] != self.arch.n_channel_in:
            got = f"shape {window.shape}"
            raise ModelError(f"this StarDist model takes (Y, X, {self.arch.n_channel_in}) windows but got {got}; "
                             f"read the slide with {self.arch.n_channel_in} channel(s) "
                             f"({'RGB' if self.arch.n_channel_in == 3 else 'one fluorescence channel'})")
        return window

    def _percentiles(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (lo, hi) percentiles of ``(N, C)`` pixels (over all channels together when the
        normalisation is not per channel)."""
        pmin, pmax = self.normalization["pmin"], self.normalization["pmax"]
        if self.normalization.get("per_channel", True):
            lo, hi = np.percentile(pixels, [pmin, pmax], axis=0)
        else:
            lo, hi = (np.full(pixels.shape[1], v) for v in np.percentile(pixels, [pmin, pmax]))
        return lo.astype(np.float32), hi.astype(np.float32)

    def fit(self, samples: list[np.ndarray]) -> "StarDistNetwork":
        """A copy normalising every window with the per-channel percentiles of all ``samples`` pooled (the
        slide's statistics), so that every tile is normalised alike."""
        if not samples:
            raise ModelError("StarDist fit got no sample windows; give at least one window of the slide")
        pixels = np.concatenate([self._as_yxc(s).reshape(-1, self.arch.n_channel_in) for s in samples])
        lo, hi = self._percentiles(pixels.astype(np.float32, copy=False))
        return StarDistNetwork(self.net, self.arch, self.thresholds, self.normalization, self.device,
                               lo, hi, self.batch_size)

    def normalize(self, window: np.ndarray) -> np.ndarray:
        """``(window - lo) / (hi - lo)`` per channel as float32 (the fitted lo/hi, else the window's own;
        a channel with hi == lo is only shifted)."""
        x = self._as_yxc(window).astype(np.float32)
        lo, hi = (self.lo, self.hi) if self.lo is not None else self._percentiles(x.reshape(-1, x.shape[2]))
        span = np.where(hi - lo > 0, hi - lo, 1.0).astype(np.float32)
        return (x - lo.astype(np.float32)) / span

    # -- network ------------------------------------------------------------------------------------
    def _pad(self, x: np.ndarray) -> np.ndarray:
        dy, dx = self.arch.divisor
        pads = ((0, -x.shape[0] % dy), (0, -x.shape[1] % dx), (0, 0))
        mode = "reflect" if min(x.shape[:2]) > 1 else "edge"
        return np.pad(x, pads, mode=mode)

    def maps(self, windows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The network's ``(prob (Y/gy, X/gx), dist (Y/gy, X/gx, n_rays))`` float32 maps for each window,
        normalised, reflect-padded to the network's divisor, run in batches of equal size, cropped."""
        import torch

        inputs = [self._pad(self.normalize(w)) for w in windows]
        shapes = [self._as_yxc(w).shape[:2] for w in windows]
        out: list = [None] * len(windows)
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape, []).append(i)
        gy, gx = self.arch.grid
        with torch.no_grad():
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start:start + self.batch_size]
                    tensor = torch.from_numpy(np.stack([inputs[i] for i in batch])).permute(0, 3, 1, 2)
                    prob, dist = self.net(tensor.to(self.device))
                    prob, dist = prob.cpu().numpy(), dist.cpu().numpy()
                    for j, i in enumerate(batch):
                        h, w = -(-shapes[i][0] // gy), -(-shapes[i][1] // gx)
                        out[i] = (np.ascontiguousarray(prob[j, 0, :h, :w]),
                                  np.ascontiguousarray(dist[j, :, :h, :w].transpose(1, 2, 0)))
        return out

    def _labels(self, prob: np.ndarray, dist: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        from stardist.geometry import polygons_to_label
        from stardist.nms import non_maximum_suppression

        dist = np.maximum(np.float32(1e-3), dist)
        points, probs, dists = non_maximum_suppression(dist, prob, grid=self.arch.grid,
                                                       prob_thresh=self.thresholds["prob"],
                                                       nms_thresh=self.thresholds["nms"])
        labels = polygons_to_label(dists, points, shape=tuple(shape), prob=probs)
        return np.asarray(labels, dtype=np.int32)

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Instance labels of each ``(Y, X, C)`` window: ``(Y, X)`` int32, 0 background, objects numbered
        1..n (StarDist's NMS at the model's thresholds, then its polygon rasterisation)."""
        windows = [self._as_yxc(w) for w in windows]
        return [self._labels(prob, dist, w.shape[:2]) for w, (prob, dist) in zip(windows, self.maps(windows))]

    def with_parameters(self, params: dict) -> "StarDistNetwork":
        """A copy with StarDist's thresholds set: ``prob_thresh`` (object probability) and ``nms_thresh``
        (overlap above which the less probable of two candidates is dropped), each in (0, 1)."""
        names = {"prob_thresh": "prob", "nms_thresh": "nms"}
        thresholds = dict(self.thresholds)
        for key, value in params.items():
            if key not in names:
                raise ModelError(f"StarDist has no parameter {key!r}; its parameters: {', '.join(names)}")
            try:
                value = float(value)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"StarDist parameter {key}={value!r} must be a number in (0, 1)") from exc
            if not 0 < value < 1:
                raise ModelError(f"StarDist parameter {key}={value} must be in (0, 1)")
            thresholds[names[key]] = value
        return StarDistNetwork(self.net, self.arch, thresholds, self.normalization, self.device, self.lo, self.hi,
                               self.batch_size)

    def describe(self) -> dict:
        """Normalisation (percentiles, and the fitted lo/hi per channel or None), thresholds and device."""
        fitted = self.lo is not None
        return {"normalization": {**self.normalization, "fitted": fitted,
                                  "lo": [float(v) for v in self.lo] if fitted else None,
                                  "hi": [float(v) for v in self.hi] if fitted else None},
                "thresholds": dict(self.thresholds), "device": str(self.device)}


# --------------------------------------------------------------------------------------------------
# The kind
# --------------------------------------------------------------------------------------------------

def _tile_size(arch: Architecture) -> int:
    divisor = math.lcm(*arch.divisor)
    return max(divisor, DEFAULT_TILE // divisor * divisor)


class StarDistKind:
    """The StarDist 2D kind: imports a model folder (or its zip) and loads installed packages."""

    name = NAME

    def inspect(self, path: Path) -> Inspected:
        """Check ``path`` (model folder, a file in it, or its .zip) holds a complete, intact StarDist 2D model:
        a supported config.json, thresholds.json, and a Keras weights file whose every layer has the shape the
        config implies.  Returns what to copy into a package (``weights_best.h5`` from weights_best.h5, else
        weights_last.h5) and the runtime settings; ModelError otherwise.  A zip is extracted into a new
        temporary folder (``dlcore-stardist-*``) that is left for the caller, since ``files`` point into it."""
        folder = model_folder(Path(path))
        config, arch = read_config(folder)
        thresholds = read_thresholds(folder)
        weights = find_weights(folder)
        check_weights(read_keras_weights(weights), layer_specs(arch), weights, str(folder / "config.json"))
        known, publisher, note = recognise(arch)
        runtime = {"config": config, "thresholds": thresholds, "normalization": dict(NORMALIZATION),
                   "weights_source": weights.name}
        if known:
            runtime["recognised_as"] = known
            runtime["note"] = (f"configuration of the published StarDist {known} ({note}); recognised by "
                               "configuration only: a model retrained with the same configuration looks alike")
        kind = "fluorescence" if arch.n_channel_in == 1 else f"{arch.n_channel_in}-channel"
        return Inspected(
            kind=NAME,
            files={"config.json": folder / "config.json", "thresholds.json": folder / "thresholds.json",
                   PACKAGE_WEIGHTS: weights},
            weights_file=PACKAGE_WEIGHTS, weights_format="keras_hdf5", in_channels=arch.n_channel_in, mpp=None,
            classes=("nucleus",), tile_size=_tile_size(arch), halo=DEFAULT_HALO, runtime=runtime,
            publisher=publisher,
            description=(f"StarDist 2D {known}" if known else f"StarDist 2D {kind} model")
                        + f" ({arch.n_rays} rays, grid {arch.grid[0]}x{arch.grid[1]}), run with torch",
            scratch=next((p for p in (folder, *folder.parents) if p.name.startswith("dlcore-stardist-")), None))

    def load(self, folder: Path, cfg: dict, device: str = "cpu") -> StarDistNetwork:
        """The network of an installed package: the architecture from ``cfg["runtime"]["config"]``, the weights
        from ``folder/weights_best.h5``, thresholds and normalisation from ``cfg["runtime"]``."""
        runtime = (cfg or {}).get("runtime") or {}
        if "config" not in runtime or "thresholds" not in runtime:
            raise ModelError(f"the package {folder} has no StarDist runtime settings (config, thresholds) in its "
                             "config.dlcore.runtime; import the model again with dlcore")
        arch = check_config(runtime["config"], f"{folder} (config.dlcore.runtime.config)")
        weights = Path(folder) / PACKAGE_WEIGHTS
        if not weights.is_file():
            raise ModelError(f"{weights} is missing from the installed package; install the model again")
        net = load_keras_weights(build_network(arch), weights, "config.dlcore.runtime.config")
        try:
            net = net.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise ModelError(f"cannot run the StarDist model on device {device!r} ({exc}); use --device cpu") from None
        return StarDistNetwork(net, arch, runtime["thresholds"], runtime.get("normalization") or {}, device)


KIND = StarDistKind()
