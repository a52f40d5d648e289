"""The seeds' classical nuclei pipeline.

Signal → Gaussian smoothing (sigma 3) → local background removed → two-class threshold (k-means, or
Otsu) → watershed to split touching nuclei → removal of objects under 60 pixels, and of objects far
larger than a nucleus.

The signal is the haematoxylin channel from colour deconvolution (H&E, IHC), or any channel by index
for fluorescence or grey images.  The stain vectors are estimated from the slide itself
(:mod:`dlcore.tasks.stains`), so that the slide's real DAB or eosin does not leak into the
haematoxylin channel, as it does with the textbook vectors.

Cytoplasm holds haematoxylin too, and in dense epithelium its level is close to the nuclei's, so one
slide-wide threshold on the raw signal splits tissue from glass, not nuclei from cytoplasm (whole
glands come out as "nuclei").  As QuPath's cell detection does, the local background (a grey opening
of the smoothed signal with a square of ``background_radius_um``, wider than a nucleus) is subtracted
first: what is thresholded is how much a nucleus stands out from its own surroundings.

Stains and threshold are computed once per slide from sample windows (:meth:`ClassicalNuclei.prepare`),
so every tile uses the same ones and tiling does not change the answer.

The watershed's markers are nuclei centres: the maxima of the distance to the background (the seeds'
choice, good for clumps of round nuclei) or of the smoothed haematoxylin signal (``markers="intensity"``,
for nuclei that touch along long borders).  Regions that stay larger than ``max_area_um2`` after
splitting are not nuclei (a gland, a fold, a stain blot): they are removed, never reported as nuclei.

Sizes given in µm are converted at the working pixel size; for an image without a pixel size
:data:`ASSUMED_MPP` is assumed, and the provenance says so.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlcore.errors import ParameterError, SlideError
from dlcore.io.slide import SlideInfo, to_rgb_uint8
from dlcore.tasks.stains import STAINS, StainMatrix, estimate_stains

MARKERS = ("distance", "intensity")
ASSUMED_MPP = 0.5  # µm per pixel assumed for physical sizes when an image has no pixel size (20x)


MAX_SIGMA = 50.0  # working pixels: wider smoothing than this has no nuclei left to find


def kmeans_threshold(values: np.ndarray, *, iterations: int = 100) -> float:
    """The two-class 1-D k-means threshold: the midpoint between the two converged class means."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or np.ptp(values) == 0:
        raise ParameterError("cannot compute a k-means threshold: the image is uniform (no objects to separate)")
    low, high = np.percentile(values, [25, 75])
    if low == high:
        low, high = values.min(), values.max()
    for _ in range(iterations):
        cut = (low + high) / 2
        new_low, new_high = values[values <= cut].mean(), values[values > cut].mean()
        if np.isclose(new_low, low) and np.isclose(new_high, high):
            break
        low, high = new_low, new_high
    return float((low + high) / 2)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of the values."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values).ravel()
    if values.size == 0 or np.ptp(values) == 0:
        raise ParameterError("cannot compute an Otsu threshold: the image is uniform (no objects to separate)")
    return float(threshold_otsu(values))


@dataclass(frozen=True)
class ClassicalNuclei:
    """Nuclei segmentation by the seeds' recipe; every field is a parameter recorded in provenance.

    Attributes
    ----------
    channel: ``"hematoxylin"`` (default), ``"eosin"`` or ``"dab"`` (colour deconvolution of 8-bit RGB),
        or a channel index (int) for fluorescence / grey images.
    stain_vectors: ``"estimate"`` (default: the slide's own vectors, Macenko's method) or
        ``"reference"`` (Ruifrok & Johnston's textbook vectors, scikit-image's ``rgb2hed``).
    stain_matrix: the vectors used; computed per slide by :meth:`prepare` (give it to fix them).
    stain_method: how ``stain_matrix`` was obtained (set by :meth:`prepare`, for the provenance).
    invert: treat dark objects on a bright background as the signal (for a grey brightfield channel).
    sigma: Gaussian smoothing in working pixels (seeds: 3).
    threshold_method: ``"kmeans"`` (seeds: two-class k-means) or ``"otsu"``.
    threshold: a fixed threshold on the smoothed signal; None computes it per slide.
    split_touching: split touching nuclei with a watershed.
    markers: the watershed's seeds: ``"distance"`` (maxima of the distance to the background, the
        seeds' choice) or ``"intensity"`` (maxima of the smoothed signal).
    min_distance: minimum distance in pixels between two nuclei centres (watershed seeds).
    min_size: objects with fewer pixels are removed (seeds: 60).
    max_area_um2: objects larger than this (µm²) are not nuclei and are removed (QuPath's cell
        detection uses 400 µm² too).  None: no limit.
    background_radius_um: the local background is a grey opening of this radius (µm), subtracted
        before thresholding (QuPath: 8 µm).  None or 0: no background removal (the bare seeds' recipe).
    mpp: working resolution in µm/pixel; None = the slide's native pixels.
    working_mpp: the working pixel size in µm, set by the workflow for the slide (do not give it).
    tile_size, halo, batch_size: tiling.  The halo must hold all the context a nucleus at a core's
        edge needs (its radius, the smoothing and the background opening); None (default) computes
        that from the other parameters at the working resolution (:meth:`needed_halo`).
    """

    channel: str | int = "hematoxylin"
    stain_vectors: Literal["estimate", "reference"] = "estimate"
    stain_matrix: tuple[tuple[float, float, float], ...] | None = None
    stain_method: str | None = None
    invert: bool = False
    sigma: float = 3.0
    threshold_method: Literal["kmeans", "otsu"] = "kmeans"
    threshold: float | None = None
    split_touching: bool = True
    markers: Literal["distance", "intensity"] = "distance"
    min_distance: int = 6
    min_size: int = 60
    max_area_um2: float | None = 400.0
    background_radius_um: float | None = 8.0
    mpp: float | None = None
    working_mpp: float | None = None
    tile_size: int = 1024
    halo: int | None = None
    batch_size: int = 1

    name = "nuclei-classical"
    version = "1"
    kind = "instances"
    runs_in_process = True  # Python-level numpy/scipy: keep it off the pipeline's interpreter lock
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.channel, str) and self.channel not in STAINS:
            raise ParameterError(f"channel={self.channel!r} is not one of {STAINS} or a channel index (0, 1, ...)")
        if isinstance(self.channel, int) and self.channel < 0:
            raise ParameterError(f"channel={self.channel} must be a channel index >= 0")
        if not self.sigma >= 0:
            raise ParameterError(f"sigma={self.sigma} must be >= 0 (seeds' value: 3)")
        if self.sigma > MAX_SIGMA:
            raise ParameterError(f"sigma={self.sigma} is more than {MAX_SIGMA:g} working pixels: it would blur nuclei "
                                 "(a few pixels across) into the background; the seeds' value is 3")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ParameterError(f"threshold={self.threshold} must be a positive value of the smoothed signal; leave it "
                                 "out to compute it per slide")
        if self.threshold_method not in ("kmeans", "otsu"):
            raise ParameterError(f"threshold_method={self.threshold_method!r} must be 'kmeans' or 'otsu'")
        if self.min_size < 0:
            raise ParameterError(f"min_size={self.min_size} must be >= 0 pixels (seeds' value: 60)")
        if self.stain_vectors not in ("estimate", "reference"):
            raise ParameterError(f"stain_vectors={self.stain_vectors!r} must be 'estimate' or 'reference'")
        self.stains()  # a given stain_matrix must be three independent vectors
        if self.markers not in MARKERS:
            raise ParameterError(f"markers={self.markers!r} must be one of {MARKERS}")
        if self.max_area_um2 is not None and not self.max_area_um2 > 0:
            raise ParameterError(f"max_area_um2={self.max_area_um2} must be a positive area in µm² (or None: no limit)")
        if self.background_radius_um is not None and not self.background_radius_um >= 0:
            raise ParameterError(f"background_radius_um={self.background_radius_um} must be >= 0 µm (0: no background removal)")
        if self.min_distance < 1:
            raise ParameterError(f"min_distance={self.min_distance} must be at least 1 pixel")
        if self.mpp is not None and not self.mpp > 0:
            raise ParameterError(f"mpp={self.mpp} must be a positive pixel size in µm")
        if self.halo is not None and self.halo < 4 * self.sigma:
            raise ParameterError(f"halo={self.halo} must be at least 4*sigma={4 * self.sigma:g} pixels")

    @property
    def min_object_pixels(self) -> int:
        """Objects smaller than this are not kept, also after stitching."""
        return self.min_size

    @property
    def pixel_size_um(self) -> float:
        """The working pixel size used for sizes in µm: the slide's, else :data:`ASSUMED_MPP`."""
        return self.working_mpp or ASSUMED_MPP

    @property
    def max_object_pixels(self) -> int | None:
        """Objects larger than this (working pixels) are not nuclei; None when there is no limit."""
        if self.max_area_um2 is None:
            return None
        return max(self.min_size + 1, int(round(self.max_area_um2 / self.pixel_size_um**2)))

    @property
    def background_radius_px(self) -> int:
        """The background opening's radius in working pixels (0: no background removal)."""
        return int(round((self.background_radius_um or 0) / self.pixel_size_um))

    def needed_halo(self) -> int:
        """The context in working pixels a nucleus at a core's edge needs, so that the result does not
        depend on the tiling: the largest nucleus radius, plus the smoothing (4 sigma) and the
        background opening (twice its radius).  At least 64, rounded up to a multiple of 8."""
        largest = self.max_object_pixels or 4 * int(round(100 / self.pixel_size_um**2))  # else 20 µm across
        need = math.sqrt(largest / math.pi) + 4 * self.sigma + 2 * self.background_radius_px
        return max(64, int(math.ceil(need / 8)) * 8)

    def at_resolution(self, working_mpp: float | None) -> "ClassicalNuclei":
        """A copy that knows the working pixel size and, unless one was given, the halo it needs (the
        workflow calls it once per slide, before tiling)."""
        task = dataclasses.replace(self, working_mpp=working_mpp)
        if task.halo is None:
            task = dataclasses.replace(task, halo=task.needed_halo())
        return task

    # -- the Task protocol -------------------------------------------------------------------
    def check(self, info: SlideInfo) -> None:
        if isinstance(self.channel, str):
            if not info.is_rgb:
                raise SlideError(
                    f"{info.name} is {len(info.channels)}-channel {info.dtype}, but channel={self.channel!r} "
                    "needs 8-bit RGB brightfield; choose a channel index instead (--channel 0 for the first channel)"
                )
        else:
            info.channel_name(self.channel)

    def prepare(self, samples: list[np.ndarray]) -> "ClassicalNuclei":
        task = self
        if isinstance(self.channel, str) and self.stain_matrix is None:
            stains = estimate_stains(samples) if self.stain_vectors == "estimate" else StainMatrix()
            task = dataclasses.replace(task, stain_matrix=stains.vectors, stain_method=stains.method)
        return task._with_threshold(samples)

    def _with_threshold(self, samples: list[np.ndarray]) -> "ClassicalNuclei":
        if self.threshold is not None:
            return self
        values = np.concatenate([self.smoothed_signal(s).ravel() for s in samples]) if samples else np.empty(0)
        if values.size == 0:
            raise ParameterError("no tissue samples to compute the threshold from; give --threshold explicitly")
        if values.size > 2_000_000:
            values = np.random.default_rng(0).choice(values, 2_000_000, replace=False)
        method = kmeans_threshold if self.threshold_method == "kmeans" else otsu_threshold
        return dataclasses.replace(self, threshold=method(values))

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        if self.threshold is None:
            raise ParameterError("the threshold is not set: call prepare() on sample windows first")
        return [self.segment(w) for w in windows]

    def provenance(self) -> dict:
        params = dataclasses.asdict(self)
        return {"task": self.name, "version": self.version, "parameters": params,
                "max_object_pixels": self.max_object_pixels, "background_radius_px": self.background_radius_px,
                "pixel_size_for_um": self.pixel_size_um if self.working_mpp else
                f"{ASSUMED_MPP} µm/px assumed (the image has no pixel size; give --mpp)"}

    # -- the pipeline --------------------------------------------------------------------------
    def signal(self, window: np.ndarray) -> np.ndarray:
        """The ``(Y, X)`` float signal where nuclei are high."""
        if isinstance(self.channel, str):
            rgb = to_rgb_uint8(window, what=f"channel={self.channel!r}")
            signal = self.stains().concentrations(rgb)[..., STAINS.index(self.channel)]
        else:
            signal = window[..., self.channel].astype(np.float32)
        return -signal if self.invert else signal

    def stains(self) -> StainMatrix:
        """The stain matrix colour deconvolution uses: the slide's (after :meth:`prepare`) or the reference."""
        if self.stain_matrix is None:
            return StainMatrix()
        return StainMatrix(vectors=tuple(tuple(float(v) for v in row) for row in self.stain_matrix),
                           method=self.stain_method or "given")

    def smoothed_signal(self, window: np.ndarray) -> np.ndarray:
        """The signal smoothed (``sigma``) with its local background removed (``background_radius_um``):
        what the threshold applies to."""
        from scipy import ndimage as ndi

        from dlcore.imageops import grey_opening_square

        signal = self.signal(window).astype(np.float32)
        smoothed = ndi.gaussian_filter(signal, self.sigma) if self.sigma > 0 else signal
        radius = self.background_radius_px
        if radius > 0:
            smoothed = smoothed - grey_opening_square(smoothed, radius)
        return smoothed

    def segment(self, window: np.ndarray) -> np.ndarray:
        """Instance labels (int32, 0 = background) of one window."""
        from scipy import ndimage as ndi

        from dlcore.imageops import fill_holes, remove_large, remove_small

        smoothed = self.smoothed_signal(window)
        mask = fill_holes(smoothed > self.threshold)
        if self.split_touching:
            labels = self._watershed(mask, smoothed)
        else:
            labels, _ = ndi.label(mask)
        labels = remove_small(labels.astype(np.int32), self.min_size)
        limit = self.max_object_pixels
        return labels if limit is None else remove_large(labels, limit)

    def _watershed(self, mask: np.ndarray, smoothed: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi
        from skimage.segmentation import watershed

        from dlcore.imageops import label_peaks

        landscape = ndi.distance_transform_edt(mask) if self.markers == "distance" else np.where(mask, smoothed, 0)
        components, _ = ndi.label(mask)
        peaks = label_peaks(landscape, components, self.min_distance)
        markers = np.zeros(mask.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-landscape, markers, mask=mask)
        orphans = mask & (labels == 0)  # components too small to hold a seed keep one label each
        if orphans.any():
            labels[orphans] = components[orphans] + len(peaks)
        return labels
