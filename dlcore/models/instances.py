"""From a network's pixel maps to instance labels (seeded watershed).

Two recipes, named by ``config.dlcore.postprocess.type``:

- ``fg_boundary_watershed``: channels (foreground, boundary), or (background, foreground, boundary)
  as probabilities.  Objects are pixels whose foreground probability exceeds ``fg_threshold``; seeds
  are the connected object cores whose boundary probability is below ``boundary_threshold`` (at least
  ``min_seed_size`` pixels); a watershed on the boundary probability grows the seeds over the objects.
- ``distance_watershed``: a distance map (one channel), or (foreground probability, distance).  Objects
  are pixels where the foreground probability exceeds 0.5 (two channels) or the distance exceeds
  ``fg_threshold`` (one); seeds are the distance maxima at least ``min_distance`` apart and above
  ``seed_threshold``; the watershed runs on the negated distance.

Objects under ``min_size`` pixels are removed.  Object pixels no seed reaches keep one label per
connected component, so nothing the network found is lost.
"""
from __future__ import annotations

import numpy as np

from dlcore.errors import ModelError


def instances_from_maps(probs: np.ndarray, post: dict) -> np.ndarray:
    """Instance labels ``(Y, X)`` int32 (0 = background) from ``(C, Y, X)`` probabilities."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from dlcore.imageops import fill_holes, label_peaks, remove_small

    kind = post["type"]
    if kind == "fg_boundary_watershed":
        if probs.shape[0] == 3:
            foreground, boundary = 1.0 - probs[0], probs[2]
        elif probs.shape[0] == 2:
            foreground, boundary = probs[0], probs[1]
        else:
            raise ModelError(f"fg_boundary_watershed needs 2 or 3 output channels, got {probs.shape[0]}")
        mask = foreground > post["fg_threshold"]
        seeds, _ = ndi.label(mask & (boundary < post["boundary_threshold"]))
        seeds = remove_small(seeds.astype(np.int32), int(post.get("min_seed_size", 0)))
        relief = boundary
    elif kind == "distance_watershed":
        distance = probs[-1]
        mask = probs[0] > 0.5 if probs.shape[0] == 2 else distance > post["fg_threshold"]
        components, _ = ndi.label(mask)
        peaks = label_peaks(distance, components, int(post["min_distance"]), threshold=post["seed_threshold"])
        seeds = np.zeros(mask.shape, np.int32)
        seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        relief = -distance
    else:
        raise ModelError(f"unknown instance post-processing {kind!r}")
    mask = fill_holes(mask)
    labels = watershed(relief, seeds, mask=mask).astype(np.int32)
    orphans = mask & (labels == 0)
    if orphans.any():
        extra, _ = ndi.label(orphans)
        labels[orphans] = extra[orphans] + labels.max()
    return remove_small(labels, int(post["min_size"]))
