"""Turning samples into network inputs and targets (numpy, no torch).

- :func:`normalize`: the input normalisation recorded in the package;
- :func:`instance_targets`: instance ids → (0 background, 1 foreground interior, 2 boundary), and
  :func:`two_channel_targets` → the network's (foreground, boundary) sigmoid targets;
- :func:`random_crops` / :func:`grid_crops`: training tiles and deterministic validation tiles.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(image: np.ndarray, kind: str = "scale_0_1") -> np.ndarray:
    """``(Y, X, C)`` pixels → float32 ``(C, Y, X)`` network input.

    ``scale_0_1``: integers divided by their dtype's maximum (uint8 / 255), floats kept;
    ``percentile``: per channel, 1st → 0 and 99.8th → 1; ``imagenet``: scale_0_1 then ImageNet mean/std.
    """
    if kind == "percentile":
        x = image.astype(np.float32)
        lo = np.percentile(x, 1, axis=(0, 1))
        hi = np.percentile(x, 99.8, axis=(0, 1))
        x = (x - lo) / np.maximum(hi - lo, 1e-6)
    else:
        x = image.astype(np.float32)
        if np.issubdtype(image.dtype, np.integer):
            x /= float(np.iinfo(image.dtype).max)
        if kind == "imagenet":
            x = (x - IMAGENET_MEAN[: x.shape[-1]]) / IMAGENET_STD[: x.shape[-1]]
    return np.ascontiguousarray(np.moveaxis(x, -1, 0))


def instance_targets(labels: np.ndarray, *, boundary_width: int = 2) -> np.ndarray:
    """Three-class targets of an instance label image: 0 background, 1 interior, 2 boundary.

    The boundary is the inner rim (``boundary_width`` pixels) of every object, so touching objects
    are separated by boundary pixels and each interior is one connected seed.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    target = (labels > 0).astype(np.uint8)
    edge = find_boundaries(labels, mode="inner")
    if boundary_width > 1:
        edge = ndi.binary_dilation(edge, iterations=boundary_width - 1) & (labels > 0)
    target[edge] = 2
    return target


def two_channel_targets(target: np.ndarray) -> np.ndarray:
    """``(2, Y, X)`` float32 (foreground incl. boundary, boundary) from a 0/1/2 target map."""
    return np.stack([target > 0, target == 2]).astype(np.float32)


def pad_to(image: np.ndarray, height: int, width: int, *, fill=0) -> np.ndarray:
    """Pad the first two axes at the end up to at least ``height`` x ``width`` (reflect for images)."""
    py, px = max(height - image.shape[0], 0), max(width - image.shape[1], 0)
    if not (py or px):
        return image
    pad = [(0, py), (0, px)] + [(0, 0)] * (image.ndim - 2)
    if image.ndim == 3:
        return np.pad(image, pad, mode="reflect" if min(image.shape[:2]) > max(py, px) else "edge")
    return np.pad(image, pad, constant_values=fill)


def random_crops(image: np.ndarray, target: np.ndarray | None, ids: np.ndarray | None, size: int,
                 rng: np.random.Generator):
    """The same random ``size`` x ``size`` crop of an image, its target map and its instance ids (each
    padded first when smaller: the image by reflection, the others with 0); None stays None."""
    image = pad_to(image, size, size)
    target = None if target is None else pad_to(target, size, size)
    ids = None if ids is None else pad_to(ids, size, size)
    y = int(rng.integers(0, image.shape[0] - size + 1))
    x = int(rng.integers(0, image.shape[1] - size + 1))
    window = (slice(y, y + size), slice(x, x + size))
    return image[window], None if target is None else target[window], None if ids is None else ids[window]


def resize_tile(image: np.ndarray, target: np.ndarray | None, size: int):
    """``image`` (linear) and ``target`` (nearest) resized to ``size`` x ``size``."""
    import cv2

    out = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_LINEAR)
    out = out.reshape(size, size, -1).astype(image.dtype, copy=False)
    if target is None:
        return out, None
    return out, cv2.resize(np.ascontiguousarray(target.astype(np.uint8 if target.max() < 256 else np.int32)),
                           (size, size), interpolation=cv2.INTER_NEAREST).astype(target.dtype)


def whole_image_normalized(image: np.ndarray, kind: str) -> np.ndarray:
    """For ``percentile``: the image scaled by its own whole-image percentiles, as float32 ``(Y, X, C)``
    (crops of it then need no further scaling); any other kind: the image itself."""
    if kind != "percentile":
        return image
    return np.ascontiguousarray(np.moveaxis(normalize(image, "percentile"), 0, -1))


def grid_crops(image: np.ndarray, mask: np.ndarray | None, size: int, *, limit: int = 64):
    """Non-overlapping ``size`` tiles covering the image (at most ``limit``, evenly picked)."""
    image = pad_to(image, size, size)
    mask = None if mask is None else pad_to(mask, size, size)
    ys = range(0, image.shape[0] - size + 1, size)
    xs = range(0, image.shape[1] - size + 1, size)
    corners = [(y, x) for y in ys for x in xs]
    if len(corners) > limit:
        corners = [corners[i] for i in np.linspace(0, len(corners) - 1, limit).astype(int)]
    return [(image[y:y + size, x:x + size], None if mask is None else mask[y:y + size, x:x + size])
            for y, x in corners]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop (padded first when smaller)."""
    image = pad_to(image, size, size)
    y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[y:y + size, x:x + size]
