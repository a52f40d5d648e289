"""The engine's worker processes: a tile's CPU-bound work, off the main process.

What a tile needs after the model (or, for a classical task, instead of one) is CPU-bound Python-level
numpy/scipy/OpenCV work: the classical pipeline itself, the watershed that turns a network's maps into
objects, and finding, measuring, outlining and classifying the objects the tile owns
(:func:`dlcore.tiling.tile_objects.find_tile_objects`).  :class:`TileWork` is that work for one task,
picklable; :class:`WorkerPool` runs it in ``workers`` processes (started with ``spawn``, so no threads
are forked), or inline when ``workers`` is 0.  The main process keeps reading, the model on its device,
and the stitching that must follow grid order, so results do not depend on the number of workers.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from dlcore.io.object_text import with_text
from dlcore.qc.exclusion import Exclusion
from dlcore.tiling.grid import Tile
from dlcore.tiling.tile_objects import find_tile_objects


@dataclass(frozen=True)
class TileWork:
    """What a worker does to one tile (picklable: it is sent to each worker once).

    ``postprocess(raw, window) -> labels`` turns what the main process produced for the tile (the model's
    output, or None for a task that works on the window alone) into its label map; None when ``raw`` is
    the label map already.  ``find_objects`` (instance tasks with the engine's stitcher) then returns the
    tile's :class:`~dlcore.tiling.tile_objects.TileObjects` instead of the labels; with ``render_text``
    its records carry their CSV and GeoJSON text (:mod:`dlcore.io.object_text`), for a sink that writes it.
    ``exclude`` (``--qc exclude``, :class:`~dlcore.qc.exclusion.Exclusion`): objects whose centroid lies
    on an artefact are not found, and a label map without objects is set to background there (a result
    with a ``with_excluded(mask)`` method, e.g. class map and probabilities, clears itself).
    """

    postprocess: Callable[[object, np.ndarray], np.ndarray] | None = None
    find_objects: bool = False
    canvas_size: tuple[int, int] = (0, 0)
    factor: float = 1.0
    mpp: float | None = None
    bounds: tuple[float, float] | None = None
    min_pixels: int = 0
    classify: Callable[[np.ndarray, np.ndarray], str | None] | None = None
    render_text: bool = False
    exclude: Exclusion | None = None

    def __call__(self, tile: Tile, window: np.ndarray, raw):
        labels = raw if self.postprocess is None else self.postprocess(raw, window)
        excluded = None if self.exclude is None else self.exclude.window(*tile.window)
        if not self.find_objects:
            if excluded is None:
                return labels
            if hasattr(labels, "with_excluded"):  # a result that carries more than labels (probabilities)
                return labels.with_excluded(excluded)
            if not isinstance(labels, np.ndarray):
                return labels
            return np.where(excluded, 0, labels).astype(labels.dtype, copy=False)
        found = find_tile_objects(tile, window, labels, canvas_size=self.canvas_size, factor=self.factor,
                                  mpp=self.mpp, bounds=self.bounds, min_pixels=self.min_pixels, classify=self.classify,
                                  excluded=excluded)
        if self.render_text:
            with_text(found.records)
        return found


@dataclass(frozen=True)
class PredictOne:
    """``postprocess`` for a task that runs whole in the workers: ``task.predict([window])[0]``."""

    task: object

    def __call__(self, raw, window: np.ndarray) -> np.ndarray:
        return self.task.predict([window])[0]


_WORK: TileWork | None = None


PARENT_CHECK_S = 1.0


def _install(work: TileWork, parent: int) -> None:
    global _WORK
    _WORK = work
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker: no nested thread pools
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="dlcore-parent-watch", daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    """End this worker once the run's process is gone.  A run killed with SIGKILL cannot shut its pool
    down, and a worker waiting for its next tile never learns it otherwise (it holds both ends of its
    queue's pipe): it would sit on its memory forever."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _timed(work: TileWork, tile: Tile, window: np.ndarray, raw):
    start = time.perf_counter()
    result = work(tile, window, raw)
    return result, time.perf_counter() - start


def _run(tile: Tile, window: np.ndarray, raw):
    return _timed(_WORK, tile, window, raw)


class _Done(Future):
    """A future already holding its result (the inline pool)."""

    def __init__(self, fn, *args) -> None:
        super().__init__()
        try:
            self.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered by result(), as a process pool does
            self.set_exception(exc)


class WorkerPool:
    """``work`` for each tile in ``workers`` processes (0: inline, in the calling thread).

    :meth:`submit` returns a future of ``(result, seconds of work)``; the caller keeps the futures in grid
    order and takes their results in that order.  Use as a context manager.
    """

    def __init__(self, work: TileWork, workers: int) -> None:
        self.work, self.workers = work, int(workers)
        self._pool = None
        if self.workers > 0:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_install, initargs=(work, os.getpid()))

    def submit(self, tile: Tile, window: np.ndarray, raw) -> Future:
        if self._pool is None:
            return _Done(_timed, self.work, tile, window, raw)
        return self._pool.submit(_run, tile, window, raw)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
