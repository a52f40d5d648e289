"""Slide-wide extra outputs of semantic models: class outlines as GeoJSON.

The outlines are traced on a reduced level of the label canvas (at most ``max_side`` pixels on the
long side), so the cost and the file stay small whatever the slide's size; coordinates are level-0
slide pixels, like the objects' outlines, and QuPath imports the file as annotations.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_class_outlines(stitcher, class_names, class_colors, path: Path, *, max_side: int = 2048,
                         min_area_px: int = 16) -> Path:
    """Write each class's regions as GeoJSON polygons with holes (level-0 pixels); returns ``path``.

    Regions and holes under ``min_area_px`` pixels of the traced level are left out.  Each class's
    outer boundaries and holes are traced at once (OpenCV's two-level contour tree) and simplified to
    half a traced pixel, so a fine-grained class map (a pixel classifier's) costs seconds, not minutes.
    A region whose pixels touch only at a corner gives a ring that touches itself there (as QuPath's
    own pixel-classifier annotations can).
    """
    import shapely

    from dlcore.imageops import remove_small

    canvas = stitcher.canvas
    level = 0
    while level + 1 < len(canvas.levels) and max(canvas.levels[level].shape) > max_side:
        level += 1
    labels = np.asarray(canvas.levels[level][:])
    factor = getattr(stitcher, "factor", 1.0)
    sx, sy = canvas.width / labels.shape[1] * factor, canvas.height / labels.shape[0] * factor
    features = []
    for index, name in enumerate(class_names, start=1):
        mask = remove_small(labels == index, min_area_px)
        mask = ~remove_small(~mask, min_area_px)  # fill small holes
        polys = _region_polygons(mask, sx, sy)
        if not len(polys):
            continue
        geom = shapely.MultiPolygon(list(polys))
        color = list(class_colors[index - 1]) if index - 1 < len(class_colors) else [200, 0, 0]
        features.append({"type": "Feature", "geometry": json.loads(shapely.to_geojson(geom)),
                         "properties": {"objectType": "annotation", "name": name,
                                        "classification": {"name": name, "color": color},
                                        "measurements": {"Area px (level 0)": round(float(geom.area), 1),
                                                         "Regions": len(polys)}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _region_polygons(mask: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """The regions of a boolean mask as shapely polygons with holes, in level-0 pixels (``sx``, ``sy`` per
    traced pixel; pixel ``i`` spans ``[i, i + 1)``), boundaries simplified to half a traced pixel.

    The mask is traced at twice its size, so the boundary (through the centres of the edge pixels)
    lies a quarter of a pixel inside the pixels' edges: areas are within a quarter-pixel perimeter strip
    of the pixel count.
    """
    import cv2
    import shapely

    double = cv2.resize(mask.astype(np.uint8), (mask.shape[1] * 2, mask.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(double, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.array([], dtype=object)
    tree = hierarchy[0]

    def ring(i):
        points = cv2.approxPolyDP(contours[i], 1.0, True)[:, 0, :].astype(np.float64)
        return (points + 0.5) / 2 * (sx, sy) if len(points) >= 3 else None

    polys = []
    for i in np.flatnonzero(tree[:, 3] < 0):  # outer boundaries; their children are the holes
        shell = ring(i)
        if shell is None:
            continue
        holes, child = [], tree[i, 2]
        while child >= 0:
            hole = ring(child)
            if hole is not None:
                holes.append(hole)
            child = tree[child, 0]
        polys.append(shapely.Polygon(shell, holes))
    return np.array(polys, dtype=object)


def write_probability_map(grid: np.ndarray, valid: np.ndarray, class_colors, folder: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.npy`` (rows, cols, classes float32; NaN where ``valid`` is False) and ``<stem>.png`` (each
    cell the class colours weighted by probability, white where not valid, enlarged to about 512 px)."""
    from PIL import Image

    probs = np.asarray(grid, np.float32).copy()
    probs[~valid] = np.nan
    npy = folder / f"{stem}.npy"
    np.save(npy, probs)
    colors = np.asarray(class_colors, np.float32)
    rgb = np.nan_to_num(probs) @ colors
    rgb[~valid] = 255
    scale = max(1, 512 // max(grid.shape[:2]))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    png = folder / f"{stem}.png"
    image.save(png)
    return npy, png
