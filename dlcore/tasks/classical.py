"""The seeds' classical nuclei pipeline.

Signal → Gaussian smoothing (sigma 3) → two-class threshold (k-means, or Otsu) → watershed on the
distance transform to split touching nuclei → removal of objects under 60 pixels.

The signal is the haematoxylin channel from colour deconvolution (H&E, IHC; Ruifrok & Johnston's
HED matrix), or any channel by index for fluorescence or grey images.  The threshold is computed once
per slide from sample windows (:meth:`ClassicalNuclei.prepare`), so every tile uses the same one and
tiling does not change the answer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dlcore.errors import ParameterError, SlideError
from dlcore.io.slide import SlideInfo, to_rgb_uint8

STAINS = ("hematoxylin", "eosin", "dab")


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
    invert: treat dark objects on a bright background as the signal (for a grey brightfield channel).
    sigma: Gaussian smoothing in working pixels (seeds: 3).
    threshold_method: ``"kmeans"`` (seeds: two-class k-means) or ``"otsu"``.
    threshold: a fixed threshold on the smoothed signal; None computes it per slide.
    split_touching: split touching nuclei with a distance-transform watershed.
    min_distance: minimum distance in pixels between two nuclei centres (watershed seeds).
    min_size: objects with fewer pixels are removed (seeds: 60).
    mpp: working resolution in µm/pixel; None = the slide's native pixels.
    tile_size, halo, batch_size: tiling; the halo must exceed the largest nucleus radius.
    """

    channel: str | int = "hematoxylin"
    invert: bool = False
    sigma: float = 3.0
    threshold_method: Literal["kmeans", "otsu"] = "kmeans"
    threshold: float | None = None
    split_touching: bool = True
    min_distance: int = 6
    min_size: int = 60
    mpp: float | None = None
    tile_size: int = 1024
    halo: int = 64
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
        if self.threshold_method not in ("kmeans", "otsu"):
            raise ParameterError(f"threshold_method={self.threshold_method!r} must be 'kmeans' or 'otsu'")
        if self.min_size < 0:
            raise ParameterError(f"min_size={self.min_size} must be >= 0 pixels (seeds' value: 60)")
        if self.min_distance < 1:
            raise ParameterError(f"min_distance={self.min_distance} must be at least 1 pixel")
        if self.mpp is not None and not self.mpp > 0:
            raise ParameterError(f"mpp={self.mpp} must be a positive pixel size in µm")
        if self.halo < 4 * self.sigma:
            raise ParameterError(f"halo={self.halo} must be at least 4*sigma={4 * self.sigma:g} pixels")

    @property
    def min_object_pixels(self) -> int:
        """Objects smaller than this are not kept, also after stitching."""
        return self.min_size

    # -- the Task protocol -------------------------------------------------------------------
    def check(self, info: SlideInfo) -> None:
        if isinstance(self.channel, str):
            if not info.is_rgb:
                raise SlideError(
                    f"{info.name} is {len(info.channels)}-channel {info.dtype}, but channel={self.channel!r} "
                    "needs 8-bit RGB brightfield; choose a channel index instead (--channel 0 for the first channel)"
                )
        elif self.channel >= len(info.channels):
            raise SlideError(
                f"channel {self.channel} does not exist in {info.name}: it has channels "
                f"0..{len(info.channels) - 1} ({', '.join(info.channels)})"
            )

    def prepare(self, samples: list[np.ndarray]) -> "ClassicalNuclei":
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
        return {"task": self.name, "version": self.version, "parameters": params}

    # -- the pipeline --------------------------------------------------------------------------
    def signal(self, window: np.ndarray) -> np.ndarray:
        """The ``(Y, X)`` float signal where nuclei are high."""
        if isinstance(self.channel, str):
            from skimage.color import rgb2hed

            rgb = to_rgb_uint8(window, what=f"channel={self.channel!r}")
            signal = rgb2hed(rgb)[..., STAINS.index(self.channel)]
        else:
            signal = window[..., self.channel].astype(np.float32)
        return -signal if self.invert else signal

    def smoothed_signal(self, window: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        signal = self.signal(window).astype(np.float32)
        return ndi.gaussian_filter(signal, self.sigma) if self.sigma > 0 else signal

    def segment(self, window: np.ndarray) -> np.ndarray:
        """Instance labels (int32, 0 = background) of one window."""
        from scipy import ndimage as ndi

        from dlcore.imageops import remove_small

        mask = self.smoothed_signal(window) > self.threshold
        mask = ndi.binary_fill_holes(mask)
        if self.split_touching:
            labels = self._watershed(mask)
        else:
            labels, _ = ndi.label(mask)
        return remove_small(labels.astype(np.int32), self.min_size)

    def _watershed(self, mask: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        distance = ndi.distance_transform_edt(mask)
        components, _ = ndi.label(mask)
        peaks = peak_local_max(distance, min_distance=self.min_distance, labels=components, exclude_border=False)
        markers = np.zeros(mask.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=mask)
        orphans = mask & (labels == 0)  # components too small to hold a seed keep one label each
        if orphans.any():
            labels[orphans] = components[orphans] + len(peaks)
        return labels
