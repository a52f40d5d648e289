"""Aperio ImageScope XML annotations (``.xml`` beside a slide) as instance label masks.

Aperio's format is what ImageScope and many public nuclei datasets (MoNuSeg, among others) write::

    <Annotations MicronsPerPixel="0.252">
      <Annotation Id="1"> <Regions>
        <Region Id="1" Type="0"> <Vertices> <Vertex X="12.5" Y="40.0"/> ... </Vertices> </Region>

Each ``Region`` with at least three vertices is one object; its polygon is filled (pixel centres inside
the polygon, scikit-image's rule) with the object's id.  Where two polygons overlap the later one
wins, as in the datasets' own converters, and objects left with no pixel are dropped, so ids run
1..N without gaps.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError


@dataclass(frozen=True)
class AperioAnnotations:
    """The polygons of an Aperio XML file, ``(N, 2)`` (x, y) vertices each, and its pixel size if stated."""

    polygons: tuple[np.ndarray, ...]
    mpp: float | None


def read_aperio_xml(path: str | Path) -> AperioAnnotations:
    """Read every region polygon of an Aperio XML file.

    Raises :class:`InputError` when the file is not well-formed XML or holds no ``Region`` element.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{path} is not a readable Aperio XML annotation file: {exc}") from exc
    regions = list(root.iter("Region"))
    if not regions:
        raise InputError(f"{path} holds no <Region> elements; is it an Aperio ImageScope annotation file?")
    polygons = []
    for region in regions:
        vertices = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(vertices) >= 3:
            polygons.append(np.asarray(vertices, dtype=np.float64))
    mpp_text = root.get("MicronsPerPixel")
    try:
        mpp = float(mpp_text) if mpp_text else None
    except ValueError:
        mpp = None
    return AperioAnnotations(polygons=tuple(polygons), mpp=mpp if mpp and mpp > 0 else None)


def instance_mask(annotations: AperioAnnotations, shape: tuple[int, int]) -> np.ndarray:
    """An ``(Y, X)`` int32 instance mask of ``shape`` with one id per polygon (see the module docstring)."""
    from skimage.draw import polygon

    mask = np.zeros(shape, dtype=np.int32)
    for index, vertices in enumerate(annotations.polygons, start=1):
        rows, cols = polygon(vertices[:, 1], vertices[:, 0], shape)
        mask[rows, cols] = index
    present = np.unique(mask)
    remap = np.zeros(len(annotations.polygons) + 1, dtype=np.int32)
    remap[present] = np.arange(len(present))
    return remap[mask]
