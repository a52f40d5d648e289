"""The per-block focus measure, computed at the working resolution over the tissue.

A thumbnail cannot show focus: at a few µm per pixel a sharp and a blurred region look alike.  So the
tissue is read at the working resolution (the task's, e.g. 0.5 µm/px), in tiles of ``16 x block``
pixels on a fixed grid, and each ``block x block`` square (64 px: 32 µm at 0.5 µm/px) gets a
sharpness: the mean absolute Laplacian of the grey image (smoothed by 0.7 px so that pixel noise and
JPEG blocks do not count as detail) divided by the square's grey standard deviation plus 2 grey
levels.  Dividing by the contrast makes the measure independent of how much stain or structure the
square holds; on the demo slide's real IHC tissue at 0.5 µm/px, 99.5 % of the sharp squares score above 0.08
(median 0.26) and squares blurred by a 2 µm Gaussian score 0.015-0.05.
A square is judged only where it is mostly tissue (its centre on the tissue mask) and has structure
to judge (grey standard deviation >= 4 levels): blank stroma or lumen is neither sharp nor blurred.
Blurred: sharpness below ``threshold`` (0.06 by default).  Regions smaller than 4 blocks are ignored.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dlcore.io.slide import ResolutionPlan, Slide, read_working
from dlcore.progress import ProgressCallback

DEFAULT_BLOCK = 64
DEFAULT_THRESHOLD = 0.06
BLOCKS_PER_TILE = 16


@dataclass(frozen=True)
class FocusMap:
    """Sharpness per block of ``block`` working pixels (NaN: not judged), and the rule's threshold.

    ``factor`` is the level-0 pixels per working pixel, so block ``(r, c)`` covers level-0 pixels
    ``[c * block * factor, (c + 1) * block * factor)`` across."""

    sharpness: np.ndarray
    block: int
    factor: float
    threshold: float

    def blurred(self) -> np.ndarray:
        """Blocks judged and found blurred."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.sharpness, nan=np.inf) < self.threshold

    def median(self) -> float | None:
        """The median sharpness of the judged blocks (None when none was judged)."""
        judged = self.sharpness[np.isfinite(self.sharpness)]
        return float(np.median(judged)) if judged.size else None

    def on_grid(self, shape: tuple[int, int], downsample: float) -> np.ndarray:
        """The blurred blocks on a grid of ``shape`` whose pixels each cover ``downsample`` level-0
        pixels (the QC mask), each grid pixel taking the block under its centre."""
        blurred = self.blurred()
        size = self.block * self.factor
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * downsample / size).astype(int), blurred.shape[0] - 1)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * downsample / size).astype(int), blurred.shape[1] - 1)
        return blurred[np.ix_(rows, cols)]


def block_sharpness(window: np.ndarray, block: int, *, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(sharpness, contrast)`` of each whole ``block x block`` square of a ``(Y, X, C)`` window whose
    sides are multiples of ``block`` (see the module docstring).  ``scale`` brings the grey values to an
    8-bit range (1 for 8-bit images; see :func:`grey_scale`), so the contrast floor means the same."""
    import cv2

    grey = window.astype(np.float32).mean(axis=2) if window.ndim == 3 else window.astype(np.float32)
    if scale != 1.0:
        grey *= scale
    smooth = cv2.GaussianBlur(grey, (0, 0), 0.7)
    lap = np.abs(cv2.Laplacian(smooth, cv2.CV_32F, ksize=1))
    rows, cols = grey.shape[0] // block, grey.shape[1] // block
    shape = (rows, block, cols, block)
    detail = lap[:rows * block, :cols * block].reshape(shape).mean(axis=(1, 3))
    contrast = grey[:rows * block, :cols * block].reshape(shape).std(axis=(1, 3))
    return detail / (contrast + 2.0), contrast


def grey_scale(thumb: np.ndarray) -> float:
    """The factor that brings a slide's grey values to an 8-bit range: 1 for 8-bit images, else 255 over
    the 99.5th percentile of the thumbnail's grey (one factor for the whole slide, so a dim region is
    not stretched to look like a bright one)."""
    if thumb.dtype == np.uint8:
        return 1.0
    top = float(np.percentile(thumb.astype(np.float32).mean(axis=2), 99.5))
    return 255.0 / top if top > 0 else 1.0


def focus_map(slide: Slide, plan: ResolutionPlan, working_size: tuple[int, int], tissue: np.ndarray,
              tissue_downsample: float, *, block: int = DEFAULT_BLOCK, threshold: float = DEFAULT_THRESHOLD,
              scale: float = 1.0, threads: int = 2, progress: ProgressCallback | None = None) -> FocusMap:
    """The :class:`FocusMap` of the tissue of ``slide`` read as ``plan`` says.

    ``tissue`` is a boolean mask whose pixels each cover ``tissue_downsample`` level-0 pixels; only
    blocks whose centre lies on it, inside the image, are judged, and only tiles holding such blocks are
    read.  ``scale``: :func:`grey_scale`."""
    width, height = working_size
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    sharpness = np.full((rows, cols), np.nan, np.float32)
    centre_y = ((np.arange(rows) + 0.5) * block * plan.factor / tissue_downsample).astype(int)
    centre_x = ((np.arange(cols) + 0.5) * block * plan.factor / tissue_downsample).astype(int)
    on_tissue = tissue[np.ix_(np.minimum(centre_y, tissue.shape[0] - 1), np.minimum(centre_x, tissue.shape[1] - 1))]
    on_tissue &= ((np.arange(rows) + 0.5) * block < height)[:, None] & ((np.arange(cols) + 0.5) * block < width)[None, :]
    step = BLOCKS_PER_TILE
    jobs = [(r, c) for r in range(0, rows, step) for c in range(0, cols, step) if on_tissue[r:r + step, c:c + step].any()]

    def measure(job: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        r, c = job
        nr, nc = min(step, rows - r), min(step, cols - c)
        window = read_working(slide, plan, c * block, r * block, nc * block, nr * block)  # mirrored past the edge
        values, contrast = block_sharpness(window, block, scale=scale)
        values[(contrast < 4.0) | ~on_tissue[r:r + nr, c:c + nc]] = np.nan
        return r, c, values

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done, (r, c, values) in enumerate(pool.map(measure, jobs), start=1):
            sharpness[r:r + values.shape[0], c:c + values.shape[1]] = values
            if progress is not None:
                progress("focus", done, len(jobs))
    return FocusMap(sharpness=sharpness, block=block, factor=plan.factor, threshold=threshold)
