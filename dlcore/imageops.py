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
