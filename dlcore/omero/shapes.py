"""OMERO ROI shapes as geometry: outlines in full-resolution pixels, bounding boxes, rasterisation.

Polygons, rectangles and ellipses become outlines (``(N, 2)`` arrays of x, y in the image's
full-resolution pixel coordinates, the shape's affine transform applied); masks keep their bit
plane.  :func:`rasterise` burns one shape into a label array that covers a region of a resolution
level, so a ROI lands on exactly the pixels it covers whatever level the region was read at.
Points, lines, polylines and labels enclose no area and are reported as unsupported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dlcore.errors import InputError

SUPPORTED = ("Polygon", "Rectangle", "Ellipse", "Mask")
ELLIPSE_VERTICES = 64


@dataclass(frozen=True)
class ShapeGeometry:
    """One area shape in full-resolution pixel coordinates.

    Attributes
    ----------
    kind : ``"Polygon"``, ``"Rectangle"``, ``"Ellipse"`` or ``"Mask"``.
    outline : ``(N, 2)`` vertices (x, y); for a mask, its bounding rectangle.
    mask : for a mask shape, its ``(H, W)`` bool plane placed on ``outline``'s rectangle; else None.
    """

    kind: str
    outline: np.ndarray
    mask: np.ndarray | None = None

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the shape."""
        x0, y0 = self.outline.min(axis=0)
        x1, y1 = self.outline.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        """Area in full-resolution pixels (shoelace formula; a mask counts its set bits)."""
        if self.mask is not None:
            return float(self.mask.sum())
        x, y = self.outline[:, 0], self.outline[:, 1]
        return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _v(value, default=0.0):
    """The plain value of an rtype (``default`` when unset)."""
    if value is None:
        return default
    return value.getValue() if hasattr(value, "getValue") else value


def parse_points(text: str) -> np.ndarray:
    """OMERO's polygon points ``"x,y x,y ..."`` (also the legacy ``points[x,y, x,y] ...`` form) as ``(N, 2)``."""
    legacy = re.search(r"points\[([^\]]*)\]", text)
    body = legacy.group(1) if legacy else text
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?", body)]
    if len(numbers) % 2:
        raise InputError(f"polygon points {text[:60]!r}... have an odd number of coordinates")
    return np.asarray(numbers, dtype=np.float64).reshape(-1, 2)


def _transform(shape, points: np.ndarray) -> np.ndarray:
    t = getattr(shape, "getTransform", lambda: None)()
    if t is None:
        return points
    a00, a10, a01, a11, a02, a12 = (_v(getattr(t, f"getA{k}")(), d) for k, d in
                                    (("00", 1.0), ("10", 0.0), ("01", 0.0), ("11", 1.0), ("02", 0.0), ("12", 0.0)))
    x, y = points[:, 0], points[:, 1]
    return np.stack([a00 * x + a01 * y + a02, a10 * x + a11 * y + a12], axis=1)


def shape_kind(shape) -> str:
    """``"Polygon"``, ``"Rectangle"``, ... for an ``omero.model`` shape object."""
    return type(shape).__name__.removesuffix("I")


def shape_geometry(shape) -> ShapeGeometry:
    """The geometry of an ``omero.model`` area shape; raises :class:`InputError` for other shapes."""
    kind = shape_kind(shape)
    if kind == "Polygon":
        points = parse_points(_v(shape.getPoints(), ""))
        if len(points) < 3:
            raise InputError("a polygon needs at least 3 points")
        return ShapeGeometry(kind, _transform(shape, points))
    if kind in ("Rectangle", "Mask"):
        x, y, w, h = (float(_v(g())) for g in (shape.getX, shape.getY, shape.getWidth, shape.getHeight))
        if w <= 0 or h <= 0:
            raise InputError(f"a {kind.lower()} of size {w}x{h} encloses no area")
        corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
        if kind == "Rectangle":
            return ShapeGeometry(kind, _transform(shape, corners))
        return ShapeGeometry(kind, corners, _mask_bits(shape, int(round(w)), int(round(h))))
    if kind == "Ellipse":
        cx, cy, rx, ry = (float(_v(g())) for g in (shape.getX, shape.getY, shape.getRadiusX, shape.getRadiusY))
        if rx <= 0 or ry <= 0:
            raise InputError(f"an ellipse with radii {rx}, {ry} encloses no area")
        angles = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
        points = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
        return ShapeGeometry(kind, _transform(shape, points))
    raise InputError(f"{kind} shapes enclose no area; draw polygons, rectangles, ellipses or masks "
                     f"({', '.join(SUPPORTED)})")


def _mask_bits(shape, width: int, height: int) -> np.ndarray:
    """The bit plane of a MaskI (packed bits, most significant first, row by row, as omero-rois writes)."""
    data = _v(shape.getBytes(), b"") or b""
    bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))
    if bits.size < width * height:
        raise InputError(f"a mask of {width}x{height} pixels holds only {bits.size} bits")
    return bits[: width * height].reshape(height, width).astype(bool)


def rasterise(geometry: ShapeGeometry, out: np.ndarray, value: int, *, origin: tuple[int, int],
              downsample: float) -> None:
    """Burn ``geometry`` into ``out`` with ``value``.

    ``out`` covers the region of a resolution level whose top-left corner is ``origin`` (x, y in that
    level's pixels); ``downsample`` is the level's size ratio to full resolution.  A pixel is set when
    its centre lies inside the shape.
    """
    from skimage.draw import polygon as fill_polygon

    ox, oy = origin
    if geometry.mask is not None:
        x0, y0, x1, y1 = geometry.bbox
        height, width = out.shape
        ys = (np.arange(height) + oy + 0.5) * downsample  # pixel centres in full-resolution coordinates
        xs = (np.arange(width) + ox + 0.5) * downsample
        mh, mw = geometry.mask.shape
        rows = np.floor((ys - y0) * mh / (y1 - y0)).astype(int)
        cols = np.floor((xs - x0) * mw / (x1 - x0)).astype(int)
        rin, cin = (rows >= 0) & (rows < mh), (cols >= 0) & (cols < mw)
        if rin.any() and cin.any():
            sub = geometry.mask[np.ix_(rows[rin], cols[cin])]
            view = out[np.ix_(np.flatnonzero(rin), np.flatnonzero(cin))]
            view[sub] = value
            out[np.ix_(np.flatnonzero(rin), np.flatnonzero(cin))] = view
        return
    pts = geometry.outline / downsample - np.array([ox, oy], dtype=np.float64) - 0.5
    rr, cc = fill_polygon(pts[:, 1], pts[:, 0], shape=out.shape)
    out[rr, cc] = value
