"""What ``--qc exclude`` leaves out of an analysis, in the engine's coordinates.

Two places apply it.  The tile grid and the calibration windows use the tissue mask with the
artefacts removed (:func:`usable_tissue`): a tile or window wholly on an artefact is never read.  The
worker that finds a tile's objects (or classes) uses :class:`Exclusion` for what remains: an object
whose centroid lies on an artefact is dropped whole, and a class map is set to background there.  An
object whose centroid lies outside artefacts is kept whole, even where it reaches into one, just as
the tile that owns an object's centroid keeps all of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlcore.tiling.tissue import TissueMask


@dataclass(frozen=True)
class Exclusion:
    """A boolean artefact mask whose pixels each cover ``downsample`` level-0 pixels, read in working
    pixels (``factor`` level-0 pixels each); picklable, sent once to each worker."""

    mask: np.ndarray
    downsample: float
    factor: float

    def window(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The ``(height, width)`` boolean mask of the working-resolution window at ``(x, y)``: each pixel
        takes the mask pixel under its centre (pixels outside the image take the nearest edge pixel)."""
        scale = self.factor / self.downsample
        rows = np.clip(((np.arange(y, y + height) + 0.5) * scale).astype(np.int64), 0, self.mask.shape[0] - 1)
        cols = np.clip(((np.arange(x, x + width) + 0.5) * scale).astype(np.int64), 0, self.mask.shape[1] - 1)
        return self.mask[np.ix_(rows, cols)]


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` on a grid of ``shape`` covering the same image (nearest pixel centre)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def usable_tissue(tissue: TissueMask | None, artefacts: np.ndarray, artefact_downsample: float) -> TissueMask:
    """The tissue mask with the artefacts removed (the whole image less the artefacts when ``tissue`` is
    None: tissue detection off)."""
    if tissue is None:
        return TissueMask(mask=~artefacts, downsample=artefact_downsample, method="whole image less QC artefacts")
    keep = ~resample_mask(artefacts, tissue.mask.shape)
    return TissueMask(mask=tissue.mask & keep, downsample=tissue.downsample, method=f"{tissue.method}, less QC artefacts")
