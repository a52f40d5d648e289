"""Histology augmentations (numpy): flips, 90° rotations, HED colour jitter, brightness, blur.

Geometric transforms are applied identically to the image and its mask, so they stay aligned;
colour and blur touch the image only.  HED jitter follows Tellez et al. (2018): the image is
unmixed into haematoxylin, eosin and DAB optical densities (scikit-image's ``rgb2hed``), each
is scaled by ``1 + a`` and shifted by ``b`` with small random ``a, b``, and mixed back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentSpec:
    """Which augmentations to apply and how strongly.

    Attributes
    ----------
    flips : random horizontal and vertical flips.
    rotate90 : random rotation by a multiple of 90°.
    hed_sigma : scale jitter of each stain (0 = none; 0.03 - 0.1 typical); RGB images only.
    hed_bias : shift jitter of each stain's optical density.
    brightness : multiplicative brightness jitter (0 = none).
    blur_probability : probability of a Gaussian blur.
    blur_sigma : maximum blur sigma in pixels.
    scale_jitter : random zoom by a factor in ``[1 / (1 + s), 1 + s]`` (0 = none), image and mask alike,
        for tolerance to pixel sizes other than the model's.
    ihc_probability : instances on RGB H&E only: probability that a training tile is re-stained as IHC
        (:func:`dlcore.train.restain.as_ihc`, exact masks kept).
    """

    flips: bool = True
    rotate90: bool = True
    hed_sigma: float = 0.05
    hed_bias: float = 0.01
    brightness: float = 0.05
    blur_probability: float = 0.2
    blur_sigma: float = 1.5
    scale_jitter: float = 0.0
    ihc_probability: float = 0.0

    @classmethod
    def none(cls) -> "AugmentSpec":
        """No augmentation at all."""
        return cls(False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def geometric(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, spec: AugmentSpec):
    """Random flips and 90° rotations applied to both ``(Y, X, C)`` image and ``(Y, X)`` mask."""
    if spec.flips:
        if rng.random() < 0.5:
            image, mask = image[::-1], None if mask is None else mask[::-1]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], None if mask is None else mask[:, ::-1]
    if spec.rotate90:
        k = int(rng.integers(4))
        image = np.rot90(image, k, axes=(0, 1))
        mask = None if mask is None else np.rot90(mask, k, axes=(0, 1))
    return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)


def hed_jitter(image: np.ndarray, rng: np.random.Generator, *, sigma: float, bias: float) -> np.ndarray:
    """Perturb the stain concentrations of an RGB image (uint8 or float in [0, 1]); same dtype back."""
    from skimage.color import hed2rgb, rgb2hed

    if image.shape[-1] != 3 or (sigma == 0 and bias == 0):
        return image
    rgb = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    hed = rgb2hed(rgb)
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3)
    beta = rng.uniform(-bias, bias, 3)
    out = np.clip(hed2rgb(hed * alpha + beta), 0, 1)
    return np.round(out * 255).astype(np.uint8) if image.dtype == np.uint8 else out.astype(image.dtype)


def photometric(image: np.ndarray, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
    """HED jitter, brightness and blur (image only)."""
    from scipy import ndimage as ndi

    image = hed_jitter(image, rng, sigma=spec.hed_sigma, bias=spec.hed_bias)
    top = 255.0 if image.dtype == np.uint8 else None
    if spec.brightness > 0:
        gain = rng.uniform(1 - spec.brightness, 1 + spec.brightness)
        scaled = image.astype(np.float32) * gain
        image = np.clip(scaled, 0, top).astype(image.dtype) if top else scaled.astype(image.dtype)
    if spec.blur_probability > 0 and rng.random() < spec.blur_probability:
        sigma = rng.uniform(0.3, max(spec.blur_sigma, 0.3))
        blurred = ndi.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0))
        image = np.clip(np.round(blurred), 0, top).astype(image.dtype) if top else blurred.astype(image.dtype)
    return image


def augment(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
            spec: AugmentSpec = AugmentSpec()) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``spec`` to a ``(Y, X, C)`` image and its optional ``(Y, X)`` mask (kept aligned)."""
    image, mask = geometric(image, mask, rng, spec)
    return photometric(image, rng, spec), mask
