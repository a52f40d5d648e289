"""Streaming execution of a task over a tile grid.

Four stages run at once so that reading, post-processing and writing hide behind compute:

- reader threads fetch tile windows (working resolution, halo included), at most ``prefetch``
  batches ahead of the model;
- the calling thread runs the task's ``infer`` on batches (the model on its device; nothing for a
  task that runs whole in the workers);
- the worker pool (:mod:`dlcore.tiling.pool`) does each tile's CPU-bound work: the classical
  pipeline or the watershed, and finding, measuring and outlining the tile's objects;
- one writer thread takes the workers' results in grid order, stitches them and hands finished
  objects to the sink.

Queues between the stages are bounded (a few tiles per worker), so memory holds a few batches,
never the slide.  An error in any stage stops the others and is raised in the caller.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dlcore.io.slide import ResolutionPlan, Slide, read_working
from dlcore.progress import ProgressCallback
from dlcore.tiling.grid import Tile
from dlcore.tiling.pool import WorkerPool

_DONE = object()


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over threads and workers (they overlap each other and the wall)."""

    read: float = 0.0
    task: float = 0.0  # the main process's infer (the model)
    post: float = 0.0  # the workers' per-tile work, summed over workers
    wait: float = 0.0  # the writer waiting for a worker's result
    write: float = 0.0
    wall: float = 0.0
    tiles: int = 0
    pixels: int = 0
    workers: int = 0
    stopped: bool = False  # ``stop`` said so before the last tile

    def as_dict(self) -> dict[str, float]:
        return {"read_s": round(self.read, 3), "task_s": round(self.task, 3), "worker_s": round(self.post, 3),
                "writer_wait_s": round(self.wait, 3), "stitch_write_s": round(self.write, 3),
                "tiles_wall_s": round(self.wall, 3), "tiles": self.tiles, "core_pixels": self.pixels,
                "workers": self.workers}


def read_window(slide: Slide, plan: ResolutionPlan, tile: Tile) -> np.ndarray:
    """The ``(Y, X, C)`` window of a tile at the working resolution (mirrored outside the slide)."""
    x, y, w, h = tile.window
    return read_working(slide, plan, x, y, w, h)


def run_tiles(
    slide: Slide,
    plan: ResolutionPlan,
    tiles: Sequence[Tile],
    *,
    infer: Callable[[list[np.ndarray]], list],
    pool: WorkerPool,
    consume: Callable[[Tile, np.ndarray, object], None],
    batch_size: int = 1,
    reader_threads: int = 2,
    prefetch: int = 2,
    progress: ProgressCallback | None = None,
    stop: Callable[[], bool] | None = None,
) -> StageTimes:
    """Run ``infer`` over every tile, the pool's work on each result, and pass the work's result to
    ``consume`` (in the writer thread).

    ``consume(tile, window, result)`` is called once per tile, in grid order, whatever the number of
    workers.  ``stop()``, asked before each batch, ends the run early: the tiles already started are
    consumed, no later one is, and the returned times say ``stopped``.  Returns the per-stage times.
    """
    times = StageTimes(workers=pool.workers)
    lock = threading.Lock()
    halt = threading.Event()
    batches = [list(tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)]
    in_flight = max(2, -(-2 * max(pool.workers, 1) // batch_size))  # batches: about two tiles per worker
    write_queue: queue.Queue = queue.Queue(maxsize=max(in_flight, prefetch))
    errors: list[BaseException] = []

    def timed_read(tile: Tile) -> np.ndarray:
        start = time.perf_counter()
        window = read_window(slide, plan, tile)
        with lock:
            times.read += time.perf_counter() - start
        return window

    def writer() -> None:
        done = 0
        while True:
            item = write_queue.get()
            if item is _DONE:
                return
            if errors:
                for _, _, future in item:
                    future.cancel()
                continue  # drain so the producer never blocks
            try:
                for tile, window, future in item:
                    start = time.perf_counter()
                    result, seconds = future.result()
                    times.wait += time.perf_counter() - start
                    times.post += seconds
                    start = time.perf_counter()
                    consume(tile, window, result)
                    times.write += time.perf_counter() - start
                done += len(item)
                if progress:
                    progress("tiles", done, len(tiles))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller (a failing progress too)
                errors.append(exc)
                halt.set()

    wall_start = time.perf_counter()
    writer_thread = threading.Thread(target=writer, name="dlcore-writer", daemon=True)
    writer_thread.start()
    readers = ThreadPoolExecutor(max_workers=reader_threads, thread_name_prefix="dlcore-reader")
    pending: list = []
    try:
        pending = [[readers.submit(timed_read, t) for t in batch] for batch in batches[:prefetch + 1]]
        for index, batch in enumerate(batches):
            if halt.is_set():
                break
            if stop is not None and stop():
                times.stopped = True
                break
            windows = [f.result() for f in pending.pop(0)]
            nxt = index + prefetch + 1
            if nxt < len(batches):
                pending.append([readers.submit(timed_read, t) for t in batches[nxt]])
            start = time.perf_counter()
            raws = infer(windows)
            times.task += time.perf_counter() - start
            times.tiles += len(batch)
            times.pixels += sum(t.width * t.height for t in batch)
            futures = [pool.submit(tile, window, raw) for tile, window, raw in zip(batch, windows, raws)]
            write_queue.put(list(zip(batch, windows, futures)))
    except BaseException:
        halt.set()
        raise
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
        readers.shutdown(wait=True, cancel_futures=True)
        write_queue.put(_DONE)
        writer_thread.join()
    if errors:
        raise errors[0]
    times.wall = time.perf_counter() - wall_start
    return times
