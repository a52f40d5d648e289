"""Streaming execution of a task over a tile grid.

Three stages run at once so reading and writing hide behind compute:

- reader threads fetch tile windows (working resolution, halo included), at most ``prefetch``
  batches ahead of the model;
- the calling thread runs the task on batches;
- one writer thread stitches each prediction and hands finished objects to the sink.

Queues between the stages are bounded, so memory holds a few batches, never the slide.  An error in
any stage stops the others and is raised in the caller.
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

_DONE = object()


@dataclass
class StageTimes:
    """Seconds spent per stage (reader and writer seconds overlap the task's)."""

    read: float = 0.0
    task: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    tiles: int = 0
    pixels: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"read_s": round(self.read, 3), "task_s": round(self.task, 3), "stitch_write_s": round(self.write, 3),
                "tiles_wall_s": round(self.wall, 3), "tiles": self.tiles, "core_pixels": self.pixels}


def read_window(slide: Slide, plan: ResolutionPlan, tile: Tile) -> np.ndarray:
    """The ``(Y, X, C)`` window of a tile at the working resolution (mirrored outside the slide)."""
    x, y, w, h = tile.window
    return read_working(slide, plan, x, y, w, h)


def run_tiles(
    slide: Slide,
    plan: ResolutionPlan,
    tiles: Sequence[Tile],
    *,
    predict: Callable[[list[np.ndarray]], list[np.ndarray]],
    consume: Callable[[Tile, np.ndarray, np.ndarray], None],
    batch_size: int = 1,
    reader_threads: int = 2,
    prefetch: int = 2,
    progress: ProgressCallback | None = None,
) -> StageTimes:
    """Run ``predict`` over every tile and pass each result to ``consume`` (in the writer thread).

    ``consume(tile, window, prediction)`` is called once per tile, in grid order.
    Returns the per-stage times.
    """
    times = StageTimes()
    lock = threading.Lock()
    stop = threading.Event()
    batches = [list(tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)]
    write_queue: queue.Queue = queue.Queue(maxsize=max(2, prefetch))
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
                continue  # drain so the producer never blocks
            start = time.perf_counter()
            try:
                for tile, window, prediction in item:
                    consume(tile, window, prediction)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
                stop.set()
                continue
            times.write += time.perf_counter() - start
            done += len(item)
            if progress:
                progress("tiles", done, len(tiles))

    wall_start = time.perf_counter()
    writer_thread = threading.Thread(target=writer, name="dlcore-writer", daemon=True)
    writer_thread.start()
    pool = ThreadPoolExecutor(max_workers=reader_threads, thread_name_prefix="dlcore-reader")
    pending: list = []
    try:
        pending = [[pool.submit(timed_read, t) for t in batch] for batch in batches[:prefetch + 1]]
        for index, batch in enumerate(batches):
            if stop.is_set():
                break
            windows = [f.result() for f in pending.pop(0)]
            nxt = index + prefetch + 1
            if nxt < len(batches):
                pending.append([pool.submit(timed_read, t) for t in batches[nxt]])
            start = time.perf_counter()
            predictions = predict(windows)
            times.task += time.perf_counter() - start
            times.tiles += len(batch)
            times.pixels += sum(t.width * t.height for t in batch)
            write_queue.put(list(zip(batch, windows, predictions)))
    except BaseException:
        stop.set()
        raise
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        write_queue.put(_DONE)
        writer_thread.join()
    if errors:
        raise errors[0]
    times.wall = time.perf_counter() - wall_start
    return times
