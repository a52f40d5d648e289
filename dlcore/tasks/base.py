"""What a task is: the unit of analysis the tile engine runs over a slide.

A task turns a batch of ``(Y, X, C)`` tile windows (working resolution, halo included) into a batch
of ``(Y, X)`` integer maps, or for ``image`` tasks of ``(C, Y, X)`` float values.  Its ``kind`` says how
the engine reads them:

- ``"instances"``: each map holds object ids local to the tile (0 = background); the engine stitches
  them slide-wide with the ownership rule and measures every object;
- ``"semantic"``: each map holds class indices (0 = background); the engine crops the halo away and
  counts per-class areas;
- ``"image"``: each result holds ``(C, Y, X)`` predicted values for the whole window (denoising, image
  translation); the engine cross-fades overlapping tiles (:mod:`dlcore.io.image_canvas`, which needs
  ``2 * halo <= tile_size``) and writes a pyramidal image of ``output_channels`` in the task's
  ``output_dtype`` (float32, or uint16 / uint8 with a recorded scale and offset), over its
  ``value_range`` when the task knows it (else the range measured on the slide).

Tasks are frozen dataclasses; :meth:`Task.prepare` returns a copy calibrated on sample windows of
the slide (e.g. a threshold) so that every tile is processed with the same, slide-wide settings.

Optional hooks the workflow uses when a task has them:

- ``class_colors``: one RGB triple per class, for overviews and outlines;
- ``classify_object(mask, image) -> str | None``: a class for each segmented object;
- ``runs_in_process``: True for CPU-bound tasks written in Python-level numpy/scipy, which then run
  whole in the engine's worker processes, one tile per worker at a time (:mod:`dlcore.tiling.pool`);
- ``split_for_workers() -> (infer, postprocess)``: a task whose ``predict`` is a model then CPU work
  (a watershed): ``infer(windows)`` runs in the main process on the model's device and
  ``postprocess(raw, window) -> labels`` (picklable) in the workers;
- ``calibrates``: False for a task whose ``prepare`` ignores its samples (none are read for it);
- ``on_gpu``: True when the task's model runs on a GPU (the workers then get the other cores);
- ``min_object_pixels``: the smallest object an instance task keeps; the stitcher applies it again to
  objects it had to trim where they overlap a neighbouring tile's object;
- ``at_resolution(working_mpp) -> Task``: a copy that knows the slide's working pixel size in µm (or
  None), called before ``prepare`` (e.g. to turn a largest nucleus area in µm² into pixels);
- ``make_stitcher(canvas, plan)``: a stitcher of its own (e.g. one that also keeps probabilities);
- ``summarize(stitcher) -> dict``: extra summary entries (e.g. a slide-level decision and ``tags``);
- ``extra_outputs(stitcher, scratch_dir) -> dict[name, Path]``: extra files (e.g. a heatmap).
"""
from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

from dlcore.io.slide import SlideInfo

TaskKind = Literal["instances", "semantic", "image"]


@runtime_checkable
class Task(Protocol):
    """The interface the tile engine needs from a task (see the module docstring)."""

    name: str
    kind: TaskKind
    mpp: float | None  # working resolution in µm/pixel; None = the slide's native pixels
    tile_size: int
    halo: int
    batch_size: int
    class_names: tuple[str, ...]  # semantic classes (index 1..n) or object classes; may be empty

    def check(self, info: SlideInfo) -> None:
        """Raise a clear :class:`~dlcore.errors.DlcoreError` when the task cannot run on this slide."""

    def prepare(self, samples: list[np.ndarray]) -> "Task":
        """A copy of the task calibrated on sample windows of the slide (or ``self``)."""

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """One integer ``(Y, X)`` map per ``(Y, X, C)`` window."""

    def provenance(self) -> dict:
        """Name, version or checksum, and every parameter, for the provenance record."""
