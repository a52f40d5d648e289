"""Sparse training labels: scribbles, lines, polygons and points per class, as a label image.

Every form becomes one ``(Y, X)`` int32 label image of the training image (0 = unlabelled, ``k`` =
the ``k``-th class, 1-based):

- a label image drawn in any painting tool (:func:`labels_from_array`), its values the class numbers;
- QuPath (or any) GeoJSON annotations with class names (:func:`labels_from_geojson`): polygons are
  filled, lines drawn ``line_width`` pixels wide, points drawn as small disks;
- shapes read elsewhere (OMERO ROIs) as :class:`Stroke` values (:func:`rasterize`).

A pixel two classes claim is left unlabelled, and :func:`rasterize` says how many there were: a
classifier must not learn from contradictory labels.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError

LINE_WIDTH = 3  # pixels: a scribble drawn as a line
POINT_RADIUS = 2  # pixels: a point label


@dataclass(frozen=True)
class Stroke:
    """One labelled shape in image pixels (x, y), of class ``label``.

    ``kind`` is ``polygon`` (filled; ``points`` its outline, ``holes`` its inner rings), ``line`` (a
    polyline ``width`` pixels wide), ``point`` (disks of ``radius``) or ``mask`` (``mask``, a boolean
    array placed at ``points[0]``).
    """

    label: str
    kind: str
    points: tuple[tuple[float, float], ...]
    holes: tuple[tuple[tuple[float, float], ...], ...] = ()
    width: float = LINE_WIDTH
    radius: float = POINT_RADIUS
    mask: np.ndarray | None = None

    def scaled(self, factor: float) -> "Stroke":
        """The stroke in the pixels of an image ``factor`` times smaller (a coarser level)."""
        scale = lambda pts: tuple((x / factor, y / factor) for x, y in pts)  # noqa: E731
        mask = self.mask
        if mask is not None and factor != 1:
            import cv2

            h, w = mask.shape
            mask = cv2.resize(mask.astype(np.uint8), (max(1, round(w / factor)), max(1, round(h / factor))),
                              interpolation=cv2.INTER_NEAREST).astype(bool)
        return Stroke(self.label, self.kind, scale(self.points), tuple(scale(h) for h in self.holes), self.width,
                      self.radius, mask)


@dataclass(frozen=True)
class RasterReport:
    """What :func:`rasterize` did: labelled pixels per class and pixels dropped as contradictory."""

    pixels: dict[str, int]
    conflicting: int
    outside: int  # strokes wholly outside the image


def _pixel_centres(points) -> np.ndarray:
    """Shape coordinates (pixel ``i`` spans ``[i, i + 1)``, as in QuPath, OMERO and GeoJSON) as the
    nearest pixel indices ``(x, y)``."""
    return np.floor(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 2)


def _draw(shape: tuple[int, int], stroke: Stroke) -> np.ndarray:
    """The pixels of one stroke: a polygon's pixels whose centres lie inside it, a line ``width`` pixels
    wide (a one-pixel line widened by a disk), a point's disk of ``radius``, a mask's set pixels."""
    import cv2
    from skimage.draw import polygon as polygon_pixels

    canvas = np.zeros(shape, np.uint8)
    if stroke.kind == "polygon" and len(stroke.points) >= 3:
        pts = np.asarray(stroke.points, np.float64)
        rr, cc = polygon_pixels(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape)
        canvas[rr, cc] = 1
        for hole in stroke.holes:
            h = np.asarray(hole, np.float64)
            rr, cc = polygon_pixels(h[:, 1] - 0.5, h[:, 0] - 0.5, shape)
            canvas[rr, cc] = 0
    elif stroke.kind in ("line", "polygon"):  # a degenerate polygon is still the user's label: a line
        cv2.polylines(canvas, [_pixel_centres(stroke.points)], False, 1, thickness=1)
        width = max(1, int(round(stroke.width)))
        if width > 1:
            canvas = cv2.dilate(canvas, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
    elif stroke.kind == "point":
        for x, y in _pixel_centres(stroke.points):
            cv2.circle(canvas, (int(x), int(y)), max(0, int(round(stroke.radius))), 1, -1)
    elif stroke.kind == "mask":
        x0, y0 = (int(round(v)) for v in stroke.points[0])
        m = np.asarray(stroke.mask, bool)
        ys, xs = slice(max(0, y0), min(shape[0], y0 + m.shape[0])), slice(max(0, x0), min(shape[1], x0 + m.shape[1]))
        if ys.stop > ys.start and xs.stop > xs.start:
            canvas[ys, xs] = m[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    else:
        raise InputError(f"unknown stroke kind {stroke.kind!r} (polygon, line, point or mask)")
    return canvas.astype(bool)


def rasterize(strokes: Iterable[Stroke], shape: tuple[int, int], classes: Sequence[str]) -> tuple[np.ndarray, RasterReport]:
    """The ``(Y, X)`` int32 label image of ``strokes`` (class ``classes[k-1]`` is ``k``) and a report.

    Strokes of a class not in ``classes`` raise InputError naming it and the classes known.
    """
    index = {c: i + 1 for i, c in enumerate(classes)}
    labels = np.zeros(shape, np.int32)
    claimed = np.zeros(shape, np.uint8)
    outside = 0
    for stroke in strokes:
        if stroke.label not in index:
            raise InputError(f"a label of class {stroke.label!r} is not one of the classes {', '.join(classes)}; "
                             "rename it or add the class")
        drawn = _draw(shape, stroke)
        if not drawn.any():
            outside += 1
            continue
        k = index[stroke.label]
        first = drawn & (claimed == 0)
        labels[first] = k
        claimed[first] = k
        clash = drawn & (claimed != 0) & (claimed != k)
        claimed[clash] = 255
    conflicting = int((claimed == 255).sum())
    labels[claimed == 255] = 0
    counts = np.bincount(labels.ravel(), minlength=len(classes) + 1)
    return labels, RasterReport({c: int(counts[i + 1]) for i, c in enumerate(classes)}, conflicting, outside)


def labels_from_array(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A painted label image (0 unlabelled, 1..n the classes) checked and as int32."""
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[2] in (3, 4) and np.all(labels[..., :3] == labels[..., :1]):
        labels = labels[..., 0]  # a grey label image saved as RGB
    if labels.ndim != 2:
        raise InputError(f"a label image must be 2-D (0 = unlabelled, 1..n = classes), got shape {labels.shape}")
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise InputError("a label image must hold whole class numbers, not fractions")
    top = int(labels.max()) if labels.size else 0
    if labels.min() < 0 or top > len(classes):
        raise InputError(f"the label image holds values up to {top}, but {len(classes)} classes were named "
                         f"({', '.join(classes)}); name one class per label value 1..{top}")
    return labels.astype(np.int32)


def _class_name(properties: dict) -> str | None:
    cls = properties.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return properties.get("class") or properties.get("name")


def _rings(coords) -> list[tuple[tuple[float, float], ...]]:
    return [tuple((float(p[0]), float(p[1])) for p in ring) for ring in coords]


def strokes_from_geojson(data, *, line_width: float = LINE_WIDTH, point_radius: float = POINT_RADIUS) -> list[Stroke]:
    """The strokes of GeoJSON (a FeatureCollection, a Feature list or a Feature, as QuPath exports them).

    A feature's class is ``properties.classification.name`` (QuPath), else ``classification``,
    ``class`` or ``name``.  Features without a class raise InputError: an unclassified annotation is
    not a label.
    """
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise InputError("the GeoJSON must be a FeatureCollection, a Feature or a list of Features")
    strokes: list[Stroke] = []
    for i, feature in enumerate(features):
        geometry = (feature or {}).get("geometry") or {}
        name = _class_name((feature or {}).get("properties") or {})
        if not name:
            raise InputError(f"GeoJSON feature {i} ({geometry.get('type')}) has no class; set its classification in "
                             "QuPath (Set class) or a 'classification' property")
        strokes += _geometry_strokes(str(name), geometry, line_width, point_radius)
    return strokes


def _geometry_strokes(name: str, geometry: dict, line_width: float, point_radius: float) -> list[Stroke]:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        rings = _rings(coords)
        return [Stroke(name, "polygon", rings[0], tuple(rings[1:]))] if rings else []
    if kind == "MultiPolygon":
        return [s for poly in coords for s in _geometry_strokes(name, {"type": "Polygon", "coordinates": poly},
                                                                 line_width, point_radius)]
    if kind == "LineString":
        return [Stroke(name, "line", _rings([coords])[0], width=line_width)]
    if kind == "MultiLineString":
        return [Stroke(name, "line", ring, width=line_width) for ring in _rings(coords)]
    if kind == "Point":
        return [Stroke(name, "point", ((float(coords[0]), float(coords[1])),), radius=point_radius)]
    if kind == "MultiPoint":
        return [Stroke(name, "point", _rings([coords])[0], radius=point_radius)]
    if kind == "GeometryCollection":
        return [s for g in geometry.get("geometries") or [] for s in _geometry_strokes(name, g, line_width, point_radius)]
    raise InputError(f"GeoJSON geometry {kind!r} cannot be a label (Polygon, LineString, Point and their Multi forms can)")


def read_geojson(path: str | Path, **kwargs) -> list[Stroke]:
    """:func:`strokes_from_geojson` of a file; raises InputError naming the file when it is not GeoJSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the annotations {path}: {exc}") from exc
    try:
        return strokes_from_geojson(data, **kwargs)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def stroke_classes(strokes: Iterable[Stroke]) -> tuple[str, ...]:
    """The class names of ``strokes``, in order of first appearance."""
    seen: dict[str, None] = {}
    for s in strokes:
        seen.setdefault(s.label, None)
    return tuple(seen)


def bounding_box(strokes: Sequence[Stroke], margin: float) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` around every stroke's points (and masks), widened by ``margin`` pixels."""
    xs, ys = [], []
    for s in strokes:
        pts = np.asarray(s.points, np.float64)
        if s.kind == "mask" and s.mask is not None:
            pts = np.vstack([pts, pts[:1] + [s.mask.shape[1], s.mask.shape[0]]])
        pad = s.width if s.kind == "line" else s.radius if s.kind == "point" else 0
        xs += [pts[:, 0].min() - pad, pts[:, 0].max() + pad]
        ys += [pts[:, 1].min() - pad, pts[:, 1].max() + pad]
    return (int(np.floor(min(xs) - margin)), int(np.floor(min(ys) - margin)),
            int(np.ceil(max(xs) + margin)) + 1, int(np.ceil(max(ys) + margin)) + 1)


def translated(strokes: Sequence[Stroke], dx: float, dy: float) -> list[Stroke]:
    """``strokes`` moved by ``(dx, dy)`` pixels (into a region read from a larger image)."""
    move = lambda pts: tuple((x + dx, y + dy) for x, y in pts)  # noqa: E731
    return [Stroke(s.label, s.kind, move(s.points), tuple(move(h) for h in s.holes), s.width, s.radius, s.mask)
            for s in strokes]
