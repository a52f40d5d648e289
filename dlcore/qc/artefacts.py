"""Artefacts found on a low-resolution picture of a brightfield slide (8-bit RGB), as HistoQC does.

Every detector takes the QC thumbnail (a :class:`Picture` of ``(Y, X, 3)`` uint8 pixels, a few µm
each), the tissue mask of that thumbnail and the thumbnail's pixel size in µm, and returns a boolean
mask with the rule it applied (recorded in the QC report).  Sizes are physical, so the rules hold at any QC resolution.

- **Pen ink** (:func:`detect_pen`): marker ink has hues and saturations no histological stain has
  (HSV after a 3-pixel mean): blue (hue 190-260°, saturation >= 0.45, where haematoxylin stays below
  about 0.35), green (hue 72-190°, saturation >= 0.25: no stain is green), red (hue within 7° of
  red, saturation >= 0.7 and value >= 0.45: eosin and DAB are far paler) and black (value < 0.25 and
  saturation < 0.35, not connected to a black scanner margin at the image border).  Specks under
  0.005 mm² are dropped, gaps of a pixel closed.
- **Folds** (:func:`detect_folds`): where tissue lies folded onto itself, light crosses it twice, so
  its optical density (OD, summed over R, G, B) about doubles (Bautista and Yagi's fold measure and
  HistoQC's dark-tissue rule rest on the same physics).  One stain's dense region (a DAB-positive
  gland) is as dark as another's fold, so each pixel's OD is compared with the median OD of the
  slide's tissue *of the same hue* (:func:`od_ratio_to_same_hue`).  Fold = tissue where that ratio,
  averaged over 10 µm, is at least 1.3 (a full double layer gives 2; a pale layer over a dark one
  less), closed and opened by 10 µm (thick parts only), holes filled, at least 0.01 mm², never within
  20 µm of pen ink (ink darkens tissue too).  On the clean slides the ratio averaged over 10 µm
  reaches 1.44 (IHC demo) and 1.21 (H&E field) in thin dark structures, which the opening removes;
  averaged over 20 µm it stays at or below 1.30.
- **Pale tissue** (:func:`detect_pale`): tissue whose OD, against tissue of the same hue and averaged
  over 20 µm, is at most 0.45 of it, opened by 25 µm and at least 0.05 mm²: under-stained or
  washed-out regions.
- **Bubbles and coverslip edges** (:func:`detect_bubbles_and_edges`): both show as thin dark
  unstained lines (the refraction at an air/mountant interface or a glass edge).  Dark ridges
  (Sato's tubeness filter at 2-6 µm, black ridges) that are unstained (saturation < 0.2, or below
  that of their 40 µm surroundings: in the thumbnail a thin grey line blends with the stain around
  it) and at least 8 % darker than those surroundings are linked into lines.  A line that closes a
  compact region (solidity >= 0.8, at least 0.02 mm², the region at least 3 times the rim's area)
  is a bubble: the region and its rim.  A straight line at least 1 mm long (its minor axis under
  5 % of its major axis) is a coverslip edge or crack: the line's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """Where one kind of artefact is (a boolean mask of the thumbnail) and the rule that found it."""

    mask: np.ndarray
    method: str


@dataclass(frozen=True)
class Picture:
    """The QC thumbnail and what every detector reads of it, computed once: hue (0-1), saturation (0-1)
    and value (0-1) after a 3-pixel mean, and the optical density summed over R, G and B
    (``-log10(I / 255)`` with ``I >= 1``)."""

    rgb: np.ndarray
    hue: np.ndarray
    saturation: np.ndarray
    value: np.ndarray
    od: np.ndarray

    @classmethod
    def of(cls, rgb: np.ndarray) -> "Picture":
        import cv2

        smooth = cv2.blur(rgb.astype(np.float32) / 255.0, (3, 3), borderType=cv2.BORDER_REFLECT)
        hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV)  # float input: H in degrees, S and V in 0-1
        del smooth
        lut = (-np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)).astype(np.float32)
        od = lut[rgb[..., 0]] + lut[rgb[..., 1]] + lut[rgb[..., 2]]  # per channel by table: no float RGB copy
        hue, saturation, value = (np.ascontiguousarray(hsv[..., i]) for i in range(3))
        del hsv
        return cls(rgb=rgb, hue=hue / 360.0, saturation=saturation, value=value, od=od)


def smooth_within(values: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """A Gaussian average of ``values`` over the pixels of ``mask`` only (normalised convolution), so
    that tissue next to glass is not averaged with the glass.  NaN outside ``mask``."""
    import cv2

    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    total = cv2.GaussianBlur(np.where(mask, values, 0).astype(np.float32), (0, 0), sigma_px,
                             borderType=cv2.BORDER_REFLECT)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight
    out[~mask] = np.nan
    return out


def px(um: float, um_per_px: float) -> float:
    """A length in µm as thumbnail pixels."""
    return um / um_per_px


def min_pixels(mm2: float, um_per_px: float) -> int:
    """An area in mm² as a pixel count of the thumbnail (at least 1)."""
    return max(1, int(round(mm2 * 1e6 / (um_per_px * um_per_px))))


def morphology(mask: np.ndarray, operation: str, radius: int) -> np.ndarray:
    """``mask`` opened, closed or dilated (``operation``) by a disk of ``radius`` pixels (OpenCV's
    elliptical kernel; outside the image counts as neither tissue nor background, so a region touching
    the border is not eaten from it).  ``radius < 1``: the mask itself."""
    import cv2

    if radius < 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    op = {"open": cv2.MORPH_OPEN, "close": cv2.MORPH_CLOSE, "dilate": cv2.MORPH_DILATE}[operation]
    return cv2.morphologyEx(mask.astype(np.uint8), op, kernel).astype(bool)


def _clean(mask: np.ndarray, *, opening_um: float, min_mm2: float, um_per_px: float) -> np.ndarray:
    """``mask`` opened by a disk (thick parts only), holes filled, components under ``min_mm2`` removed."""
    from scipy import ndimage as ndi

    from dlcore.imageops import remove_small

    mask = morphology(mask, "open", int(round(px(opening_um, um_per_px))))
    mask = ndi.binary_fill_holes(mask)
    return remove_small(mask, min_pixels(min_mm2, um_per_px)).astype(bool)


def detect_pen(picture: Picture, *, um_per_px: float) -> Detection:
    """Pen ink of blue, green, red or black markers (see the module docstring)."""
    from scipy import ndimage as ndi

    from dlcore.imageops import remove_small

    h, s, v = picture.hue, picture.saturation, picture.value
    blue = (h >= 190 / 360) & (h <= 260 / 360) & (s >= 0.45) & (v >= 0.2)
    green = (h >= 72 / 360) & (h < 190 / 360) & (s >= 0.25) & (v >= 0.15)
    red = ((h >= 353 / 360) | (h <= 7 / 360)) & (s >= 0.7) & (v >= 0.45)
    dark = (v < 0.25) & (s < 0.35)
    margin = v < 40 / 255  # a black scanner margin reaches the image border
    margin_labels, _ = ndi.label(margin)
    border_ids = np.unique(np.concatenate([margin_labels[0], margin_labels[-1], margin_labels[:, 0],
                                           margin_labels[:, -1]]))
    black = dark & ~np.isin(margin_labels, border_ids[border_ids > 0])
    ink = ndi.binary_closing(blue | green | red | black, structure=np.ones((3, 3), bool))
    ink = remove_small(ink, min_pixels(0.005, um_per_px)).astype(bool)
    return Detection(ink, "HSV ink hues: blue 190-260° s>=0.45, green 72-190° s>=0.25, red ±7° s>=0.7 v>=0.45, "
                          "black v<0.25 s<0.35 off the border margin; specks <0.005 mm² dropped")


def tissue_statistics(picture: Picture, tissue: np.ndarray) -> dict[str, float]:
    """The slide's median tissue optical density and saturation (the stain figures of the QC report)."""
    if not tissue.any():
        return {"median_od": float("nan"), "median_saturation": float("nan")}
    return {"median_od": float(np.median(picture.od[tissue])),
            "median_saturation": float(np.median(picture.saturation[tissue]))}


HUE_BINS = 12


def od_ratio_to_same_hue(picture: Picture, tissue: np.ndarray, *, um_per_px: float, sigma_um: float) -> np.ndarray:
    """Each tissue pixel's optical density over the median OD of the slide's tissue of the same hue (12
    bins of 30°), averaged over ``sigma_um`` within tissue (NaN off tissue).  The medians are taken over
    stained tissue only (OD >= 0.15): glass inside the tissue mask (a lumen, a bubble) would lower them.

    One stain's dense region (a DAB-positive gland) is as dark as another stain's fold; against tissue of
    its own hue a fold still doubles.  Hues with under 50 tissue pixels use the median of all tissue."""
    import cv2

    h = picture.hue
    od = cv2.blur(picture.od, (3, 3), borderType=cv2.BORDER_REFLECT)
    bins = np.minimum(h * HUE_BINS, HUE_BINS - 1).astype(np.uint8)
    stained = tissue & (od >= STAINED_OD)  # the reference: stained tissue, not glass the tissue mask holds
    if not stained.any():
        stained = tissue
    overall = float(np.median(od[stained]))
    medians = np.full(HUE_BINS, overall, np.float32)
    counts = np.bincount(bins[stained], minlength=HUE_BINS)
    for index in np.nonzero(counts >= 50)[0]:
        medians[index] = np.median(od[stained & (bins == index)])
    ratio = od / np.maximum(medians[bins], 1e-3)
    return smooth_within(ratio, tissue, px(sigma_um, um_per_px))


def detect_folds(picture: Picture, tissue: np.ndarray, *, um_per_px: float, exclude: np.ndarray | None = None) -> Detection:
    """Tissue folds: at least 1.3 times the OD of the slide's tissue of the same hue, thick (module
    docstring).  ``exclude`` (pen ink) is never a fold, nor is tissue within 20 µm of it (ink darkens)."""
    ratio = od_ratio_to_same_hue(picture, tissue, um_per_px=um_per_px, sigma_um=10)
    raw = tissue & (np.nan_to_num(ratio) >= FOLD_RATIO)
    if exclude is not None and exclude.any():
        raw &= ~morphology(exclude, "dilate", max(1, int(round(px(20, um_per_px)))))
    raw = morphology(raw, "close", int(round(px(10, um_per_px))))
    mask = _clean(raw, opening_um=10, min_mm2=0.01, um_per_px=um_per_px) & tissue
    return Detection(mask, f"OD >= {FOLD_RATIO} x median OD of tissue of the same hue (10 µm mean), closed and "
                           "opened 10 µm, holes filled, >= 0.01 mm²")


def detect_pale(picture: Picture, tissue: np.ndarray, *, um_per_px: float) -> Detection:
    """Under-stained tissue: at most 0.45 times the OD of the slide's tissue of the same hue, thick
    (module docstring)."""
    ratio = od_ratio_to_same_hue(picture, tissue, um_per_px=um_per_px, sigma_um=20)
    raw = tissue & (np.nan_to_num(ratio, nan=np.inf) <= PALE_RATIO)
    mask = _clean(raw, opening_um=25, min_mm2=0.05, um_per_px=um_per_px) & tissue
    return Detection(mask, f"OD <= {PALE_RATIO} x median OD of tissue of the same hue (20 µm mean), opened 25 µm, "
                           ">= 0.05 mm²")


FOLD_RATIO = 1.3
STAINED_OD = 0.15  # summed OD under which a pixel of the tissue mask is glass (a lumen, a bubble's inside)
PALE_RATIO = 0.45


def _gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The sampled Gaussian and its first derivative, truncated at 8 sigma, as correlation weights: what
    ``scipy.ndimage.gaussian_filter1d`` applies for orders 0 and 1."""
    radius = int(8 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x * x / (sigma * sigma))
    phi /= phi.sum()
    derivative = -x / (sigma * sigma) * phi
    return phi.astype(np.float32), derivative[::-1].astype(np.float32)


def dark_ridges(image: np.ndarray, sigmas) -> np.ndarray:
    """Sato's tubeness filter for dark ridges in 2D, as scikit-image's ``sato(image, sigmas,
    black_ridges=True, mode="reflect")`` computes it: per scale, ``sigma**2`` times the Hessian's larger
    eigenvalue where it is positive, the maximum over the scales; the Hessian by two successive
    first-order Gaussian derivatives of ``sigma / sqrt(2)``.  The separable filters run in OpenCV, in
    float32, on every core: about 30 times faster than scikit-image on a 4096-pixel thumbnail, and equal to
    it to float32 rounding (``tests/test_qc.py`` compares the two)."""
    import cv2

    image = image.astype(np.float32, copy=False)
    out = np.zeros_like(image)
    for sigma in sigmas:
        smooth, derivative = _gaussian_kernels(sigma / np.sqrt(2))

        def filtered(src, along_rows: bool) -> np.ndarray:  # derivative along rows (axis 0) or columns
            kx, ky = (smooth, derivative) if along_rows else (derivative, smooth)
            return cv2.sepFilter2D(src, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REFLECT)

        rows = filtered(image, True)
        h_rr, h_rc = filtered(rows, True), filtered(rows, False)
        del rows
        h_cc = filtered(filtered(image, False), False)
        # the larger eigenvalue (h_rr + h_cc) / 2 + sqrt(((h_rr - h_cc) / 2)² + h_rc²), in place
        larger = h_rr + h_cc
        larger *= 0.5
        h_rr -= h_cc
        del h_cc
        h_rr *= 0.5
        np.square(h_rr, out=h_rr)
        np.square(h_rc, out=h_rc)
        h_rr += h_rc
        del h_rc
        np.sqrt(h_rr, out=h_rr)
        larger += h_rr
        del h_rr
        np.maximum(larger, 0, out=larger)
        larger *= sigma * sigma
        np.maximum(out, larger, out=out)
    return out


def dark_unstained_lines(picture: Picture, *, um_per_px: float) -> np.ndarray:
    """Thin dark lines without stain colour: Sato's black-ridge filter at 2-6 µm, unstained (saturation
    < 0.2, or below that of their 40 µm surroundings) and at least 8 % darker than the mean of
    those surroundings."""
    import cv2
    from scipy import ndimage as ndi

    s, v = picture.saturation, picture.value
    sigmas = sorted({max(0.7, px(um, um_per_px)) for um in (2.0, 4.0, 6.0)})
    ridge = dark_ridges(v, sigmas)
    size = max(3, int(round(px(40, um_per_px))) | 1)
    surround = cv2.blur(v, (size, size), borderType=cv2.BORDER_REFLECT)
    surround_saturation = cv2.blur(s, (size, size), borderType=cv2.BORDER_REFLECT)
    unstained = (s < 0.2) | (s < surround_saturation)  # a thin grey line blends with the stain around it
    lines = (ridge >= 0.04) & unstained & (v <= surround * 0.92)
    return ndi.binary_closing(lines, structure=np.ones((3, 3), bool))


def detect_bubbles_and_edges(picture: Picture, *, um_per_px: float) -> tuple[Detection, Detection]:
    """Air bubbles (regions closed by a thin unstained rim) and coverslip edges (long straight unstained
    lines); see the module docstring."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops

    lines = dark_unstained_lines(picture, um_per_px=um_per_px)
    labels, _ = ndi.label(lines, structure=np.ones((3, 3), bool))
    bubbles = np.zeros(lines.shape, bool)
    edges = np.zeros(lines.shape, bool)
    min_bubble = min_pixels(0.02, um_per_px)
    min_edge_px = px(1000, um_per_px)
    for region in regionprops(labels):
        y0, x0, y1, x1 = region.bbox
        if (y1 - y0) * (x1 - x0) < min_bubble and max(y1 - y0, x1 - x0) < min_edge_px:
            continue  # too small to close a bubble or to be an edge
        rim = region.image
        filled = ndi.binary_fill_holes(rim)
        inside = int(filled.sum() - rim.sum())
        if inside >= min_bubble and inside >= 3 * rim.sum():
            solidity = filled.sum() / max(1, _convex_area(filled))
            if solidity >= 0.8:
                bubbles[y0:y1, x0:x1] |= filled
                continue
        if region.axis_major_length >= min_edge_px and region.axis_minor_length <= 0.05 * region.axis_major_length:
            edges[y0:y1, x0:x1] |= rim
    return (Detection(bubbles, "closed thin unstained dark rim (Sato black ridges 2-6 µm, saturation < 0.2), "
                               "solidity >= 0.8, >= 0.02 mm², region >= 3x rim"),
            Detection(edges, "straight thin unstained dark line >= 1 mm (minor axis <= 5 % of major)"))


def _convex_area(mask: np.ndarray) -> int:
    from skimage.morphology import convex_hull_image

    return int(convex_hull_image(mask).sum())
