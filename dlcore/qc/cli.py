"""``dlcore qc``: quality control of slides alone, without an analysis.

For each slide, ``OUT/<slide>/qc/`` receives ``qc.json``, ``qc_mask.ome.tif`` and ``qc_overview.png``
(written to a hidden partial folder and moved into place, replacing an earlier QC of the slide), and
``OUT/qc_batch.csv`` gets the slide's row (replacing its earlier row).  ``dlcore run --qc flag|exclude``
writes the same files beside its results and the same batch table.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dlcore.errors import DlcoreError

log = logging.getLogger(__name__)

BATCH_TABLE = "qc_batch.csv"
EXIT_OK, EXIT_FAILED, EXIT_QC_FAILED = 0, 1, 3


def register_cli(sub) -> None:
    """Add ``dlcore qc`` to the command line's subparsers."""
    from dlcore.cli import HelpFormatter
    from dlcore.qc.focus import DEFAULT_BLOCK, DEFAULT_THRESHOLD

    p = sub.add_parser(
        "qc", help="quality control of slides: blur, pen ink, folds, bubbles, coverslip edges, staining",
        description="Find what makes parts of a slide unusable before analysing it (HistoQC's checks): tissue, "
                    "out-of-focus regions (measured at --focus-mpp), pen ink, tissue folds, air bubbles, coverslip "
                    "edges, under-stained tissue. Writes OUT/<slide>/qc/ (qc.json, qc_mask.ome.tif, "
                    "qc_overview.png) and one row per slide in OUT/qc_batch.csv. docs/QC.md documents every rule.",
        formatter_class=HelpFormatter)
    p.add_argument("slides", nargs="+", type=Path, help="slide files, or folders of them")
    p.add_argument("-o", "--out", type=Path, default=Path("dlcore-output"), help="output folder")
    p.add_argument("--mpp", type=float, help="the slides' pixel size in µm, for files that lack one")
    p.add_argument("--focus-mpp", type=float,
                   help="µm per pixel the focus is measured at: the working resolution of the analysis to come "
                        "(default 0.5; native pixels for slides without a pixel size)")
    p.add_argument("--qc-mpp", type=float, default=2.0, help="µm per pixel of the low-resolution pass")
    p.add_argument("--blur-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="sharpness under which a focus block is blurred")
    p.add_argument("--focus-block", type=int, default=DEFAULT_BLOCK, help="focus block side in working pixels")
    p.add_argument("--fail-exit", action="store_true",
                   help=f"exit with {EXIT_QC_FAILED} when a slide's verdict is 'fail' (for pipelines)")
    p.set_defaults(func=cmd_qc)


def cmd_qc(args) -> int:
    from dlcore.cli import slides_to_process
    from dlcore.qc.run import QCOptions

    options = QCOptions(qc_mpp=args.qc_mpp, focus_mpp=args.focus_mpp, focus_block=args.focus_block,
                        blur_threshold=args.blur_threshold)
    found = slides_to_process(args.slides, args.out, doing="check")
    if found is None:
        return EXIT_FAILED
    slides = found[0]
    failures, verdicts = 0, []
    for path in slides:
        try:
            result, folder = qc_one(path, args.out, options=options, mpp=args.mpp)
        except DlcoreError as exc:
            failures += 1
            print(f"✗ {path}: {exc}", file=sys.stderr)
            continue
        verdicts.append(result.verdict)
        print_verdict(path.name, result.verdict, result.summary(), folder)
    if len(slides) > 1:
        counts = {v: verdicts.count(v) for v in ("pass", "warn", "fail")}
        print(f"{len(verdicts)} of {len(slides)} slides checked: {counts['pass']} pass, {counts['warn']} warn, "
              f"{counts['fail']} fail" + (f"; {failures} could not be read" if failures else "")
              + f"; table {args.out / BATCH_TABLE}")
    if failures:
        return EXIT_FAILED
    return EXIT_QC_FAILED if args.fail_exit and "fail" in verdicts else EXIT_OK


def qc_one(path: Path, out: Path, *, options, mpp: float | None = None):
    """QC of the slide at ``path`` into ``out`` (see the module docstring); ``(result, folder)``."""
    from dlcore.io.local import open_slide
    from dlcore.io.local_sink import (current_umask, owner_file, remove_dead_partials, replace_folder, slide_stem,
                                      write_owner)
    from dlcore.io.slide import with_mpp
    from dlcore.progress import TqdmProgress
    from dlcore.qc.outputs import update_batch_table, write_qc_files
    from dlcore.qc.run import run_qc

    slide = open_slide(path)
    progress = TqdmProgress(prefix=f"{path.name} ")
    try:
        result = run_qc(slide, info=with_mpp(slide.info, mpp), options=options, progress=progress)
    finally:
        progress.close()
        slide.close()
    slide_dir = out / slide_stem(result.slide)
    slide_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(slide_dir, "qc")
    partial = Path(tempfile.mkdtemp(prefix=".partial-qc-", dir=slide_dir))
    write_owner(partial)
    try:
        write_qc_files(result, partial)
        os.chmod(partial, 0o777 & ~current_umask())  # mkdtemp makes it private
        replace_folder(slide_dir / "qc", partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        owner_file(partial).unlink(missing_ok=True)
    update_batch_table(out / BATCH_TABLE, [result.table_row()])
    return result, slide_dir / "qc"


def print_verdict(name: str, verdict: str, summary: dict, folder: Path | None = None) -> None:
    """One line per slide: its verdict and the artefacts flagged, then where its QC files are."""
    from dlcore.qc.run import qc_problems

    mark = {"pass": "✓", "warn": "!", "fail": "✗"}[verdict]
    problems = qc_problems(summary)
    print(f"{mark} {name}: QC {verdict}: {problems or 'no artefact found'}")
    if folder is not None:
        print(f"    {folder}")
