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

    Regions and holes under ``min_area_px`` pixels of the traced level are left out.
    """
    import shapely
    from scipy import ndimage as ndi
    from skimage import measure

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
        components, _ = ndi.label(mask)
        polys = []
        for n, sl in enumerate(ndi.find_objects(components), start=1):
            crop = np.pad(components[sl] == n, 1)
            rings = [c for c in measure.find_contours(crop.astype(np.uint8), 0.5) if len(c) >= 4]
            if not rings:
                continue
            y0, x0 = sl[0].start - 1, sl[1].start - 1
            rings = [[((x + x0 + 0.5) * sx, (y + y0 + 0.5) * sy) for y, x in r] for r in rings]
            rings.sort(key=lambda r: shapely.Polygon(r).area, reverse=True)
            polys.append(shapely.Polygon(rings[0], rings[1:]).buffer(0))
        if not polys:
            continue
        geom = shapely.simplify(shapely.MultiPolygon([p for g in polys for p in getattr(g, "geoms", [g])]), max(sx, sy) * 0.5)
        color = list(class_colors[index - 1]) if index - 1 < len(class_colors) else [200, 0, 0]
        features.append({"type": "Feature", "geometry": json.loads(shapely.to_geojson(geom)),
                         "properties": {"objectType": "annotation", "name": name,
                                        "classification": {"name": name, "color": color},
                                        "measurements": {"Area px (level 0)": round(float(geom.area), 1),
                                                         "Regions": len(polys)}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path
