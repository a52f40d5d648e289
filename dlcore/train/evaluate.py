"""Predicting whole held-out images with a trained network and scoring them.

Images are predicted with MONAI's sliding-window inference (Gaussian-weighted overlapping tiles), so
test images of any size are scored whole, as the model will see slides.
"""
from __future__ import annotations

import numpy as np

from dlcore.train.data import AnnotatedDataset
from dlcore.train.metrics import classification_scores, instance_scores, segmentation_scores
from dlcore.train.spec import TrainSpec
from dlcore.train.targets import center_crop, normalize


def instance_postprocess(spec: TrainSpec) -> dict:
    """The default ``fg_boundary_watershed`` settings (before :func:`tune_postprocess`)."""
    return {"type": "fg_boundary_watershed", "fg_threshold": 0.5, "boundary_threshold": 0.5,
            "min_size": spec.min_size, "min_seed_size": 5}


BOUNDARY_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
MIN_SEED_SIZES = (5, 10, 15)


def tune_postprocess(model, dataset: AnnotatedDataset, spec: TrainSpec) -> tuple[dict, list[dict]]:
    """The watershed settings that give the best pooled F1 (IoU 0.5) on ``dataset`` (the validation
    images, as StarDist's ``optimize_thresholds`` does): every boundary threshold of
    :data:`BOUNDARY_THRESHOLDS` with every seed size of :data:`MIN_SEED_SIZES`, the rest as
    :func:`instance_postprocess`.  Returns the settings and the grid's scores (for the card); ties go to
    the default-most setting (the earlier boundary threshold from 0.5 down, then the smaller seed)."""
    from dlcore.models.instances import instances_from_maps

    probs = [predict_probabilities(model, s.image, spec) for s in dataset.samples]
    truths = [s.mask for s in dataset.samples]
    grid = []
    for threshold in sorted(BOUNDARY_THRESHOLDS, reverse=True):
        for seed in MIN_SEED_SIZES:
            post = {**instance_postprocess(spec), "boundary_threshold": threshold, "min_seed_size": seed}
            scores = instance_scores(truths, [instances_from_maps(p, post) for p in probs])
            grid.append({"boundary_threshold": threshold, "min_seed_size": seed, "f1": round(scores["f1"], 4),
                         "mean_ap": round(scores["mean_ap"], 4)})
    best = max(grid, key=lambda row: row["f1"])  # max keeps the first of equals
    return {**instance_postprocess(spec), "boundary_threshold": best["boundary_threshold"],
            "min_seed_size": best["min_seed_size"]}, grid


def predict_probabilities(model, image: np.ndarray, spec: TrainSpec) -> np.ndarray:
    """``(n_out, Y, X)`` probabilities of a segmentation network over a whole image (softmax over
    classes; sigmoid per channel for instances)."""
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(normalize(image, spec.normalization))[None]
    roi = min(max(spec.patch_size * 2, 128), 512)
    model.eval()
    with torch.no_grad():
        logits = sliding_window_inference(x, (roi, roi), sw_batch_size=4, predictor=model, overlap=0.25,
                                          mode="gaussian", padding_mode="reflect")
    probs = torch.sigmoid(logits) if spec.task == "instances" else torch.softmax(logits, 1)
    return probs[0].numpy()


def predict_patches(model, images: list[np.ndarray], spec: TrainSpec) -> np.ndarray:
    """``(N, n_classes)`` probabilities of a classifier for patches (centre-cropped to the patch size)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            x = np.stack([normalize(center_crop(im, spec.patch_size), spec.normalization)
                          for im in images[start:start + 32]])
            out.append(torch.softmax(model(torch.from_numpy(x)), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate(model, dataset: AnnotatedDataset, spec: TrainSpec, post: dict | None = None) -> tuple[dict, dict]:
    """Score the model on every sample of ``dataset`` (instances: with the watershed settings ``post``,
    default :func:`instance_postprocess`).

    Returns
    -------
    (metrics, predictions): metrics as in :mod:`dlcore.train.metrics`; predictions hold per sample
    the predicted map / labels (segmentation) or probabilities (classification) for the QC report.
    """
    if dataset.task == "classification":
        proba = predict_patches(model, [s.image for s in dataset.samples], spec)
        y = [dataset.classes.index(s.label) for s in dataset.samples]
        return classification_scores(y, proba, dataset.classes), {"proba": proba, "y": np.asarray(y)}
    maps, truths = [], []
    for s in dataset.samples:
        prob = predict_probabilities(model, s.image, spec)
        if dataset.task == "instances":
            from dlcore.models.instances import instances_from_maps  # the same code inference runs

            maps.append(instances_from_maps(prob, post or instance_postprocess(spec)))
        else:
            maps.append(prob.argmax(0).astype(np.int32))
        truths.append(s.mask)
    if dataset.task == "instances":
        metrics = instance_scores(truths, maps)
        pixel = segmentation_scores([(t > 0).astype(np.int8) for t in truths],
                                    [(m > 0).astype(np.int8) for m in maps], ["background", "nucleus"])
        metrics["foreground_iou"] = pixel["iou"]["nucleus"]
        metrics["foreground_dice"] = pixel["dice"]["nucleus"]
    else:
        metrics = segmentation_scores(truths, maps, ("background",) + tuple(dataset.classes))
    return metrics, {"maps": maps}


HEADLINE = {
    "semantic": ("mean_iou", "mean_dice", "pixel_accuracy"),
    "instances": ("mean_ap", "f1", "precision", "recall", "foreground_iou"),
    "classification": ("accuracy", "balanced_accuracy", "macro_roc_auc"),
}


def headline(metrics: dict, task: str) -> dict:
    """The scalar metrics of a task that summarise a run (for k-fold mean ± sd and the card)."""
    out = {k: metrics.get(k) for k in HEADLINE[task]}
    if task == "instances":
        out["ap@0.50"] = metrics["ap"]["0.50"]
        out["ap@0.75"] = metrics["ap"].get("0.75")
    return out

