"""Slide quality control of OMERO images: what QC_Slides declares and the one call it makes.

:func:`qc_on_objects` checks the selection first (ids, images; :func:`~dlcore.omero.workflows.resolve_images`),
then for each image: refuses an image the user may not annotate before reading any pixel, reads it through
:class:`~dlcore.omero.slide.OmeroSlide`, runs :func:`dlcore.qc.run.run_qc` and writes the result onto the
image (:class:`~dlcore.omero.qc_writer.QCWriter`: key-value pairs, tags and the three QC files in the
namespace ``dlcore/qc``, replacing the caller's earlier QC of the image).  One image failing does not stop
the others; nothing is left of it.  Then each dataset of the images checked gets its batch QC table
(:mod:`~dlcore.omero.qc_table`).

OMERO executes the script file to read its parameters, so this module imports nothing heavy at module
level: the QC engine and the slide reader load inside the calls.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import omero.scripts as scripts

from dlcore.omero.workflows import ImageReport

log = logging.getLogger(__name__)


def qc_params(grouping: int) -> list:
    """QC_Slides' options after ``Data_Type`` and ``IDs``: the focus resolution, the blur threshold, and the
    pixel size of images that have none (defaults from :class:`dlcore.qc.run.QCOptions`)."""
    from dlcore.omero.scripts import pixel_size_param
    from dlcore.qc.focus import DEFAULT_THRESHOLD

    return [
        scripts.Float("Focus_Pixel_Size_um", grouping=f"{grouping}", min=0.05,
                      description="Pixel size in µm at which focus is judged: that of the analysis to come "
                                  "(empty: 0.5 µm, what most models work at; 0.25 for 40x models)"),
        scripts.Float("Blur_Threshold", grouping=f"{grouping + 1}", default=DEFAULT_THRESHOLD, min=0.001, max=9.999,
                      description="Sharpness under which a block of tissue counts as out of focus (lower: only "
                                  "strong blur is flagged; higher: slight softness is flagged too)"),
        pixel_size_param(grouping + 2),
    ]


def qc_options(inputs: dict, *, threads: int = 2):
    """The :class:`~dlcore.qc.run.QCOptions` of a QC_Slides run's inputs (empty inputs: the defaults)."""
    from dlcore.qc.run import QCOptions

    defaults = QCOptions()
    threshold = inputs.get("Blur_Threshold")
    return QCOptions(focus_mpp=inputs.get("Focus_Pixel_Size_um") or None,
                     blur_threshold=defaults.blur_threshold if threshold is None else float(threshold),
                     threads=threads)


@dataclass(frozen=True)
class QCBatch:
    """The outcome of QC_Slides: one report per image (in order), and a note per dataset table."""

    reports: list[ImageReport]
    tables: list[str] = field(default_factory=list)

    def message(self) -> str:
        """The script's Message: a count line, a block per image, then the dataset tables."""
        checked = [r for r in self.reports if r.ok]
        skipped = sum(r.not_started for r in self.reports)
        total = sum(1 for r in self.reports if not r.not_started) + skipped
        verdicts = [r.summary.get("verdict") for r in checked]
        head = (f"{len(checked)} of {total} image{'s' if total != 1 else ''} checked: "
                + ", ".join(f"{verdicts.count(v)} {v}" for v in ("pass", "warn", "fail")))
        failed = total - len(checked) - skipped
        if failed:
            head += f"; {failed} could not be checked (see below)"
        if skipped:
            head += f"; {skipped} not started (time limit, see below)"
        lines = [head, *(r.message for r in self.reports)]
        if self.tables:
            lines += ["QC tables:", *(f"  {note}" for note in self.tables)]
        return "\n".join(lines)

    def first_output(self, name: str) -> int | None:
        """The id of output ``name`` (e.g. ``"qc_overview"``) of the first image checked, or None."""
        return next((r.output_id(name) for r in self.reports if r.ok and r.output_id(name)), None)


def qc_on_objects(
    conn,
    data_type: str,
    ids: Sequence,
    *,
    options=None,
    mpp: float | None = None,
    config=None,
    progress: Callable[[str], Callable[[str, int, int], None]] | None = None,
) -> QCBatch:
    """Check the slides of the selected OMERO objects and write the QC onto each image and dataset.

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    data_type, ids
        ``"Image"``, ``"Dataset"`` or ``"Project"`` and their ids.
    options
        How QC looks (:class:`~dlcore.qc.run.QCOptions`; default: its defaults with the configuration's
        reader threads).
    mpp
        Level-0 pixel size in µm for images that have none in OMERO.
    config
        dlcore's configuration (default: the node's file): ``work_dir``, ``reader_threads``.
    progress
        ``progress(image_label)`` returns the progress callback for that image.

    Returns
    -------
    QCBatch
        One report per image (``summary``: :meth:`~dlcore.qc.run.QCResult.summary`; ``outputs``: what
        :meth:`~dlcore.omero.qc_writer.QCWriter.write` wrote) and a note per dataset table.

    Raises
    ------
    DlcoreError
        Before anything is read or written: bad ids, no images.
    """
    from dlcore.config import load_config
    from dlcore.omero.budget import session_budget
    from dlcore.omero.workflows import level0_pixels, not_started_report, resolve_images

    config = config or load_config()
    options = options or qc_options({}, threads=config.reader_threads)
    images = resolve_images(conn, data_type, ids, skip_training_renderings=True)
    budget = session_budget(conn)
    reports: list[ImageReport] = []
    for index, image in enumerate(images, 1):
        pixels = level0_pixels(image)
        if not budget.fits(pixels):
            reports.append(not_started_report(budget, images[index - 1:]))
            log.warning("%s", reports[-1].message)
            break
        log.info("[%d/%d] QC of Image:%s %s", index, len(images), int(image.getId()), image.getName())
        callback = progress(f"[{index}/{len(images)}] Image:{int(image.getId())} ") if progress else None
        started = time.monotonic()
        reports.append(qc_on_image(conn, image, options=options, mpp=mpp, work_dir=config.work_dir, progress=callback))
        budget.record(pixels, time.monotonic() - started)
    return QCBatch(reports, dataset_tables(conn, images, reports))


def qc_on_image(conn, image, *, options, mpp: float | None = None, work_dir=None, progress=None) -> ImageReport:
    """Check one image and write its QC onto it (see the module docstring); never raises for a failed
    image: its report says why, and nothing of it is left."""
    from dlcore.io.slide import with_mpp
    from dlcore.omero.qc_writer import QCWriter
    from dlcore.omero.slide import OmeroSlide
    from dlcore.omero.workflows import annotate_refusal, failure_report
    from dlcore.qc.run import run_qc

    image_id, name = int(image.getId()), image.getName()
    label = f"Image:{image_id} {name}"
    refusal = annotate_refusal(image)
    if refusal:
        return ImageReport(image_id, name, False, refusal)
    writer = QCWriter(conn, image_id, group_id=int(image.getDetails().getGroup().getId()), work_dir=work_dir)
    slide = None
    try:
        slide = OmeroSlide(conn, image)
        info = with_mpp(slide.info, mpp)
        result = run_qc(slide, info=info, options=options, progress=progress)
        outputs = writer.write(result, input_identity=info.identity)
    except Exception as exc:  # a server error on one image must not lose the others' QC
        return failure_report(image_id, name, label, exc, writer)
    finally:
        if slide is not None:
            slide.close()
    summary = result.summary()
    return ImageReport(image_id, name, True, _checked(label, summary, outputs), summary, outputs)


def _checked(label: str, summary: dict, outputs: dict) -> str:
    from dlcore.qc.run import qc_problems

    problems = qc_problems(summary)
    files = ", ".join(f"{kind} {outputs[kind]}" for kind in ("qc_overview", "qc_json", "qc_mask") if kind in outputs)
    lines = [f"✓ {label}: QC {summary['verdict']}: {problems or 'no artefact found'}",
             f"  key-value pairs {outputs['key-value pairs']}; tags {outputs['tags']}; files {files}"]
    if outputs.get("replaced"):
        lines.append(f"  replaced the earlier QC: {outputs['replaced']}")
    return "\n".join(lines)


def dataset_tables(conn, images: Sequence, reports: Sequence[ImageReport]) -> list[str]:
    """Write the batch QC table of every dataset holding an image checked now (one row per image: those
    checked now and, from its earlier table, the dataset's others); return a note per dataset, and one
    for images in no dataset.  A dataset the user may not annotate, or whose table fails, gets a note
    saying so; the images' own QC stays."""
    from dlcore.errors import OmeroError
    from dlcore.omero.qc_table import replace_dataset_table
    from dlcore.qc.run import table_row

    by_id = {int(image.getId()): image for image in images}
    rows: dict[int, dict[int, dict]] = {}
    datasets: dict[int, object] = {}
    orphans = []
    for report in reports:
        if not report.ok:
            continue
        parents = [p for p in by_id[report.image_id].listParents() if p.OMERO_CLASS == "Dataset"]
        if not parents:
            orphans.append(f"Image:{report.image_id}")
        for dataset in parents:
            datasets.setdefault(int(dataset.getId()), dataset)
            rows.setdefault(int(dataset.getId()), {})[report.image_id] = table_row(report.name, report.summary)
    notes = []
    for dataset_id, dataset_rows in rows.items():
        dataset = datasets[dataset_id]
        if not dataset.canAnnotate():
            notes.append(f"Dataset:{dataset_id} {dataset.getName()}: no table (you may not annotate this dataset)")
            continue
        try:
            notes.append(replace_dataset_table(conn, dataset, dataset_rows))
        except OmeroError as exc:
            notes.append(f"✗ {exc}")
    if orphans:
        notes.append(f"{', '.join(orphans)}: in no dataset, so in no table (the QC is on the image)")
    return notes


def qc_script(script_client, *, conn=None, config=None) -> str:
    """The body of QC_Slides: check the selected slides, print progress and the outcome, and set the
    ``Message`` output (and ``Overview``, the first image's QC overview)."""
    from dlcore.omero.scripts import script_body

    def work(conn, inputs) -> str:
        from omero.model import FileAnnotationI
        from omero.rtypes import robject

        from dlcore.config import load_config
        from dlcore.progress import LineProgress

        node_config = config or load_config()
        batch = qc_on_objects(conn, inputs.get("Data_Type", "Image"), inputs.get("IDs") or [],
                              options=qc_options(inputs, threads=node_config.reader_threads),
                              mpp=inputs.get("Image_Pixel_Size_um"), config=node_config,
                              progress=lambda label: LineProgress(label))
        overview = batch.first_output("qc_overview")
        if overview:
            script_client.setOutput("Overview", robject(FileAnnotationI(overview, False)))
        return batch.message()

    return script_body(script_client, work, conn=conn)
