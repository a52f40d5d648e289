"""Artefacts painted onto real tissue, with their true masks: the QC tests' and the QC validation's data.

The tissue is the demo slide (scikit-image's real IHC section mosaicked at 0.5 µm/px, or any RGB
array).  Each painter changes the pixels the way the artefact does physically and returns the mask of
the pixels it changed (level-0 pixels):

- blur: the region replaced by the image convolved with a Gaussian of ``sigma`` pixels (defocus);
- pen: a polyline stroke of ink multiplied onto the pixels (ink is a coloured filter), soft-edged;
- fold: a band where the tissue lies on another piece of tissue: the product of the two
  transmittances (optical densities add);
- bubble: a disc whose interior is hazy (a quarter of the way to white) inside a thin neutral dark
  rim (the refraction at the air/mountant interface);
- coverslip edge: a long straight thin neutral dark line.
"""
from __future__ import annotations

import numpy as np


def _disk_mask(shape, cy, cx, radius) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def paint_blur(image: np.ndarray, box: tuple[int, int, int, int], sigma: float) -> np.ndarray:
    """Blur ``box`` ``(x, y, w, h)`` in place; returns its mask."""
    from scipy import ndimage as ndi

    x, y, w, h = box
    pad = int(4 * sigma) + 1
    y0, x0 = max(0, y - pad), max(0, x - pad)
    region = image[y0:y + h + pad, x0:x + w + pad].astype(np.float32)
    blurred = ndi.gaussian_filter(region, (sigma, sigma, 0))
    image[y:y + h, x:x + w] = np.clip(blurred[y - y0:y - y0 + h, x - x0:x - x0 + w], 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], bool)
    mask[y:y + h, x:x + w] = True
    return mask


def stroke_mask(shape, points, width: float) -> np.ndarray:
    """Pixels within ``width / 2`` of the polyline through ``points`` ``[(x, y), ...]``."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.polylines(mask, [np.asarray(points, np.int32).reshape(-1, 1, 2)], False, 1, thickness=int(width),
                  lineType=cv2.LINE_8)
    return mask.astype(bool)


def paint_pen(image: np.ndarray, points, width: float, ink: tuple[int, int, int], opacity: float = 0.9) -> np.ndarray:
    """An ink stroke along ``points`` in place; returns its mask."""
    mask = stroke_mask(image.shape[:2], points, width)
    from scipy import ndimage as ndi

    alpha = np.clip(ndi.gaussian_filter(mask.astype(np.float32), 1.5), 0, 1) * opacity
    filt = np.asarray(ink, np.float32) / 255.0
    img = image.astype(np.float32)
    inked = img * filt
    image[:] = np.clip(img * (1 - alpha[..., None]) + inked * alpha[..., None], 0, 255).astype(np.uint8)
    return mask


def paint_fold(image: np.ndarray, points, width: float, *, shift: tuple[int, int] = (37, 53)) -> np.ndarray:
    """Tissue folded over itself along a band (polyline ``points``, ``width`` px) in place; returns its mask."""
    mask = stroke_mask(image.shape[:2], points, width)
    other = np.roll(image, shift, axis=(0, 1)).astype(np.float32)
    folded = image.astype(np.float32) * other / 255.0
    image[mask] = np.clip(folded[mask], 0, 255).astype(np.uint8)
    return mask


def paint_bubble(image: np.ndarray, centre: tuple[int, int], radius: int, rim: int = 10) -> np.ndarray:
    """An air bubble at ``centre`` ``(x, y)`` in place; returns its mask (the disc and its rim)."""
    cx, cy = centre
    disc = _disk_mask(image.shape[:2], cy, cx, radius)
    inner = _disk_mask(image.shape[:2], cy, cx, radius - rim)
    ring = disc & ~inner
    img = image.astype(np.float32)
    img[inner] = img[inner] * 0.75 + 255 * 0.25
    img[ring] = img[ring].mean(axis=1, keepdims=True) * 0.35  # neutral, dark
    image[:] = np.clip(img, 0, 255).astype(np.uint8)
    return disc


def paint_coverslip_edge(image: np.ndarray, start: tuple[int, int], end: tuple[int, int], width: int = 8) -> np.ndarray:
    """A straight coverslip edge from ``start`` to ``end`` ``(x, y)`` in place; returns its mask."""
    mask = stroke_mask(image.shape[:2], [start, end], width)
    img = image.astype(np.float32)
    img[mask] = img[mask].mean(axis=1, keepdims=True) * 0.4
    image[:] = np.clip(img, 0, 255).astype(np.uint8)
    return mask


def demo_tissue(width: int = 6144, height: int = 4096, seed: int = 0) -> np.ndarray:
    """Level 0 of the demo slide (real IHC tissue on glass, 0.5 µm/px) as an array."""
    from dlcore.demo import SyntheticSlide, SyntheticSlideSpec

    return SyntheticSlide(SyntheticSlideSpec(width=width, height=height, seed=seed)).region(1, 0, 0, width, height)


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape."""
    union = np.logical_or(found, truth).sum()
    return float(np.logical_and(found, truth).sum() / union) if union else 1.0


def at_mask_resolution(truth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A level-0 truth mask on a QC mask grid of ``shape``: the level-0 pixel under each grid pixel's centre."""
    rows = ((np.arange(shape[0]) + 0.5) * truth.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * truth.shape[1] / shape[1]).astype(int)
    return truth[np.ix_(rows, cols)]


def paint_pale(image: np.ndarray, box: tuple[int, int, int, int], keep: float = 0.3) -> np.ndarray:
    """Under-stain ``box`` ``(x, y, w, h)`` in place: its optical density scaled by ``keep`` (less dye);
    returns its mask."""
    x, y, w, h = box
    region = np.maximum(image[y:y + h, x:x + w].astype(np.float32), 1.0) / 255.0
    image[y:y + h, x:x + w] = np.clip(255.0 * region ** keep, 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], bool)
    mask[y:y + h, x:x + w] = True
    return mask


def tissue_pixels(image: np.ndarray) -> np.ndarray:
    """Level-0 pixels that are not glass (the demo's glass is within a few levels of white)."""
    return image.min(axis=2) < 235


def painted_demo(width: int = 6144, height: int = 4096) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(clean, painted, truth)``: the demo slide's level 0 (real IHC tissue, 0.5 µm/px), the same with
    one of each artefact painted at a size met on real slides, and each artefact's true level-0 mask
    (on tissue only for blur, pale and fold: they change tissue, not glass; a fold where both layers
    are tissue).  The layout is for the default 6144 x 4096 demo slide."""
    clean = demo_tissue(width, height)
    image = clean.copy()
    tissue = tissue_pixels(clean)
    shift = (37, 53)
    truth = {
        "blur": paint_blur(image, (600, 1300, 1000, 900), sigma=4) & tissue,  # 2 µm defocus
        "pale": paint_pale(image, (2000, 1500, 800, 700)) & tissue,
        "fold": paint_fold(image, [(1200, 2900), (2200, 3400)], 500, shift=shift)
        & tissue & np.roll(tissue, shift, axis=(0, 1)),  # 250 µm wide
        "bubble": paint_bubble(image, (3600, 2600), 350, rim=12),  # 350 µm across, a 6 µm rim
        "pen": paint_pen(image, [(2700, 400), (3300, 800), (4000, 700)], 250, (40, 70, 200))  # blue, 125 µm
        | paint_pen(image, [(4300, 2800), (4800, 3300), (5300, 3200)], 250, (30, 150, 60)),  # green
        "coverslip_edge": paint_coverslip_edge(image, (200, 4000), (6000, 3960), width=10),
    }
    return clean, image, truth


def he_mosaic() -> np.ndarray:
    """A 3000 x 2100 slide of real H&E tissue: stardist's TCIA field, flipped and rotated in a mosaic."""
    from synthetic import real_he_field

    he = real_he_field()
    rows = []
    for r in range(7):
        row = [np.rot90(he, 2) if (r + c) % 2 else he for c in range(6)]
        rows.append(np.concatenate([x[:, ::-1] if c % 3 == 1 else x for c, x in enumerate(row)], axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def painted_he() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(clean, painted, truth)`` as :func:`painted_demo`, on :func:`he_mosaic`: a fold, a blue pen
    stroke, a blurred region and a bubble."""
    clean = he_mosaic()
    image = clean.copy()
    tissue = tissue_pixels(clean)
    shift = (37, 53)
    truth = {"fold": paint_fold(image, [(600, 600), (1800, 1300)], 400, shift=shift)
             & tissue & np.roll(tissue, shift, axis=(0, 1)),
             "pen": paint_pen(image, [(2000, 200), (2800, 900)], 250, (40, 70, 200)),
             "blur": paint_blur(image, (300, 1500, 900, 500), 4) & tissue,
             "bubble": paint_bubble(image, (2300, 1600), 300)}
    return clean, image, truth
