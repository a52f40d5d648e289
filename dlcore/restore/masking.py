"""Noise2Void blind-spot masking (Krull, Buchholz and Jug, "Noise2Void - Learning Denoising from Single
Noisy Images", CVPR 2019).

A network that sees a pixel cannot learn to denoise it from itself: the noise would be copied.  So,
in each training patch, a small fraction of the pixels (0.2 % by default, as in the paper and
CAREamics) is chosen *stratified* (one at a random place in each cell of a grid, so they are spread
evenly) and each is replaced by the value of a random *other* pixel of its 5 x 5 neighbourhood.  The
loss is computed on those pixels only, against their original noisy value.  Pixel noise that is
independent between pixels cannot be predicted from the neighbours, so the network learns the signal.

All channels of a pixel are masked together, from the same neighbour: noise correlated between the
channels of one pixel (colour cameras) then cannot leak into its own prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlcore.errors import ParameterError


@dataclass(frozen=True)
class BlindSpotMasking:
    """How many pixels are masked and where their replacement values come from.

    Attributes
    ----------
    fraction : fraction of the pixels of a patch that are masked (0.002 = 0.2 %).
    neighbourhood : side of the square window (odd, >= 3) a replacement value is drawn from; the
        pixel itself is never drawn.
    """

    fraction: float = 0.002
    neighbourhood: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 0.25:
            raise ParameterError(f"mask fraction={self.fraction} must be in (0, 0.25]; Noise2Void uses 0.002 (0.2 %)")
        if self.neighbourhood < 3 or self.neighbourhood % 2 == 0:
            raise ParameterError(f"mask neighbourhood={self.neighbourhood} must be an odd size >= 3 (5 in Noise2Void)")


@dataclass(frozen=True)
class MaskedPatch:
    """A patch prepared for Noise2Void.

    Attributes
    ----------
    input : the ``(C, Y, X)`` patch with the masked pixels replaced (what the network sees).
    mask : ``(Y, X)`` bool, True at the masked pixels (where the loss is computed).
    ys, xs : the masked pixels' coordinates.
    source_ys, source_xs : where each one's replacement value was taken from (never the pixel itself).
    """

    input: np.ndarray
    mask: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    source_ys: np.ndarray
    source_xs: np.ndarray


def stratified_positions(shape: tuple[int, int], fraction: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(ys, xs)`` of about ``fraction`` of a ``shape`` patch's pixels: one uniformly random pixel in each
    cell of a grid of ``1/sqrt(fraction)``-pixel cells laid over the patch (cells reaching past the
    edge keep their pixel only when it falls inside), so the expected count is exactly
    ``fraction * Y * X`` and the pixels are spread evenly."""
    height, width = shape
    cell = 1.0 / math.sqrt(fraction)
    gy = np.arange(math.ceil(height / cell)) * cell
    gx = np.arange(math.ceil(width / cell)) * cell
    oy, ox = np.meshgrid(gy, gx, indexing="ij")
    ys = np.floor(oy + rng.random(oy.shape) * cell).astype(np.int64).ravel()
    xs = np.floor(ox + rng.random(ox.shape) * cell).astype(np.int64).ravel()
    keep = (ys < height) & (xs < width)
    return ys[keep], xs[keep]


def neighbour_sources(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], neighbourhood: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel ``(ys[i], xs[i])``, a uniformly random other pixel of its ``neighbourhood`` window
    that lies inside the patch (drawn again until it is neither the pixel itself nor outside)."""
    height, width = shape
    if height * width < 2:
        raise ParameterError("a Noise2Void patch needs at least two pixels")
    radius = neighbourhood // 2
    sy, sx = ys.copy(), xs.copy()
    todo = np.ones(len(ys), bool)
    while todo.any():
        n = int(todo.sum())
        dy = rng.integers(-radius, radius + 1, n)
        dx = rng.integers(-radius, radius + 1, n)
        cy, cx = ys[todo] + dy, xs[todo] + dx
        ok = ((dy != 0) | (dx != 0)) & (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
        index = np.flatnonzero(todo)
        sy[index[ok]], sx[index[ok]] = cy[ok], cx[ok]
        todo[index[ok]] = False
    return sy, sx


def mask_patch(patch: np.ndarray, masking: BlindSpotMasking, rng: np.random.Generator) -> MaskedPatch:
    """Blind-spot mask one ``(C, Y, X)`` patch (see the module docstring); the patch is not modified.

    Parameters
    ----------
    patch
        The noisy ``(C, Y, X)`` patch (the training target, as it is).
    masking
        The fraction and the neighbourhood.
    rng
        The random generator (training is reproducible from its seed).

    Returns
    -------
    MaskedPatch
        The network input, the mask and where each replacement came from.
    """
    patch = np.asarray(patch)
    if patch.ndim != 3:
        raise ParameterError(f"mask_patch takes a (C, Y, X) patch, got shape {patch.shape}")
    shape = patch.shape[1:]
    ys, xs = stratified_positions(shape, masking.fraction, rng)
    sy, sx = neighbour_sources(ys, xs, shape, masking.neighbourhood, rng)
    masked = patch.copy()
    masked[:, ys, xs] = patch[:, sy, sx]  # values of the unmasked patch: never of a pixel itself
    mask = np.zeros(shape, bool)
    mask[ys, xs] = True
    return MaskedPatch(input=masked, mask=mask, ys=ys, xs=xs, source_ys=sy, source_xs=sx)


__all__ = ["BlindSpotMasking", "MaskedPatch", "mask_patch", "stratified_positions", "neighbour_sources"]
