"""The pixel classifier (features + random forest) as one pure-torch graph, for the TorchScript export.

This module owns the torch twin of dlcore's pixel classifier: :class:`PixelFeatures` reproduces
:func:`dlcore.pixels.features.compute_features` and :class:`TorchForest` reproduces
:meth:`dlcore.pixels.forest.CompiledForest.predict_proba`; :class:`PixelForestModule` chains them into a
graph that takes raw pixel values ``(B, C, Y, X)`` and returns class probabilities ``(B, classes, Y, X)``.
:func:`export_torchscript` scripts it into the ``weights_torchscript.pt`` of a bioimage.io package
(:mod:`dlcore.pixels.package`), so that other tools (bioimageio.core, deepImageJ-style consumers) and a
GPU can run the classifier without dlcore.  dlcore itself never runs this graph: its numpy/OpenCV
features and scikit-learn's compiled trees are faster on a CPU (about twice: a 512 x 512 RGB image with
96 features and 32 trees takes 0.76 s here against 0.42 s, on two cores).

The math is the numpy path's, step for step:

- input channels: raw values times ``float32(1 / max_value)``; optical density by the same 256-entry
  table (``-log10(max(I, 1) / 255)``, indexed by the value rounded and clamped to 0-255); stains as
  ``od @ inv(RGB_FROM_HED)`` in float32;
- filters: the same sampled kernels (:func:`~dlcore.pixels.features.gaussian_kernels`), applied as
  OpenCV's ``sepFilter2D`` applies them: a correlation (the kernel is not flipped, so the sign of the
  derivatives is OpenCV's), after mirroring the plane with the edge pixel repeated (``BORDER_REFLECT``,
  numpy's ``symmetric``) by an index gather with :func:`dlcore.io.slide.reflect_index`'s formula, which
  holds for any pad size, even one larger than the image.  Each 1-D pass is a sum of shifted row blocks
  along y; passes along x run on the transposed plane, so the features are computed transposed and the
  forest, which does not mind the pixel order, runs on them before one final transpose;
- the structure tensor: ``gx``, ``gy`` of the plane mirrored by both radii, their products smoothed at
  the outer scale ``max(0.5 sigma, 0.3)`` and cropped (as :func:`~dlcore.pixels.features._structure_tensor`);
- eigenvalues ``half_trace +- sqrt(((a - c) / 2)^2 + b^2)`` with the numpy path's argument order;
- the forest: every tree traversed at once (one current node per pixel and tree, ``depth`` steps; leaves
  point to themselves; siblings renumbered adjacent, :func:`sibling_order`), thresholds rounded down to
  float32 so that a float32 comparison takes exactly scikit-learn's float32-against-float64 decision
  (:func:`float32_thresholds`), and the mean of the leaves' class fractions.

Every step is a float32 torch op, so features agree with OpenCV's to float rounding (about 1e-6);
a pixel whose feature lies within that rounding of a split threshold may take the other branch in one
tree, so at such rare pixels the probabilities differ by a multiple of ``1 / trees``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import List

import numpy as np
import torch
from torch import Tensor, nn

from dlcore.errors import ModelError, ParameterError
from dlcore.pixels.features import (DOG_RATIO, MIN_SIGMA, OUTER_RATIO, RGB_FROM_HED, FeatureSpec,
                                    gaussian_kernels, kernel_radius, optical_density_u8)
from dlcore.pixels.forest import ForestArrays

# Pixels x trees per forest step: on a CPU small enough for the caches (4096 pixels of 32 trees: measured
# twice as fast as 65536), on an accelerator large enough to fill it (~30 bytes each: 250 MB at most).
CPU_CHUNK = 2 ** 17
DEVICE_CHUNK = 2 ** 23


def mirror_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Source index of each of ``size + 2 pad`` positions ``-pad .. size + pad - 1`` under mirroring with
    the edge pixel repeated (period ``2 size``, :func:`dlcore.io.slide.reflect_index`).

    Parameters
    ----------
    size : the image's length along the axis.
    pad : how many positions to add on each side (any size, even beyond ``size``).
    device : where the index lives.

    Returns
    -------
    Tensor
        int64 indices into ``[0, size)``.
    """
    coords = torch.arange(-pad, size + pad, device=device)
    period = 2 * size
    folded = torch.remainder(coords, period)
    return torch.where(folded >= size, period - 1 - folded, folded)


def mirror_pad(x: Tensor, pad: int) -> Tensor:
    """``x`` ``(..., Y, X)`` mirrored by ``pad`` pixels on every side (numpy's ``symmetric``, any ``pad``)."""
    if pad == 0:
        return x
    x = x.index_select(-2, mirror_index(x.shape[-2], pad, x.device))
    return x.index_select(-1, mirror_index(x.shape[-1], pad, x.device))


def crop(x: Tensor, margin: int) -> Tensor:
    """``x`` ``(..., Y, X)`` without ``margin`` pixels on every side."""
    if margin == 0:
        return x
    return x[..., margin:x.shape[-2] - margin, margin:x.shape[-1] - margin]


def correlate_y(x: Tensor, kernel: List[float]) -> Tensor:
    """Valid correlation of ``x`` ``(..., Y, X)`` with the 1-D ``kernel`` along y, not flipped (as OpenCV's
    ``sepFilter2D``): ``out[y] = sum_i kernel[i] x[y + i]``, ``Y - len(kernel) + 1`` rows.

    A sum of shifted row blocks: on a CPU ten times faster than ``conv2d`` with one input channel.
    """
    rows = x.shape[-2] - len(kernel) + 1
    out = x[..., 0:rows, :] * kernel[0]
    for i in range(1, len(kernel)):
        out.add_(x[..., i:i + rows, :], alpha=kernel[i])
    return out


def transpose(x: Tensor) -> Tensor:
    """``x`` ``(..., Y, X)`` as a contiguous ``(..., X, Y)``."""
    return x.transpose(-1, -2).contiguous()


def eigenvalues(a: Tensor, b: Tensor, c: Tensor) -> List[Tensor]:
    """Eigenvalues (large, small) of the symmetric 2x2 matrices ``[[a, b], [b, c]]``, elementwise, computed
    as :func:`dlcore.pixels.features._eigenvalues` computes them."""
    half_trace = (a + c) * 0.5
    half_diff = (a - c) * 0.5
    root = torch.sqrt(half_diff * half_diff + b * b)
    return [half_trace + root, half_trace - root]


def _taps(values: np.ndarray) -> List[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


def _kernel(values: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


class ScaleFeatures(nn.Module):
    """The features of one scale ``sigma``, for planes ``(N, 1, Y + 2 R, X + 2 R)`` already mirrored by
    ``R`` (the spec's :meth:`~dlcore.pixels.features.FeatureSpec.radius`, at least every radius used here).

    A separable filter with kernels ``kx``, ``ky`` is computed as a correlation along y with ``ky``, a
    transpose, and a correlation along y with ``kx``: every pass runs along contiguous rows, and the
    features come out transposed, ``(N, 1, X, Y)`` (:meth:`forward`).

    Parameters
    ----------
    sigma : the scale, pixels.
    features : feature names in :data:`~dlcore.pixels.features.FEATURES` order.
    pad : ``R``, the mirroring of the planes :meth:`forward` receives.
    """

    def __init__(self, sigma: float, features: tuple[str, ...], pad: int) -> None:
        super().__init__()
        g0, g1, g2 = gaussian_kernels(sigma)
        narrow_sigma = DOG_RATIO * sigma
        narrow = gaussian_kernels(narrow_sigma)[0] if narrow_sigma >= 0.1 else np.ones(1, np.float32)
        outer_sigma = max(OUTER_RATIO * sigma, MIN_SIGMA)
        self.g0: List[float] = _taps(g0)
        self.g1: List[float] = _taps(g1)
        self.g2: List[float] = _taps(g2)
        self.narrow: List[float] = _taps(narrow)
        self.outer: List[float] = _taps(gaussian_kernels(outer_sigma)[0])
        self.kinds: List[str] = list(features)
        self.pad = int(pad)
        self.radius = kernel_radius(sigma)
        self.narrow_radius = len(narrow) // 2
        self.outer_radius = kernel_radius(outer_sigma) if "structure_tensor" in features else 0
        self.need_smooth = bool({"gaussian", "dog"} & set(features))
        self.need_first = bool({"gradient", "structure_tensor"} & set(features))
        self.need_second = bool({"log", "hessian"} & set(features))
        self.need_tensor = "structure_tensor" in features
        needed = self.radius + self.outer_radius
        if needed > pad:
            raise ParameterError(f"sigma={sigma} needs a mirror of {needed} pixels, the planes have {pad}")

    def _smooth_both(self, x: Tensor, kernel: List[float]) -> Tensor:
        """``x`` smoothed with ``kernel`` along y then x, transposed (valid)."""
        return correlate_y(transpose(correlate_y(x, kernel)), kernel)

    def _tensor(self, padded: Tensor) -> List[Tensor]:
        """``[large, small, gx, gy]`` transposed: the structure tensor's eigenvalues and the first derivatives.

        ``gx`` and ``gy`` come from the plane mirrored by both radii, so their products are those of the
        mirrored image near the border (as :func:`~dlcore.pixels.features._structure_tensor`).
        """
        q = crop(padded, self.pad - self.radius - self.outer_radius)
        gx_t = correlate_y(transpose(correlate_y(q, self.g0)), self.g1)  # still mirrored by outer_radius
        gy_t = correlate_y(transpose(correlate_y(q, self.g1)), self.g0)
        gx, gy = transpose(gx_t), transpose(gy_t)
        sxx = self._smooth_both(gx * gx, self.outer)
        sxy = self._smooth_both(gx * gy, self.outer)
        syy = self._smooth_both(gy * gy, self.outer)
        large_small = eigenvalues(sxx, sxy, syy)
        return [large_small[0], large_small[1], crop(gx_t, self.outer_radius), crop(gy_t, self.outer_radius)]

    def forward(self, padded: Tensor) -> List[Tensor]:
        """The scale's feature planes, transposed ``(N, 1, X, Y)``, in :meth:`FeatureSpec.names` order."""
        p = crop(padded, self.pad - self.radius)
        empty = torch.empty(0, device=padded.device)
        smooth, gx, gy, gxx, gyy, gxy = empty, empty, empty, empty, empty, empty
        along_y0 = empty
        if self.need_smooth or self.need_second or (self.need_first and not self.need_tensor):
            along_y0 = transpose(correlate_y(p, self.g0))  # smoothed along y, transposed
        if self.need_smooth:
            smooth = correlate_y(along_y0, self.g0)
        tensor: List[Tensor] = []
        if self.need_tensor:
            tensor = self._tensor(padded)
            gx, gy = tensor[2], tensor[3]
        elif self.need_first:
            gx = correlate_y(along_y0, self.g1)
            gy = correlate_y(transpose(correlate_y(p, self.g1)), self.g0)
        if self.need_second:
            along_y1 = transpose(correlate_y(p, self.g1))
            gxx = correlate_y(along_y0, self.g2)
            gyy = correlate_y(transpose(correlate_y(p, self.g2)), self.g0)
            gxy = correlate_y(along_y1, self.g1)
        out: List[Tensor] = []
        for kind in self.kinds:
            if kind == "gaussian":
                out.append(smooth)
            elif kind == "log":
                out.append(gxx + gyy)
            elif kind == "gradient":
                out.append(torch.sqrt(gx * gx + gy * gy))
            elif kind == "dog":
                out.append(smooth - self._smooth_both(crop(p, self.radius - self.narrow_radius), self.narrow))
            elif kind == "structure_tensor":
                out.extend(tensor[:2])
            else:  # hessian
                out.extend(eigenvalues(gyy, gxy, gxx))
        return out


class PixelFeatures(nn.Module):
    """:func:`~dlcore.pixels.features.compute_features` in torch: raw ``(B, C, Y, X)`` -> ``(B, F, Y, X)``.

    Parameters
    ----------
    spec : the features.
    in_channels : the image's channels ``C`` (3 for ``od`` and ``hed``).
    """

    def __init__(self, spec: FeatureSpec, in_channels: int) -> None:
        super().__init__()
        if spec.colour in ("od", "hed") and in_channels != 3:
            raise ParameterError(f"colour={spec.colour!r} needs 3-channel RGB images, not {in_channels} channel(s)")
        self.colour = spec.colour
        self.in_channels = int(in_channels)
        self.n_features = spec.count(in_channels)
        self.pad = spec.radius()
        self.register_buffer("scale", torch.tensor(float(np.float32(1.0 / spec.max_value)), dtype=torch.float32))
        self.register_buffer("od_table", _kernel(optical_density_u8(np.arange(256, dtype=np.uint8))))
        self.register_buffer("hed_from_rgb", _kernel(np.linalg.inv(RGB_FROM_HED)))
        self.scales = nn.ModuleList([ScaleFeatures(s, spec.features, self.pad) for s in spec.scales])

    def planes(self, x: Tensor) -> Tensor:
        """The ``(B, C', Y, X)`` float32 planes the features are computed on (raw scaled, OD or stains)."""
        if self.colour == "raw":
            return x.to(torch.float32) * self.scale
        index = torch.clamp(torch.round(x), 0.0, 255.0).to(torch.int64)
        od = self.od_table[index]
        if self.colour == "od":
            return od
        return torch.einsum("bcyx,cd->bdyx", od, self.hed_from_rgb)

    @torch.jit.export
    def transposed(self, x: Tensor) -> Tensor:
        """The feature planes of raw pixel values ``x`` ``(B, C, Y, X)``, transposed: ``(B, F, X, Y)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, Y, X) tensor, got {list(x.shape)}")
        planes = self.planes(x)
        b, c, h, w = planes.shape
        padded = mirror_pad(planes.reshape(b * c, 1, h, w), self.pad)
        out: List[Tensor] = []
        for scale in self.scales:
            out.extend(scale(padded))
        return torch.cat(out, dim=1).reshape(b, self.n_features, w, h)

    def forward(self, x: Tensor) -> Tensor:
        """The ``(B, F, Y, X)`` float32 feature planes of raw pixel values ``x`` ``(B, C, Y, X)``."""
        return transpose(self.transposed(x))


def float32_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold.

    scikit-learn compares float32 features against float64 thresholds; for a float32 ``x``,
    ``x <= t`` holds exactly when ``x <= round_down_float32(t)``, so a float32 comparison with these
    thresholds takes scikit-learn's decisions bit for bit.
    """
    t64 = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(over="ignore"):
        t32 = t64.astype(np.float32)
    above = t32.astype(np.float64) > t64
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


FEATURE_BITS = 20  # a node's code: first child << FEATURE_BITS | split feature


def sibling_order(arrays: ForestArrays) -> tuple[np.ndarray, np.ndarray]:
    """A renumbering of the forest's nodes, level by level, that puts every right child just after its left.

    Returns
    -------
    new_id : ``(nodes,)`` the new index of every (global) node; tree ``t``'s root becomes ``t``.
    old_id : ``(nodes,)`` its inverse.
    """
    offsets = np.asarray(arrays.offsets, dtype=np.int64)
    base = np.repeat(offsets[:-1], np.diff(offsets))
    left = np.where(arrays.left < 0, -1, base + arrays.left)
    right = np.where(arrays.right < 0, -1, base + arrays.right)
    new_id = np.full(int(offsets[-1]), -1, dtype=np.int64)
    frontier = offsets[:-1].copy()
    new_id[frontier] = np.arange(arrays.n_trees)
    free = arrays.n_trees
    while frontier.size:
        inner = frontier[left[frontier] >= 0]
        pairs = np.stack([left[inner], right[inner]], axis=1).reshape(-1)
        new_id[pairs] = free + np.arange(pairs.size)
        free += pairs.size
        frontier = pairs
    if free != new_id.size or np.any(new_id < 0):
        raise ModelError("the forest has nodes that no root reaches")
    old_id = np.empty_like(new_id)
    old_id[new_id] = np.arange(new_id.size)
    return new_id, old_id


class TorchForest(nn.Module):
    """:meth:`~dlcore.pixels.forest.CompiledForest.predict_proba` in torch: ``(N, F)`` rows -> ``(N, classes)``.

    Every tree is traversed at once: per pixel and tree a current node, ``depth`` times replaced by its
    next node.  Nodes are renumbered so that siblings are adjacent (:func:`sibling_order`): the next node is
    ``first_child + (x[feature] > threshold)``, one look-up of a packed code (first child and feature) and
    one of the threshold per step.  A leaf is its own first child with an infinite threshold, so the nodes
    stop at the leaves.  Thresholds are :func:`float32_thresholds`, so the decisions are scikit-learn's.
    Pixels go a chunk at a time (:meth:`chunk_pixels`), so memory stays bounded.

    Parameters
    ----------
    arrays : the forest.
    chunk : pixels per step; by default :data:`CPU_CHUNK` or, on an accelerator, :data:`DEVICE_CHUNK`
        pixel-tree pairs.
    """

    def __init__(self, arrays: ForestArrays, chunk: int | None = None) -> None:
        super().__init__()
        arrays.check()
        if arrays.n_features >= 2 ** FEATURE_BITS:
            raise ModelError(f"the forest takes {arrays.n_features} features; at most {2 ** FEATURE_BITS - 1}")
        new_id, old_id = sibling_order(arrays)
        offsets = np.asarray(arrays.offsets, dtype=np.int64)
        base = np.repeat(offsets[:-1], np.diff(offsets))[old_id]
        leaf = np.asarray(arrays.left)[old_id] < 0
        first = np.where(leaf, np.arange(new_id.size), new_id[np.where(leaf, 0, base + arrays.left[old_id])])
        feature = np.where(leaf, 0, arrays.feature[old_id]).astype(np.int64)
        threshold = np.where(leaf, np.float32(np.inf), float32_thresholds(arrays.threshold[old_id]))
        self.register_buffer("codes", torch.from_numpy((first.astype(np.int64) << FEATURE_BITS) | feature))
        self.register_buffer("threshold", torch.from_numpy(threshold.astype(np.float32)))
        self.register_buffer("values", torch.from_numpy(np.asarray(arrays.values, dtype=np.float32)[old_id]))
        self.n_trees = int(arrays.n_trees)
        self.depth = int(np.max(arrays.depths))
        self.n_features = int(arrays.n_features)
        self.n_classes = int(arrays.n_classes)
        self.cpu_chunk = int(chunk) if chunk else max(1, CPU_CHUNK // self.n_trees)
        self.device_chunk = int(chunk) if chunk else max(1, DEVICE_CHUNK // self.n_trees)
        self.feature_bits = FEATURE_BITS

    @torch.jit.export
    def chunk_pixels(self, device: torch.device) -> int:
        """How many pixels one step takes on ``device``."""
        return self.cpu_chunk if device.type == "cpu" else self.device_chunk

    def leaves(self, rows: Tensor) -> Tensor:
        """The leaf of every tree, ``(N * trees,)`` node indices (pixel-major), for ``rows`` ``(N, F)``."""
        n = rows.shape[0]
        node = torch.arange(self.n_trees, device=rows.device).repeat(n)
        mask = (1 << self.feature_bits) - 1
        for _ in range(self.depth):
            code = torch.take(self.codes, node)
            value = torch.gather(rows, 1, (code & mask).view(n, self.n_trees)).view(-1)
            node = (code >> self.feature_bits).add_(value > torch.take(self.threshold, node))
        return node

    def forward(self, rows: Tensor) -> Tensor:
        """Class probabilities ``(N, classes)`` float32: the mean over trees of the leaves' class fractions."""
        if rows.dim() != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"the forest takes (N, {self.n_features}) rows, got {list(rows.shape)}")
        out = torch.empty(rows.shape[0], self.n_classes, dtype=torch.float32, device=rows.device)
        step = self.chunk_pixels(rows.device)
        for start in range(0, rows.shape[0], step):
            part = rows[start:start + step].contiguous()
            leaves = self.values.index_select(0, self.leaves(part))
            out[start:start + part.shape[0]] = leaves.view(part.shape[0], self.n_trees, self.n_classes).mean(dim=1)
        return out


class PixelForestModule(nn.Module):
    """The pixel classifier as one graph: raw pixel values ``(B, C, Y, X)`` float32 (e.g. 0-255, exactly as
    read from the image, no normalisation) -> class probabilities ``(B, classes, Y, X)`` float32.

    Build it with :meth:`build`; it scripts with ``torch.jit.script`` for any ``Y``, ``X`` and batch.

    Parameters
    ----------
    spec : the features the forest was trained on.
    arrays : the forest.
    in_channels : the image's channels.
    chunk : pixels per forest step (by default chosen by the device, :class:`TorchForest`).
    """

    def __init__(self, spec: FeatureSpec, arrays: ForestArrays, in_channels: int, chunk: int | None = None) -> None:
        super().__init__()
        self.features = PixelFeatures(spec, in_channels)
        self.forest = TorchForest(arrays, chunk)
        if self.features.n_features != self.forest.n_features:
            raise ModelError(f"the forest takes {self.forest.n_features} features per pixel; the feature settings "
                             f"give {self.features.n_features} for {in_channels} channel(s)")
        self.n_classes = self.forest.n_classes

    @classmethod
    def build(cls, spec: FeatureSpec, arrays: ForestArrays, in_channels: int) -> "PixelForestModule":
        """The module of ``spec`` and ``arrays`` for images of ``in_channels`` channels, in eval mode.

        Raises
        ------
        ModelError
            when the forest does not take the features' count; ParameterError on a bad colour/channel pair.
        """
        return cls(spec, arrays, in_channels).eval()

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, classes, Y, X)`` of raw pixel values ``x`` ``(B, C, Y, X)``."""
        planes = self.features.transposed(x)  # (B, F, X, Y): the forest does not mind the pixel order
        b, f, w, h = planes.shape
        flat = planes.reshape(b, f, w * h)
        out = torch.empty(b, self.n_classes, w * h, dtype=torch.float32, device=x.device)
        step = self.forest.chunk_pixels(x.device)
        for i in range(b):
            for start in range(0, w * h, step):
                rows = flat[i, :, start:start + step].t()
                out[i, :, start:start + rows.shape[0]] = self.forest(rows).t()
        return transpose(out.reshape(b, self.n_classes, w, h))


def torch_features(x: Tensor, spec: FeatureSpec) -> Tensor:
    """:func:`~dlcore.pixels.features.compute_features` in torch, for raw values ``x`` ``(B, C, Y, X)`` or
    ``(C, Y, X)``; returns ``(B, F, Y, X)`` (or ``(F, Y, X)``) float32."""
    single = x.dim() == 3
    batch = x[None] if single else x
    with torch.no_grad():
        out = PixelFeatures(spec, batch.shape[1])(batch)
    return out[0] if single else out


def script_module(spec: FeatureSpec, arrays: ForestArrays, in_channels: int) -> torch.jit.ScriptModule:
    """:meth:`PixelForestModule.build` compiled with ``torch.jit.script`` (its deprecation warning silenced:
    bioimage.io's ``torchscript`` weights format needs it)."""
    module = PixelForestModule.build(spec, arrays, in_channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def export_torchscript(spec: FeatureSpec, arrays: ForestArrays, in_channels: int, path: str | Path) -> Path:
    """Script the classifier, save it to ``path``, reload it with ``torch.jit.load`` and check that it runs.

    Parameters
    ----------
    spec, arrays, in_channels : as :meth:`PixelForestModule.build`.
    path : the ``.pt`` file to write.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ModelError
        when the reloaded graph fails, or its output is not ``(1, classes, Y, X)`` probabilities.
    """
    path = Path(path)
    scripted = script_module(spec, arrays, in_channels)
    scripted.save(str(path))
    _check_reloaded(path, in_channels, arrays.n_classes, spec.max_value)
    return path


def _check_reloaded(path: Path, in_channels: int, n_classes: int, max_value: float) -> None:
    """Raise ModelError unless the saved graph loads and maps a small ramp to ``(1, classes, 7, 9)`` probabilities."""
    ramp = torch.linspace(0.0, min(float(max_value), 255.0), 7 * 9 * in_channels).reshape(1, in_channels, 7, 9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            out = loaded(ramp)
    except Exception as exc:  # noqa: BLE001 - any failure of the saved graph is the export's failure
        raise ModelError(f"the TorchScript export {path} does not run: {exc}") from exc
    sums = out.sum(dim=1)
    if tuple(out.shape) != (1, n_classes, 7, 9) or not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)):
        raise ModelError(f"the TorchScript export {path} gives {tuple(out.shape)} outputs that are not probabilities")
