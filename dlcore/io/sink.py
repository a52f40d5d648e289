"""The result-sink interface: where a run's results go (local folder, OMERO).

The workflow calls a sink in this order: :meth:`ResultSink.begin` once, :meth:`add_objects` with
batches of objects while tiles stream, then :meth:`finish` with the slide-wide outputs, or
:meth:`abort` on any failure.  A sink must leave nothing half-written after ``abort``, and
``finish`` must replace the results of an earlier run with the same ``run_key`` (no duplicates)
without touching anything else.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from dlcore.errors import InvariantError
from dlcore.io.slide import SlideInfo
from dlcore.objects import ObjectRecord


@dataclass(frozen=True)
class RunContext:
    """What a sink needs to know about a run before results arrive.

    ``run_key`` names the task or model; results of an earlier run with the same key are replaced.
    ``factor`` converts working-resolution pixels to level-0 pixels.
    """

    slide: SlideInfo
    run_key: str
    task_kind: str
    working_mpp: float | None
    factor: float
    working_size: tuple[int, int]
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class RunOutputs:
    """Slide-wide results handed to :meth:`ResultSink.finish`.

    ``labels`` is the :class:`~dlcore.io.labels.LabelCanvas` (pyramid built), or None for an ``image``
    task, whose finished :class:`~dlcore.io.image_canvas.ImageCanvas` is ``image``; ``overview_png`` a
    picture of the results over a thumbnail; ``provenance`` the JSON-serialisable record of the run;
    ``summary`` the counts and measurements a person reads first (also inside ``provenance``);
    ``tags`` names of classification results to tag the image with.
    """

    labels: object | None
    overview_png: Path
    provenance: dict
    summary: dict
    tags: tuple[str, ...] = ()
    extra_files: dict[str, Path] = field(default_factory=dict)
    image: object | None = None


@runtime_checkable
class ResultSink(Protocol):
    """Receives a run's results (see the module docstring for the call order and duties)."""

    def begin(self, context: RunContext) -> None: ...

    def add_objects(self, objects: Sequence[ObjectRecord]) -> None: ...

    def finish(self, outputs: RunOutputs) -> dict[str, str]:
        """Write the slide-wide outputs; return what was written, name -> location."""

    def abort(self) -> None:
        """Remove everything this run wrote so far."""


def object_columns(channels: Sequence[str]) -> list[str]:
    """Column names of the per-object measurement table."""
    return [
        "id", "class", "centroid_x", "centroid_y", "area_px", "area_um2", "perimeter_px",
        "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", *[f"mean_{c}" for c in channels],
    ]


def object_row(obj: ObjectRecord) -> list:
    """One object's values in the order of :func:`object_columns`."""
    return [
        obj.id, obj.class_name or "", round(obj.centroid[0], 2), round(obj.centroid[1], 2), obj.area_px,
        "" if obj.area_um2 is None else round(obj.area_um2, 3), round(obj.perimeter_px, 2),
        *[round(v, 2) for v in obj.bbox], *[round(v, 3) for v in obj.mean_intensity],
    ]


def check_objects_inside(objects: Sequence[ObjectRecord], slide: SlideInfo) -> None:
    """Raise :class:`InvariantError` unless every object's centroid, bounding box and outline lie inside
    the image (level-0 pixels, ``0 <= x <= width``, ``0 <= y <= height``).

    Every sink calls it before writing anything of a batch, so no result outside the image is written.
    The batch is checked at once (numpy); only a violation is looked at object by object.
    """
    import numpy as np

    if not objects:
        return
    width, height = slide.width, slide.height
    boxes = np.array([obj.bbox for obj in objects], dtype=np.float64).reshape(-1, 4)
    centres = np.array([obj.centroid for obj in objects], dtype=np.float64).reshape(-1, 2)
    points = [np.asarray(obj.polygon, dtype=np.float64).reshape(-1, 2) for obj in objects]
    limits = np.array([width, height], dtype=np.float64)
    ok = ((boxes[:, :2] >= 0).all(axis=1) & (boxes[:, 2:] <= limits).all(axis=1)
          & (boxes[:, :2] <= boxes[:, 2:]).all(axis=1)
          & (centres >= 0).all(axis=1) & (centres <= limits).all(axis=1)
          & np.array([bool(((p >= 0) & (p <= limits)).all()) for p in points]))
    if ok.all():
        return
    obj = objects[int(np.argmin(ok))]
    x0, y0, x1, y1 = obj.bbox
    cx, cy = obj.centroid
    raise InvariantError(
        f"object {obj.id} of {slide.name} (bounding box {x0:.1f},{y0:.1f}..{x1:.1f},{y1:.1f}, centroid "
        f"{cx:.1f},{cy:.1f}) lies outside the {width}x{height} image; nothing was written for it"
    )
