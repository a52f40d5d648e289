"""Multiscale filter features for pixel classification (ilastik's feature set), computed exactly per tile.

For each input channel and each scale ``sigma`` (pixels), the features a user picks among:

=====================  =========================================================================
``gaussian``           Gaussian smoothing (intensity)
``log``                Laplacian of Gaussian, ``Gxx + Gyy`` (blobs)
``gradient``           gradient magnitude of the Gaussian, ``sqrt(Gx² + Gy²)`` (edges)
``dog``                difference of Gaussians, ``G(sigma) - G(0.66 sigma)`` (ilastik's ratio)
``structure_tensor``   the two eigenvalues of the structure tensor: ``Gx Gx``, ``Gx Gy``, ``Gy Gy``
                       at ``sigma``, smoothed at ``sigma / 2`` (ilastik's outer scale) (texture,
                       orientation coherence)
``hessian``            the two eigenvalues of the Hessian of Gaussian ``[[Gyy, Gxy], [Gxy, Gxx]]``
                       (large first, small second: blob, tube and wall enhancement)
=====================  =========================================================================

Derivatives are convolutions with sampled derivative-of-Gaussian kernels (as vigra and
``skimage.feature.hessian_matrix(use_gaussian_derivatives=True)``), truncated at ``TRUNCATE`` sigma;
every filter is separable and runs in OpenCV in float32.

The input channels (:data:`COLOUR_SPACES`): the raw channels scaled to 0-1 (``raw``); for 8-bit RGB
brightfield the optical density of each channel (``od``); or the haematoxylin, eosin and DAB
concentrations of Ruifrok and Johnston's fixed colour deconvolution (``hed``, scikit-image's
``rgb2hed`` vectors: the same on every slide, so a model means the same thing everywhere).

Outside the image the input is mirrored with the edge pixel repeated (OpenCV's ``BORDER_REFLECT``,
numpy's ``symmetric``), the rule the tile engine uses to read past a slide's edge
(:func:`dlcore.io.slide.reflect_index`); every feature of a pixel depends only on pixels within
:meth:`FeatureSpec.radius` of it.  So a tile read with a halo of at least that radius gets, on its
core, exactly the features of the whole image: tiling cannot change a result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import ParameterError

FEATURES = ("gaussian", "log", "gradient", "dog", "structure_tensor", "hessian")
FEATURE_WIDTH = {"gaussian": 1, "log": 1, "gradient": 1, "dog": 1, "structure_tensor": 2, "hessian": 2}
COLOUR_SPACES = ("raw", "od", "hed")
ILASTIK_SCALES = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
DEFAULT_SCALES = (0.7, 1.6, 3.5, 5.0)
TRUNCATE = 4.0
DOG_RATIO = 0.66
OUTER_RATIO = 0.5  # structure tensor: outer (integration) scale / inner scale
MIN_SIGMA = 0.3
MAX_SIGMA = 32.0
# skimage.color.rgb_from_hed (Ruifrok & Johnston 2001): the rows are the OD vectors of H, E and DAB
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def full_scale(dtype) -> float:
    """The value that maps to 1 in ``raw`` features for pixels of ``dtype``: an integer type's largest
    value (255 for 8-bit, 65535 for 16-bit), 1.0 for floating-point images (OMERO's ``float`` and
    ``double`` pixel types included)."""
    dtype = np.dtype({"float": "float32", "double": "float64"}.get(str(dtype), dtype))
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def kernel_radius(sigma: float) -> int:
    """Half-width of the sampled Gaussian kernels at ``sigma``: ``TRUNCATE`` sigma rounded as
    ``scipy.ndimage.gaussian_filter`` rounds it (so the two give the same values), at least 1 px."""
    return max(1, int(TRUNCATE * sigma + 0.5))


def gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sampled Gaussian of ``sigma`` (summing to 1) and its first and second derivatives (float32)."""
    r = kernel_radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-x * x / (2 * sigma * sigma))
    g /= g.sum()
    g1 = -x / sigma ** 2 * g
    g2 = (x * x / sigma ** 4 - 1 / sigma ** 2) * g
    return g.astype(np.float32), g1.astype(np.float32), g2.astype(np.float32)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, at which scales, on which input channels.

    Attributes
    ----------
    scales : sigmas in working pixels (ilastik offers 0.3 to 10), each in [0.3, 32].
    features : names from :data:`FEATURES`.
    colour : ``raw``, ``od`` or ``hed`` (:data:`COLOUR_SPACES`); ``od`` and ``hed`` need 8-bit RGB.
    max_value : the raw value that maps to 1 (255 for 8-bit, 65535 for 16-bit images).
    """

    scales: tuple[float, ...] = DEFAULT_SCALES
    features: tuple[str, ...] = FEATURES
    colour: str = "raw"
    max_value: float = 255.0
    _kernels: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not MIN_SIGMA <= s <= MAX_SIGMA for s in scales) or len(set(scales)) != len(scales):
            raise ParameterError(f"scales={self.scales!r} must be distinct sigmas between {MIN_SIGMA} and {MAX_SIGMA} "
                                 f"pixels (ilastik's are {', '.join(map(str, ILASTIK_SCALES))})")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features or len(set(self.features)) != len(self.features):
            raise ParameterError(f"features={self.features!r}: choose distinct names among {', '.join(FEATURES)}")
        if self.colour not in COLOUR_SPACES:
            raise ParameterError(f"colour={self.colour!r} must be one of {', '.join(COLOUR_SPACES)}")
        if not self.max_value > 0:
            raise ParameterError(f"max_value={self.max_value!r} must be positive (255 for 8-bit images)")
        object.__setattr__(self, "scales", tuple(sorted(scales)))
        object.__setattr__(self, "features", tuple(f for f in FEATURES if f in self.features))

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        """The spec stored in a package (:meth:`as_dict`); raises ParameterError on a bad field."""
        if not isinstance(data, dict):
            raise ParameterError(f"the feature settings must be a mapping, got {data!r}")
        known = {"scales", "features", "colour", "max_value"}
        if set(data) - known:
            raise ParameterError(f"unknown feature setting(s) {sorted(set(data) - known)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k in ("scales", "features") else v for k, v in data.items()})

    def as_dict(self) -> dict:
        return {"scales": list(self.scales), "features": list(self.features), "colour": self.colour,
                "max_value": float(self.max_value)}

    def radius(self) -> int:
        """The distance in pixels beyond which no input pixel changes any feature (the halo a tile needs)."""
        big = max(self.scales)
        r = kernel_radius(big)
        if "structure_tensor" in self.features:
            r = max(r, max(kernel_radius(s) + kernel_radius(max(OUTER_RATIO * s, MIN_SIGMA)) for s in self.scales))
        return r

    def in_channels(self, image_channels: int) -> int:
        """How many channels the features are computed on, for an image with ``image_channels``."""
        return 3 if self.colour in ("od", "hed") else image_channels

    def names(self, channel_names: list[str] | tuple[str, ...]) -> list[str]:
        """One name per feature plane, in :func:`compute_features`' order (``channel/feature/sigma``)."""
        if self.colour == "hed":
            channel_names = ("hematoxylin", "eosin", "dab")
        elif self.colour == "od":
            channel_names = tuple(f"od_{c}" for c in ("red", "green", "blue"))
        out = []
        for c in channel_names:
            for sigma in self.scales:
                for feature in self.features:
                    if FEATURE_WIDTH[feature] == 1:
                        out.append(f"{c}/{feature}/{sigma:g}")
                    else:
                        out += [f"{c}/{feature}_large/{sigma:g}", f"{c}/{feature}_small/{sigma:g}"]
        return out

    def count(self, image_channels: int) -> int:
        """The number of feature planes for an image with ``image_channels`` channels."""
        per = sum(FEATURE_WIDTH[f] for f in self.features)
        return self.in_channels(image_channels) * len(self.scales) * per

    def kernels(self, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if sigma not in self._kernels:
            self._kernels[sigma] = gaussian_kernels(sigma)
        return self._kernels[sigma]


def input_channels(image: np.ndarray, spec: FeatureSpec) -> list[np.ndarray]:
    """The ``(Y, X)`` float32 planes the features are computed on (see the module docstring)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if spec.colour == "raw":
        scale = np.float32(1.0 / spec.max_value)
        return [np.ascontiguousarray(image[..., c], dtype=np.float32) * scale for c in range(image.shape[2])]
    if image.shape[2] != 3 or image.dtype != np.uint8:
        raise ParameterError(f"colour={spec.colour!r} needs 8-bit RGB images; this one is {image.dtype} with "
                             f"{image.shape[2]} channel(s) (use colour='raw')")
    od = optical_density_u8(image)
    if spec.colour == "od":
        return [np.ascontiguousarray(od[..., c]) for c in range(3)]
    hed_from_rgb = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
    stains = od.reshape(-1, 3) @ hed_from_rgb
    stains = stains.reshape(od.shape)
    return [np.ascontiguousarray(stains[..., c]) for c in range(3)]


_OD_TABLE = (-np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)).astype(np.float32)


def optical_density_u8(image: np.ndarray) -> np.ndarray:
    """``-log10(max(I, 1) / 255)`` per channel of an 8-bit image (a table lookup), float32."""
    return _OD_TABLE[image]


def _sep(plane: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.sepFilter2D(plane, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REFLECT)


def _eigenvalues(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (large, small) of the symmetric 2x2 matrices ``[[a, b], [b, c]]``, elementwise."""
    import cv2

    half_trace = (a + c) * np.float32(0.5)
    root = cv2.magnitude((a - c) * np.float32(0.5), b)
    return half_trace + root, half_trace - root


def _structure_tensor(plane: np.ndarray, sigma: float, spec: FeatureSpec):
    """The structure tensor's eigenvalues, and the plane's ``gx`` and ``gy``, at ``sigma``.

    The products ``gx gx``, ``gx gy``, ``gy gy`` are smoothed at the outer scale; near the border they
    must come from the mirrored *image* (as in a tile read with a halo), not be mirrored themselves
    (``gx gy`` changes sign in a mirror), so the plane is mirrored by both radii first and cropped after.
    """
    g0, g1, _ = spec.kernels(sigma)
    outer = max(OUTER_RATIO * sigma, MIN_SIGMA)
    pad = kernel_radius(sigma) + kernel_radius(outer)
    padded = np.pad(plane, pad, mode="symmetric")
    gx = _sep(padded, g1, g0)
    gy = _sep(padded, g0, g1)
    smooth = spec.kernels(outer)[0]
    inner = (slice(pad, pad + plane.shape[0]), slice(pad, pad + plane.shape[1]))
    sxx, sxy, syy = (_sep(p, smooth, smooth)[inner] for p in (gx * gx, gx * gy, gy * gy))
    return _eigenvalues(sxx, sxy, syy), np.ascontiguousarray(gx[inner]), np.ascontiguousarray(gy[inner])


def plane_features(plane: np.ndarray, spec: FeatureSpec) -> list[np.ndarray]:
    """The features of one ``(Y, X)`` float32 plane, scale by scale, in :meth:`FeatureSpec.names` order."""
    import cv2

    out: list[np.ndarray] = []
    want = set(spec.features)
    one = np.ones(1, np.float32)
    for sigma in spec.scales:
        g0, g1, g2 = spec.kernels(sigma)
        need_first = want & {"gradient", "structure_tensor"}
        need_second = want & {"log", "hessian"}
        smooth = _sep(plane, g0, g0) if want & {"gaussian", "dog"} else None
        gx = gy = gxx = gyy = gxy = None
        if "structure_tensor" in want:  # gx, gy come with the tensor, from the mirrored plane
            tensor, gx, gy = _structure_tensor(plane, sigma, spec)
        if need_second or (need_first and gx is None):
            rows0 = _sep(plane, one, g0)  # smoothed along y; filtered along x next
            if need_first and gx is None:
                gx = _sep(rows0, g1, one)
                gy = _sep(plane, g0, g1)
            if need_second:
                gxx = _sep(rows0, g2, one)
                gyy = _sep(plane, g0, g2)
                gxy = _sep(plane, g1, g1)
        for feature in spec.features:
            if feature == "gaussian":
                out.append(smooth)
            elif feature == "log":
                out.append(gxx + gyy)
            elif feature == "gradient":
                out.append(cv2.magnitude(gx, gy))
            elif feature == "dog":
                narrow = spec.kernels(DOG_RATIO * sigma)[0]
                out.append(smooth - _sep(plane, narrow, narrow))
            elif feature == "structure_tensor":
                out.extend(tensor)
            else:  # hessian
                out.extend(_eigenvalues(gyy, gxy, gxx))
    return out


def compute_features(image: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """All features of a ``(Y, X, C)`` (or ``(Y, X)``) image as an ``(F, Y, X)`` float32 array of planes.

    Plane ``f`` is named ``spec.names(channels)[f]``.  Memory: ``F`` float32 planes of the image's size
    (the engine calls it on one tile at a time).  :func:`pixel_rows` turns planes into the ``(N, F)``
    rows a classifier takes.
    """
    planes = input_channels(image, spec)
    h, w = planes[0].shape
    n = len(planes) * len(spec.scales) * sum(FEATURE_WIDTH[f] for f in spec.features)
    out = np.empty((n, h, w), np.float32)
    k = 0
    for plane in planes:
        for feature in plane_features(plane, spec):
            out[k] = feature
            k += 1
    return out


def pixel_rows(planes: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Pixels ``start:stop`` (in row-major order) of ``(F, Y, X)`` feature planes as ``(N, F)`` float32 rows,
    C-contiguous (a cache-blocked transpose: ten times faster than numpy's for a classifier's input)."""
    import cv2

    flat = planes.reshape(planes.shape[0], -1)[:, start:stop]
    return cv2.transpose(np.ascontiguousarray(flat))
