"""Image registration: align a second image of the same section (a re-stain, a fluorescence scan) to
the routine-stain image, and measure how well it is aligned.

Before a marker scanned separately (IHC, immunofluorescence) can give labels for the routine-stain
image, its pixels must be brought into the routine image's frame.  This module owns that alignment:

1. **Structure images** (:func:`structure_image`): the two images rarely share colours (H&E against
   H-DAB, brightfield against fluorescence), but both show the nuclei.  Registration therefore runs on
   a 2-D float image in which nuclei are bright: the haematoxylin concentration of a brightfield RGB
   image (each image's own stain vectors, :mod:`dlcore.tasks.stains`), or a normalised nuclear channel
   (DAPI, Hoechst) of a fluorescence image.
2. **Coarse step** (low resolution, long side at most ``coarse_side``): ORB features (OpenCV's, several
   times faster than scikit-image's) matched between the two images (ratio test, the 400 best kept)
   and a global transform of the requested kind fitted with RANSAC
   (``skimage.measure.ransac``).  Features are rotation invariant, so any rotation is found.  When
   too few matches agree, or the fit is implausible (a reflection, a scale change beyond 3x, strong
   shear), phase correlation gives a translation instead, and ``coarse_method`` says so.
3. **Fine step**: the ECC criterion (``cv2.findTransformECC``, Evangelidis & Psarakis 2008) started
   from the coarse transform, on smoothed images, from the coarse scale up to the given resolution
   (a pyramid of factors of 2; the finest level is at most :data:`ECC_MAX_SIDE` pixels a side, which
   bounds ECC's memory to about 250 MB).  ``MOTION_EUCLIDEAN`` for ``"rigid"``, ``MOTION_AFFINE`` for
   ``"affine"``, and for ``"similarity"`` the affine result projected onto the nearest similarity.
   OpenCV's Euclidean ECC reads the angle with ``asin``, so for ``"rigid"`` the moving image is first
   turned by exact quarter turns.  A level that does not converge stops the refinement; the estimate
   so far is kept and ``refined`` is False.  When the refined transform's residual (step 4) is above
   the threshold and its starting transform's is smaller, the start is kept (``refined`` False).
4. **Residual, measured independently of the estimators**: the moving image is warped into the fixed
   frame; on a grid of 128-pixel patches (half-overlapping) that show structure in both images and lie
   wholly inside the warped moving image, the shift that remains is measured by phase correlation
   (``skimage.registration.phase_cross_correlation``, upsample factor 10, Hann window).  The median
   and 90th percentile of the shift lengths are reported; an alignment with fewer than
   :data:`MIN_PATCHES` such patches or a median above ``max_residual_px`` is refused with a
   :class:`RegistrationError`.

Conventions: coordinates are ``(x, y)`` pixel centres (pixel ``(0, 0)`` is centred at ``(0, 0)``),
and :attr:`Registration.matrix` maps a point of the FIXED image to the MOVING image, which is what
``cv2.warpAffine(..., flags=WARP_INVERSE_MAP)`` needs to bring the moving image into the fixed grid
(:func:`warp_to_fixed`).  Different pixel sizes (``fixed_mpp`` / ``moving_mpp``) are handled by
resampling the moving image to the fixed pixel size first, so ``"rigid"`` means rigid in micrometres;
the matrix still maps fixed pixels to moving pixels.  :func:`register_slides` does the same for two
whole slides, in level-0 pixels, with bounded memory.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import InputError, ParameterError
from dlcore.io.slide import ResolutionPlan, Slide

log = logging.getLogger(__name__)

KINDS = ("rigid", "similarity", "affine")
MIN_PATCHES = 4  # fewer patches with structure in both images cannot give a trustworthy residual
PATCH = 128  # side of a residual patch, fixed pixels
MAX_RESIDUAL_PATCHES = 256  # residual patches measured at most (evenly chosen), so big regions stay fast
MIN_INLIERS = 12  # RANSAC inliers a feature match needs to be trusted over phase correlation
RANSAC_THRESHOLD = 2.0  # coarse pixels
ECC_MAX_SIDE = 2048  # ECC's finest level (long side of the fixed image): it holds ~15 float images that big
MAX_MATCHES = 400  # feature matches (the most similar) given to RANSAC
MAX_SCALE_CHANGE = 3.0  # a coarse fit changing the scale more than this is implausible
MAX_ANISOTROPY = 1.5  # a coarse fit stretching one direction this much more than the other is implausible
STRUCTURE_STAINS = ("hematoxylin", "optical_density")


class RegistrationError(InputError):
    """Two images could not be aligned well enough (too few matching structures, or a residual
    displacement above the threshold); the message gives the residual, the threshold and the fix."""


@dataclass(frozen=True)
class Registration:
    """An alignment of a moving image to a fixed image, and how good it is.

    Attributes
    ----------
    kind
        ``"rigid"`` (rotation and translation), ``"similarity"`` (plus a uniform scale) or
        ``"affine"``.
    matrix
        ``3 x 3``; maps a point ``(x, y, 1)`` in FIXED image pixel coordinates to MOVING image pixel
        coordinates (for :func:`register_slides`: fixed level-0 pixels to moving level-0 pixels).
    residual_px
        Median displacement left after alignment, in fixed pixels (level-0 pixels for
        :func:`register_slides`), measured by phase correlation on patches, independently of the
        estimators.
    residual_p90_px
        90th percentile of the same displacements.
    residual_um
        ``residual_px`` times the fixed image's pixel size, when that is known.
    patches
        Number of patches the residual was measured on.
    coarse_method
        How the starting transform was found, e.g. ``"ORB+RANSAC (143 of 402 matches) at 8.00 µm/px"``.
    refined
        Whether the fine (ECC) step ran and converged at every pyramid level.
    measured_on
        Where the residual was measured (resolution and region), for provenance.
    """

    kind: str
    matrix: np.ndarray
    residual_px: float
    residual_p90_px: float
    residual_um: float | None
    patches: int
    coarse_method: str
    refined: bool
    measured_on: str = field(default="fixed image pixels")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ParameterError(f"registration kind {self.kind!r} is not one of {', '.join(KINDS)}")
        matrix = np.array(self.matrix, dtype=np.float64)
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or not np.allclose(matrix[2], (0, 0, 1)):
            raise ParameterError(f"a registration matrix must be a finite 3 x 3 affine matrix with last row "
                                 f"(0, 0, 1); got {np.array2string(np.asarray(self.matrix), precision=3)}")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` fixed-image points ``(x, y)`` to moving-image points."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return xy @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def as_dict(self) -> dict:
        """A JSON-ready description for provenance."""
        return {
            "kind": self.kind,
            "matrix": [[round(float(v), 8) for v in row] for row in self.matrix],
            "matrix_maps": "fixed (x, y, 1) -> moving (x, y, 1), pixel centres",
            "residual_px": round(float(self.residual_px), 4),
            "residual_p90_px": round(float(self.residual_p90_px), 4),
            "residual_um": None if self.residual_um is None else round(float(self.residual_um), 4),
            "patches": int(self.patches),
            "coarse_method": self.coarse_method,
            "refined": bool(self.refined),
            "measured_on": self.measured_on,
        }


# -- structure images ---------------------------------------------------------------------------
def structure_image(image: np.ndarray, *, channel: int | None = None, stain: str = "hematoxylin") -> np.ndarray:
    """A 2-D float32 image in which nuclei are bright, for registering images of different stains.

    Parameters
    ----------
    image
        An 8-bit RGB brightfield image ``(Y, X, 3)``, or a single channel ``(Y, X)`` / ``(Y, X, 1)``
        (e.g. fluorescence DAPI), or a multi-channel image ``(Y, X, C)`` with ``channel`` given.
    channel
        Use this channel of ``image`` (normalised intensity) instead of colour deconvolution; needed
        for multi-channel images that are not 8-bit RGB.  Choose the nuclear channel.
    stain
        For RGB: ``"hematoxylin"`` (the haematoxylin concentration with the image's own stain
        vectors, Macenko; present in H&E, H-DAB and most IHC) or ``"optical_density"`` (all stains
        summed).

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` float32, stretched so its 1st and 99.5th percentiles become 0 and 1 (then clipped).

    Raises
    ------
    ParameterError
        A multi-channel image without ``channel``, a channel that does not exist, an unknown stain.
    """
    image = np.asarray(image)
    if stain not in STRUCTURE_STAINS:
        raise ParameterError(f"stain={stain!r} is not one of {', '.join(STRUCTURE_STAINS)}")
    if image.ndim not in (2, 3) or image.shape[0] < 2 or image.shape[1] < 2:
        raise ParameterError(f"structure_image takes a (Y, X) or (Y, X, C) image; got shape {image.shape}")
    if channel is not None:
        channels = 1 if image.ndim == 2 else image.shape[2]
        if not 0 <= channel < channels:
            raise ParameterError(f"channel={channel} does not exist: the image has channels 0..{channels - 1}")
        plane = image if image.ndim == 2 else image[..., channel]
        return _stretch(plane.astype(np.float32))
    if image.ndim == 2 or image.shape[2] == 1:
        return _stretch(image.reshape(image.shape[:2]).astype(np.float32))
    if image.shape[2] == 3 and image.dtype == np.uint8:
        from dlcore.tasks.stains import estimate_stains, optical_density

        if stain == "optical_density":
            weights = np.ones(3, np.float32)
        else:
            step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 250_000)))
            weights = estimate_stains([image[::step, ::step]]).unmixing()[:, 0].astype(np.float32)
        plane = np.empty(image.shape[:2], np.float32)
        for y in range(0, image.shape[0], 512):  # in row blocks: a few bytes per pixel at any size
            plane[y:y + 512] = optical_density(image[y:y + 512]) @ weights
        return _stretch(np.maximum(plane, 0, out=plane))
    raise ParameterError(
        f"a {image.shape[2]}-channel {image.dtype} image is not 8-bit RGB brightfield: choose the channel that "
        "shows the nuclei (e.g. DAPI) with channel=N"
    )


def _stretch(plane: np.ndarray) -> np.ndarray:
    """``plane`` with its 1st and 99.5th percentiles mapped to 0 and 1, clipped, float32."""
    plane = np.nan_to_num(plane.astype(np.float32, copy=False))
    step = max(1, int(math.sqrt(plane.size / 1_000_000)))
    low, high = np.percentile(plane[::step, ::step], [1.0, 99.5])
    if not high > low:
        return np.zeros(plane.shape, np.float32)
    return np.clip((plane - low) / (high - low), 0.0, 1.0).astype(np.float32)


# -- geometry helpers ------------------------------------------------------------------------------
def _zoom(k: float) -> np.ndarray:
    """Maps pixel centres of an image to those of the same image resized by ``k`` (centre-aligned)."""
    return np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5], [0.0, 0.0, 1.0]])


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _rescale(image: np.ndarray, k: float) -> np.ndarray:
    """``image`` resized by ``k`` exactly as :func:`_zoom` says (anti-aliased when shrinking)."""
    import cv2

    if k == 1.0:
        return image
    source = image
    if k < 1.0:
        source = cv2.GaussianBlur(image, (0, 0), sigmaX=(1.0 / k - 1.0) / 2.0)
    height, width = (max(1, int(round(n * k))) for n in image.shape[:2])
    back = np.linalg.inv(_zoom(k))
    return cv2.warpAffine(source, back[:2], (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _smooth(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image.astype(np.float32, copy=False), (0, 0), sigmaX=sigma)


def _nearest_similarity(matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The similarity transform closest (least squares over the image's area) to an affine one."""
    from skimage.transform import SimilarityTransform

    ys, xs = np.meshgrid(np.linspace(0, shape[0] - 1, 7), np.linspace(0, shape[1] - 1, 7), indexing="ij")
    src = np.stack([xs.ravel(), ys.ravel()], axis=1)
    dst = src @ matrix[:2, :2].T + matrix[:2, 2]
    return np.asarray(SimilarityTransform.from_estimate(src, dst).params, dtype=np.float64)


def _plausible(matrix: np.ndarray) -> bool:
    """False for reflections, scale changes beyond :data:`MAX_SCALE_CHANGE`, strong shear."""
    linear = matrix[:2, :2]
    if not np.all(np.isfinite(matrix)) or np.linalg.det(linear) <= 0:
        return False
    high, low = np.linalg.svd(linear, compute_uv=False)
    return 1 / MAX_SCALE_CHANGE <= low and high <= MAX_SCALE_CHANGE and high / low <= MAX_ANISOTROPY


def _scale_label(fixed_mpp: float | None, k: float) -> str:
    if fixed_mpp is not None:
        return f"at {fixed_mpp / k:.2f} µm/px"
    return "at full resolution" if k == 1.0 else f"at 1/{1 / k:.2f} of the fixed image's pixels"


# -- the coarse step -------------------------------------------------------------------------------
def _as_uint8(plane: np.ndarray) -> np.ndarray:
    stretched = _stretch(plane)
    return np.round(stretched * 255).astype(np.uint8)


def _coarse(fixed: np.ndarray, moving: np.ndarray, kind: str) -> tuple[np.ndarray, str]:
    """A global transform fixed -> moving at the coarse scale, and how it was found."""
    import cv2
    from skimage.measure import ransac
    from skimage.transform import AffineTransform, EuclideanTransform, SimilarityTransform

    orb = cv2.ORB_create(nfeatures=4000, fastThreshold=10)
    kp_f, des_f = orb.detectAndCompute(_as_uint8(fixed), None)
    kp_m, des_m = orb.detectAndCompute(_as_uint8(moving), None)
    why = ""
    if des_f is None or des_m is None or len(kp_f) < MIN_INLIERS or len(kp_m) < MIN_INLIERS:
        why = f"ORB found too few features ({len(kp_f)} and {len(kp_m)})"
    else:
        pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(des_f, des_m, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
        # the best matches are plenty, and scikit-image's fit on all inliers costs O(inliers^2) memory
        good = sorted(good, key=lambda m: m.distance)[:MAX_MATCHES]
        if len(good) < MIN_INLIERS:
            why = f"only {len(good)} ORB feature matches passed the ratio test"
        else:
            src = np.array([kp_f[m.queryIdx].pt for m in good], dtype=np.float64)
            dst = np.array([kp_m[m.trainIdx].pt for m in good], dtype=np.float64)
            model_class = {"rigid": EuclideanTransform, "similarity": SimilarityTransform,
                           "affine": AffineTransform}[kind]
            model, inliers = ransac((src, dst), model_class, min_samples=3 if kind == "affine" else 2,
                                    residual_threshold=RANSAC_THRESHOLD, max_trials=3000,
                                    stop_probability=0.999, rng=0)
            found = 0 if inliers is None else int(inliers.sum())
            if model is None or found < MIN_INLIERS:
                why = f"only {found} of {len(good)} ORB matches agree on one {kind} transform"
            elif not _plausible(np.asarray(model.params)):
                why = f"the ORB+RANSAC {kind} fit ({found} matches) is implausible (reflection, scale or shear)"
            else:
                return np.asarray(model.params, dtype=np.float64), f"ORB+RANSAC ({found} of {len(good)} matches)"
    return _phase_translation(fixed, moving), f"phase correlation (translation only; {why})"


def _phase_translation(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Translation fixed -> moving by phase correlation of the whole (coarse) images."""
    from skimage.registration import phase_cross_correlation

    height = max(fixed.shape[0], moving.shape[0])
    width = max(fixed.shape[1], moving.shape[1])
    a = np.zeros((height, width), np.float32)
    b = np.zeros((height, width), np.float32)
    a[:fixed.shape[0], :fixed.shape[1]] = fixed - fixed.mean()
    b[:moving.shape[0], :moving.shape[1]] = moving - moving.mean()
    with warnings.catch_warnings():  # an empty image gives no RMS error, which is not used here
        warnings.simplefilter("ignore", UserWarning)
        shift = phase_cross_correlation(a, b, upsample_factor=1)[0]
    return _translate(-float(shift[1]), -float(shift[0]))


# -- the fine step --------------------------------------------------------------------------------
def _ecc(fixed: np.ndarray, moving: np.ndarray, matrix: np.ndarray, *, rigid: bool) -> np.ndarray | None:
    """ECC refinement of ``matrix`` (fixed -> moving, same scale); None when it does not converge."""
    import cv2

    motion = cv2.MOTION_EUCLIDEAN if rigid else cv2.MOTION_AFFINE
    iterations = int(np.clip(2e7 / fixed.size, 30, 200))
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, 1e-6)
    warp = matrix[:2].astype(np.float32)
    try:
        _, warp = cv2.findTransformECC(_smooth(fixed), _smooth(moving), warp, motion, criteria, None, 5)
    except cv2.error as exc:
        log.debug("ECC did not converge: %s", exc)
        return None
    refined = np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]])
    return refined if _plausible(refined) else None


def _quarter_turns(moving: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` turned by the multiple of 90° that leaves ``matrix`` the smallest rotation, and the
    matrix mapping the turned image's pixels to ``moving``'s (exact: no resampling)."""
    best = None
    for turns in range(4):
        to_moving, shape = np.eye(3), moving.shape
        for _ in range(turns):  # np.rot90: turned (x, y) -> (width - 1 - y, x) of the image before
            step = np.array([[0.0, -1.0, shape[1] - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
            to_moving, shape = to_moving @ step, (shape[1], shape[0])
        rest = np.linalg.inv(to_moving) @ matrix
        angle = abs(math.atan2(rest[1, 0], rest[0, 0]))
        if best is None or angle < best[0]:
            best = (angle, turns, to_moving)
    return np.ascontiguousarray(np.rot90(moving, best[1])), best[2]


def _refine(fixed: np.ndarray, moving: np.ndarray, matrix: np.ndarray, kind: str,
            scales: list[float]) -> tuple[np.ndarray, bool]:
    """ECC from the coarsest of ``scales`` to the finest; stops (refined False) at a failed level.

    OpenCV's Euclidean ECC reads the rotation angle with ``asin``, so for ``"rigid"`` the moving image
    is first turned by quarter turns (exactly, no resampling) to leave a rotation under 45°."""
    to_moving = np.eye(3)
    if kind == "rigid":
        moving, to_moving = _quarter_turns(moving, matrix)
        matrix = np.linalg.inv(to_moving) @ matrix
    for k in scales:
        zoom = _zoom(k)
        at_k = _ecc(_rescale(fixed, k), _rescale(moving, k), zoom @ matrix @ np.linalg.inv(zoom),
                    rigid=kind == "rigid")
        if at_k is None:
            log.info("ECC refinement stopped at scale %.3f: it did not converge", k)
            return to_moving @ matrix, False
        matrix = np.linalg.inv(zoom) @ at_k @ zoom
    return to_moving @ matrix, True


def _pyramid(coarse_scale: float, finest: float) -> list[float]:
    """Scales from ``coarse_scale`` up by factors of 2, ending at ``finest``."""
    scales, k = [], coarse_scale
    while k < 0.99 * finest:
        scales.append(k)
        k *= 2
    return scales + [finest]


def _estimate(fixed: np.ndarray, moving: np.ndarray, *, kind: str, coarse_side: int, fixed_mpp: float | None,
              initial: tuple[np.ndarray, str] | None = None) -> tuple[np.ndarray, str, bool, np.ndarray]:
    """Coarse (unless ``initial`` is given) then fine; both images have the same pixel size.

    Returns the refined matrix, the coarse method, whether ECC converged, and the starting matrix."""
    scale = min(1.0, coarse_side / max(fixed.shape + moving.shape))
    if initial is None:
        zoom = _zoom(scale)
        coarse, method = _coarse(_rescale(fixed, scale), _rescale(moving, scale), kind)
        matrix = np.linalg.inv(zoom) @ coarse @ zoom
        method = f"{method} {_scale_label(fixed_mpp, scale)}"
    else:
        matrix, method = initial
    finest = min(1.0, ECC_MAX_SIDE / max(fixed.shape))
    refined_matrix, refined = _refine(fixed, moving, matrix, kind, _pyramid(min(scale, finest), finest))
    if kind == "similarity":
        refined_matrix = _nearest_similarity(refined_matrix, fixed.shape)
    return refined_matrix, method, refined, matrix


# -- the residual ---------------------------------------------------------------------------------
def _residual(fixed: np.ndarray, moving: np.ndarray, matrix: np.ndarray) -> tuple[float, float, int, int]:
    """(median, 90th percentile, patches used, patches inside the overlap) of the shift left after
    warping ``moving`` into ``fixed``'s frame with ``matrix``, by phase correlation on patches."""
    import cv2
    from skimage.registration import phase_cross_correlation

    height, width = fixed.shape
    size = (width, height)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(_smooth(moving), matrix[:2], size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    inside = cv2.warpAffine(np.ones(moving.shape, np.float32), matrix[:2], size, flags=flags,
                            borderMode=cv2.BORDER_CONSTANT) > 0.999
    smooth_fixed = _smooth(fixed)
    patch = min(PATCH, max(32, min(height, width) // 2))
    step = patch // 2
    ys = range((height - patch) % step // 2, height - patch + 1, step)
    xs = range((width - patch) % step // 2, width - patch + 1, step)
    boxes = [(y, x) for y in ys for x in xs]
    spread_f = np.array([smooth_fixed[y:y + patch, x:x + patch].std() for y, x in boxes])
    overlap = [i for i, (y, x) in enumerate(boxes) if inside[y:y + patch, x:x + patch].all()]
    spread_m = np.array([warped[boxes[i][0]:boxes[i][0] + patch, boxes[i][1]:boxes[i][1] + patch].std()
                         for i in overlap])
    if not overlap:
        return math.inf, math.inf, 0, 0
    floor_f = max(0.2 * float(np.percentile(spread_f, 90)), 1e-4)
    floor_m = max(0.2 * float(np.percentile(spread_m, 90)), 1e-4)
    used = [i for i, s in zip(overlap, spread_m) if s >= floor_m and spread_f[i] >= floor_f]
    if len(used) > MAX_RESIDUAL_PATCHES:
        used = [used[int(j)] for j in np.linspace(0, len(used) - 1, MAX_RESIDUAL_PATCHES)]
    window = np.outer(np.hanning(patch), np.hanning(patch)).astype(np.float32)
    shifts = []
    for i in used:
        y, x = boxes[i]
        a = smooth_fixed[y:y + patch, x:x + patch]
        b = warped[y:y + patch, x:x + patch]
        shift = phase_cross_correlation((a - a.mean()) * window, (b - b.mean()) * window, upsample_factor=10)[0]
        shifts.append(float(np.hypot(*shift)))
    if not shifts:
        return math.inf, math.inf, 0, len(overlap)
    return float(np.median(shifts)), float(np.percentile(shifts, 90)), len(shifts), len(overlap)


def _judge(median: float, p90: float, used: int, overlap: int, *, max_residual_px: float, method: str,
           where: str) -> None:
    """Raise :class:`RegistrationError` for too few patches or a residual above the threshold."""
    where = f" {where}" if where else ""
    if used < MIN_PATCHES:
        raise RegistrationError(
            f"the alignment cannot be verified: only {used} patches ({overlap} inside the overlap of the two "
            f"images) show structure in both images{where}, at least {MIN_PATCHES} are needed; coarse step: "
            f"{method}. Check that both images show the same section and that each structure image shows "
            "the nuclei (haematoxylin for brightfield, the DAPI/Hoechst channel for fluorescence), or give "
            "larger images"
        )
    if not median <= max_residual_px:
        raise RegistrationError(
            f"the images are not aligned well enough: the median residual displacement is {median:.1f} px "
            f"(90th percentile {p90:.1f} px, {used} patches{where}), above max_residual_px={max_residual_px:g}; "
            f"coarse step: {method}. Check that the two images show the same section, that each structure "
            "image shows the nuclei (haematoxylin for brightfield, the DAPI/Hoechst channel for "
            "fluorescence), or raise max_residual_px if a looser alignment is acceptable"
        )


# -- public API -----------------------------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ParameterError(f"kind={kind!r} is not a registration kind; choose one of {', '.join(KINDS)}")


def _check_plane(name: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{name} must be a 2-D structure image (Y, X), got shape {image.shape}; make one from "
                         "an RGB or multi-channel image with structure_image(image)")
    if min(image.shape) < 32:
        raise InputError(f"{name} is {image.shape[1]} x {image.shape[0]} px; registration needs at least 32 px a "
                         "side (64 or more to measure the residual)")
    if not np.issubdtype(image.dtype, np.number) or not np.all(np.isfinite(image)):
        raise InputError(f"{name} must hold finite numbers (dtype {image.dtype}); replace NaN/inf first")
    return image.astype(np.float32, copy=False)


def _check_mpp(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ParameterError(f"{name}={value} is not a positive pixel size in micrometres (e.g. 0.25 for 40x)")


def register(fixed: np.ndarray, moving: np.ndarray, *, kind: str = "affine", coarse_side: int = 1024,
             max_residual_px: float = 4.0, fixed_mpp: float | None = None,
             moving_mpp: float | None = None) -> Registration:
    """Align ``moving`` to ``fixed`` and measure the residual (see the module docstring for the method).

    Parameters
    ----------
    fixed, moving
        2-D float structure images (:func:`structure_image`), nuclei bright in both.
    kind
        ``"rigid"``, ``"similarity"`` or ``"affine"``.
    coarse_side
        The coarse (feature) step works on images shrunk so their long side is at most this.
    max_residual_px
        The largest acceptable median residual displacement, in fixed pixels.
    fixed_mpp, moving_mpp
        Pixel sizes in micrometres.  When both are given and differ, the moving image is resampled
        to the fixed pixel size before registering (the matrix still maps fixed to moving pixels).
        ``fixed_mpp`` alone gives ``residual_um``.  Without both, the images are assumed to share a
        pixel size (a similarity or affine fit still absorbs a moderate scale change).

    Returns
    -------
    Registration
        ``matrix`` maps fixed pixel coordinates ``(x, y, 1)`` to moving pixel coordinates.

    Raises
    ------
    RegistrationError
        Fewer than :data:`MIN_PATCHES` patches with structure in both images, or a median residual
        above ``max_residual_px``.
    InputError, ParameterError
        Images that are not 2-D finite arrays of at least 32 px a side; invalid options.
    """
    _check_kind(kind)
    fixed = _check_plane("fixed", fixed)
    moving = _check_plane("moving", moving)
    if not (isinstance(coarse_side, int) and coarse_side >= 64):
        raise ParameterError(f"coarse_side={coarse_side!r} must be an integer of at least 64 pixels (e.g. 1024)")
    if not (max_residual_px > 0 and math.isfinite(max_residual_px)):
        raise ParameterError(f"max_residual_px={max_residual_px} must be a positive number of pixels (e.g. 4)")
    _check_mpp("fixed_mpp", fixed_mpp)
    _check_mpp("moving_mpp", moving_mpp)
    return _register_planes(fixed, moving, kind=kind, coarse_side=coarse_side, max_residual_px=max_residual_px,
                            fixed_mpp=fixed_mpp, moving_mpp=moving_mpp)


def _register_planes(fixed: np.ndarray, moving: np.ndarray, *, kind: str, coarse_side: int,
                     max_residual_px: float, fixed_mpp: float | None, moving_mpp: float | None,
                     initial: tuple[np.ndarray, str] | None = None, where: str = "",
                     check: bool = True) -> Registration:
    """:func:`register` on checked planes; ``initial`` (fixed -> moving pixels, and its description)
    replaces the coarse step."""
    ratio = 1.0  # moving pixels per fixed pixel
    if fixed_mpp is not None and moving_mpp is not None and abs(fixed_mpp / moving_mpp - 1.0) > 1e-3:
        ratio = fixed_mpp / moving_mpp
    to_normal = _zoom(1.0 / ratio)  # moving pixels -> moving pixels at the fixed pixel size
    normal = _rescale(moving, 1.0 / ratio)
    if initial is not None:
        initial = (to_normal @ initial[0], initial[1])
    matrix, method, refined, start = _estimate(fixed, normal, kind=kind, coarse_side=coarse_side,
                                               fixed_mpp=fixed_mpp, initial=initial)
    median, p90, used, overlap = _residual(fixed, normal, matrix)
    if not median <= max_residual_px and refined:  # ECC may have found a wrong optimum: keep the better
        alt = _residual(fixed, normal, start)
        if alt[0] < median:
            log.info("the ECC refinement left a larger residual (%.2f px) than its start (%.2f px): keeping the "
                     "start", median, alt[0])
            matrix, refined, (median, p90, used, overlap) = start, False, alt
    if check:
        _judge(median, p90, used, overlap, max_residual_px=max_residual_px, method=method, where=where)
    return Registration(
        kind=kind,
        matrix=np.linalg.inv(to_normal) @ matrix,
        residual_px=median,
        residual_p90_px=p90,
        residual_um=None if fixed_mpp is None or not math.isfinite(median) else median * fixed_mpp,
        patches=used,
        coarse_method=method,
        refined=refined,
        measured_on=f"fixed image pixels ({fixed.shape[1]} x {fixed.shape[0]})",
    )


def measure_residual(fixed: np.ndarray, moving: np.ndarray, matrix: np.ndarray) -> tuple[float, float, int]:
    """The displacement left after aligning ``moving`` to ``fixed`` with ``matrix``, measured by phase
    correlation on patches that show structure in both images (the check :func:`register` applies).

    Parameters
    ----------
    fixed, moving
        2-D structure images.
    matrix
        ``3 x 3`` (or ``2 x 3``), fixed pixels -> moving pixels, e.g. ``Registration.matrix``.

    Returns
    -------
    tuple
        ``(median, 90th percentile, patches)``: shift lengths in fixed pixels (``inf`` and 0 patches
        when no patch shows structure in both images).
    """
    fixed = _check_plane("fixed", fixed)
    moving = _check_plane("moving", moving)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape not in ((2, 3), (3, 3)) or not np.all(np.isfinite(matrix)):
        raise ParameterError(f"matrix must be a finite 2 x 3 or 3 x 3 affine matrix, got shape {matrix.shape}")
    median, p90, used, _ = _residual(fixed, moving, matrix[:2])
    return median, p90, used


_CV2_DEPTHS = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float32, np.float64)}


def warp_to_fixed(moving: np.ndarray, registration: Registration, fixed_shape: tuple[int, int], *,
                  labels: bool = False) -> np.ndarray:
    """Resample ``moving`` (``(Y, X)`` or ``(Y, X, C)``) into the fixed image's pixel grid.

    Parameters
    ----------
    moving
        The moving image, in the pixel coordinates ``registration.matrix`` maps to (for
        :func:`register_slides`: level 0 of the moving slide, or any array whose origin and pixel size
        match it).
    registration
        The alignment; ``matrix`` maps fixed pixels to moving pixels (``cv2.WARP_INVERSE_MAP``).
    fixed_shape
        ``(height, width)`` of the output.
    labels
        Nearest neighbour: every output value is a value of ``moving`` (or 0), never a blend; for label
        images of any integer dtype.  Otherwise bilinear.

    Returns
    -------
    numpy.ndarray
        ``fixed_shape`` (plus ``moving``'s channel axis) in ``moving``'s dtype; 0 outside the moving image.
    """
    import cv2

    moving = np.asarray(moving)
    if moving.ndim not in (2, 3) or moving.shape[0] < 1 or moving.shape[1] < 1:
        raise InputError(f"moving must be a (Y, X) or (Y, X, C) array, got shape {moving.shape}")
    if len(fixed_shape) != 2 or min(fixed_shape) < 1:
        raise ParameterError(f"fixed_shape={fixed_shape} must be (height, width) with positive sizes")
    height, width = (int(n) for n in fixed_shape)
    matrix = registration.matrix[:2]
    flags = (cv2.INTER_NEAREST if labels else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP

    def warp(plane: np.ndarray) -> np.ndarray:  # (Y, X) or (Y, X, <=4) of a dtype cv2 warps
        out = cv2.warpAffine(np.ascontiguousarray(plane), matrix, (width, height), flags=flags,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.reshape((height, width) + plane.shape[2:])

    stack = moving if moving.ndim == 3 else moving[..., None]
    if labels:
        if moving.dtype == np.bool_:
            return warp_to_fixed(moving.view(np.uint8), registration, fixed_shape, labels=True).view(np.bool_)
        if moving.dtype not in _CV2_DEPTHS:
            # split each value into 16-bit words: the same nearest pixel is taken for every word,
            # so the values are put back together exactly, whatever the dtype
            words = np.ascontiguousarray(stack).view(np.uint16)
            out = np.concatenate([warp(words[..., i:i + 4]) for i in range(0, words.shape[2], 4)], axis=2)
            out = np.ascontiguousarray(out).view(moving.dtype)
            return out if moving.ndim == 3 else out[..., 0]
    work = stack if moving.dtype in _CV2_DEPTHS else stack.astype(np.float64)
    out = np.concatenate([warp(work[..., i:i + 4]) for i in range(0, work.shape[2], 4)], axis=2)
    if out.dtype != moving.dtype:
        if np.issubdtype(moving.dtype, np.integer):
            info = np.iinfo(moving.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(moving.dtype)
    return out if moving.ndim == 3 else out[..., 0]


# -- whole slides ---------------------------------------------------------------------------------
def _centre_to_level0(downsample: float) -> np.ndarray:
    """Maps pixel centres of an image ``downsample`` times smaller than level 0 to level-0 pixels."""
    return np.linalg.inv(_zoom(1.0 / downsample))


def _read_structure(slide: Slide, plan: ResolutionPlan, box: tuple[int, int, int, int], *, channel: int | None,
                    stain: str) -> tuple[np.ndarray, np.ndarray]:
    """The structure image of level-0 box ``(x0, y0, x1, y1)`` at the plan's working resolution, and
    the matrix mapping its pixels to level-0 pixels."""
    level = slide.info.levels[plan.level]
    ds = level.downsample
    lx0 = int(np.clip(math.floor(box[0] / ds), 0, level.width - 1))
    ly0 = int(np.clip(math.floor(box[1] / ds), 0, level.height - 1))
    lx1 = int(np.clip(math.ceil(box[2] / ds), lx0 + 1, level.width))
    ly1 = int(np.clip(math.ceil(box[3] / ds), ly0 + 1, level.height))
    raw = slide.read_region(plan.level, lx0, ly0, lx1 - lx0, ly1 - ly0)
    if channel is not None:  # one channel only: cv2 resamples at most 4 at once
        raw, channel = raw[..., channel:channel + 1], 0
    if raw.dtype not in _CV2_DEPTHS:
        raw = raw.astype(np.float32)
    k = plan.scale  # level pixels -> working pixels
    if k != 1.0:
        raw = _rescale(raw, k)
        raw = raw[..., None] if raw.ndim == 2 else raw
    plane = structure_image(raw, channel=channel, stain=stain)
    # working px p -> level px (p + 0.5) / k - 0.5 + lx0 -> level-0 px
    to_level0 = _centre_to_level0(ds) @ _translate(lx0, ly0) @ np.linalg.inv(_zoom(k))
    return plane, to_level0


def register_slides(fixed: Slide, moving: Slide, *, working_mpp: float | None, kind: str = "affine",
                    max_residual_px: float = 4.0, region_side: int = 4096, thumbnail_side: int = 1024,
                    coarse_side: int = 1024, fixed_channel: int | None = None, moving_channel: int | None = None,
                    stain: str = "hematoxylin") -> Registration:
    """Align two whole slides of the same section; the matrix maps FIXED LEVEL-0 pixels to MOVING
    LEVEL-0 pixels.

    1. Thumbnails of both slides (:func:`dlcore.tiling.tissue.thumbnail`, long side
       ``thumbnail_side``) are registered (coarse features, then ECC at thumbnail scale).
    2. A bounded region is refined at ``working_mpp``: the square of at most ``region_side`` working
       pixels centred on the fixed slide's tissue (the centroid of its tissue mask), and the part of the
       moving slide it maps to (plus a margin).  Memory does not grow with the slide's size.
    3. The residual is measured on that region (see :func:`register`).

    Parameters
    ----------
    fixed, moving
        The routine-stain slide and the slide whose marker is to be brought into its frame.
    working_mpp
        Resolution of the refinement and of the residual, micrometres per pixel; None works at each
        slide's level 0.  Both slides need a pixel size when it is given.
    kind
        ``"rigid"``, ``"similarity"`` or ``"affine"``.
    max_residual_px
        Largest acceptable median residual, in WORKING-resolution pixels (the resolution the marker's
        labels are made at); the reported ``residual_px`` is in fixed level-0 pixels.
    region_side
        Side of the refinement region, working pixels (at least 256).
    thumbnail_side
        Long side of the thumbnails of the coarse step.
    coarse_side
        Coarsest scale of the ECC pyramid on the region (long side, pixels).
    fixed_channel, moving_channel, stain
        How each slide's structure image is made (:func:`structure_image`): a channel index for
        fluorescence or other non-RGB slides, otherwise the stain of 8-bit RGB slides.

    Returns
    -------
    Registration
        ``matrix``: fixed level-0 ``(x, y, 1)`` -> moving level-0; residuals in fixed level-0 pixels
        (and micrometres when the fixed slide has a pixel size).  When neither slide has a pixel size,
        their level-0 pixels are assumed to be the same size.

    Notes
    -----
    Pyramid levels are taken as centred on the level-0 pixels they summarise (area averaging, as
    scanners and ``bfconvert`` write them).  A level made by keeping every other pixel is offset by
    half a level-0 pixel per halving; at a ``working_mpp`` coarser than level 0 that offset (under half
    a working pixel) adds to the error, unless both slides' pyramids share it and their pixel sizes.

    Raises
    ------
    RegistrationError
        The slides cannot be aligned, or the residual on the region is too large.
    InputError
        ``working_mpp`` is given and a slide has no pixel size.
    """
    from dlcore.io.slide import level_mpp, plan_resolution
    from dlcore.tiling.tissue import thumbnail, tissue_mask_from_thumbnail

    _check_kind(kind)
    _check_mpp("working_mpp", working_mpp)
    if not (isinstance(region_side, int) and region_side >= 256):
        raise ParameterError(f"region_side={region_side!r} must be an integer of at least 256 working pixels")
    if not (max_residual_px > 0 and math.isfinite(max_residual_px)):
        raise ParameterError(f"max_residual_px={max_residual_px} must be a positive number of pixels (e.g. 4)")
    for slide, channel in ((fixed, fixed_channel), (moving, moving_channel)):
        if channel is not None:
            slide.info.channel_name(channel)  # a SlideError naming the channels there are
    mpp_f, mpp_m = level_mpp(fixed.info, 0), level_mpp(moving.info, 0)
    both_mpp = mpp_f is not None and mpp_m is not None
    base_f, base_m = (mpp_f, mpp_m) if both_mpp else (1.0, 1.0)  # relative sizes when a slide has none

    # 1. thumbnails
    thumb_f, ds_f = thumbnail(fixed, max_side=thumbnail_side)
    thumb_m, ds_m = thumbnail(moving, max_side=thumbnail_side)
    plane_f = structure_image(thumb_f, channel=fixed_channel, stain=stain)
    plane_m = structure_image(thumb_m, channel=moving_channel, stain=stain)
    coarse = _register_planes(
        _check_plane("the fixed slide's thumbnail", plane_f), _check_plane("the moving slide's thumbnail", plane_m),
        kind=kind, coarse_side=thumbnail_side, max_residual_px=math.inf, fixed_mpp=base_f * ds_f,
        moving_mpp=base_m * ds_m, check=False)
    thumb_method = coarse.coarse_method + " on the thumbnails"
    if not both_mpp:
        thumb_method = thumb_method.replace("µm/px", "level-0 px per px (no pixel size: level-0 pixels "
                                                      "taken as equal)")
    level0 = _centre_to_level0(ds_m) @ coarse.matrix @ np.linalg.inv(_centre_to_level0(ds_f))

    # 2. the region: a square of tissue in the fixed slide, and where it lies in the moving slide
    plan_f = plan_resolution(fixed.info, working_mpp)
    plan_m = plan_resolution(moving.info, working_mpp)
    mask, _ = tissue_mask_from_thumbnail(thumb_f, fixed.info)
    ys, xs = np.nonzero(mask)
    centre_t = (xs.mean(), ys.mean()) if xs.size else ((mask.shape[1] - 1) / 2, (mask.shape[0] - 1) / 2)
    centre = _centre_to_level0(ds_f) @ np.array([centre_t[0], centre_t[1], 1.0])
    half = region_side * plan_f.factor / 2
    fx0 = int(np.clip(round(centre[0] - half), 0, max(0, fixed.info.width - 2 * half)))
    fy0 = int(np.clip(round(centre[1] - half), 0, max(0, fixed.info.height - 2 * half)))
    box_f = (fx0, fy0, int(min(fixed.info.width, fx0 + 2 * half)), int(min(fixed.info.height, fy0 + 2 * half)))
    region_f, to0_f = _read_structure(fixed, plan_f, box_f, channel=fixed_channel, stain=stain)
    corners = np.array([[box_f[0], box_f[1]], [box_f[2], box_f[1]], [box_f[0], box_f[3]], [box_f[2], box_f[3]]],
                       dtype=np.float64)
    mapped = corners @ level0[:2, :2].T + level0[:2, 2]
    margin = 64 * plan_m.factor
    lo, hi = mapped.min(axis=0) - margin, mapped.max(axis=0) + margin
    if (hi - lo).max() > 3 * region_side * plan_m.factor:
        raise RegistrationError(
            f"the thumbnails' alignment ({thumb_method}) maps a {region_side}-pixel region of {fixed.info.name} "
            f"onto {int((hi - lo).max() / plan_m.factor)} pixels of {moving.info.name}: the coarse step failed. "
            "Check that both slides show the same section and choose the structure channel (fixed_channel, "
            "moving_channel) that shows the nuclei in each"
        )
    box_m = (max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1]))),
             min(moving.info.width, int(math.ceil(hi[0]))), min(moving.info.height, int(math.ceil(hi[1]))))
    if box_m[2] - box_m[0] < 32 * plan_m.factor or box_m[3] - box_m[1] < 32 * plan_m.factor:
        raise RegistrationError(
            f"the thumbnails' alignment ({thumb_method}) places the tissue of {fixed.info.name} outside "
            f"{moving.info.name}: the slides do not overlap. Check that both show the same section"
        )
    region_m, to0_m = _read_structure(moving, plan_m, box_m, channel=moving_channel, stain=stain)
    start = np.linalg.inv(to0_m) @ level0 @ to0_f  # fixed region px -> moving region px

    # 3. refine and measure on the region
    work_f = None if mpp_f is None else mpp_f * plan_f.factor
    work_m = None if mpp_m is None else mpp_m * plan_m.factor
    rel_f, rel_m = (work_f, work_m) if both_mpp else (plan_f.factor, plan_m.factor)
    where = (f"on a {region_f.shape[1]} x {region_f.shape[0]} px region of the fixed slide at "
             f"{'level 0' if working_mpp is None else f'{working_mpp:g} µm/px'}")
    fine = _register_planes(
        _check_plane("the fixed slide's region", region_f), _check_plane("the moving slide's region", region_m),
        kind=kind, coarse_side=coarse_side, max_residual_px=max_residual_px, fixed_mpp=rel_f, moving_mpp=rel_m,
        initial=(start, thumb_method), where=where)
    matrix = to0_m @ fine.matrix @ np.linalg.inv(to0_f)
    residual = fine.residual_px * plan_f.factor
    p90 = fine.residual_p90_px * plan_f.factor
    return Registration(
        kind=kind,
        matrix=matrix,
        residual_px=residual,
        residual_p90_px=p90,
        residual_um=None if mpp_f is None else residual * mpp_f,
        patches=fine.patches,
        coarse_method=thumb_method,
        refined=fine.refined,
        measured_on=f"fixed level-0 pixels; measured {where} (x={box_f[0]}, y={box_f[1]} in level 0)",
    )
