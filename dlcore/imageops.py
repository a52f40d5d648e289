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
    if min_size <= 1 or image.max() == 0:
        return image
    sizes = np.bincount(image.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return image
    out = image.copy()
    out[small[image]] = 0
    return out


def remove_large(labels: np.ndarray, max_size: int) -> np.ndarray:
    """An integer label image with the labels of more than ``max_size`` pixels set to 0 (others kept)."""
    if labels.max() == 0:
        return labels
    large = np.bincount(labels.ravel()) > max_size
    large[0] = False
    if not large.any():
        return labels
    out = labels.copy()
    out[large[labels]] = 0
    return out
