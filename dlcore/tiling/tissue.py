"""Tissue detection on a low-resolution thumbnail.

Method (documented in the README):

1. A thumbnail of the slide of at most ``max_side`` pixels is built from the coarsest pyramid level
   that is large enough, read block by block so memory stays bounded even for one-level slides.
2. For 8-bit RGB (brightfield: H&E, IHC) a pixel is background when it is near-black (value < 40,
   the black margins some scanners write) or when it looks like glass: unsaturated (HSV saturation
   < 0.07) and within 15 grey levels of the glass brightness (the 95th percentile of the value of
   unsaturated pixels).  Everything else is tissue: stained tissue is saturated, and pale tissue
   is darker than the glass.  For other images (fluorescence, 16-bit, single channel) tissue is
   where the mean intensity exceeds its Otsu threshold.
3. The raw mask is cleaned: closing and hole filling, then removal of specks smaller than
   ``min_area_fraction`` of the thumbnail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlcore.io.slide import Slide, SlideInfo, resize_image


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and the level-0 pixels one mask pixel covers."""

    mask: np.ndarray
    downsample: float
    method: str

    def tissue_fraction(self) -> float:
        """Fraction of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def tissue_area_px(self) -> float:
        """Tissue area in level-0 pixels."""
        return float(self.mask.sum()) * self.downsample**2


def thumbnail(slide: Slide, *, max_side: int = 2048, block: int = 2048) -> tuple[np.ndarray, float]:
    """A ``(Y, X, C)`` thumbnail of at most ``max_side`` pixels a side, and its level-0 downsample.

    Reads the coarsest level whose long side is at least ``max_side`` (or level 0), in blocks.
    """
    info = slide.info
    level = 0
    for index, lv in enumerate(info.levels):
        if max(lv.width, lv.height) >= max_side:
            level = index
    lv = info.levels[level]
    shrink = max(1.0, max(lv.width, lv.height) / max_side)
    out_w, out_h = max(1, int(round(lv.width / shrink))), max(1, int(round(lv.height / shrink)))
    out = np.zeros((out_h, out_w, len(info.channels)), dtype=info.dtype)
    step = max(1, int(block // shrink)) * shrink  # level pixels per block, a whole number of output pixels
    step = max(int(math.floor(step)), 1)
    for by in range(0, lv.height, step):
        for bx in range(0, lv.width, step):
            bw, bh = min(step, lv.width - bx), min(step, lv.height - by)
            ox0, oy0 = int(round(bx / shrink)), int(round(by / shrink))
            ox1, oy1 = min(out_w, int(round((bx + bw) / shrink))), min(out_h, int(round((by + bh) / shrink)))
            if ox1 <= ox0 or oy1 <= oy0:
                continue
            region = slide.read_region(level, bx, by, bw, bh)
            out[oy0:oy1, ox0:ox1] = resize_image(region, oy1 - oy0, ox1 - ox0)
    return out, lv.downsample * (lv.width / out_w)


def detect_tissue(slide: Slide, *, max_side: int = 2048, min_area_fraction: float = 0.0005) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide`` (see the module docstring for the method)."""
    thumb, downsample = thumbnail(slide, max_side=max_side)
    mask, method = tissue_mask_from_thumbnail(thumb, slide.info, min_area_fraction=min_area_fraction)
    return TissueMask(mask=mask, downsample=downsample, method=method)


def tissue_mask_from_thumbnail(thumb: np.ndarray, info: SlideInfo, *, min_area_fraction: float = 0.0005) -> tuple[np.ndarray, str]:
    """The cleaned tissue mask of a thumbnail and the name of the rule used."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    from dlcore.imageops import remove_small

    if info.is_rgb:
        brightest = thumb.max(axis=2).astype(np.float32)  # the same values as on a float copy, without one
        darkest = thumb.min(axis=2).astype(np.float32)
        value = ndi.uniform_filter(brightest, 3)
        sat = ndi.uniform_filter(np.where(value > 0, (brightest - darkest) / np.maximum(brightest, 1), 0), 3)
        del brightest, darkest
        not_black = value >= 40
        unsaturated = not_black & (sat < 0.07)
        glass = float(np.percentile(value[unsaturated], 95)) if unsaturated.sum() > 16 else 255.0
        bright_cut = float(np.clip(glass - 15, 180, 245))
        raw = not_black & ~((sat < 0.07) & (value > bright_cut))
        method = f"not black (value>=40) and not glass (saturation<0.07 with value>{bright_cut:.0f})"
    else:
        mean = thumb.astype(np.float32).mean(axis=2)
        mean = ndi.uniform_filter(mean, 3)
        level = threshold_otsu(mean) if np.ptp(mean) > 0 else np.inf
        raw = mean > level
        method = f"mean intensity>{level:.1f} (Otsu)"
    mask = ndi.binary_closing(raw, structure=disk(2), iterations=1)
    mask = ndi.binary_fill_holes(mask)
    min_size = max(4, int(min_area_fraction * mask.size))
    mask = remove_small(mask, min_size)
    return mask.astype(bool), method
