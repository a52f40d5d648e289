"""Jobs: the one call the command line, the OMERO scripts and the ``omero dl`` plugin all make.

:func:`analyse_slide` runs a task over one slide from any :class:`~dlcore.io.slide.Slide` into any
:class:`~dlcore.io.sink.ResultSink`: tissue detection, tile grid, calibration, streaming tiles,
stitching, pyramid, overview, provenance.  On any failure the sink is told to abort, so nothing
half-written stays behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import getpass
import logging
import platform
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import dlcore
from dlcore.errors import InputError, InvariantError, OutputError, ParameterError, RunStopped
from dlcore.io.labels import LabelCanvas
from dlcore.io.sink import ResultSink, RunContext, RunOutputs
from dlcore.io.slide import ResolutionPlan, Slide, SlideInfo, plan_resolution, read_working, with_mpp
from dlcore.overview import render_image_overview, render_overview
from dlcore.tasks.auto import AutoTask
from dlcore.tasks.base import Task
from dlcore.progress import ProgressCallback
from dlcore.qc.exclusion import Exclusion, usable_tissue
from dlcore.qc.outputs import write_qc_files
from dlcore.qc.run import QC_MODES, QCOptions, QCResult, qc_problems, qc_run_summary, run_qc
from dlcore.cores import CoreShare, share_cores
from dlcore.scratch import make_scratch
from dlcore.tiling.checkpoint import DEFAULT_EVERY_S, Checkpoint, CorruptCheckpoint, checkpoint_root, run_identity
from dlcore.tiling.engine import run_tiles
from dlcore.tiling.pool import PredictOne, TileWork, WorkerPool
from dlcore.tiling.tile_objects import TileObjects
from dlcore.tiling.grid import GridSpec, make_grid
from dlcore.tiling.stitch import ImageStitcher, InstanceStitcher, SemanticStitcher
from dlcore.tiling.tissue import TissueMask, thumbnail, tissue_mask_from_thumbnail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run a task on a slide, beyond the task's own parameters.

    Attributes
    ----------
    mpp: override the slide's level-0 pixel size in µm (for files without one).
    detect_tissue: restrict tiles to detected tissue; False analyses the whole image.
    reader_threads: tile prefetch threads.
    calibration_samples: windows sampled on tissue for the task's slide-wide calibration.
    work_dir: scratch space for the label canvas and the run's checkpoint (None = system temp).
    workers: worker processes for the tiles' CPU-bound work (:mod:`dlcore.tiling.pool`); None: the
        configuration's ``workers``, 0 there meaning the rule of :mod:`dlcore.cores`; 0 here: inline.
    torch_threads: torch's CPU threads for a model on the CPU; None: as ``workers``.
    checkpoint: keep a checkpoint while tiles stream, so that the same run started again after a kill
        continues where it stopped (:mod:`dlcore.tiling.checkpoint`); False: none.
    checkpoint_every_s: seconds between checkpoint commits (a kill loses at most this much work).
    fresh: start from the first tile even when a checkpoint of the same run exists (it is replaced).
    deadline: a wall-clock time (``time.time()``) after which no tile is started: the run then stops
        at a tile boundary with its checkpoint kept and raises :class:`~dlcore.errors.RunStopped`.
    qc: slide quality control before the analysis (:mod:`dlcore.qc`): ``"off"``; ``"flag"``: QC runs and
        its mask, flags and files join the results, the analysis is unchanged; ``"exclude"``: as flag,
        and artefact regions are left out of the analysis (no tile, calibration window or object there;
        the excluded area is recorded).
    qc_options: how QC looks (:class:`~dlcore.qc.run.QCOptions`); its focus is measured at the task's
        working resolution.
    """

    mpp: float | None = None
    detect_tissue: bool = True
    reader_threads: int = 2
    calibration_samples: int = 8
    calibration_size: int = 512
    work_dir: Path | None = None
    workers: int | None = None
    torch_threads: int | None = None
    checkpoint: bool = True
    checkpoint_every_s: float = DEFAULT_EVERY_S
    fresh: bool = False
    deadline: float | None = None
    qc: str = "off"
    qc_options: QCOptions = QCOptions()

    def __post_init__(self) -> None:
        if self.qc not in QC_MODES:
            raise ParameterError(f"qc={self.qc!r} is not a QC mode; choose one of {', '.join(QC_MODES)} "
                                 "(exclude: leave artefacts out, flag: only report them, off: no QC)")

    def result_options(self) -> dict:
        """The options that change a run's results (a checkpoint is reused only when they are equal)."""
        return {"mpp": self.mpp, "detect_tissue": self.detect_tissue, "calibration_samples": self.calibration_samples,
                "calibration_size": self.calibration_size, "qc": self.qc,
                **({"qc_options": self.qc_options.as_dict()} if self.qc == "exclude" else {})}


@dataclass(frozen=True)
class RunResult:
    """What a run produced: the summary a person reads and where each output went."""

    summary: dict
    outputs: dict[str, str]
    provenance: dict


def calibration_windows(slide: Slide, plan: ResolutionPlan, info: SlideInfo, tissue: TissueMask | None,
                        *, count: int, size: int) -> list[np.ndarray]:
    """Windows of ``size`` pixels centred on ``count`` tissue points spread evenly over the slide.

    The points depend on the tissue mask only, never on the tile grid, so a slide analysed in tiles
    and the same slide analysed whole calibrate identically.
    """
    width, height = plan.working_size(info)
    if tissue is None:
        points = [((i + 0.5) / count, 0.5) for i in range(count)]
    else:
        ys, xs = np.nonzero(tissue.mask)
        if ys.size == 0:
            return []
        picks = np.linspace(0, ys.size - 1, num=min(count, ys.size)).astype(int)
        points = [((xs[i] + 0.5) / tissue.mask.shape[1], (ys[i] + 0.5) / tissue.mask.shape[0]) for i in picks]
    size = min(size, width, height)
    windows = []
    for fx, fy in points:
        x = int(np.clip(fx * width - size / 2, 0, width - size))
        y = int(np.clip(fy * height - size / 2, 0, height - size))
        windows.append(read_working(slide, plan, x, y, size, size))
    return windows


def task_at_resolution(task: Task, plan: ResolutionPlan) -> Task:
    """The task told the slide's working pixel size, for tasks whose sizes are physical (the optional
    ``at_resolution`` hook); the task itself for the others.  Call it before tiling."""
    at_resolution = getattr(task, "at_resolution", None)
    return at_resolution(plan.working_mpp) if at_resolution is not None else task


def _stitcher(task: Task, canvas: LabelCanvas, plan: ResolutionPlan, info: SlideInfo):
    make_stitcher = getattr(task, "make_stitcher", None)  # optional: a task that keeps more than labels
    if make_stitcher is not None:
        return make_stitcher(canvas, plan)
    if task.kind == "instances":
        classify = getattr(task, "classify_object", None)
        return InstanceStitcher(canvas, factor=plan.factor, mpp=plan.working_mpp, classify=classify,
                                min_pixels=int(getattr(task, "min_object_pixels", 0)), bounds=(info.width, info.height))
    if task.kind == "semantic":
        return SemanticStitcher(canvas, len(task.class_names))
    if task.kind == "image":
        return ImageStitcher(canvas)
    raise InputError(f"task {task.name} has kind {task.kind!r}; the tile engine runs 'instances', 'semantic' and "
                     "'image' tasks")


def _new_canvas(task: Task, path: Path, width: int, height: int, *, reopen: bool = False):
    """The run's canvas: a :class:`LabelCanvas`, or for an ``image`` task an :class:`ImageCanvas`."""
    if task.kind == "image":
        from dlcore.io.image_canvas import ImageCanvas

        return ImageCanvas(path, width, height, task.output_channels, tile_size=task.tile_size, halo=task.halo,
                           reopen=reopen)
    return LabelCanvas(path, width, height, reopen=reopen)


def analyse_slide(
    slide: Slide,
    task: Task,
    sink: ResultSink,
    *,
    options: RunOptions = RunOptions(),
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Run ``task`` over ``slide`` and write everything to ``sink``.

    Raises a :class:`~dlcore.errors.DlcoreError` subclass with a clear message for bad input (no
    tissue, wrong pixel type, missing pixel size...).  On any error the sink aborts: no partial
    results remain.  Tiles finished before a failure, a kill or a deadline stay in the run's checkpoint
    (``options.checkpoint``): the same call again continues from there, with the same results.
    """
    started = time.perf_counter()
    stage: dict[str, float] = {}
    info = with_mpp(slide.info, options.mpp)
    choice = None
    if isinstance(task, AutoTask):  # ``nuclei``: the task that fits this slide
        task, choice = task.for_open_slide(slide, info)
    task.check(info)
    plan = plan_resolution(info, task.mpp)
    task = task_at_resolution(task, plan)
    width, height = plan.working_size(info)

    t0 = time.perf_counter()
    thumb, thumb_downsample = thumbnail(slide)
    tissue = None
    if options.detect_tissue:
        mask, method = tissue_mask_from_thumbnail(thumb, info)
        tissue = TissueMask(mask=mask, downsample=thumb_downsample, method=method)
        if not mask.any():
            raise InputError(
                f"no tissue found in {info.name} (method: {method}); check the image, or analyse the whole "
                "image with --no-tissue-detection"
            )
    stage["tissue_s"] = time.perf_counter() - t0

    qc, analysed, exclusion = None, tissue, None
    if options.qc != "off":
        t0 = time.perf_counter()
        qc = run_qc(slide, info=info, options=dataclasses.replace(options.qc_options, focus_mpp=plan.working_mpp),
                    progress=progress)
        stage["qc_s"] = time.perf_counter() - t0
        log.info("%s: QC %s (%s)", info.name, qc.verdict, qc_problems(qc.summary()) or "no artefact")
        artefacts = qc.artefact_mask()
        if options.qc == "exclude" and artefacts.any():
            analysed = usable_tissue(tissue, artefacts, qc.downsample)
            exclusion = Exclusion(mask=artefacts, downsample=qc.downsample, factor=plan.factor)
            if not analysed.mask.any():
                raise InputError(f"{info.name}: QC found artefacts on all of its tissue ({qc_problems(qc.summary())}); nothing "
                                 "is left to analyse. See the QC overview (dlcore qc), or run with --qc flag to "
                                 "analyse it anyway")
    tiles = make_grid(width, height, GridSpec(task.tile_size, task.halo), mask=analysed.mask if analysed else None)

    t0 = time.perf_counter()
    samples = (calibration_windows(slide, plan, info, analysed, count=options.calibration_samples,
                                   size=options.calibration_size) if getattr(task, "calibrates", True) else [])
    task = task.prepare(samples)
    stage["calibrate_s"] = time.perf_counter() - t0

    scratch = make_scratch(options.work_dir)
    checkpoint = None
    try:
        checkpoint = open_checkpoint(info, task, plan, options, analysed, tiles, qc=qc if exclusion else None)
        canvas, stitcher, resumed = _canvas_and_stitcher(task, plan, info, (width, height), scratch, checkpoint, tiles)
    except BaseException:
        if checkpoint is not None:
            checkpoint.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    context = RunContext(
        slide=info, run_key=task.name, task_kind=task.kind, working_mpp=plan.working_mpp,
        factor=plan.factor, working_size=(width, height), class_names=tuple(task.class_names),
        class_colors=tuple(getattr(task, "class_colors", ())),
    )
    commits = checkpoint is not None and hasattr(stitcher, "checkpoint_state")
    if checkpoint is not None and not commits:
        log.info("%s: the task's stitcher keeps no checkpoint state; a killed run will start over", info.name)
    first = n_objects = 0
    if resumed:
        first, n_objects = checkpoint.tiles_done, checkpoint.n_objects
        log.info("%s: continuing from the checkpoint in %s: %d of %d tiles were done", info.name, checkpoint.folder,
                 first, len(tiles))
    done = first
    keep_checkpoint = False

    def commit() -> None:
        checkpoint.commit(tiles_done=done, n_objects=n_objects, canvas=canvas, stitcher_state=stitcher.checkpoint_state())

    try:
        sink.begin(context)
        if resumed:
            for records in checkpoint.committed_objects():
                sink.add_objects(records)

        def consume(tile, window, result) -> None:
            nonlocal n_objects, done
            if isinstance(result, TileObjects):
                records = stitcher.add_objects(tile, window, result)
            else:
                records = stitcher.add(tile, window, result)
            if records:
                n_objects += len(records)
                sink.add_objects(records)
                if commits:
                    checkpoint.add_objects(records)
            done += 1
            if commits and done % task.batch_size == 0 and checkpoint.due():  # on a batch boundary: a resumed
                commit()  # run batches its tiles as this one did (a model's padding depends on the batch)

        log.info("%s: %d tiles of %d px (+%d halo) at %s", info.name, len(tiles), task.tile_size, task.halo,
                 f"{plan.working_mpp:.3f} µm/px" if plan.working_mpp else "native resolution")
        infer, work = tile_work(task, stitcher, canvas, render_text=getattr(sink, "renders_object_text", False),
                                exclude=exclusion)
        share = core_share(task, work, options)
        log.info("%s: %d worker process(es), %d torch thread(s) of %d core(s)", info.name, share.workers,
                 share.torch_threads, share.cores)
        with WorkerPool(work, share.workers) as pool:
            times = run_tiles(
                slide, plan, tiles[first:], infer=infer, pool=pool, consume=consume, batch_size=task.batch_size,
                reader_threads=options.reader_threads, progress=_counting_from(progress, first),
                stop=None if options.deadline is None else (lambda: time.time() >= options.deadline),
            )
        if commits:
            commit()  # every tile's work is kept: a kill during the export redoes the export only
        if times.stopped:
            kept = (f"The finished tiles are kept in {checkpoint.folder}; run the same again (same input, task and "
                    "parameters) to continue from there" if commits and done > 0 else
                    "No tile was kept (no checkpoint): the next run starts over")
            raise RunStopped(f"{info.name}: stopped at a tile boundary after {done} of {len(tiles)} tiles: the time "
                             f"limit was reached. {kept}")
        t0 = time.perf_counter()
        if task.kind == "image":
            canvas.finalise(dtype=getattr(task, "output_dtype", "float32"), value_range=getattr(task, "value_range", None),
                            progress=progress)
            overview = render_image_overview(thumb, canvas, scratch / "overview.png")
        else:
            canvas.build_pyramid()
            overview = render_overview(
                thumb, _overview_labels(canvas, thumb.shape), scratch / "overview.png",
                tissue=tissue.mask if tissue else None,
                semantic_colors=_semantic_colors(task) if task.kind == "semantic" else None,
            )
        stage["pyramid_overview_s"] = time.perf_counter() - t0
        summary = _summary(info, task, plan, tissue, tiles, stitcher, n_objects)
        if choice is not None:
            summary["task_choice"] = f"{choice.requested} → {choice.chosen}: {choice.reason}"
        if resumed:
            summary["resumed"] = {"tiles_done_before": first, "tiles": len(tiles)}
        extra_outputs = getattr(task, "extra_outputs", None)  # optional: e.g. a heatmap, class outlines
        extra_files = extra_outputs(stitcher, scratch) if extra_outputs else {}
        if qc is not None:
            summary["qc"] = qc_run_summary(qc, options.qc)
            summary["tags"] = [*summary.get("tags", ()), *qc.tags()]
            extra_files.update({f"QC {kind.removeprefix('qc_')}": path
                                for kind, path in write_qc_files(qc, scratch / "qc").items()})
        provenance = _provenance(info, task, plan, options, tissue, summary, times, stage, started, choice)
        provenance["timings"]["analysis_s"] = round(time.perf_counter() - started, 3)  # before the final export
        t0 = time.perf_counter()
        image = canvas if task.kind == "image" else None
        outputs = sink.finish(RunOutputs(labels=None if image else canvas, image=image, overview_png=overview,
                                         provenance=provenance, summary=summary, tags=tuple(summary.get("tags", ())),
                                         extra_files=extra_files))
        provenance["timings"]["write_results_s"] = round(time.perf_counter() - t0, 3)
        provenance["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    except BaseException as exc:
        if commits:  # decided before anything else, so a second interrupt cannot lose the committed tiles
            keep_checkpoint = checkpoint.tiles_done > 0 and not isinstance(exc, CorruptCheckpoint)
            if isinstance(exc, KeyboardInterrupt):  # the writer has stopped: what it consumed is whole
                with contextlib.suppress(Exception):
                    commit()
                keep_checkpoint = checkpoint.tiles_done > 0
        sink.abort()
        if keep_checkpoint:
            log.warning("%s: %d of %d tiles are kept in the checkpoint %s; run the same again to continue "
                        "from there", info.name, checkpoint.tiles_done, len(tiles), checkpoint.folder)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise OutputError(disk_error_message(info.name, exc, kept=checkpoint.tiles_done if keep_checkpoint else 0,
                                                 tiles=len(tiles))) from exc
        raise
    finally:
        if keep_checkpoint:
            checkpoint.close()
        else:
            if checkpoint is not None:
                checkpoint.discard()  # its state first: a kill meanwhile leaves nothing to resume from
            canvas.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return RunResult(summary=summary, outputs=outputs, provenance=provenance)


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error_message(name: str, exc: OSError, *, kept: int, tiles: int) -> str:
    """What a run that could not write says: where, why, that nothing was left half-written, and the fix."""
    where = exc.filename or "the output or scratch folder"
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "the file is larger than this system allows", errno.EROFS: "the disk is read-only"}.get(
        exc.errno, "permission denied")
    kept_note = (f" {kept} of {tiles} tiles are kept in the run's checkpoint: run the same again once there is room "
                 "to continue from there." if kept else "")
    return (f"{name}: cannot write {where}: {why}. Nothing half-written is left and earlier results are untouched."
            f"{kept_note} Free space there, or write elsewhere (-o for results, work_dir in dlcore.toml for scratch)")


def _canvas_and_stitcher(task: Task, plan: ResolutionPlan, info: SlideInfo, size: tuple[int, int], scratch: Path,
                         checkpoint: Checkpoint | None, tiles) -> tuple:
    """``(canvas, stitcher, resumed)``: the run's label canvas and stitcher, new, or as ``checkpoint`` left
    them (labels a killed run wrote after its last commit cleared).  A checkpoint that cannot be read back
    is reset, and the run starts from the first tile."""
    width, height = size
    if checkpoint is not None and checkpoint.resumed:
        try:
            canvas = _new_canvas(task, checkpoint.canvas_path, width, height, reopen=True)
            stitcher = _stitcher(task, canvas, plan, info)
            stitcher.restore_state(checkpoint.stitcher_state,
                                   redo_windows=[t.window for t in tiles[checkpoint.tiles_done:]])
            return canvas, stitcher, True
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint must not fail every later run
            log.warning("%s: the checkpoint %s cannot be read back (%s); starting from the first tile", info.name,
                        checkpoint.folder, exc)
            checkpoint.reset()
    canvas = _new_canvas(task, checkpoint.canvas_path if checkpoint is not None else scratch / "labels.zarr", width,
                         height)
    return canvas, _stitcher(task, canvas, plan, info), False


def open_checkpoint(info: SlideInfo, task: Task, plan: ResolutionPlan, options: RunOptions,
                    tissue: TissueMask | None, tiles, *, qc: QCResult | None = None) -> Checkpoint | None:
    """The run's :class:`~dlcore.tiling.checkpoint.Checkpoint` (reused when an earlier run of the same
    identity left one), or None when ``options.checkpoint`` is off.  ``qc``: the QC whose artefacts the run
    excludes (its mask is part of the identity)."""
    if not options.checkpoint:
        return None
    result_options = options.result_options()
    if qc is not None:
        result_options["qc_mask"] = qc.digest()
    identity = run_identity(info=info, task_provenance=task.provenance(), plan=plan,
                            options=result_options, tissue_method=tissue.method if tissue else None,
                            tiles=tiles)
    return Checkpoint.open(checkpoint_root(options.work_dir), identity, every_s=options.checkpoint_every_s,
                           fresh=options.fresh)


def _counting_from(progress: ProgressCallback | None, first: int) -> ProgressCallback | None:
    """``progress`` told the whole run's tile counts when the run continues after ``first`` tiles."""
    if progress is None or first == 0:
        return progress
    return lambda stage, done, total: progress(stage, first + done, first + total)


def tile_work(task: Task, stitcher, canvas: LabelCanvas, *, render_text: bool = False,
              exclude: Exclusion | None = None) -> tuple:
    """``(infer, work)``: what the main process runs on a batch of windows, and the per-tile
    :class:`~dlcore.tiling.pool.TileWork` for the workers.

    A task with ``split_for_workers()`` infers in the main process and post-processes in the workers;
    one with ``runs_in_process`` runs whole in the workers; any other predicts in the main process.
    With the engine's :class:`InstanceStitcher`, the workers also find, measure and outline each tile's
    objects, and with ``render_text`` their CSV and GeoJSON text too; with ``exclude`` they leave out the
    objects (or classes) on QC artefacts."""
    split = getattr(task, "split_for_workers", None)
    if split is not None:
        infer, postprocess = split()
    elif getattr(task, "runs_in_process", False):
        infer, postprocess = (lambda windows: [None] * len(windows)), PredictOne(task)
    else:
        infer, postprocess = task.predict, None
    find = isinstance(stitcher, InstanceStitcher)
    work = TileWork(postprocess=postprocess, find_objects=find, canvas_size=(canvas.width, canvas.height),
                    exclude=exclude)
    if find:
        work = dataclasses.replace(work, factor=stitcher.factor, mpp=stitcher.mpp, bounds=stitcher.bounds,
                                   min_pixels=stitcher.min_pixels, classify=stitcher.classify, render_text=render_text)
    return infer, work


def core_share(task: Task, work: TileWork, options: RunOptions) -> CoreShare:
    """The run's workers and torch threads (:func:`dlcore.cores.share_cores`, overridden by ``options``
    and the configuration); torch's thread count is set when a model runs on the CPU.  A run whose
    workers would have nothing to do (no post-processing, no objects) runs its tiles inline."""
    import sys

    from dlcore.config import load_config

    idle = work.postprocess is None and not work.find_objects
    config = load_config() if options.workers is None or options.torch_threads is None else None
    workers = options.workers if options.workers is not None else config.workers
    threads = options.torch_threads if options.torch_threads is not None else config.torch_threads
    share = share_cores(whole_in_workers=isinstance(work.postprocess, PredictOne),
                        model_on_gpu=bool(getattr(task, "on_gpu", False)), workers=workers, torch_threads=threads)
    if idle or options.workers == 0:
        share = CoreShare(share.cores, 0, share.torch_threads)
    if "torch" in sys.modules and hasattr(task, "network") and not getattr(task, "on_gpu", False):
        sys.modules["torch"].set_num_threads(share.torch_threads)
    return share


def _overview_labels(canvas: LabelCanvas, thumb_shape: tuple[int, ...]) -> np.ndarray:
    """The coarsest canvas level at least as tall as the thumbnail (so its size is bounded), or level 0."""
    fitting = [array for array in canvas.levels if array.shape[0] >= thumb_shape[0]]
    return np.asarray((fitting[-1] if fitting else canvas.levels[0])[:])


def _semantic_colors(task: Task) -> dict[int, tuple[int, int, int]]:
    colors = getattr(task, "class_colors", ())
    return {i + 1: tuple(c) for i, c in enumerate(colors)}


def _summary(info, task, plan, tissue, tiles, stitcher, n_objects) -> dict:
    factor = plan.factor
    mpp0 = None if info.mpp is None else (info.mpp[0] + info.mpp[1]) / 2
    tissue_px = tissue.tissue_area_px() if tissue else float(info.width * info.height)
    summary: dict = {
        "slide": info.name,
        "task": task.name,
        "tiles": len(tiles),
        "tissue_fraction": round(tissue.tissue_fraction(), 4) if tissue else 1.0,
        "tissue_area_mm2": round(tissue_px * mpp0 * mpp0 / 1e6, 4) if mpp0 else None,
        "working_mpp": plan.working_mpp,
    }
    if task.kind == "instances":
        working_width, working_height = plan.working_size(info)
        warnings = check_object_area(info, stitcher.total_area_px, working_width * working_height,
                                     tissue_px / (factor * factor))
        summary["objects"] = n_objects
        summary["truncated_objects"] = stitcher.truncated
        summary["duplicates_dropped"] = stitcher.duplicates
        summary["object_area_fraction_of_tissue"] = round(stitcher.total_area_px * factor * factor / max(tissue_px, 1), 4)
        if getattr(stitcher, "class_counts", None):  # objects a model or classifier gave a class
            summary["objects_by_class"] = dict(sorted(stitcher.class_counts.items()))
        if warnings:
            summary["warnings"] = warnings
            for warning in warnings:
                log.warning("%s: %s", info.name, warning)
    elif task.kind == "image":
        summary["predicted_image"] = _image_summary(stitcher.canvas)
    else:
        names = ("background", *task.class_names)
        area = (plan.working_mpp or 0) ** 2 / 1e6
        summary["class_pixels"] = {n: int(c) for n, c in zip(names, stitcher.class_pixels)}
        if area:
            summary["class_area_mm2"] = {n: round(int(c) * area, 4) for n, c in zip(names, stitcher.class_pixels)}
    summarize = getattr(task, "summarize", None)  # optional: e.g. a slide-level classification and tags
    if summarize is not None:
        summary.update(summarize(stitcher))
    if "tags" not in summary:  # a task's own tags (a slide's class) say more than the classes it found
        summary["tags"] = classes_found(summary)
    return summary


def classes_found(summary: dict) -> list[str]:
    """The output classes a run found on the slide: object classes (by name) with at least one
    object, and semantic classes (not background) with at least one pixel; the image's tags in OMERO."""
    found = [name for name, count in (summary.get("objects_by_class") or {}).items() if count]
    return found + [name for name, count in (summary.get("class_pixels") or {}).items()
                    if count and name != "background"]


def _image_summary(canvas) -> dict:
    """The predicted image's channels, stored type, and the value range and scale of each channel."""
    quant = canvas.quantisation
    return {"channels": list(canvas.channels), "dtype": quant.dtype,
            "value_range": {c: [round(lo, 6), round(hi, 6)] for c, (lo, hi) in zip(canvas.channels, quant.value_range)},
            "range_measured": quant.measured, "scale": [float(v) for v in quant.scale],
            "offset": [float(v) for v in quant.offset]}


def check_object_area(info: SlideInfo, object_px: int, image_px: int, tissue_px: float) -> list[str]:
    """Check the objects' total area (working pixels) against the image and the tissue.

    Objects can never cover more than the image, since each label pixel holds one object: more means a
    bug (e.g. pixels counted outside the image) and raises :class:`InvariantError`.  Objects covering
    more than the detected tissue are possible (a tissue mask that missed pale tissue, a model that
    finds objects on glass) but not credible: that returns a warning for the summary.
    """
    if object_px > image_px:
        raise InvariantError(f"objects in {info.name} cover {object_px} pixels, more than the image's {image_px}")
    if tissue_px > 0 and object_px > tissue_px:
        return [f"objects cover {object_px / tissue_px:.2f} times the detected tissue area ({object_px} of "
                f"{tissue_px:.0f} working pixels): check the task's channel and threshold, or run with "
                "--no-tissue-detection if the tissue mask missed tissue"]
    return []


def _provenance(info, task, plan, options, tissue, summary, times, stage, started, choice=None) -> dict:
    return {
        "dlcore_version": dlcore.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "input": {"name": info.name, "identity": info.identity, "width": info.width, "height": info.height,
                  "levels": len(info.levels), "mpp": info.mpp, "channels": list(info.channels), "dtype": info.dtype},
        "task": task.provenance(),
        **({"task_choice": choice.as_dict()} if choice is not None else {}),
        "resolution": {"level_read": plan.level, "resample_scale": plan.scale, "working_mpp": plan.working_mpp,
                       "level0_pixels_per_working_pixel": plan.factor},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()},
        "tissue_detection": tissue.method if tissue else "off (whole image)",
        "summary": summary,
        "timings": {**{k: round(v, 3) for k, v in stage.items()}, **times.as_dict()},
    }
