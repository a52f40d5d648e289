"""Running a CPU-bound task in a worker process, so it does not share the GIL with the pipeline.

The tile engine's reader and writer threads are Python code too.  A task whose ``predict`` is mostly
Python-level numpy/scipy calls (the classical pipelines) would otherwise compete with them for the
interpreter lock, and on a 2-core node the pipeline would slow the task down by half.  A task that
says ``runs_in_process = True`` gets its own process (started with ``spawn``, so no threads are
forked); the engine's main thread only waits for it, leaving the interpreter to the readers and the
writer.  Deep-learning tasks stay in the main process: torch releases the GIL while it computes.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

_TASK = None


def _install(task) -> None:
    global _TASK
    _TASK = task


def _predict(windows: list[np.ndarray]) -> list[np.ndarray]:
    return _TASK.predict(windows)


class ProcessPredictor:
    """``predict`` of ``task`` run in one worker process; use as a context manager."""

    def __init__(self, task) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_install, initargs=(task,),
        )

    def __call__(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        return self._pool.submit(_predict, windows).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ProcessPredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
