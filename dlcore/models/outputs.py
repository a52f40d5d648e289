"""Slide-wide extra outputs of semantic models: class outlines as GeoJSON.

The outlines are traced on a reduced level of the label canvas (at most ``max_side`` pixels on the
long side), so the cost and the file stay small whatever the slide's size; coordinates are level-0
slide pixels, like the objects' outlines, and QuPath imports the file as annotations.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_class_outlines(stitcher, class_names, class_colors, path: Path, *, max_side: int = 4096,
                         min_area_px: int = 4) -> Path:
    """Write each class's regions as GeoJSON polygons (level-0 pixels); returns ``path``."""
    import shapely
    from skimage import measure

    canvas = stitcher.canvas
    level = 0
    while level + 1 < len(canvas.levels) and max(canvas.levels[level].shape) > max_side:
        level += 1
    labels = np.asarray(canvas.levels[level][:])
    scale_y = canvas.height / labels.shape[0]
    scale_x = canvas.width / labels.shape[1]
    factor = getattr(stitcher, "factor", 1.0)
    features = []
    for index, name in enumerate(class_names, start=1):
        mask = np.pad(labels == index, 1)
        if not mask.any():
            continue
        polys = []
        for contour in measure.find_contours(mask.astype(np.uint8), 0.5):
            if len(contour) < 4:
                continue
            ring = [((x - 1 + 0.5) * scale_x * factor, (y - 1 + 0.5) * scale_y * factor) for y, x in contour]
            poly = shapely.Polygon(ring).buffer(0)
            if poly.area >= min_area_px * scale_x * scale_y * factor * factor:
                polys.append(poly)
        if not polys:
            continue
        # even-odd: a contour inside another is a hole
        geom = polys[0]
        for poly in polys[1:]:
            geom = geom.symmetric_difference(poly)
        geom = shapely.simplify(geom, max(scale_x, scale_y) * factor * 0.5)
        color = list(class_colors[index - 1]) if index - 1 < len(class_colors) else [200, 0, 0]
        features.append({"type": "Feature", "geometry": json.loads(shapely.to_geojson(geom)),
                         "properties": {"objectType": "annotation", "name": name,
                                        "classification": {"name": name, "color": color},
                                        "measurements": {"Area px (level 0)": round(float(geom.area), 1)}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path
