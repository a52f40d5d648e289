"""Running a task or model on OMERO Images, Datasets or Projects: the one call scripts and ``omero dl`` make.

:func:`run_on_objects` checks everything it can before any work (the task or model exists and its
parameters are valid, every id names an object the user can see, there are images), then analyses
each image in turn: permission check, :class:`~dlcore.omero.slide.OmeroSlide` →
:func:`dlcore.workflows.analyse_slide` → :class:`~dlcore.omero.sink.OmeroSink`.  One image failing
(no tissue, unsupported pixels, not allowed to annotate) does not stop the others; its report says
why, and nothing was written for it.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dlcore.errors import DlcoreError, OmeroError, ParameterError, RunStopped
from dlcore.omero.budget import not_started_message, session_budget

log = logging.getLogger(__name__)

DATA_TYPES = ("Image", "Dataset", "Project")
#: what an ``image`` task (denoising, image translation) may write into OMERO, the default first: OMERO keeps
#: an image it creates above 3192 x 3192 as a pyramid, which holds 8- and 16-bit pixels only
#: (:mod:`dlcore.omero.image_output`)
OMERO_OUTPUT_DTYPES = ("uint16", "uint8")
FLOAT_REFUSED = (
    "output_dtype=float32 cannot be written to OMERO: OMERO keeps a slide-sized image it creates as a pyramid, and "
    "its pyramids hold 8- and 16-bit pixels only. Use uint16 (the default: 65,536 levels over each channel's "
    "predicted range; the scale and offset that give the predicted values back are key-value pairs on the new "
    "image) or uint8. For float32 values, run `dlcore run` on the slide file (it writes prediction.ome.tif)")


@dataclass(frozen=True)
class ImageReport:
    """The outcome of a run on one image: what a person reads in the script's Message."""

    image_id: int
    name: str
    ok: bool
    message: str
    summary: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    not_started: int = 0  # for the report that stands for images left out (the session's time limit)
    stopped: bool = False  # the session's time ran out during this image: its checkpoint is kept

    def output_id(self, name: str) -> int | None:
        """The id in an output like ``"Image:12"`` (``name`` = "label image", "overview", ...)."""
        value = self.outputs.get(name, "")
        if ":" not in value:
            return None
        return int(value.split(":", 1)[1].split()[0])


def _parse_ids(ids: Sequence) -> list[int]:
    if not ids:
        raise ParameterError("no IDs given: select images, datasets or projects, or give IDs (e.g. IDs=1,2)")
    out = []
    for value in ids:
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            raise ParameterError(f"ID {value!r} is not a number; give OMERO ids such as 123") from None
    return list(dict.fromkeys(out))


def resolve_images(conn, data_type: str, ids: Sequence, *, skip_training_renderings: bool = False) -> list:
    """The images of the selected objects (datasets and projects expanded), without duplicates.

    A dataset's label images and predicted images (dlcore's results) are left out; so are the haematoxylin-only
    training images of Labels From Marker (:func:`dlcore.omero.marker_labels.is_training_rendering`) when
    ``skip_training_renderings``: analyses, QC, Labels From Marker and Train Image Model skip them, while Train
    Model and Train Pixel Classifier (the default) read their ROIs.

    Raises :class:`OmeroError` naming every id that does not exist or the user cannot see (reads use
    group context -1, so images of all the user's groups count), and when no image is left.
    """
    if data_type not in DATA_TYPES:
        raise ParameterError(f"Data_Type {data_type!r} is not one of {', '.join(DATA_TYPES)}")
    ids = _parse_ids(ids)
    conn.SERVICE_OPTS.setOmeroGroup(-1)
    objects, missing = [], []
    for oid in ids:
        obj = conn.getObject(data_type, oid)
        (objects.append(obj) if obj is not None else missing.append(oid))
    if missing:
        others = " or ".join(t for t in DATA_TYPES if t != data_type)
        raise OmeroError(
            f"{data_type} {', '.join(map(str, missing))}: not found, or you are not allowed to see "
            f"{'it' if len(missing) == 1 else 'them'}; check the IDs, and that Data_Type is right "
            f"(are they {others} IDs?). Nothing was written"
        )
    images: dict[int, object] = {}
    for obj in objects:
        for image in _images_of(obj, data_type, skip_training_renderings=skip_training_renderings):
            images.setdefault(int(image.getId()), image)
    if not images:
        where = ", ".join(f"{data_type}:{int(o.getId())}" for o in objects)
        raise OmeroError(f"{where} contains no images; select a dataset or project that holds images")
    return list(images.values())


def _images_of(obj, data_type: str, *, skip_training_renderings: bool = False):
    if data_type == "Image":
        return [obj]
    from dlcore.omero.label_image import is_label_image

    from dlcore.omero.image_output import is_predicted_image
    from dlcore.omero.marker_labels import is_training_rendering

    def skipped(description) -> bool:
        return (is_label_image(description) or is_predicted_image(description)
                or (skip_training_renderings and is_training_rendering(description)))

    datasets = [obj] if data_type == "Dataset" else obj.listChildren()
    return [image for dataset in datasets for image in dataset.listChildren() if not skipped(image.getDescription())]


def omero_output_dtype(params: dict, output_dtype: str | None) -> str:
    """The stored type of an ``image`` task's prediction in OMERO: ``output_dtype`` (a script's or
    ``omero dl``'s option) or the ``output_dtype`` parameter, uint16 when neither is given.

    Raises :class:`ParameterError` for float32 (OMERO cannot hold it; the message says what to do), any
    other type, or two different values."""
    given = {v for v in (output_dtype, params.get("output_dtype")) if v not in (None, "")}
    if len(given) > 1:
        raise ParameterError(f"output_dtype is given twice with different values ({', '.join(sorted(map(str, given)))}); "
                             "give it once")
    chosen = str(given.pop()).strip().lower() if given else OMERO_OUTPUT_DTYPES[0]
    if chosen in ("float32", "float", "float64", "double"):
        raise ParameterError(FLOAT_REFUSED)
    if chosen not in OMERO_OUTPUT_DTYPES:
        raise ParameterError(f"output_dtype={chosen!r} is not one of {', '.join(OMERO_OUTPUT_DTYPES)} (the pixel types "
                             "an OMERO pyramid holds); uint16 is the default")
    return chosen


def task_for_omero(task_name: str, params: dict, *, output_dtype: str | None = None, config=None):
    """The task ``task_name`` with ``params`` as it runs in OMERO: an ``image`` task gets ``output_dtype``
    (:func:`omero_output_dtype`) among its parameters; other tasks as :func:`~dlcore.tasks.resolve_task`
    makes them (``output_dtype`` applies to image tasks only and is then ignored)."""
    from dlcore.tasks import resolve_task

    task = resolve_task(task_name, params, config=config)
    if getattr(task, "kind", None) != "image":
        return task
    dtype = omero_output_dtype(params, output_dtype)
    if getattr(task, "output_dtype", None) == dtype:
        return task
    if dataclasses.is_dataclass(task) and "output_dtype" in {f.name for f in dataclasses.fields(task)}:
        return dataclasses.replace(task, output_dtype=dtype)  # the model is not loaded twice
    return resolve_task(task_name, {**params, "output_dtype": dtype}, config=config)


def run_on_objects(
    conn,
    task_name: str,
    data_type: str,
    ids: Sequence,
    params: dict | None = None,
    *,
    detect_tissue: bool = True,
    mpp: float | None = None,
    roi_cap: int | None = None,
    qc: str = "off",
    qc_options=None,
    config=None,
    output_dtype: str | None = None,
    progress: Callable[[str], Callable[[str, int, int], None]] | None = None,
) -> list[ImageReport]:
    """Run ``task_name`` (a built-in task or an installed model) on the selected OMERO objects.

    Parameters
    ----------
    conn
        A connected BlitzGateway (from a script's client, ``omero dl`` or :func:`~dlcore.omero.connection.connect`).
    task_name, params
        The task or model and its parameters (checked before any image is touched).
    data_type, ids
        ``"Image"``, ``"Dataset"`` or ``"Project"`` and their ids.
    detect_tissue
        Restrict the analysis to detected tissue (False: the whole image).
    mpp
        Level-0 pixel size in µm for images that have none in OMERO.
    roi_cap
        Most ROIs per image (default: the configuration's ``roi_cap``).
    qc, qc_options
        Slide quality control before each analysis (:attr:`dlcore.workflows.RunOptions.qc`): ``"off"``,
        ``"flag"`` (the QC figures join the key-value pairs, its tags and files are attached) or
        ``"exclude"`` (as flag, and the artefacts are left out of the analysis); how QC looks
        (:class:`~dlcore.qc.run.QCOptions`, default: its defaults).
    config
        dlcore's configuration (default: :func:`dlcore.config.load_config`, the node's file).
    output_dtype
        For ``image`` tasks (denoising, image translation): the predicted image's pixel type in OMERO,
        ``"uint16"`` (the default, also when None) or ``"uint8"``; float32 is refused (:func:`omero_output_dtype`).
        It may instead be given as the ``output_dtype`` parameter; other tasks ignore it.
    progress
        ``progress(image_label)`` returns the progress callback for that image.

    Returns
    -------
    One :class:`ImageReport` per image, in order.

    Raises
    ------
    DlcoreError
        Before anything is written: unknown task or model, bad parameters, bad ids, no images.
    """
    from dlcore.config import load_config
    from dlcore.workflows import RunOptions

    config = config or load_config()
    task = task_for_omero(task_name, dict(params or {}), output_dtype=output_dtype, config=config)
    images = resolve_images(conn, data_type, ids, skip_training_renderings=True)
    qc_kwargs = {"qc": qc} if qc_options is None else {"qc": qc, "qc_options": qc_options}
    options = RunOptions(mpp=mpp, detect_tissue=detect_tissue, reader_threads=config.reader_threads,
                         work_dir=config.work_dir, checkpoint_every_s=config.checkpoint_every_s, **qc_kwargs)
    cap = config.roi_cap if roi_cap is None else roi_cap
    budget = session_budget(conn)
    reports = []
    for index, image in enumerate(images, 1):
        label = f"Image:{int(image.getId())}"
        pixels = level0_pixels(image)
        if not budget.fits(pixels):
            reports.append(not_started_report(budget, images[index - 1:]))
            log.warning("%s", reports[-1].message)
            break
        log.info("[%d/%d] %s %s: %s", index, len(images), label, image.getName(), task.name)
        callback = progress(f"[{index}/{len(images)}] {label} ") if progress else None
        started = time.monotonic()
        image_options = dataclasses.replace(options, deadline=budget.tiles_deadline())
        reports.append(run_on_image(conn, image, task, options=image_options, roi_cap=cap, progress=callback))
        if reports[-1].stopped:
            if images[index:]:
                reports.append(not_started_report(budget, images[index:]))
            break
        budget.record(pixels, time.monotonic() - started)
    return reports


def not_started_report(budget, images: list) -> ImageReport:
    """The report that stands for ``images``, left out because the session's time is running out."""
    labels = [f"Image:{int(i.getId())}" for i in images]
    return ImageReport(image_id=-1, name="", ok=False, not_started=len(labels),
                       message=not_started_message(budget, labels, next_pixels=level0_pixels(images[0])))


def level0_pixels(image) -> int:
    """The number of pixels of an image's full-resolution plane."""
    pixels = image.getPrimaryPixels()
    return int(pixels.getSizeX()) * int(pixels.getSizeY())


def annotate_refusal(image) -> str | None:
    """Why dlcore may not write onto ``image`` (the user may not annotate it: someone else's image in a
    read-only or private group), as the line of the script's Message; None when it may.  Asked before any
    pixel is read."""
    if image.canAnnotate():
        return None
    return (f"✗ Image:{int(image.getId())} {image.getName()}: you are not allowed to add annotations to this image "
            "(it belongs to someone else in a read-only or private group), so dlcore cannot write results onto it. "
            "Nothing was written. Ask the image's owner to run it, or copy the image into a group where you can "
            "annotate.")


def run_on_image(conn, image, task, *, options, roi_cap: int, progress=None) -> ImageReport:
    """Analyse one image and write its results onto it; never raises for a failed image."""
    from dlcore.omero.sink import OmeroSink
    from dlcore.omero.slide import OmeroSlide
    from dlcore.workflows import analyse_slide

    image_id, name = int(image.getId()), image.getName()
    label = f"Image:{image_id} {name}"
    refusal = annotate_refusal(image)
    if refusal:
        return ImageReport(image_id, name, False, refusal)
    group_id = int(image.getDetails().getGroup().getId())
    datasets = [int(p.getId()) for p in image.listParents() if p.OMERO_CLASS == "Dataset" and p.canLink()]
    sink = slide = None
    try:
        slide = OmeroSlide(conn, image)
        sink = OmeroSink(conn, image_id, image_name=name, group_id=group_id, dataset_ids=datasets, roi_cap=roi_cap,
                         work_dir=options.work_dir)
        result = analyse_slide(slide, task, sink, options=options, progress=progress)
    except RunStopped as exc:
        return ImageReport(image_id, name, False, stopped=True, message=(
            f"⏸ {exc}. Nothing was written onto the image yet. The checkpoint is on the processor node "
            f"{socket.gethostname()}: the script run again on this image with the same parameters continues from "
            "it there (on another node it starts over)."))
    except Exception as exc:  # a server error on one image must not lose the others' results
        return failure_report(image_id, name, label, exc, sink)
    finally:
        if slide is not None:
            slide.close()
    return ImageReport(image_id, name, True, _success(label, result, datasets), result.summary, result.outputs)


def server_message(exc: Exception) -> str:
    """The readable part of an OMERO server exception (its ``message`` field), else str()."""
    return str(getattr(exc, "message", "") or exc).strip()


def failure_report(image_id: int, name: str, label: str, exc: Exception, sink) -> ImageReport:
    """The report of an image whose work raised ``exc``: a :class:`DlcoreError`'s own message, any other
    error (a server's) by its type and the server's words, logged with its traceback."""
    if isinstance(exc, DlcoreError):
        problem = str(exc)
    else:
        log.exception("%s failed", label)
        problem = f"{type(exc).__name__}: {server_message(exc)}"
    return ImageReport(image_id, name, False, failure_message(label, problem, sink))


def failure_message(label: str, problem: str, sink) -> str:
    """The Message line of an image that failed: the problem, and whether its partial results were
    removed (``sink.cleanup_problem``, empty when they were)."""
    cleanup = getattr(sink, "cleanup_problem", "")
    tail = f" The run's partial results could not all be removed: {cleanup}" if cleanup else " Nothing was written."
    return f"✗ {label}: {problem}.{tail}"


def _success(label: str, result, datasets: list[int]) -> str:
    s, out = result.summary, result.outputs
    if "predicted image" in out:
        return _image_success(label, result, datasets)
    if "objects" in s:
        found = f"{s['objects']} objects"
    else:
        found = ", ".join(f"{k} {v} mm²" for k, v in s.get("class_area_mm2", {}).items()) or "classes mapped"
    tissue = f"{s['tissue_area_mm2']} mm² tissue" if s.get("tissue_area_mm2") is not None else f"{s['tissue_fraction']:.0%} tissue"
    where = (f"in Dataset {', '.join(map(str, datasets))}" if datasets
             else "not in a dataset (find it under Orphaned Images)")
    parts = [
        f"✓ {label}: {found}, {tissue}.",
        f"  ROIs: {out.get('ROIs', '')}",
        f"  label image: {out.get('label image', '')} {where}",
        f"  table: {out.get('table', '')}; key-value pairs: {out.get('key-value pairs', '')}",
        "  files: " + ", ".join(f"{k} {v}" for k, v in out.items()
                                if k in ("outlines", "measurements", "overview", "provenance")),
    ]
    if s.get("qc"):
        parts.append(_qc_line(s["qc"], out))
    if out.get("tags"):
        parts.append(f"  tags: {out['tags']}")
    if out.get("replaced"):
        parts.append(f"  replaced the earlier run's results: {out['replaced']}")
    return "\n".join(parts)


def _image_success(label: str, result, datasets: list[int]) -> str:
    """The Message block of an ``image`` task's run: the predicted image, where it is, how to read it."""
    s, out = result.summary, result.outputs
    predicted = s.get("predicted_image", {})
    tissue = f"{s['tissue_area_mm2']} mm² tissue" if s.get("tissue_area_mm2") is not None else (
        f"{s['tissue_fraction']:.0%} tissue" if s.get("tissue_fraction") is not None else "")
    where = (f"in Dataset {', '.join(map(str, datasets))}" if datasets
             else "not in a dataset (find it under Orphaned Images)")
    channels = ", ".join(predicted.get("channels", ()))
    parts = [
        f"✓ {label}: predicted image {out['predicted image']} {where}"
        + (f" ({channels}; {predicted.get('dtype')})" if channels else "") + (f", {tissue}." if tissue else "."),
        "  its values: value = offset + scale * stored, per channel (key-value pairs on the predicted image)",
        f"  key-value pairs: {out.get('key-value pairs', '')}",
        "  files: " + ", ".join(f"{k} {v}" for k, v in out.items() if k in ("overview", "provenance")),
    ]
    if s.get("qc"):
        parts.append(_qc_line(s["qc"], out))
    if out.get("replaced"):
        parts.append(f"  replaced the earlier run's results: {out['replaced']}")
    return "\n".join(parts)


def _qc_line(qc: dict, outputs: dict) -> str:
    """The Message line of a run's QC: verdict, problems, what was excluded, the QC files."""
    from dlcore.qc.run import qc_problems

    line = f"  QC ({qc.get('mode')}): {qc.get('verdict')}" + (f": {qc_problems(qc)}" if qc_problems(qc) else "")
    if qc.get("mode") == "exclude" and qc.get("excluded_fraction_of_tissue"):
        area = qc.get("excluded_area_mm2")
        line += (f"; {100 * qc['excluded_fraction_of_tissue']:.1f} % of the tissue"
                 + (f" ({area:.4g} mm²)" if area is not None else "") + " left out")
    files = [f"{name} {value}" for name, value in outputs.items() if "qc" in name.lower()]
    return line + (f"; files: {', '.join(files)}" if files else "")


def summary_message(reports: Sequence[ImageReport]) -> str:
    """The script's Message: a count line first, then one block per image (and one for images not started)."""
    ok = sum(r.ok for r in reports)
    skipped = sum(r.not_started for r in reports)
    stopped = sum(r.stopped for r in reports)
    total = sum(1 for r in reports if not r.not_started) + skipped
    failed = total - ok - skipped - stopped
    head = f"{ok} of {total} image{'s' if total != 1 else ''} analysed"
    if failed:
        head += f", {failed} failed (see below)"
    if stopped:
        head += ", 1 stopped at the time limit (run the script again on it to continue, see below)"
    if skipped:
        head += f", {skipped} not started (time limit, see below)"
    return "\n".join([head, *(r.message for r in reports)])
