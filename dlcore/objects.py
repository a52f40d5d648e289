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

    The contour runs along the object's boundary (iso-level 0.5 between pixel centres) and is
    simplified (Douglas-Peucker, GEOS) with a tolerance doubled from 0.5 pixel until it fits the
    vertex budget.
    """
    import shapely
    from skimage.measure import find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.uint8), 0.5)
    if not contours:
        return np.zeros((0, 2))
    contour = max(contours, key=len) - 1
    if len(contour) < 4:
        return contour[:-1] if len(contour) > 1 and np.allclose(contour[0], contour[-1]) else contour
    ring = shapely.linearrings(contour)
    best = contour[:-1]
    tolerance = 0.5
    while len(best) > max_vertices and tolerance <= max(mask.shape):
        poly = shapely.get_coordinates(shapely.simplify(ring, tolerance, preserve_topology=False))[:-1]
        if len(poly) < 3:
            break
        best = poly
        tolerance *= 2
    if len(best) > 16 and tolerance == 0.5:  # under budget already: still drop collinear vertices
        poly = shapely.get_coordinates(shapely.simplify(ring, 0.25, preserve_topology=True))[:-1]
        best = poly if len(poly) >= 3 else best
    return best


def measure_object(
    *,
    object_id: int,
    mask: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int],
    factor: float,
    mpp: float | None,
    class_name: str | None = None,
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
    """
    ys, xs = np.nonzero(mask)
    means = tuple(float(v) for v in image[mask].mean(axis=0)) if ys.size else ()
    return object_record(
        object_id=object_id, mask=mask, origin=origin, factor=factor, mpp=mpp, area=int(ys.size),
        centroid=(float(xs.mean()) if ys.size else 0.0, float(ys.mean()) if ys.size else 0.0),
        means=means, class_name=class_name,
    )


def object_record(
    *,
    object_id: int,
    mask: np.ndarray,
    origin: tuple[int, int],
    factor: float,
    mpp: float | None,
    area: int,
    centroid: tuple[float, float],
    means: tuple[float, ...],
    class_name: str | None = None,
) -> ObjectRecord:
    """An :class:`ObjectRecord` from measurements already made (``centroid``: mean (x, y) pixel index
    within ``mask``); adds the outline and perimeter and converts to level-0 coordinates."""
    ox, oy = origin
    h, w = mask.shape
    poly = outline(mask)
    if len(poly) >= 2:
        closed = np.vstack([poly, poly[:1]])
        perimeter = float(np.hypot(*np.diff(closed, axis=0).T).sum())
    else:
        perimeter = 0.0
    return ObjectRecord(
        id=object_id,
        centroid=((centroid[0] + 0.5 + ox) * factor, (centroid[1] + 0.5 + oy) * factor),
        bbox=(ox * factor, oy * factor, (ox + w) * factor, (oy + h) * factor),
        area_px=area,
        area_um2=area * mpp * mpp if mpp else None,
        perimeter_px=perimeter * factor,
        mean_intensity=means,
        polygon=tuple((float((c + 0.5 + ox) * factor), float((r + 0.5 + oy) * factor)) for r, c in poly),
        class_name=class_name,
    )
