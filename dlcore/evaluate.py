"""Scoring an instance task against annotated images: ``dlcore evaluate TASK DATASET``.

Each image of an ``images/`` + ``labels/`` folder (label masks or Aperio XML outlines, see
:func:`dlcore.train.data.image_label_pairs`) is analysed exactly as ``dlcore run`` would analyse it
(same reader, tiling, edge handling, stitching and label writer, into a scratch folder), and the label
image written is compared with the annotation: objects match one to one at IoU >= 0.5 (and the
stricter thresholds up to 0.9), pooled over the images (:func:`dlcore.train.metrics.instance_scores`).
Nothing in the task is fitted to the annotations: the scores are a measurement, not a tuning.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError
from dlcore.progress import ProgressCallback
from dlcore.tasks.base import Task


@dataclass(frozen=True)
class ImageScore:
    """One image's result: its name, object counts and F1 at IoU 0.5."""

    name: str
    n_true: int
    n_pred: int
    f1: float
    seconds: float


def evaluate_instances(task: Task, dataset: str | Path, *, mpp: float | None = None, detect_tissue: bool = False,
                       progress: ProgressCallback | None = None) -> dict:
    """Run ``task`` on every annotated image of ``dataset`` and score its objects against the annotations.

    Parameters
    ----------
    mpp
        Pixel size of the images in µm when the files lack one; Aperio XML's ``MicronsPerPixel`` is
        used otherwise.
    detect_tissue
        Restrict the analysis to detected tissue (off by default: annotated fields are all tissue).

    Returns
    -------
    dict with the pooled scores (``f1``, ``precision``, ``recall``, ``ap`` per IoU threshold, counts)
    under ``"pooled"`` and one :class:`ImageScore` per image under ``"images"``.
    """
    from dlcore.io import open_slide
    from dlcore.io.local_sink import LocalFolderSink
    from dlcore.train.data import image_label_pairs, read_label
    from dlcore.train.metrics import instance_scores
    from dlcore.workflows import RunOptions, analyse_slide

    dataset = Path(dataset)
    if not (dataset / "images").is_dir() or not (dataset / "labels").is_dir():
        raise InputError(f"{dataset} must hold images/ and labels/ (label masks or Aperio .xml outlines of the same name)")
    pairs = image_label_pairs(dataset)
    truths, preds, images = [], [], []
    with tempfile.TemporaryDirectory(prefix="dlcore-evaluate-") as scratch:
        for index, (image_path, label_path) in enumerate(pairs):
            slide = open_slide(image_path)
            try:
                image_mpp = mpp if mpp is not None else _xml_mpp(label_path) if slide.info.mpp is None else None
                options = RunOptions(mpp=image_mpp, detect_tissue=detect_tissue)
                result = analyse_slide(slide, task, LocalFolderSink(scratch), options=options)
                shape = (slide.info.height, slide.info.width)
            finally:
                slide.close()
            pred = _read_labels_at(result.outputs["label image"], shape)
            truth = read_label(label_path, shape)
            scores = instance_scores([truth], [pred])
            truths.append(truth)
            preds.append(pred)
            images.append(ImageScore(name=image_path.name, n_true=scores["n_true"], n_pred=scores["n_pred"],
                                     f1=scores["f1"], seconds=result.provenance["timings"]["total_s"]))
            if progress:
                progress("images", index + 1, len(pairs))
    return {"pooled": instance_scores(truths, preds), "images": images, "dataset": str(dataset), "task": task.name}


def _xml_mpp(label_path: Path) -> float | None:
    if label_path.suffix.lower() != ".xml":
        return None
    from dlcore.io.aperio_xml import read_aperio_xml

    return read_aperio_xml(label_path).mpp


def _read_labels_at(path: str, shape: tuple[int, int]) -> np.ndarray:
    """Level 0 of a written label image, brought to the image's full-resolution ``shape``.

    A task working at a coarser resolution writes smaller labels; they are enlarged by nearest
    neighbour so both label images are compared pixel for pixel.
    """
    import tifffile

    labels = tifffile.imread(path, level=0)
    if labels.shape != shape:
        rows = np.minimum((np.arange(shape[0]) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1)
        cols = np.minimum((np.arange(shape[1]) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1)
        labels = labels[np.ix_(rows, cols)]
    return labels


def format_report(report: dict) -> str:
    """The evaluation as a few lines a person reads: per image, then pooled."""
    lines = [f"{'image':<40} {'true':>6} {'found':>6} {'F1@0.5':>7} {'s':>6}"]
    for image in report["images"]:
        lines.append(f"{image.name:<40} {image.n_true:>6} {image.n_pred:>6} {image.f1:>7.3f} {image.seconds:>6.1f}")
    p = report["pooled"]
    lines.append(
        f"pooled over {len(report['images'])} images: F1@0.5 {p['f1']:.3f}, precision {p['precision'] or 0:.3f}, "
        f"recall {p['recall'] or 0:.3f}, AP@0.5 {p['ap']['0.50']:.3f}, mean AP@0.5:0.9 {p['mean_ap']:.3f}, "
        f"mean matched IoU {p['mean_matched_iou'] or 0:.3f} ({p['n_true']} annotated, {p['n_pred']} found)"
    )
    return "\n".join(lines)
