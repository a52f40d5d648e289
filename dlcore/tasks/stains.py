"""Colour deconvolution with stain vectors estimated from the slide itself.

Brightfield stains absorb light: in optical density (OD, ``-log10(I / I0)``) a pixel is a positive
mix of one vector per stain (Beer-Lambert), and unmixing with the inverse of the stain matrix gives
one concentration per stain.  The textbook vectors (Ruifrok & Johnston 2001, scikit-image's
``rgb2hed``) describe one lab's stains and scanner; on another slide real DAB or eosin is not the
reference vector, so the reference haematoxylin channel responds to them (DAB-rich epithelium turns
into "nuclei").

:func:`estimate_stains` finds the slide's own two stain vectors with Macenko et al.'s method (2009, as
in HistomicsTK, TIAToolbox and StainTools): the plane of the tissue's OD pixels, and the directions at
the 1st and 99th percentiles of their angle in that plane.  The one nearer the reference haematoxylin
is haematoxylin; the other replaces eosin or DAB, whichever it is nearer (eosin as real slides show
it, :data:`TYPICAL_EOSIN`).  The third row keeps its
reference vector, so unmixing stays an exact 3 x 3 inverse.  Estimation falls back to the reference
vectors, and says so, when the slide shows fewer than two stains (the two directions nearly
coincide) or an estimate lies far from every reference (an unusual stain or too little tissue).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlcore.errors import ParameterError

STAINS = ("hematoxylin", "eosin", "dab")
REFERENCE_VECTORS = (  # Ruifrok & Johnston's OD vectors, as scikit-image's rgb_from_hed
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)
# What real eosin looks like: Macenko's H&E reference (also StainTools' and TIAToolbox's normaliser
# target).  Ruifrok's eosin vector is a pure green absorber; real eosin lies 2-3x nearer to this one,
# so it is this vector that tells eosin from DAB (18° apart) when a slide's second stain is named.
TYPICAL_EOSIN = (0.2159, 0.8012, 0.5581)
OD_THRESHOLD = 0.15  # Macenko's beta: pixels with a smaller OD in any channel are too pale to use
ANGLE_PERCENTILE = 1.0  # Macenko's alpha, in percent
MIN_STAIN_ANGLE_DEG = 8.0  # two estimated stains closer than this are one stain
MAX_DEVIATION_DEG = 35.0  # an estimate farther than this from its reference is not trusted
MIN_DETERMINANT = 0.05  # a stain matrix of unit rows closer to singular than this amplifies noise


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


@dataclass(frozen=True)
class StainMatrix:
    """Unit OD vectors of haematoxylin, eosin and DAB (rows, RGB order) and how they were obtained."""

    vectors: tuple[tuple[float, float, float], ...] = REFERENCE_VECTORS
    method: str = "reference (Ruifrok & Johnston)"

    def __post_init__(self) -> None:
        matrix = np.asarray(self.vectors, dtype=np.float64)
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(_unit(matrix))) < 1e-3:
            raise ParameterError(f"stain vectors {self.vectors} must be three independent RGB optical-density vectors")

    def unmixing(self) -> np.ndarray:
        """The 3 x 3 matrix taking an OD row vector to the three stain concentrations."""
        return np.linalg.inv(_unit(np.asarray(self.vectors, dtype=np.float64)))

    def concentrations(self, rgb: np.ndarray) -> np.ndarray:
        """``(Y, X, 3)`` float32 concentrations of haematoxylin, eosin and DAB of an 8-bit RGB image.

        Negative amounts (light the vectors do not explain exactly, e.g. strong eosin read through a
        slightly wrong eosin vector) are set to 0, as scikit-image's ``rgb2hed`` does: a negative
        haematoxylin under eosin would make white gaps stand out from pink tissue as if they held
        haematoxylin.
        """
        return np.maximum(optical_density(rgb) @ self.unmixing(), 0).astype(np.float32)

    def describe(self) -> dict:
        """What provenance records: the vectors (rounded) and the method."""
        return {"method": self.method,
                "vectors": {name: [round(float(v), 4) for v in vec] for name, vec in zip(STAINS, self.vectors)}}


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``-log10((I + 1) / 256)`` per channel of an 8-bit image: 0 for white, about 2.4 for black."""
    return -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)


def estimate_stains(samples: list[np.ndarray], *, max_pixels: int = 500_000, seed: int = 0) -> StainMatrix:
    """The slide's stain matrix from RGB sample windows (see the module docstring for the method)."""
    od = np.concatenate([optical_density(s).reshape(-1, 3) for s in samples]) if samples else np.empty((0, 3))
    od = od[np.all(od > OD_THRESHOLD, axis=1)]
    if od.shape[0] < 100:
        return StainMatrix(method=f"reference (Ruifrok & Johnston): only {od.shape[0]} stained pixels to estimate from")
    if od.shape[0] > max_pixels:
        od = od[np.random.default_rng(seed).choice(od.shape[0], max_pixels, replace=False)]
    _, eigenvectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = eigenvectors[:, [2, 1]]  # the two largest: the plane the two stains span
    plane = plane * np.sign(plane.sum(axis=0))  # point into the positive octant
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    found = _unit(np.stack([plane @ [np.cos(a), np.sin(a)] for a in (low, high)]))
    found = found * np.sign(found.sum(axis=1, keepdims=True))
    if _angle_deg(found[0], found[1]) < MIN_STAIN_ANGLE_DEG:
        return StainMatrix(method="reference (Ruifrok & Johnston): the slide shows one stain only")
    reference = _unit(np.asarray(REFERENCE_VECTORS))
    typical = np.stack([reference[0], _unit(np.asarray(TYPICAL_EOSIN)), reference[2]])
    h_index = int(np.argmax(found @ typical[0]))
    hematoxylin, other = found[h_index], found[1 - h_index]
    other_index = 1 if np.dot(other, typical[1]) >= np.dot(other, typical[2]) else 2
    deviations = (_angle_deg(hematoxylin, typical[0]), _angle_deg(other, typical[other_index]))
    if max(deviations) > MAX_DEVIATION_DEG:
        return StainMatrix(method=(f"reference (Ruifrok & Johnston): the estimate lay {max(deviations):.0f}° from the "
                                   f"reference vectors (more than {MAX_DEVIATION_DEG:.0f}°)"))
    vectors = [tuple(map(float, v)) for v in reference]
    vectors[0] = tuple(map(float, hematoxylin))
    vectors[other_index] = tuple(map(float, other))
    third = f"{STAINS[3 - other_index]} reference"
    if abs(np.linalg.det(np.asarray(vectors))) < MIN_DETERMINANT:
        # the estimated pair and the third reference nearly share a plane: unmixing would amplify noise,
        # so the third row becomes the residual direction, orthogonal to both stains
        residual = _unit(np.cross(hematoxylin, other))
        vectors[3 - other_index] = tuple(map(float, residual * np.sign(residual.sum())))
        third = f"{STAINS[3 - other_index]} replaced by the residual (the reference lay in the stains' plane)"
    return StainMatrix(
        vectors=tuple(vectors),
        method=(f"estimated from the slide (Macenko 2009): haematoxylin and {STAINS[other_index]}, "
                f"{deviations[0]:.0f}° and {deviations[1]:.0f}° from the reference; {third}"),
    )
