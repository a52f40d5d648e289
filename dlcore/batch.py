"""Several slides of one batch at once, each in its own process with its share of the cores.

A slide's run has stretches that use one core whatever the node has (tissue detection, calibration,
the label pyramid and the export: about a quarter of a 0.27-gigapixel slide's run on 2 cores), so on
a node with cores to spare a second slide's tiles can fill them.  :func:`analyse_slides` runs
``at_once`` slides side by side in spawned processes, each told ``DLCORE_CORES`` = its share of the
cores (so its worker pool and torch threads are sized from that share), and yields each slide's outcome
as it finishes.  With ``at_once`` 1 the slides run one after the other in this process, with a
progress bar each.  BENCHMARKS.md says when running slides at once pays.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from dlcore.cores import available_cores
from dlcore.errors import DlcoreError


@dataclass(frozen=True)
class SlideJob:
    """What every slide of a batch shares (picklable: it is sent to each slide's process)."""

    task: str
    params: dict
    out: Path
    label_format: str
    options: object  # dlcore.workflows.RunOptions


@dataclass(frozen=True)
class SlideOutcome:
    """A finished slide: its result's summary, outputs and provenance, or the error that stopped it."""

    path: Path
    summary: dict | None = None
    outputs: dict | None = None
    provenance: dict | None = None
    error: str | None = None


def run_one(job: SlideJob, path: Path, *, progress=None, task=None) -> SlideOutcome:
    """Analyse one slide (``task``: the resolved task, else resolved from ``job``); a
    :class:`~dlcore.errors.DlcoreError` comes back as the outcome's ``error``."""
    from dlcore.config import load_config
    from dlcore.io import open_slide
    from dlcore.io.local_sink import LocalFolderSink
    from dlcore.tasks import resolve_task
    from dlcore.workflows import analyse_slide

    try:
        task = task or resolve_task(job.task, job.params, config=load_config())
        slide = open_slide(path)
        try:
            result = analyse_slide(slide, task, LocalFolderSink(job.out, label_format=job.label_format),
                                   options=job.options, progress=progress)
        finally:
            slide.close()
    except DlcoreError as exc:
        return SlideOutcome(path=path, error=str(exc))
    return SlideOutcome(path=path, summary=result.summary, outputs=result.outputs, provenance=result.provenance)


def cores_per_slide(at_once: int) -> int:
    """Each of ``at_once`` concurrent slides' share of this run's cores (at least one)."""
    return max(1, available_cores() // max(1, at_once))


def _set_cores(cores: int) -> None:
    os.environ["DLCORE_CORES"] = str(cores)


def analyse_slides(job: SlideJob, paths: list[Path], *, at_once: int = 1, task=None,
                   progress_for=None) -> Iterator[SlideOutcome]:
    """Each slide's :class:`SlideOutcome`, in the order they finish (the given order when ``at_once`` is 1).

    ``progress_for(path)`` gives a slide's progress reporter (one after the other only: slides run at
    once report when each is done); ``task`` is the resolved task, reused one after the other.
    """
    at_once = max(1, min(int(at_once), len(paths)))
    if at_once == 1:
        for path in paths:
            progress = progress_for(path) if progress_for else None
            try:
                yield run_one(job, path, progress=progress, task=task)
            finally:
                if progress is not None:
                    progress.close()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=at_once, mp_context=context, initializer=_set_cores,
                             initargs=(cores_per_slide(at_once),)) as pool:
        pending = {pool.submit(run_one, job, path) for path in paths}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
