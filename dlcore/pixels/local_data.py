"""Local training data for a pixel classifier: images with a painted label image or GeoJSON annotations.

A folder holds ``images/`` (any image or slide dlcore opens) and ``labels/`` with, for an image
``images/NAME.ext``, either ``labels/NAME.geojson`` (QuPath annotations in level-0 pixels, classes by
name) or ``labels/NAME.png|.tif|.tiff`` (a label image of the image's size, 0 = unlabelled, ``k`` =
the k-th of ``--classes``).  Images without labels are skipped with a warning.

Only the region around an image's annotations (plus the features' radius) is read, at the working
resolution, so a few scribbles on a whole-slide image cost a few tiles, never the slide.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError
from dlcore.pixels.scribbles import (Stroke, bounding_box, labels_from_array, rasterize, read_geojson, stroke_classes,
                                     translated)
from dlcore.pixels.training import LabelledImage

log = logging.getLogger(__name__)

LABEL_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class LocalPixelData:
    """The labelled images of a folder, at the working resolution, and what was read."""

    images: list[LabelledImage]
    classes: tuple[str, ...]
    channel_names: tuple[str, ...]
    mpp: float | None
    dtype: str
    conflicting_pixels: int


def _label_file(labels_dir: Path, stem: str) -> Path | None:
    for suffix in (".geojson", ".json", *LABEL_IMAGE_SUFFIXES):
        path = labels_dir / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def read_region_strokes(slide, strokes: Sequence[Stroke], classes: Sequence[str], *, mpp: float | None,
                        margin: int, name: str) -> tuple[LabelledImage, int]:
    """The region of ``slide`` around ``strokes`` (level-0 pixels) at ``mpp``, widened by ``margin``
    working pixels, with the strokes rasterised; returns it and the number of conflicting pixels."""
    from dlcore.io.slide import plan_resolution, read_working

    plan = plan_resolution(slide.info, mpp)
    working = [s.scaled(plan.factor) for s in strokes]
    w, h = plan.working_size(slide.info)
    x0, y0, x1, y1 = bounding_box(working, margin)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{name}: the annotations lie outside the image ({w}x{h} working pixels)")
    image = read_working(slide, plan, x0, y0, x1 - x0, y1 - y0)
    labels, report = rasterize(translated(working, -x0, -y0), (y1 - y0, x1 - x0), classes)
    return LabelledImage(name=name, image=image, labels=labels), report.conflicting


def load_pixel_folder(root: str | Path, *, classes: Sequence[str] | None = None, mpp: float | None = None,
                      margin: int = 0, line_width: float | None = None) -> LocalPixelData:
    """Read ``root/images`` and ``root/labels`` (see the module docstring).

    Parameters
    ----------
    classes : class names in label-value order; required for label images, optional for GeoJSON
        (default: the annotations' classes in order of first appearance).
    mpp : working resolution in µm/px (None: each image's own pixels).
    margin : working pixels read around the annotations (the features' radius: no label sits where the
        mirror at the region's edge would change its features).
    line_width : width in working pixels of GeoJSON lines (default :data:`~dlcore.pixels.scribbles.LINE_WIDTH`).
    """
    from dlcore.io.local import open_slide
    from dlcore.train.data import image_stem

    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InputError(f"{root} must hold images/ and labels/ (a label image or a GeoJSON file per image)")
    pairs = []
    for path in sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        label = _label_file(labels_dir, image_stem(path))
        if label is None:
            log.warning("%s has no labels in %s; skipped", path.name, labels_dir)
            continue
        pairs.append((path, label))
    if not pairs:
        raise InputError(f"no image in {images_dir} has labels in {labels_dir} (labels/NAME.geojson or labels/NAME.png)")
    strokes_by_image = {}
    for path, label in pairs:
        if label.suffix.lower() in (".geojson", ".json"):
            strokes_by_image[path] = read_geojson(label, **({"line_width": line_width} if line_width else {}))
    if classes is None:
        if len(strokes_by_image) < len(pairs):
            raise InputError("label images number their classes: name them in order with --classes a,b,c")
        classes = stroke_classes(s for strokes in strokes_by_image.values() for s in strokes)
    classes = tuple(classes)
    images, conflicting, infos = [], 0, []
    for path, label in pairs:
        slide = open_slide(path)
        try:
            infos.append(slide.info)
            if path in strokes_by_image:
                image, clashes = read_region_strokes(slide, strokes_by_image[path], classes, mpp=mpp, margin=margin,
                                                     name=path.name)
                conflicting += clashes
            else:
                image = _painted(slide, label, classes, mpp, path.name)
            images.append(image)
        finally:
            slide.close()
    channels = {tuple(i.channels) for i in infos}
    dtypes = {i.dtype for i in infos}
    if len(channels) > 1 or len(dtypes) > 1:
        raise InputError(f"the images differ in channels {sorted(channels)} or type {sorted(dtypes)}; a classifier "
                         "needs one kind of image")
    own_mpp = mpp if mpp is not None else (infos[0].mpp[0] if infos[0].mpp else None)
    return LocalPixelData(images=images, classes=classes, channel_names=tuple(infos[0].channels), mpp=own_mpp,
                          dtype=str(infos[0].dtype), conflicting_pixels=conflicting)


def _painted(slide, label: Path, classes, mpp, name: str) -> LabelledImage:
    """A whole image at the working resolution with its painted label image (resized by nearest neighbour)."""
    import cv2

    from dlcore.io.slide import plan_resolution, read_working
    from dlcore.train.data import read_label

    plan = plan_resolution(slide.info, mpp)
    w, h = plan.working_size(slide.info)
    info = slide.info
    labels = labels_from_array(read_label(label, (info.height, info.width)), classes)  # size checked there
    if (h, w) != labels.shape:
        labels = cv2.resize(labels.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    return LabelledImage(name=name, image=read_working(slide, plan, 0, 0, w, h), labels=labels)
