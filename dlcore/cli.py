"""The ``dlcore`` command line: run tasks and models on local slides, inspect slides and models.

Exit codes: 0 success; 1 a run failed (bad input, model error; the message says why and how to fix
it); 2 wrong usage; 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from pathlib import Path

import dlcore
from dlcore.errors import DlcoreError, ParameterError

log = logging.getLogger("dlcore")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# subcommands other modules add: module -> function(subparsers) registering one or more commands
PLUGIN_COMMANDS = ("dlcore.doctor", "dlcore.models.cli", "dlcore.train.cli", "dlcore.qc.cli", "dlcore.marker.cli")


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` that states each option's default once: appended as ``(default: X)`` only when the
    option has a real default (not None, not an off switch) and its help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False or default == []
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _parse_value(text: str):
    """A --param value: JSON when it parses (numbers, true/false, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _param_pairs(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParameterError(f"--param {pair!r} must look like name=value (e.g. --param sigma=2.5)")
        key, value = pair.split("=", 1)
        params[key.strip().replace("-", "_")] = _parse_value(value)
    return params


def _add_run_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run a task or model on slides",
        description="Run a task or an installed model on one or more slides. `nuclei` picks the shipped nuclei "
                    "model that fits each slide (brightfield H&E/IHC or fluorescence; the classical pipeline "
                    "without torch) and says which it chose. Results go to OUT/<slide>/<task>/: labels.ome.tif, objects.csv, objects.geojson "
                    "(QuPath: File > Import objects), overview.png, provenance.json; an image model (denoising, "
                    "image translation) writes prediction.ome.tif instead. A re-run replaces them.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("task", help="task or model name: nuclei (chosen per slide), nuclei-classical, or a model "
                                "(see `dlcore models`)")
    p.add_argument("slides", nargs="+", type=Path,
                   help="slide files (OME-TIFF, SVS, NDPI, MRXS, TIFF, PNG, JPEG), or folders of them")
    p.add_argument("-o", "--out", type=Path, default=Path("dlcore-output"), help="output folder")
    p.add_argument("--mpp", type=float, help="the slides' pixel size in µm, for files that lack one (0.25 = 40x, 0.5 = 20x)")
    p.add_argument("--no-tissue-detection", action="store_true", help="analyse the whole image, not just detected tissue")
    p.add_argument("--fresh", action="store_true",
                   help="start from the first tile even when an interrupted run of the same job left a checkpoint")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="keep no checkpoint while tiles stream (saves scratch space; a killed run then starts over)")
    p.add_argument("--label-format", choices=("ome-tiff", "ome-zarr"), default="ome-tiff", help="label image format")
    p.add_argument("--reader-threads", type=int, help="tile prefetch threads (default: from the configuration)")
    p.add_argument("--qc", choices=("off", "flag", "exclude"), default="off",
                   help="slide quality control first (blur, pen ink, folds, bubbles, coverslip edges, staining; see "
                        "`dlcore qc`): 'flag' reports it beside the results, 'exclude' also leaves the artefacts out "
                        "of the analysis and records the area left out")
    p.add_argument("--slides-at-once", type=int, metavar="N",
                   help="analyse N slides side by side, each with its share of the cores (default: from the "
                        "configuration, 1)")
    _add_task_arguments(p)
    p.set_defaults(func=cmd_run)


def _add_task_arguments(p: argparse.ArgumentParser) -> None:
    """The task parameters ``run`` and ``evaluate`` share (named ones for nuclei-classical, --param for all)."""
    g = p.add_argument_group("task parameters (nuclei-classical; other tasks take --param)")
    g.add_argument("--channel", help="'hematoxylin', 'eosin', 'dab' (colour deconvolution) or a channel index")
    g.add_argument("--stain-vectors", choices=("estimate", "reference"),
                   help="stain vectors for colour deconvolution: estimated from the slide (default) or the textbook ones")
    g.add_argument("--sigma", type=float, help="Gaussian smoothing in pixels (default 3)")
    g.add_argument("--threshold-method", choices=("kmeans", "otsu"), help="threshold method (default kmeans)")
    g.add_argument("--threshold", type=float, help="fixed threshold on the smoothed signal (default: computed per slide)")
    g.add_argument("--min-size", type=int, help="remove objects under this many pixels (default 60)")
    g.add_argument("--max-area", type=float, dest="max_area_um2",
                   help="remove objects over this area in µm², not nuclei (default 400)")
    g.add_argument("--background-radius", type=float, dest="background_radius_um",
                   help="local background radius in µm, removed before thresholding (default 8; 0: off)")
    g.add_argument("--markers", choices=("distance", "intensity"),
                   help="watershed seeds: maxima of the distance to the background (default) or of the signal")
    g.add_argument("--min-distance", type=int, help="minimum distance between nuclei centres in pixels (default 6)")
    g.add_argument("--no-split", action="store_true", help="do not split touching nuclei (no watershed)")
    g.add_argument("--invert", action="store_true", help="objects are dark on a bright background (grey channel)")
    g.add_argument("--resolution", type=float, dest="work_mpp", help="working resolution in µm/pixel (default: native)")
    g.add_argument("--tile-size", type=int, help="tile size in working pixels")
    g.add_argument("--halo", type=int, help="tile halo in working pixels (must exceed the largest object radius)")
    g.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any task parameter")


def _task_params(args) -> dict:
    params = _param_pairs(args.param)
    named = {
        "sigma": args.sigma, "threshold_method": args.threshold_method, "threshold": args.threshold,
        "min_size": args.min_size, "min_distance": args.min_distance, "mpp": args.work_mpp,
        "tile_size": args.tile_size, "halo": args.halo, "stain_vectors": args.stain_vectors,
        "max_area_um2": args.max_area_um2, "background_radius_um": args.background_radius_um, "markers": args.markers,
    }
    if args.channel is not None:
        named["channel"] = int(args.channel) if args.channel.isdigit() else args.channel
    if args.no_split:
        named["split_touching"] = False
    if args.invert:
        named["invert"] = True
    params.update({k: v for k, v in named.items() if v is not None})
    return params


def slides_to_process(paths: list[Path], out: Path, *, doing: str) -> tuple[list[Path], list] | None:
    """``(slides, skipped)``: the slide files ``paths`` stand for (folders expanded; what is skipped listed
    on stderr), once results can be written in ``out``.  None, after an error line, when there is no slide
    to ``doing`` (a verb: "analyse") or ``out`` is unusable."""
    from dlcore.io.local import expand_slide_paths
    from dlcore.io.local_sink import check_output_folder

    slides, skipped = expand_slide_paths(paths)
    for path, reason in skipped:
        print(f"- skipped {path}: {reason}", file=sys.stderr)
    if not slides:
        print(f"error: no slide files to {doing}", file=sys.stderr)
        return None
    try:
        check_output_folder(out)
    except DlcoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return slides, skipped


def cmd_run(args) -> int:
    from dlcore.batch import SlideJob, analyse_slides
    from dlcore.config import load_config
    from dlcore.progress import TqdmProgress
    from dlcore.tasks import resolve_task
    from dlcore.workflows import RunOptions

    config = load_config()
    params = _task_params(args)
    options = RunOptions(
        mpp=args.mpp, detect_tissue=not args.no_tissue_detection,
        reader_threads=args.reader_threads or config.reader_threads, work_dir=config.work_dir,
        checkpoint=not args.no_checkpoint, checkpoint_every_s=config.checkpoint_every_s, fresh=args.fresh,
        qc=args.qc,
    )
    found = slides_to_process(args.slides, args.out, doing="analyse")
    if found is None:
        return EXIT_FAILED
    slides, skipped = found
    at_once = min(args.slides_at_once or config.slides_at_once, len(slides))
    if at_once > 1:  # each slide's process resolves the task (and loads a model) itself; this one needs none
        task = None
        print(f"{at_once} slides at a time, each in its own process", file=sys.stderr)
    else:  # bad parameters fail here, before any slide
        task = resolve_task(args.task, params, config=config)
    job = SlideJob(task=args.task, params=params, out=args.out, label_format=args.label_format, options=options)
    failures = 0
    for outcome in analyse_slides(job, slides, at_once=at_once, task=task,
                                  progress_for=lambda path: TqdmProgress(prefix=f"{path.name} ")):
        if outcome.error is not None:
            failures += 1
            print(f"✗ {outcome.path}: {outcome.error}", file=sys.stderr)
        else:
            _print_result(outcome.path, outcome)
            if "qc" in outcome.summary:
                from dlcore.qc.cli import BATCH_TABLE
                from dlcore.qc.outputs import update_batch_table
                from dlcore.qc.run import table_row

                update_batch_table(args.out / BATCH_TABLE, [table_row(outcome.summary["slide"], outcome.summary["qc"])])
    if len(slides) > 1 or skipped:
        print(f"{len(slides) - failures} of {len(slides)} slides done, {failures} failed"
              + (f", {len(skipped)} skipped" if skipped else ""))
    return EXIT_FAILED if failures else EXIT_OK


def _print_result(path: Path, result) -> None:
    s = result.summary
    if "objects" in s:
        what = f"{s['objects']} objects"
    elif "predicted_image" in s:
        image = s["predicted_image"]
        what = f"predicted image ({', '.join(image['channels'])}; {image['dtype']})"
    else:
        what = ", ".join(f"{k}: {v}" for k, v in s.get("class_area_mm2", s.get("class_pixels", {})).items())
    tissue = f"{s['tissue_area_mm2']} mm² tissue" if s.get("tissue_area_mm2") is not None else f"{s['tissue_fraction']:.0%} tissue"
    seconds = result.provenance["timings"]["total_s"]
    print(f"✓ {path.name}: {what}, {tissue}, {s['tiles']} tiles, {seconds:.1f} s")
    if s.get("task_choice"):
        print(f"  task {s['task_choice']}")
    for warning in s.get("warnings", ()):
        print(f"  ! {warning}")
    if "qc" in s:
        from dlcore.qc.cli import print_verdict

        print_verdict(path.name, s["qc"]["verdict"], s["qc"])
        if s["qc"]["mode"] == "exclude" and s["qc"]["excluded_fraction_of_tissue"]:
            print(f"    left out of the analysis: {100 * s['qc']['excluded_fraction_of_tissue']:.1f} % of the tissue"
                  + (f" ({s['qc']['excluded_area_mm2']} mm²)" if s["qc"]["excluded_area_mm2"] is not None else ""))
    for name, location in result.outputs.items():
        print(f"    {name:<12} {location}")


def cmd_evaluate(args) -> int:
    from dlcore.config import load_config
    from dlcore.evaluate import evaluate_instances, format_report
    from dlcore.progress import TqdmProgress
    from dlcore.tasks import resolve_task

    task = resolve_task(args.task, _task_params(args), config=load_config())
    progress = TqdmProgress(prefix="evaluate ")
    try:
        report = evaluate_instances(task, args.dataset, mpp=args.mpp, detect_tissue=args.tissue_detection,
                                    progress=progress)
    finally:
        progress.close()
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps({**report, "images": [dataclasses.asdict(i) for i in report["images"]]},
                                        indent=2, default=str))
        print(f"scores written to {args.json}")
    return EXIT_OK


def cmd_info(args) -> int:
    from dlcore.io import open_slide

    status = EXIT_OK
    for path in args.slides:
        try:
            slide = open_slide(path)
        except DlcoreError as exc:
            print(f"✗ {path}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        info = slide.info
        slide.close()
        if args.json:
            print(json.dumps(dataclasses.asdict(info), indent=2))
            continue
        mpp = f"{info.mpp[0]:.4f} x {info.mpp[1]:.4f} µm" if info.mpp else "unknown (give --mpp when a task needs it)"
        print(f"{info.name}\n  size       {info.width} x {info.height} px\n  pixel size {mpp}")
        print(f"  channels   {len(info.channels)} ({', '.join(info.channels)}), {info.dtype}")
        print(f"  tile size  {info.tile_size[0]} x {info.tile_size[1]}")
        print("  levels     " + "\n             ".join(
            f"{i}: {lv.width} x {lv.height} (downsample {lv.downsample:g})" for i, lv in enumerate(info.levels)))
    return status


def cmd_tasks(args) -> int:
    from dlcore.tasks import AUTO_DESCRIPTIONS, AUTO_TASKS, builtin_task_names, task_parameters

    for name in AUTO_TASKS:
        print(f"{name} (chosen per slide)\n  {AUTO_DESCRIPTIONS[name]}")
    for name in builtin_task_names():
        fields = task_parameters(name)
        print(f"{name} (built-in)\n  parameters: " + ", ".join(
            f"{n}={f.default!r}" for n, f in fields.items() if f.default is not dataclasses.MISSING))
    return EXIT_OK


def cmd_demo(args) -> int:
    from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
    from dlcore.progress import TqdmProgress

    if args.marker:
        from dlcore.marker.demo import main as marker_demo

        return marker_demo(args.out / "marker-labels")
    slide = args.out / "demo-slide.ome.tif"
    if not slide.exists():
        print(f"building the demo slide {slide} (6144 x 4096 px, real IHC tissue from scikit-image)")
        progress = TqdmProgress()
        write_synthetic_slide(slide, SyntheticSlideSpec(), progress=progress)
        progress.close()
    if args.scribbles:
        from dlcore.pixels.demo import write_scribble_demo

        folder = write_scribble_demo(args.out / "pixel-training")
        print(f"wrote {folder}: the IHC section and scribbles of dab, hematoxylin and background; train a pixel "
              f"classifier with\n  dlcore train {folder} --task pixels --name ihc-dab --colour hed")
    run_args = build_parser().parse_args(["run", args.task, str(slide), "-o", str(args.out)])
    return cmd_run(run_args)


def cmd_benchmark(args) -> int:
    from dlcore.benchmark import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (built-in commands plus those other modules register)."""
    parser = argparse.ArgumentParser(
        prog="dlcore",
        description="Deep learning and classical image analysis for whole-slide histology images. "
                    "Start with `dlcore demo`, then `dlcore run nuclei-classical SLIDE -o OUT`.",
    )
    parser.add_argument("--version", action="version", version=f"dlcore {dlcore.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_parser(sub)
    p = sub.add_parser(
        "evaluate", help="score an instance task against annotated images (F1 and AP at IoU 0.5-0.9)",
        description="Run a task on every image of DATASET/images/ as `dlcore run` would and compare its objects "
                    "with the annotations in DATASET/labels/ (instance masks of the same name, or Aperio "
                    "ImageScope .xml outlines): one-to-one matches at IoU >= 0.5, pooled over the images.",
        formatter_class=HelpFormatter)
    p.add_argument("task", help="task or model name (see `dlcore models`)")
    p.add_argument("dataset", type=Path, help="folder with images/ and labels/")
    p.add_argument("--mpp", type=float, help="the images' pixel size in µm when the files lack one "
                                             "(default: MicronsPerPixel of Aperio XML labels)")
    p.add_argument("--tissue-detection", action="store_true", help="analyse detected tissue only (default: whole images)")
    p.add_argument("--json", type=Path, help="also write every score to this JSON file")
    _add_task_arguments(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("info", help="levels, pixel size, tile size and channels of slides")
    p.add_argument("slides", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="build the demo slide and segment its nuclei",
                       formatter_class=HelpFormatter)
    p.add_argument("-o", "--out", type=Path, default=Path("demo-output"), help="output folder")
    p.add_argument("--task", default="nuclei-classical", help="task or model to run")
    p.add_argument("--scribbles", action="store_true",
                   help="also write OUT/pixel-training: the IHC section with 36 scribbles of three classes, for "
                        "`dlcore train OUT/pixel-training --task pixels`")
    p.add_argument("--marker", action="store_true",
                   help="instead, the labels-from-a-marker demo in OUT/marker-labels: labels from the DAB of a real "
                        "IHC section train a classifier of DAB-positive cells from the haematoxylin alone, scored on a "
                        "held-out strip beside two baselines (about a minute)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("benchmark", help="seconds per gigapixel, pipeline efficiency and peak memory",
                       formatter_class=HelpFormatter)
    from dlcore.benchmark import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_benchmark)
    registered_models = False
    for module_name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register_cli(sub)
        registered_models |= module_name == "dlcore.models.cli"
    if not registered_models:
        p = sub.add_parser("models", help="list the tasks and models installed")
        p.set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlcore`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from dlcore.interrupts import stop_on_sigterm

    stop_on_sigterm()  # `kill`, systemd: stop like Ctrl-C, keeping the checkpoint and leaving nothing half-written
    try:
        return args.func(args)
    except DlcoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
