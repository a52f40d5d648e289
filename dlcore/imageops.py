"""Small array operations shared by the tasks and the tissue detector."""
from __future__ import annotations

import numpy as np


def remove_small(image: np.ndarray, min_size: int) -> np.ndarray:
    """Remove connected objects with fewer than ``min_size`` pixels.

    A boolean ``image`` is labelled first (8-connectivity) and a boolean mask comes back; an integer
    label image comes back with the small labels set to 0 (the other ids are kept).
    """
    from scipy import ndimage as ndi

    if image.dtype == bool:
        labels, _ = ndi.label(image, structure=np.ones((3, 3), bool))
        return remove_small(labels, min_size) > 0
    if min_size <= 1:
        return image
    return _remove_labels(image, lambda sizes: sizes < min_size)


def remove_large(labels: np.ndarray, max_size: int) -> np.ndarray:
    """An integer label image with the labels of more than ``max_size`` pixels set to 0 (others kept)."""
    return _remove_labels(labels, lambda sizes: sizes > max_size)


def _remove_labels(labels: np.ndarray, drop) -> np.ndarray:
    """``labels`` with the ids whose pixel counts ``drop(sizes)`` marks set to 0 (a copy only if any is)."""
    if labels.max() == 0:
        return labels
    dropped = drop(np.bincount(labels.ravel()))
    dropped[0] = False
    if not dropped.any():
        return labels
    out = labels.copy()
    out[dropped[labels]] = 0
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: the same pixels as ``scipy.ndimage.binary_fill_holes(mask)``.

    A hole is a background region that does not reach the image's edge through 4-connected background
    pixels.  One labelling of the background replaces scipy's iterated dilation from the edge (about 5×
    faster on a 1168² tile).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        return mask.copy()
    background, count = ndi.label(~mask)
    if count == 0:
        return mask.copy()
    reaches_edge = np.zeros(count + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        reaches_edge[edge] = True
    reaches_edge[0] = False
    return ~reaches_edge[background]


def grey_opening_square(image: np.ndarray, radius: int) -> np.ndarray:
    """The grey-level opening of a 2-D float32 image by a ``(2 radius + 1)²`` square: the same values as
    ``scipy.ndimage.grey_opening(image, size=(2 radius + 1, 2 radius + 1))``.

    OpenCV's erosion and dilation ignore pixels beyond the edge, which for a minimum or maximum is what
    scipy's default mirror border gives; they run in time independent of the radius.
    """
    import cv2

    image = np.ascontiguousarray(image, dtype=np.float32)
    if radius <= 0:
        return image.copy()
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(cv2.erode(image, square), square)


def label_peaks(image: np.ndarray, labels: np.ndarray, min_distance: int,
                threshold: float | None = None) -> np.ndarray:
    """The local maxima of ``image`` within each labelled object, as an ``(N, 2)`` array of ``(y, x)``.

    Promises the same coordinates in the same order as ``skimage.feature.peak_local_max(image,
    min_distance=min_distance, threshold_abs=threshold, labels=labels, exclude_border=False)``: for each
    label in increasing order, the pixels above ``threshold`` (default: the image's minimum) that are
    the maximum of their ``(2 min_distance + 1)²`` window among the label's own pixels, highest first,
    keeping a pixel only if no kept pixel of the same label lies within Chebyshev distance
    ``min_distance - 1``; an object whose pixels are all equal to their window's maximum has its
    isolated pixels instead.  scikit-image builds a k-d tree per label; this greedy pass over the few
    candidates of each object is about 10× faster on nuclei tiles.
    """
    from scipy import ndimage as ndi

    image = np.asarray(image)
    threshold = image.min() if threshold is None else threshold
    lowest = np.finfo(image.dtype).min if np.issubdtype(image.dtype, np.floating) else np.iinfo(image.dtype).min
    size = 2 * min_distance + 1
    window_max = _window_maximum(image.dtype, size)
    found = []
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        own = labels[box] == index + 1
        values = np.where(own, image[box], lowest)
        if size > 1 and values.size > 1:
            peak = values == window_max(values)
            if peak[own].all():
                peak = own ^ ndi.binary_opening(own)
            peak &= values > threshold
        else:
            peak = values > threshold
        ys, xs = np.nonzero(peak)
        order = np.argsort(-values[ys, xs], kind="stable")
        coords = np.stack([ys[order], xs[order]], axis=1)
        if min_distance > 1 and len(coords) > 1:
            coords = _greedy_spacing(coords, min_distance)
        coords[:, 0] += box[0].start
        coords[:, 1] += box[1].start
        found.append(coords)
    return np.vstack(found) if found else np.empty((0, 2), dtype=np.intp)


def _window_maximum(dtype: np.dtype, size: int):
    """A function giving the maximum over each pixel's ``size × size`` window, the edge repeated (scipy's
    ``maximum_filter(mode="nearest")``): OpenCV's dilation where it takes the type (it ignores pixels
    beyond the edge, which for a maximum is the same), about 20× cheaper on a small crop."""
    if dtype in (np.float32, np.float64, np.uint8, np.uint16, np.int16):
        import cv2

        square = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
        return lambda values: cv2.dilate(values, square)
    from scipy import ndimage as ndi

    return lambda values: ndi.maximum_filter(values, size=size, mode="nearest")


def _greedy_spacing(coords: np.ndarray, spacing: int) -> np.ndarray:
    """The points of ``coords`` (in priority order) kept by a greedy pass that drops every point closer
    than ``spacing`` (Chebyshev) to a point kept before it."""
    if len(coords) > 2000:  # a quadratic distance table would be large: scikit-image's batched k-d trees
        from skimage._shared.coord import ensure_spacing

        return ensure_spacing(coords, spacing=spacing, p_norm=np.inf)
    close = np.abs(coords[:, None, :] - coords[None, :, :]).max(axis=2) < spacing
    keep = np.ones(len(coords), dtype=bool)
    for i in range(len(coords)):
        if keep[i]:
            keep[i + 1:] &= ~close[i, i + 1:]
    return coords[keep]
