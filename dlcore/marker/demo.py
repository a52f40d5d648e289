"""The labels-from-a-marker demo: DAB-positive cells found from the haematoxylin channel alone.

scikit-image's ``immunohistochemistry()`` is a real IHC section: haematoxylin counterstain and a DAB
marker (membranous, on the epithelium of the glands).  :func:`run_marker_demo`

1. writes the section as an OME-TIFF (0.5 µm/px, as the other demos) and derives labels from its DAB
   with ``annotate-from-marker``'s code (method ``positive-cells``): nuclei found on the haematoxylin by
   the classical pipeline, each cell (the nucleus grown by :data:`CELL_EXPANSION` pixels: the marker is on
   the membranes) positive when its mean DAB is above Otsu's threshold.  The left :data:`TRAIN_FRACTION`
   of the section becomes a training folder (``training/``), the right strip a held-out folder
   (``held-out/``, its labels made with the training part's threshold);
2. trains a pixel classifier (:func:`dlcore.pixels.training.train_pixel_classifier`: multiscale filter
   features and a random forest, CPU-fast) on the training folder's input, the section rendered as if
   stained with haematoxylin alone (its green channel, where haematoxylin absorbs most), and its labels
   (background, negative and positive nuclei);
3. on the held-out strip, which no training step saw (labels, threshold fitting or features): nuclei are
   found on the haematoxylin rendering alone, and a nucleus is called positive when the classifier's
   mean probability of ``positive`` over it is above that of ``negative``;
4. scores the positive cells against the marker's: object precision, recall and F1 (one-to-one matches
   at IoU >= 0.5) and the pixel Dice of the positive cells' masks, beside two baselines that use the
   haematoxylin alone without learning: every nucleus called positive, and a nucleus called positive
   when its mean haematoxylin lies on the positive side of Otsu's threshold of the training nuclei's
   means (the side chosen on the training labels).

The figures are what they are on one small section (a few dozen held-out cells): a demonstration of the
workflow, not a validation of a model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

DEMO_MPP = 0.5
TRAIN_FRACTION = 0.7
CELL_EXPANSION = 10  # pixels: 5 µm at 0.5 µm/px (QuPath's default cell expansion); this DAB is membranous
SCALES = (0.7, 1.6, 3.5, 5.0, 10.0)  # ilastik's offered scales up to 10: a nucleus and its neighbourhood
MAX_PIXELS_PER_CLASS = 50_000  # training pixels per class (sampled): keeps the forest's fit to seconds
IOU = 0.5


def _positive_instances(instances: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """The instance map restricted to the ids flagged positive (``positive`` is indexed by id)."""
    keep = np.zeros(int(instances.max()) + 1, bool)
    keep[: len(positive)] = positive[: keep.size]
    keep[0] = False
    return np.where(keep[instances], instances, 0)


def _plane(rendering: np.ndarray) -> np.ndarray:
    """The classifier's input: the haematoxylin rendering's green channel, where haematoxylin absorbs most
    (the three channels of a one-stain rendering carry the same information)."""
    return np.ascontiguousarray(rendering[..., 1:2])


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks (None when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def score(truth_positive: np.ndarray, predicted_positive: np.ndarray) -> dict:
    """Object precision, recall and F1 at IoU >= 0.5 (one-to-one matches) and pixel Dice of two instance
    maps of positive cells."""
    from dlcore.train.metrics import instance_scores

    s = instance_scores([truth_positive], [predicted_positive], thresholds=(IOU,))
    return {"precision": s["precision"], "recall": s["recall"], "f1": s["f1"], "tp": s["tp"], "fp": s["fp"],
            "fn": s["fn"], "true_positive_cells": s["n_true"], "predicted_positive_cells": s["n_pred"],
            "pixel_dice": dice(truth_positive > 0, predicted_positive > 0)}


def _mean_per_id(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``values``'s mean over every id 0..max of ``labels`` (0 where an id is absent)."""
    counts = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    sums = np.bincount(labels.ravel(), weights=values.ravel().astype(np.float64), minlength=counts.size)
    return np.divide(sums, counts, out=np.zeros(counts.size), where=counts > 0)


def _nuclei_on_rendering(rendering: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei of a haematoxylin-only rendering (the classical pipeline) and its haematoxylin concentration."""
    from dlcore.tasks.classical import ClassicalNuclei

    task = ClassicalNuclei(channel="hematoxylin").at_resolution(DEMO_MPP).prepare([rendering])
    return task.segment(rendering).astype(np.int32), task.stains().concentrations(rendering)[..., 0]


def run_marker_demo(out: str | Path, *, threads: int | None = None, log=print) -> dict:
    """Run the demo (see the module docstring) into ``out``; returns the figures (also ``out/scores.json``).

    ``out`` must be new or empty.  ``threads``: CPU threads of the forest (None: every core).
    """
    import tifffile
    from skimage import data

    from dlcore.errors import InputError
    from dlcore.marker.dataset import labels_from_marker
    from dlcore.marker.labels import MarkerSpec
    from dlcore.pixels.features import FeatureSpec
    from dlcore.pixels.forest import CompiledForest, ForestSettings
    from dlcore.pixels.task import classify_pixels
    from dlcore.pixels.training import LabelledImage, PixelTrainingOptions, train_pixel_classifier
    from dlcore.tasks.classical import otsu_threshold
    from dlcore.train.data import _write_ome, load_folder

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"demo folder {out} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    image = data.immunohistochemistry()
    height, width = image.shape[:2]
    split = int(round(width * TRAIN_FRACTION))
    source = out / "ihc-section.ome.tif"
    _write_ome(source, image, mpp=DEMO_MPP, name="ihc-section")

    # 1. labels from the DAB marker: training part, then the held-out strip with the training threshold
    spec = MarkerSpec(marker="dab", method="positive-cells", cell_expansion=CELL_EXPANSION, input="hematoxylin")
    train = labels_from_marker([source], out / "training", spec=spec, region=(0, 0, split, height))
    threshold = train["results"][0].threshold
    held_spec = dataclasses.replace(spec, threshold=threshold)
    held = labels_from_marker([source], out / "held-out", spec=held_spec, region=(split, 0, width - split, height))
    log(f"labels from DAB: training part x < {split} ({train['results'][0].counts()['positive_objects']} positive, "
        f"{train['results'][0].counts()['negative_objects']} negative nuclei; Otsu threshold {threshold:.4f}), "
        f"held-out strip x >= {split} ({held['results'][0].counts()['positive_objects']} positive, "
        f"{held['results'][0].counts()['negative_objects']} negative)")

    # 2. a pixel classifier on the haematoxylin rendering of the training part
    dataset = load_folder(out / "training", task="semantic")
    [sample] = dataset.samples
    features = FeatureSpec(scales=SCALES, colour="raw")
    classes = ("background",) + dataset.classes  # label value k+1 = class k (0 = unlabelled)
    with warnings.catch_warnings(), _quiet("dlcore.pixels.training"):
        # dense labels: the scribble advice ("label 3 strokes") and sklearn's out-of-bag note do not apply
        warnings.simplefilter("ignore", UserWarning)
        trained = train_pixel_classifier(
            [LabelledImage("training", _plane(sample.image), sample.mask.astype(np.int32) + 1)], classes,
            options=PixelTrainingOptions(features=features, forest=ForestSettings(seed=0), holdout_fraction=0.0,
                                         max_pixels_per_class=MAX_PIXELS_PER_CLASS, threads=threads),
            channel_names=("green",))
    counts = ", ".join(f"{c} {v['pixels']}" for c, v in trained.label_counts.items())
    log(f"pixel classifier trained on {trained.metrics['training_pixels']} pixels ({counts}); "
        f"out-of-bag accuracy {trained.metrics['oob_accuracy']:.3f}")

    # 3. the held-out strip: nuclei and their class from the haematoxylin rendering alone
    [test] = load_folder(out / "held-out", task="semantic").samples
    truth_instances = tifffile.imread(next((out / "held-out" / "instances").glob("*.tif"))).astype(np.int32)
    truth_classes = test.mask
    truth_positive = np.where(truth_classes == 2, truth_instances, 0)
    probabilities = classify_pixels(_plane(test.image), features, CompiledForest(trained.forest))
    nuclei, hematoxylin = _nuclei_on_rendering(test.image)
    p_negative = _mean_per_id(probabilities[classes.index("negative")], nuclei)
    p_positive = _mean_per_id(probabilities[classes.index("positive")], nuclei)
    model = score(truth_positive, _positive_instances(nuclei, p_positive > p_negative))

    # 4. baselines from the haematoxylin alone
    everything = score(truth_positive, nuclei)
    train_nuclei, train_h = _nuclei_on_rendering(sample.image)
    train_truth = _mean_per_id((sample.mask == 2).astype(np.float32), train_nuclei) > 0.5
    train_means = _mean_per_id(train_h, train_nuclei)[1:]
    present = np.bincount(train_nuclei.ravel(), minlength=train_nuclei.max() + 1)[1:] > 0
    cut = otsu_threshold(train_means[present])
    above = train_means[present] > cut
    positive_above = train_truth[1:][present][above].mean() >= train_truth[1:][present][~above].mean()
    test_means = _mean_per_id(hematoxylin, nuclei)
    rule = (test_means > cut) if positive_above else (test_means <= cut)
    h_threshold = score(truth_positive, _positive_instances(nuclei, rule))

    figures = {
        "held_out": {"region": {"x": split, "y": 0, "width": width - split, "height": height},
                     "nuclei_found_on_hematoxylin": int(len(np.unique(nuclei)) - 1)},
        "model": model,
        "baseline_every_nucleus_positive": everything,
        "baseline_hematoxylin_threshold": {**h_threshold, "rule": f"mean haematoxylin {'>' if positive_above else '<='} "
                                                                  f"{cut:.4f} (Otsu of the training nuclei)"},
        "matching": f"one-to-one, IoU >= {IOU}",
        "labels": {"method": spec.method, "marker": spec.marker, "cell_expansion_px": CELL_EXPANSION,
                   "threshold": threshold},
        "classifier": {"features": features.as_dict(), "forest": ForestSettings(seed=0).as_dict(),
                       "oob_accuracy": trained.metrics["oob_accuracy"]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "scores.json").write_text(json.dumps(figures, indent=1, default=float))
    return figures


def format_figures(figures: dict) -> str:
    """The demo's scores as a small table."""
    def row(name: str, s: dict) -> str:
        f = lambda v: "  n/a" if v is None else f"{v:5.3f}"  # noqa: E731
        return (f"  {name:<34} {f(s['precision'])}  {f(s['recall'])}  {f(s['f1'])}  {f(s['pixel_dice'])}  "
                f"{s['tp']:>3} {s['fp']:>3} {s['fn']:>3}")

    held = figures["held_out"]
    lines = [f"held-out strip x >= {held['region']['x']} ({held['region']['width']} x {held['region']['height']} px, "
             f"never seen in training): {figures['model']['true_positive_cells']} DAB-positive cells by the marker, "
             f"{held['nuclei_found_on_hematoxylin']} nuclei found on the haematoxylin",
             f"  positive cells, matched {figures['matching']}; Dice of their pixels:",
             f"  {'':<34} {'prec':>5}  {'rec':>5}  {'F1':>5}  {'Dice':>5}  {'TP':>3} {'FP':>3} {'FN':>3}",
             row("pixel classifier on haematoxylin", figures["model"]),
             row("baseline: every nucleus positive", figures["baseline_every_nucleus_positive"]),
             row("baseline: haematoxylin threshold", figures["baseline_hematoxylin_threshold"]),
             f"  ({figures['baseline_hematoxylin_threshold']['rule']}; {figures['seconds']} s)"]
    return "\n".join(lines)


def main(out: str | Path, *, threads: int | None = None) -> int:
    """``dlcore demo --marker``: run the demo, print the figures and the command to train on the labels."""
    out = Path(out)
    print(f"labels from a marker: DAB-positive cells of scikit-image's IHC section, learnt from its haematoxylin "
          f"(writing {out})")
    figures = run_marker_demo(out, threads=threads)
    print(format_figures(figures))
    print(f"the labels: {out / 'training'} and {out / 'held-out'} (check their overview/ folders). For a U-Net, "
          "label the section cut into tiles (each its own split group) and train:\n"
          f"  dlcore annotate-from-marker {out / 'ihc-section.ome.tif'} -o ihc-cells --method positive-cells "
          f"--cell-expansion {CELL_EXPANSION} --tile 256\n"
          "  dlcore train ihc-cells --task semantic --name ihc-positive-cells")
    return 0


__all__ = ["run_marker_demo", "format_figures", "main", "score", "dice"]
