"""Segmented objects: their measurements and outlines, computed inside one tile.

An object is measured from the tile's label window and image window, which hold it whole (the halo
is wider than an object).  Coordinates of the results are level-0 slide pixels, the frame QuPath's
GeoJSON import and OMERO ROIs use; areas are also given in µm² when the pixel size is known.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_POLYGON_VERTICES = 64


@dataclass(frozen=True)
class ObjectRecord:
    """One object found on a slide.

    ``centroid``, ``bbox`` (x0, y0, x1, y1) and ``polygon`` ((x, y) vertices) are in level-0 pixels;
    ``area_px`` counts working-resolution pixels; ``mean_intensity`` has one value per channel.
    """

    id: int
    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]
    area_px: int
    area_um2: float | None
    perimeter_px: float
    mean_intensity: tuple[float, ...]
    polygon: tuple[tuple[float, float], ...]
    class_name: str | None = None
    extra: dict = field(default_factory=dict)


def outline(mask: np.ndarray, *, max_vertices: int = MAX_POLYGON_VERTICES) -> np.ndarray:
    """The outer outline of a binary object as ``(N, 2)`` (row, col) vertices, at most ``max_vertices``.

    The outline follows the pixel edges (vertices on half-pixel positions, like a label image's
    boundary), not the boundary pixels' centres: OpenCV traces the boundary pixels, the traced polygon
    is grown by half a pixel with mitred corners (exact for straight edges and single pixels), and then
    simplified (Douglas-Peucker, GEOS) with a tolerance doubled from 0.5 pixel until it fits the budget.
    """
    import cv2
    import shapely

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2))
    points = max(contours, key=len)[:, 0, :].astype(np.float64)  # (x, y) of boundary pixel centres
    if len(points) >= 3:
        traced = shapely.make_valid(shapely.Polygon(points))
    elif len(points) == 2:
        traced = shapely.LineString(points)
    else:
        traced = shapely.Point(points[0])
    shape = traced.buffer(0.5, join_style="mitre", cap_style="square", mitre_limit=2.0)
    if shape.geom_type != "Polygon":  # a traced outline touching itself: keep its largest part
        shape = max(getattr(shape, "geoms", [shape]), key=lambda g: g.area)
    tolerance = 0.25
    poly = shape
    while len(poly.exterior.coords) - 1 > max_vertices or tolerance == 0.25:
        simpler = shapely.simplify(shape, tolerance, preserve_topology=True)
        if simpler.is_empty or len(simpler.exterior.coords) < 4:
            break
        poly = simpler
        tolerance *= 2
        if tolerance > max(mask.shape):
            break
    return np.asarray(poly.exterior.coords)[:-1, ::-1]


def measure_object(
    *,
    object_id: int,
    mask: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int],
    factor: float,
    mpp: float | None,
    class_name: str | None = None,
    bounds: tuple[float, float] | None = None,
) -> ObjectRecord:
    """Measure one object from its mask and pixels.

    Parameters
    ----------
    mask
        Boolean mask of the object within its bounding box (working resolution).
    image
        The ``(Y, X, C)`` pixels under ``mask``'s bounding box.
    origin
        (x, y) of the bounding box's top-left corner in working-resolution slide pixels.
    factor
        Level-0 pixels per working pixel.
    mpp
        Working-resolution pixel size in µm, or None.
    bounds
        The image's level-0 (width, height): coordinates are clipped to it (see :func:`object_record`).
    """
    ys, xs = np.nonzero(mask)
    means = tuple(float(v) for v in image[mask].mean(axis=0)) if ys.size else ()
    return object_record(
        object_id=object_id, mask=mask, origin=origin, factor=factor, mpp=mpp, area=int(ys.size),
        centroid=(float(xs.mean()) if ys.size else 0.0, float(ys.mean()) if ys.size else 0.0),
        means=means, class_name=class_name, bounds=bounds,
    )


def object_record(
    *,
    object_id: int,
    mask: np.ndarray | None = None,
    mask_shape: tuple[int, int] | None = None,
    polygon: np.ndarray | None = None,
    origin: tuple[int, int],
    factor: float,
    mpp: float | None,
    area: int,
    centroid: tuple[float, float],
    means: tuple[float, ...],
    class_name: str | None = None,
    bounds: tuple[float, float] | None = None,
) -> ObjectRecord:
    """An :class:`ObjectRecord` from measurements already made (``centroid``: mean (x, y) pixel index
    within ``mask``); adds the outline and perimeter and converts to level-0 coordinates.

    Give either ``mask`` (the outline is traced from it) or its ``mask_shape`` with the ``polygon``
    :func:`outline` returned for it (traced elsewhere, e.g. in a worker process).

    ``bounds`` is the image's level-0 (width, height).  A working pixel at the image's last row or
    column can reach past it by a fraction of a level-0 pixel when the working size was rounded;
    with ``bounds`` the outline, bounding box and centroid are clipped to the image.
    """
    ox, oy = origin
    h, w = mask.shape if mask is not None else mask_shape
    poly = outline(mask) if polygon is None else np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(poly) >= 2:
        closed = np.vstack([poly, poly[:1]])
        perimeter = float(np.hypot(*np.diff(closed, axis=0).T).sum())
    else:
        perimeter = 0.0
    centre = np.array([(centroid[0] + 0.5 + ox) * factor, (centroid[1] + 0.5 + oy) * factor])
    box = np.array([ox * factor, oy * factor, (ox + w) * factor, (oy + h) * factor])
    vertices = (poly[:, ::-1] + (0.5 + ox, 0.5 + oy)) * factor
    if bounds is not None:
        limit = np.asarray(bounds, dtype=np.float64)
        centre = np.clip(centre, 0, limit)
        box = np.clip(box, 0, np.tile(limit, 2))
        vertices = np.clip(vertices, 0, limit)
    return ObjectRecord(
        id=object_id,
        centroid=(float(centre[0]), float(centre[1])),
        bbox=tuple(float(v) for v in box),
        area_px=area,
        area_um2=area * mpp * mpp if mpp else None,
        perimeter_px=perimeter * factor,
        mean_intensity=means,
        polygon=tuple(map(tuple, vertices.tolist())),
        class_name=class_name,
    )
