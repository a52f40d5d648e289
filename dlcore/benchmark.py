"""``dlcore benchmark``: end-to-end speed, pipeline efficiency and peak memory on synthetic slides.

For each requested size a synthetic slide (:mod:`dlcore.demo`) is generated once and cached; then a
fresh child process runs the task end to end (read, tissue, infer, stitch, write everything) and
reports its peak resident memory, and afterwards times the task alone on the same tiles (windows
read first, only ``predict`` timed).  Figures:

- seconds per gigapixel of tissue (working resolution), end to end and task alone;
- pipeline efficiency = task-alone time / end-to-end time (1.0 = reading and writing fully hidden);
  with worker processes the end-to-end run can be faster than the task alone on one core (> 1);
- peak RSS of the end-to-end run: the main process, the largest worker, and their sum bound
  (main + workers x largest worker); a stage breakdown.

``--workers 1 2 4`` repeats the end-to-end run with each worker count (the scaling figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="*", type=int, default=[16384], help="synthetic square slides of these side lengths")
    p.add_argument("--slides", nargs="*", type=Path, default=[], help="also benchmark these slide files (e.g. the demo slide)")
    p.add_argument("--task", default="nuclei-classical", help="task or model to benchmark")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dlcore-bench", help="where slides are cached")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="task parameter")
    p.add_argument("--tissue-fraction", type=float, default=0.55,
                   help="fraction of a synthetic slide covered by tissue")
    p.add_argument("--skip-task-alone", action="store_true",
                   help="only the end-to-end run (memory figures on big slides); no efficiency")
    p.add_argument("--workers", nargs="*", type=int, default=[],
                   help="worker process counts to run end to end (default: the configuration's)")


def _slide_for(size: int, cache: Path, tissue_fraction: float = 0.55) -> Path:
    from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
    from dlcore.progress import TqdmProgress

    suffix = "" if tissue_fraction == 0.55 else f"-tissue{tissue_fraction:g}"
    path = cache / f"synthetic-{size}{suffix}.ome.tif"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        progress = TqdmProgress(prefix=f"{size}px ")
        tmp = path.with_suffix(".partial.tif")
        write_synthetic_slide(tmp, SyntheticSlideSpec(width=size, height=size, seed=size, tissue_fraction=tissue_fraction), progress=progress)
        progress.close()
        tmp.rename(path)
    return path


def measure(slide_path: Path, task_name: str, params: dict, *, task_alone: bool = True,
            workers: int | None = None) -> dict:
    """Run the benchmark in this process (call it in a fresh process for a clean peak-RSS figure)."""
    from dlcore.config import load_config
    from dlcore.io import open_slide
    from dlcore.io.local_sink import LocalFolderSink
    from dlcore.io.slide import plan_resolution
    from dlcore.tasks import resolve_task
    from dlcore.workflows import RunOptions, analyse_slide

    config = load_config()
    task = resolve_task(task_name, params, config=config)
    out = Path(tempfile.mkdtemp(prefix="dlcore-bench-out-"))
    slide = open_slide(slide_path)
    if hasattr(task, "for_slide"):  # an automatic task (nuclei): the task it becomes for this slide, as a run does
        task, _choice = task.for_open_slide(slide)
    start = time.perf_counter()
    result = analyse_slide(slide, task, LocalFolderSink(out),
                           options=RunOptions(reader_threads=config.reader_threads, workers=workers))
    e2e = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n_workers = result.provenance["timings"].get("workers", 0)
    plan = plan_resolution(slide.info, task.mpp)
    width, height = plan.working_size(slide.info)
    alone = _task_alone_seconds(slide, task, plan, (width, height)) if task_alone else None
    slide.close()
    summary = result.summary
    tissue_gpx = summary["tissue_fraction"] * width * height / 1e9
    size_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return {
        "slide": slide_path.name, "slide_px": slide.info.width * slide.info.height,
        "tissue_gigapixels": round(tissue_gpx, 4), "tiles": summary["tiles"], "objects": summary.get("objects"),
        "end_to_end_s": round(e2e, 2), "task_alone_s": None if alone is None else round(alone, 2),
        "s_per_gpx_tissue": round(e2e / tissue_gpx, 1),
        "task_s_per_gpx_tissue": None if alone is None else round(alone / tissue_gpx, 1),
        "pipeline_efficiency": None if alone is None else round(alone / e2e, 3), "peak_rss_mb": round(peak_rss_mb, 1),
        "workers": n_workers, "worker_peak_rss_mb": round(worker_rss_mb, 1),
        "total_rss_bound_mb": round(peak_rss_mb + n_workers * worker_rss_mb, 1),
        "output_mb": round(size_bytes / 1e6, 1), "stages": result.provenance["timings"],
    }


def _task_alone_seconds(slide, task, plan, size: tuple[int, int]) -> float:
    """Seconds the task's ``predict`` alone takes on the run's tiles (windows read beforehand, untimed).

    The task is calibrated on the same windows as the end-to-end run, so it does the same work.
    """
    from dlcore.tiling.engine import read_window
    from dlcore.tiling.grid import GridSpec, make_grid
    from dlcore.tiling.tissue import detect_tissue
    from dlcore.workflows import calibration_windows, task_at_resolution

    tissue = detect_tissue(slide)
    task = task_at_resolution(task, plan).prepare(calibration_windows(slide, plan, slide.info, tissue, count=8, size=512))
    tiles = make_grid(size[0], size[1], GridSpec(task.tile_size, task.halo), mask=tissue.mask)
    seconds = 0.0
    for i in range(0, len(tiles), task.batch_size):
        windows = [read_window(slide, plan, t) for t in tiles[i:i + task.batch_size]]
        t0 = time.perf_counter()
        task.predict(windows)
        seconds += time.perf_counter() - t0
    return seconds


def main(args) -> int:
    from dlcore.cli import _param_pairs

    params = _param_pairs(args.param)
    rows = []
    for slide in [*(_slide_for(size, args.cache, args.tissue_fraction) for size in args.sizes), *args.slides]:
        for index, workers in enumerate(args.workers or [None]):
            print(f"benchmarking {args.task} on {slide.name} (workers: {workers or 'configured'}) ...", flush=True)
            alone = "skip" if args.skip_task_alone or index > 0 else "full"
            child = subprocess.run(
                [sys.executable, "-m", "dlcore.benchmark", str(slide), args.task, json.dumps(params), alone,
                 json.dumps(workers)],
                capture_output=True, text=True,
            )
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return 1
            row = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row, indent=1))
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "processor": _cpu_name()}
    print("\n| slide | workers | tissue Gpx | tiles | objects | end-to-end s | s/Gpx tissue | task-alone s/Gpx | "
          "efficiency | peak RSS MB (main / worker / bound) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slide']} | {r['workers']} | {r['tissue_gigapixels']} | {r['tiles']} | {r['objects']} | "
              f"{r['end_to_end_s']} | {r['s_per_gpx_tissue']} | {r['task_s_per_gpx_tissue']} | {r['pipeline_efficiency']} | "
              f"{r['peak_rss_mb']} / {r['worker_peak_rss_mb']} / {r['total_rss_bound_mb']} |")
    print(f"\nmachine: {machine}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "task": args.task, "results": rows}, indent=2))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), task_alone=sys.argv[4] == "full",
                             workers=json.loads(sys.argv[5]) if len(sys.argv) > 5 else None)))
