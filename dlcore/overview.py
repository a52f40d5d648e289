"""The overview picture of a run: results drawn over a thumbnail of the slide."""
from __future__ import annotations

from pathlib import Path

import numpy as np

OUTLINE_COLOR = (255, 230, 0)
TISSUE_COLOR = (0, 160, 255)


def _display_rgb(thumb: np.ndarray) -> np.ndarray:
    """8-bit RGB for display from any thumbnail (grey, multi-channel or 16-bit: contrast-stretched)."""
    if thumb.shape[2] == 3 and thumb.dtype == np.uint8:
        return thumb.copy()
    grey = thumb.astype(np.float32).mean(axis=2)
    lo, hi = np.percentile(grey, [1, 99.5])
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def display_thumbnail(thumb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``(rgb, scale)``: ``thumb`` as 8-bit RGB for display (:func:`_display_rgb`), shrunk (bilinear) so that
    its long side is at most ``max_side``, and the factor it was shrunk by (1: not shrunk)."""
    from PIL import Image

    rgb = _display_rgb(thumb)
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale < 1.0:
        size = (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    return rgb, scale


def render_overview(
    thumb: np.ndarray,
    labels: np.ndarray,
    path: Path,
    *,
    tissue: np.ndarray | None = None,
    semantic_colors: dict[int, tuple[int, int, int]] | None = None,
    max_side: int = 1600,
) -> Path:
    """Draw ``labels`` (any resolution: resized to the thumbnail) over ``thumb`` and save a PNG.

    Instance labels are drawn as outlines; with ``semantic_colors`` each class is a translucent fill.
    The tissue mask, when given, is outlined in blue.
    """
    from PIL import Image
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    rgb, _ = display_thumbnail(thumb, max_side)
    h, w = rgb.shape[:2]
    lab = resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    out = rgb.copy()
    if semantic_colors:
        for cls, color in semantic_colors.items():
            sel = lab == cls
            out[sel] = (0.55 * out[sel] + 0.45 * np.asarray(color)).astype(np.uint8)
    else:
        out[find_boundaries(lab, mode="inner")] = OUTLINE_COLOR
    if tissue is not None:
        t = resize(tissue.astype(np.uint8), (h, w), order=0, preserve_range=True, anti_aliasing=False) > 0
        out[find_boundaries(t, mode="outer")] = TISSUE_COLOR
    Image.fromarray(out).save(path)
    return path



def render_image_overview(thumb: np.ndarray, canvas, path: Path, *, max_side: int = 1200) -> Path:
    """The slide's thumbnail and the predicted image (an :class:`~dlcore.io.image_canvas.ImageCanvas`,
    finished) side by side in one PNG.  One channel is shown grey, two or more as the first three in red,
    green and blue; each channel is stretched between its 1st and 99.5th percentile."""
    from PIL import Image

    rgb, _ = display_thumbnail(thumb, max_side)
    h, w = rgb.shape[:2]
    fitting = [i for i, level in enumerate(canvas.levels) if level.shape[1] >= h]
    level = fitting[-1] if fitting else 0
    values = canvas.values(level, 0, 0, canvas.levels[level].shape[2], canvas.levels[level].shape[1])
    shown = []
    for plane in values[:3]:
        lo, hi = np.percentile(plane, [1, 99.5])
        shown.append((np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8))
    picture = np.stack(shown * 3 if len(shown) == 1 else shown + [np.zeros_like(shown[0])] * (3 - len(shown)), axis=2)
    picture = np.asarray(Image.fromarray(picture).resize((w, h), Image.BILINEAR))
    gap = np.full((h, 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([rgb, gap, picture], axis=1)).save(path)
    return path
