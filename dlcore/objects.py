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
    text: object = field(default=None, compare=False, repr=False)  # its ObjectText, when a worker rendered it


def outline(mask: np.ndarray, *, max_vertices: int = MAX_POLYGON_VERTICES) -> np.ndarray:
    """The outer outline of a binary object as ``(N, 2)`` (row, col) vertices, at most ``max_vertices``.

    The outline follows the pixel edges (vertices on half-pixel positions, like a label image's
    boundary), not the boundary pixels' centres: OpenCV traces the boundary pixels, the traced polygon
    is grown by half a pixel with mitred corners (exact for straight edges and single pixels), and then
    simplified (Douglas-Peucker, GEOS) with a tolerance doubled from 0.5 pixel until it fits the budget.
    """
    return outlines([mask], max_vertices=max_vertices)[0]


def outlines(masks: list[np.ndarray], *, max_vertices: int = MAX_POLYGON_VERTICES) -> list[np.ndarray]:
    """:func:`outline` of each mask, the GEOS steps run on all of them at once (shapely's vectorised
    functions): the same vertices as one call per mask, for a fraction of the per-object overhead."""
    import cv2
    import shapely

    out: list[np.ndarray] = [np.zeros((0, 2))] * len(masks)
    traced, where = [], []
    for index, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        points = max(contours, key=len)[:, 0, :].astype(np.float64)  # (x, y) of boundary pixel centres
        if len(points) >= 3:
            traced.append(shapely.Polygon(points))
        elif len(points) == 2:
            traced.append(shapely.LineString(points))
        else:
            traced.append(shapely.Point(points[0]))
        where.append(index)
    if not traced:
        return out
    geoms = np.asarray(traced, dtype=object)
    polygonal = shapely.get_type_id(geoms) == 3
    geoms[polygonal] = shapely.make_valid(geoms[polygonal])
    shapes = shapely.buffer(geoms, 0.5, join_style="mitre", cap_style="square", mitre_limit=2.0)
    for i in np.nonzero(shapely.get_type_id(shapes) != 3)[0]:  # a traced outline touching itself: its largest part
        shapes[i] = max(getattr(shapes[i], "geoms", [shapes[i]]), key=lambda g: g.area)
    simpler = shapely.simplify(shapes, 0.25, preserve_topology=True)
    kept = ~shapely.is_empty(simpler)
    kept[kept] = shapely.get_num_coordinates(shapely.get_exterior_ring(simpler[kept])) >= 4
    polys = np.where(kept, simpler, shapes)
    for i, index in enumerate(where):
        poly = polys[i]
        if kept[i] and len(poly.exterior.coords) - 1 > max_vertices:  # too many: coarser, as outline() does
            poly = _coarser(shapes[i], poly, masks[index].shape, max_vertices)
        out[index] = np.asarray(poly.exterior.coords)[:-1, ::-1]
    return out


def _coarser(shape, poly, mask_shape: tuple[int, int], max_vertices: int):
    """Simplify ``shape`` with tolerances 0.5, 1, 2, ... until it has at most ``max_vertices`` vertices
    (``poly``: its simplification at 0.25 pixel)."""
    import shapely

    tolerance = 0.5
    while len(poly.exterior.coords) - 1 > max_vertices and tolerance <= max(mask_shape):
        simpler = shapely.simplify(shape, tolerance, preserve_topology=True)
        if simpler.is_empty or len(simpler.exterior.coords) < 4:
            break
        poly = simpler
        tolerance *= 2
    return poly


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
    shape = mask.shape if mask is not None else mask_shape
    poly = outline(mask) if polygon is None else polygon
    return object_records(
        ids=[object_id], shapes=[shape], polygons=[poly], origins=[origin], factor=factor, mpp=mpp, areas=[area],
        centroids=[centroid], means=[means], class_names=[class_name], bounds=bounds)[0]


def object_records(
    *,
    ids,
    shapes,
    polygons: list[np.ndarray],
    origins,
    factor: float,
    mpp: float | None,
    areas,
    centroids,
    means,
    class_names,
    bounds: tuple[float, float] | None = None,
) -> list[ObjectRecord]:
    """:func:`object_record` for many objects at once: the coordinate conversions run on arrays of all
    of them (the same arithmetic, element by element, so the same values as one call per object)."""
    n = len(polygons)
    if n == 0:
        return []
    origins = np.asarray(origins, dtype=np.float64).reshape(n, 2)
    shapes = np.asarray(shapes, dtype=np.float64).reshape(n, 2)  # (h, w)
    cents = np.asarray(centroids, dtype=np.float64).reshape(n, 2)
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    counts = np.array([len(p) for p in polys])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    vertex_rc = np.concatenate(polys) if counts.sum() else np.zeros((0, 2))
    owner = np.repeat(np.arange(n), counts)
    # perimeter: the closed ring's segment lengths, summed per object exactly as np.sum does for one
    following = np.arange(len(vertex_rc)) + 1
    ends = starts + counts
    following[ends[counts > 0] - 1] = starts[counts > 0]
    steps = vertex_rc[following] - vertex_rc
    lengths = np.hypot(steps[:, 0], steps[:, 1])
    centre = np.stack([(cents[:, 0] + 0.5 + origins[:, 0]) * factor, (cents[:, 1] + 0.5 + origins[:, 1]) * factor], 1)
    box = np.stack([origins[:, 0] * factor, origins[:, 1] * factor, (origins[:, 0] + shapes[:, 1]) * factor,
                    (origins[:, 1] + shapes[:, 0]) * factor], 1)
    vertices = (vertex_rc[:, ::-1] + (0.5 + origins[owner])) * factor
    if bounds is not None:
        limit = np.asarray(bounds, dtype=np.float64)
        centre = np.clip(centre, 0, limit)
        box = np.clip(box, 0, np.tile(limit, 2))
        vertices = np.clip(vertices, 0, limit)
    centre_list, box_list = centre.tolist(), box.tolist()
    records = []
    for i in range(n):
        a, b = int(starts[i]), int(starts[i] + counts[i])
        perimeter = float(lengths[a:b].sum()) if counts[i] >= 2 else 0.0
        area = int(areas[i])
        records.append(ObjectRecord(
            id=int(ids[i]), centroid=(centre_list[i][0], centre_list[i][1]), bbox=tuple(box_list[i]), area_px=area,
            area_um2=area * mpp * mpp if mpp else None, perimeter_px=perimeter * factor,
            mean_intensity=tuple(float(v) for v in means[i]), polygon=tuple(map(tuple, vertices[a:b].tolist())),
            class_name=class_names[i],
        ))
    return records
