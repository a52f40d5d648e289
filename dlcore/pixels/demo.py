"""The pixel-classification demo: scikit-image's real IHC section with scribbles of three classes.

:func:`write_scribble_demo` writes a training folder for ``dlcore train --task pixels``::

    <folder>/images/ihc-section.ome.tif    the 512 x 512 IHC section (0.5 µm/px, as the demo slide)
    <folder>/labels/ihc-section.geojson    36 scribble strokes, QuPath-style, 12 per class

The classes are ``dab`` (DAB-positive), ``hematoxylin`` (haematoxylin-only tissue) and ``background``
(unstained: lumen and glass).  Nobody drew these strokes by hand: a script placed them, each a short line
whose pixels the textbook colour deconvolution (scikit-image's ``rgb2hed``) calls clearly of its class,
spread over the section.  They stand in for what a user scribbles in QuPath or OMERO.iviewer; the
classifier then labels every pixel, including the many the deconvolution thresholds leave in between.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ("dab", "hematoxylin", "background")
STROKES_PER_CLASS = 12
STROKE_LENGTH = 14  # pixels
DEMO_MPP = 0.5


def confident_regions(image: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels the reference colour deconvolution calls clearly DAB, clearly haematoxylin-only, or unstained."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    hed = ndi.gaussian_filter(rgb2hed(image), (1.5, 1.5, 0))
    od = -np.log10(np.maximum(image, 1) / 255.0).sum(axis=2)
    dab = hed[..., 2] > np.quantile(hed[..., 2], 0.90)
    hema = (hed[..., 0] > np.quantile(hed[..., 0], 0.85)) & (hed[..., 2] < np.quantile(hed[..., 2], 0.40))
    background = ndi.gaussian_filter(od, 1.5) < np.quantile(od, 0.08)
    return {"dab": dab, "hematoxylin": hema, "background": background}


def _line_inside(mask: np.ndarray, y: int, x: int, angle: float) -> tuple[tuple[float, float], ...] | None:
    dy, dx = np.sin(angle) * STROKE_LENGTH / 2, np.cos(angle) * STROKE_LENGTH / 2
    t = np.linspace(-1, 1, STROKE_LENGTH)
    ys, xs = np.round(y + t * dy).astype(int), np.round(x + t * dx).astype(int)
    if ys.min() < 0 or xs.min() < 0 or ys.max() >= mask.shape[0] or xs.max() >= mask.shape[1]:
        return None
    if mask[ys, xs].mean() < 0.9:
        return None
    return ((float(x - dx), float(y - dy)), (float(x), float(y)), (float(x + dx), float(y + dy)))


def place_strokes(image: np.ndarray, *, seed: int = 0) -> list[dict]:
    """GeoJSON features: ``STROKES_PER_CLASS`` lines per class, at least 30 px apart within a class."""
    rng = np.random.default_rng(seed)
    features = []
    for name, mask in confident_regions(image).items():
        ys, xs = np.nonzero(mask)
        placed: list[tuple[int, int]] = []
        for i in rng.permutation(len(ys)):
            y, x = int(ys[i]), int(xs[i])
            if any((y - py) ** 2 + (x - px) ** 2 < 30 ** 2 for py, px in placed):
                continue
            line = _line_inside(mask, y, x, rng.uniform(0, np.pi))
            if line is None:
                continue
            placed.append((y, x))
            features.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [list(p) for p in line]},
                             "properties": {"objectType": "annotation", "classification": {"name": name}}})
            if len(placed) == STROKES_PER_CLASS:
                break
    return features


def write_scribble_demo(folder: str | Path) -> Path:
    """Write the demo training folder (see the module docstring); returns it."""
    from skimage import data

    from dlcore.train.data import _write_ome

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    image = data.immunohistochemistry()
    _write_ome(folder / "images" / "ihc-section.ome.tif", image, mpp=DEMO_MPP, name="ihc-section")
    collection = {"type": "FeatureCollection", "features": place_strokes(image)}
    (folder / "labels" / "ihc-section.geojson").write_text(json.dumps(collection, indent=1))
    return folder
