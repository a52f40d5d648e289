"""Evaluation metrics: segmentation (IoU, Dice), instances (AP over IoU thresholds, F1), classification.

Pure numpy / scipy / scikit-learn; every function takes plain arrays and returns JSON-able dicts, so
the same numbers go into the QC report and the model card.

Conventions
-----------
- Per-class IoU and Dice are NaN for a class absent from both truth and prediction (undefined), and
  means skip NaN.  Scores are computed on the pixel counts pooled over all images.
- Instance "AP" at an IoU threshold t is the detection accuracy used by the Data Science Bowl 2018
  and StarDist: TP / (TP + FP + FN), where a true and a predicted object match (one-to-one, maximum
  total IoU) when their IoU >= t.  F1 = 2 TP / (2 TP + FP + FN).
"""
from __future__ import annotations

import numpy as np

DEFAULT_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # 0.5, 0.55, ..., 0.9


def _nan_to_none(value: float):
    return None if value is None or np.isnan(value) else float(value)


# -- semantic segmentation ------------------------------------------------------------------------
def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = truth, columns = prediction; values outside 0..n-1 are ignored."""
    y_true = np.asarray(y_true).ravel().astype(np.int64)
    y_pred = np.asarray(y_pred).ravel().astype(np.int64)
    keep = (y_true >= 0) & (y_true < n_classes) & (y_pred >= 0) & (y_pred < n_classes)
    return np.bincount(y_true[keep] * n_classes + y_pred[keep], minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def segmentation_scores_from_confusion(cm: np.ndarray, class_names) -> dict:
    """Per-class IoU and Dice, their means, and pixel accuracy from a pixel confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    names = list(class_names)
    return {
        "iou": {n: _nan_to_none(v) for n, v in zip(names, iou)},
        "dice": {n: _nan_to_none(v) for n, v in zip(names, dice)},
        "mean_iou": _nan_to_none(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "mean_dice": _nan_to_none(np.nanmean(dice)) if np.isfinite(dice).any() else None,
        "pixel_accuracy": _nan_to_none(tp.sum() / cm.sum()) if cm.sum() else None,
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def segmentation_scores(truths, preds, class_names, *, ignore_index: int | None = None) -> dict:
    """IoU and Dice per class over a list of ``(Y, X)`` class maps (class ``i`` = ``class_names[i]``).

    Parameters
    ----------
    truths, preds : sequences of equally shaped integer maps (or single arrays).
    class_names : names of classes 0..n-1 (include the background as class 0 when it is scored).
    ignore_index : a truth value not scored (e.g. unlabelled pixels).
    """
    if isinstance(truths, np.ndarray):
        truths, preds = [truths], [preds]
    n = len(class_names)
    cm = np.zeros((n, n), np.int64)
    for t, p in zip(truths, preds):
        t, p = np.asarray(t), np.asarray(p)
        if t.shape != p.shape:
            raise ValueError(f"truth shape {t.shape} differs from prediction shape {p.shape}")
        if ignore_index is not None:
            keep = t != ignore_index
            t, p = t[keep], p[keep]
        cm += confusion_matrix(t, p, n)
    return segmentation_scores_from_confusion(cm, class_names)


# -- instances --------------------------------------------------------------------------------------
def instance_iou(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU matrix ``(n_true, n_pred)`` between the objects of two label images, and their ids."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    true_ids = np.unique(truth[truth > 0])
    pred_ids = np.unique(pred[pred > 0])
    if not len(true_ids) or not len(pred_ids):
        return np.zeros((len(true_ids), len(pred_ids))), true_ids, pred_ids
    t_index = np.searchsorted(true_ids, truth)  # background maps anywhere; masked below
    p_index = np.searchsorted(pred_ids, pred)
    both = (truth > 0) & (pred > 0)
    inter = np.zeros((len(true_ids), len(pred_ids)), np.int64)
    np.add.at(inter, (t_index[both], p_index[both]), 1)
    t_area = np.bincount(t_index[truth > 0], minlength=len(true_ids))
    p_area = np.bincount(p_index[pred > 0], minlength=len(pred_ids))
    union = t_area[:, None] + p_area[None, :] - inter
    return inter / np.maximum(union, 1), true_ids, pred_ids


def match_instances(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one matches (row, column) with IoU >= threshold, maximising the total IoU."""
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return []
    eligible = iou >= threshold
    cost = np.where(eligible, -iou, 0.0)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if eligible[r, c]]


def instance_scores(truths, preds, *, thresholds=DEFAULT_IOU_THRESHOLDS) -> dict:
    """Detection scores of instance label images, pooled over images.

    Returns
    -------
    dict with ``ap`` (threshold → TP/(TP+FP+FN)), ``mean_ap`` (over thresholds), and at IoU 0.5:
    ``f1``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn``, ``n_true``, ``n_pred``,
    ``mean_matched_iou``; plus ``per_threshold`` counts.
    """
    if isinstance(truths, np.ndarray):
        truths, preds = [truths], [preds]
    ious = [instance_iou(t, p)[0] for t, p in zip(truths, preds)]
    n_true = sum(m.shape[0] for m in ious)
    n_pred = sum(m.shape[1] for m in ious)
    per = {}
    for t in thresholds:
        tp = 0
        matched_iou = []
        for m in ious:
            pairs = match_instances(m, t)
            tp += len(pairs)
            matched_iou += [m[r, c] for r, c in pairs]
        fp, fn = n_pred - tp, n_true - tp
        per[f"{t:.2f}"] = {"tp": tp, "fp": fp, "fn": fn,
                           "ap": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
                           "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
                           "mean_iou": float(np.mean(matched_iou)) if matched_iou else None}
    first = per[f"{thresholds[0]:.2f}"]
    return {
        "ap": {k: v["ap"] for k, v in per.items()},
        "mean_ap": float(np.mean([v["ap"] for v in per.values()])),
        "f1": first["f1"], "tp": first["tp"], "fp": first["fp"], "fn": first["fn"],
        "precision": first["tp"] / n_pred if n_pred else None,
        "recall": first["tp"] / n_true if n_true else None,
        "n_true": n_true, "n_pred": n_pred, "mean_matched_iou": first["mean_iou"],
        "match_threshold": thresholds[0], "per_threshold": per,
    }


# -- classification ------------------------------------------------------------------------------
def classification_scores(y_true, proba, class_names) -> dict:
    """Accuracy, balanced accuracy, confusion matrix and one-vs-rest ROC AUC.

    Parameters
    ----------
    y_true : ``(N,)`` class indices.
    proba : ``(N, n_classes)`` class probabilities (the prediction is their argmax).
    class_names : the n class names.

    Returns
    -------
    dict; per-class AUC is None for a class that is absent, or the only one present, in ``y_true``.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n = len(class_names)
    if proba.shape != (len(y_true), n):
        raise ValueError(f"proba has shape {proba.shape}; expected ({len(y_true)}, {n})")
    y_pred = proba.argmax(1)
    cm = confusion_matrix(y_true, y_pred, n)
    support = cm.sum(1)
    recall = np.divide(np.diag(cm), support, out=np.full(n, np.nan), where=support > 0)
    auc = {}
    for i, name in enumerate(class_names):
        positive = y_true == i
        auc[name] = float(roc_auc_score(positive, proba[:, i])) if 0 < positive.sum() < len(y_true) else None
    known = [v for v in auc.values() if v is not None]
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else None,
        "balanced_accuracy": _nan_to_none(np.nanmean(recall)) if np.isfinite(recall).any() else None,
        "recall": {n_: _nan_to_none(r) for n_, r in zip(class_names, recall)},
        "confusion_matrix": cm.tolist(),
        "roc_auc": auc,
        "macro_roc_auc": float(np.mean(known)) if known else None,
        "n": int(len(y_true)),
    }


def summarise_folds(fold_metrics: list[dict], keys: list[str]) -> dict:
    """Mean and sample standard deviation over folds of the scalar metrics named by ``keys``."""
    out = {}
    for key in keys:
        values = [m[key] for m in fold_metrics if m.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)),
                        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}
    return out
