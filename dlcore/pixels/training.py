"""Training a pixel classifier from sparse labels: features, a random forest, honest accuracy figures.

:func:`train_pixel_classifier` takes a few images, each with a sparse label image
(:mod:`dlcore.pixels.scribbles`), computes every image's features whole (:mod:`dlcore.pixels.features`),
and fits a random forest (:mod:`dlcore.pixels.forest`) on the labelled pixels.  It reports:

- the **out-of-bag accuracy** (each labelled pixel predicted by the trees that did not see it; optimistic,
  since neighbouring pixels of one stroke look alike);
- the **held-out-stroke accuracy**: a fifth of each class's strokes (connected labelled regions) is
  left out, a forest is trained on the rest and scored on them (balanced accuracy, per-class recall and
  precision, the confusion matrix).  A stroke is the unit, not a pixel, so the figure says how the
  classifier does on tissue it was not shown.  The model itself is then trained on every label;
- a **feature-importance table** (mean decrease in impurity, per feature and summed per feature kind,
  scale and channel);
- **warnings** for classes with too few labels.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import InputError, ParameterError
from dlcore.pixels.features import FeatureSpec, compute_features
from dlcore.pixels.forest import ForestArrays, ForestSettings, train_forest
from dlcore.progress import ProgressCallback

log = logging.getLogger(__name__)

MIN_PIXELS = 200  # fewer labelled pixels of a class: a warning
MIN_STROKES = 3  # fewer separate strokes of a class: a warning (they may all show one spot of tissue)


@dataclass(frozen=True)
class LabelledImage:
    """One training image at the working resolution and its sparse labels (0 = unlabelled, k = class k)."""

    name: str
    image: np.ndarray  # (Y, X, C)
    labels: np.ndarray  # (Y, X) int


@dataclass(frozen=True)
class PixelTrainingOptions:
    """How a pixel classifier is trained (see the module docstring)."""

    features: FeatureSpec = field(default_factory=FeatureSpec)
    forest: ForestSettings = field(default_factory=ForestSettings)
    holdout_fraction: float = 0.2  # of each class's strokes, for the held-out accuracy (0: none)
    max_pixels_per_class: int = 100_000  # more labelled pixels of a class are sampled down to this
    threads: int | None = None  # None: every core

    def __post_init__(self) -> None:
        if not 0 <= self.holdout_fraction < 1:
            raise ParameterError(f"holdout_fraction={self.holdout_fraction} must be in [0, 1)")
        if self.max_pixels_per_class < 10:
            raise ParameterError(f"max_pixels_per_class={self.max_pixels_per_class} must be at least 10")


@dataclass
class TrainedPixelClassifier:
    """A trained classifier with what its card reports."""

    classes: tuple[str, ...]
    features: FeatureSpec
    forest: ForestArrays
    settings: ForestSettings
    channel_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    metrics: dict
    importance: list[tuple[str, float]]
    label_counts: dict
    warnings: list[str]
    images: list[str]
    seconds: dict


def strokes_of(labels: np.ndarray) -> np.ndarray:
    """Each labelled pixel's stroke: connected regions of one class (8-connected), numbered from 1."""
    import cv2

    strokes = np.zeros(labels.shape, np.int32)
    offset = 0
    for k in np.unique(labels[labels > 0]):
        n, comp = cv2.connectedComponents((labels == k).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        strokes[comp > 0] = comp[comp > 0] + offset
        offset += n - 1
    return strokes


def _check_inputs(images: Sequence[LabelledImage], classes: Sequence[str]) -> None:
    if len(classes) < 2:
        raise InputError(f"a pixel classifier needs at least two classes, got {list(classes)}; label the "
                         "background too")
    if len(set(classes)) != len(classes):
        raise InputError(f"class names must be distinct, got {list(classes)}")
    if not images:
        raise InputError("no training images: give at least one image with labels")
    channels = {im.image.shape[2] if im.image.ndim == 3 else 1 for im in images}
    if len(channels) > 1:
        raise InputError(f"the training images have different channel counts {sorted(channels)}; a classifier "
                         "needs one kind of image")
    for im in images:
        if im.labels.shape != im.image.shape[:2]:
            raise InputError(f"{im.name}: labels {im.labels.shape} and image {im.image.shape[:2]} differ in size")
        if im.labels.max() > len(classes) or im.labels.min() < 0:
            raise InputError(f"{im.name}: label values must be 0..{len(classes)}, found up to {int(im.labels.max())}")


def _collect(images, spec: FeatureSpec, progress) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labelled pixels' features ``(N, F)``, classes ``(N,)`` (0-based) and global stroke ids ``(N,)``."""
    xs, ys, groups = [], [], []
    offset = 0
    warnings = []
    for i, im in enumerate(images):
        if progress:
            progress("features", i, len(images))
        mask = im.labels > 0
        if not mask.any():
            warnings.append(f"{im.name} has no labelled pixels; it adds nothing")
            continue
        planes = compute_features(im.image, spec)
        xs.append(planes[:, mask].T.copy())
        ys.append(im.labels[mask].astype(np.int32) - 1)
        strokes = strokes_of(im.labels)[mask]
        groups.append(strokes + offset)
        offset += int(strokes.max())
    if progress:
        progress("features", len(images), len(images))
    if not xs:
        raise InputError("none of the images has labelled pixels; draw labels for at least two classes")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups), warnings


def _sample(y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping at most ``cap`` pixels of each class (uniformly sampled)."""
    keep = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        keep.append(idx if len(idx) <= cap else np.sort(rng.choice(idx, cap, replace=False)))
    return np.concatenate(keep)


def _holdout_strokes(y: np.ndarray, groups: np.ndarray, fraction: float, rng) -> np.ndarray | None:
    """A boolean mask of the pixels of held-out strokes (about ``fraction`` of each class's strokes, at
    least one, never all); None when a class has fewer than two strokes."""
    held = np.zeros(len(y), bool)
    for k in np.unique(y):
        strokes = np.unique(groups[y == k])
        if len(strokes) < 2:
            return None
        n = min(len(strokes) - 1, max(1, int(round(fraction * len(strokes)))))
        held |= np.isin(groups, rng.choice(strokes, n, replace=False)) & (y == k)
    return held


def heldout_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, per-class recall and precision and the confusion matrix."""
    n = len(classes)
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    recall = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, c in enumerate(classes)}
    precision = {c: (float(cm[i, i] / cm[:, i].sum()) if cm[:, i].sum() else None) for i, c in enumerate(classes)}
    present = [v for v in recall.values() if v is not None]
    return {"accuracy": float(np.trace(cm) / cm.sum()), "balanced_accuracy": float(np.mean(present)),
            "recall": recall, "precision": precision, "confusion": cm.tolist(), "pixels": int(cm.sum())}


def importance_table(forest, names: Sequence[str]) -> list[tuple[str, float]]:
    """``(feature name, mean decrease in impurity)``, most important first."""
    values = forest.feature_importances_
    order = np.argsort(values)[::-1]
    return [(names[i], float(values[i])) for i in order]


def importance_by_part(table: Sequence[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """The importances summed per channel, per feature kind and per scale (names ``channel/kind/sigma``)."""
    parts: dict[str, dict[str, float]] = {"channel": {}, "feature": {}, "scale": {}}
    for name, value in table:
        channel, kind, sigma = name.split("/")
        kind = kind.removesuffix("_large").removesuffix("_small")
        for part, key in (("channel", channel), ("feature", kind), ("scale", sigma)):
            parts[part][key] = parts[part].get(key, 0.0) + value
    return {p: dict(sorted(d.items(), key=lambda kv: -kv[1])) for p, d in parts.items()}


def label_warnings(counts: dict[str, dict[str, int]]) -> list[str]:
    """Warnings for classes with fewer than MIN_PIXELS labelled pixels or MIN_STROKES strokes."""
    out = []
    for name, c in counts.items():
        if c["pixels"] == 0:
            raise InputError(f"class {name!r} has no labelled pixels; label some of it, or leave the class out")
        if c["pixels"] < MIN_PIXELS or c["strokes"] < MIN_STROKES:
            out.append(f"class {name!r} has only {c['pixels']} labelled pixels in {c['strokes']} stroke(s); label "
                       f"at least {MIN_PIXELS} pixels in {MIN_STROKES} strokes, on different parts of the tissue, "
                       "for a classifier that generalises")
    return out


def train_pixel_classifier(images: Sequence[LabelledImage], classes: Sequence[str], *,
                           options: PixelTrainingOptions = PixelTrainingOptions(),
                           channel_names: Sequence[str] | None = None,
                           progress: ProgressCallback | None = None) -> TrainedPixelClassifier:
    """Train a pixel classifier on the labelled pixels of ``images``; see the module docstring.

    Parameters
    ----------
    images : the training images at the working resolution with their sparse labels.
    classes : the class names; label value ``k`` is ``classes[k - 1]``.
    options : features, forest and evaluation settings.
    channel_names : the images' channel names (for feature names; default ``channel0``, ...).

    Raises
    ------
    InputError : no labels, a class without labels, fewer than two classes, mismatched images.
    """
    classes = tuple(str(c) for c in classes)
    _check_inputs(images, classes)
    n_channels = images[0].image.shape[2] if images[0].image.ndim == 3 else 1
    channel_names = tuple(channel_names or (("red", "green", "blue") if n_channels == 3 else
                                            tuple(f"channel{i}" for i in range(n_channels))))
    names = options.features.names(channel_names)
    started = time.perf_counter()
    x, y, groups, warnings = _collect(images, options.features, progress)
    feature_seconds = time.perf_counter() - started
    counts = {c: {"pixels": int((y == k).sum()), "strokes": int(len(np.unique(groups[y == k])))}
              for k, c in enumerate(classes)}
    warnings += label_warnings(counts)
    rng = np.random.default_rng(options.forest.seed)
    keep = _sample(y, options.max_pixels_per_class, rng)
    x, y, groups = x[keep], y[keep], groups[keep]
    metrics: dict = {"labelled_pixels": counts, "training_pixels": int(len(y))}

    started = time.perf_counter()
    held = _holdout_strokes(y, groups, options.holdout_fraction, rng) if options.holdout_fraction else None
    if held is not None:
        if progress:
            progress("held-out strokes", 0, 1)
        trial = train_forest(x[~held], y[~held], options.forest, threads=options.threads)
        scores = heldout_scores(y[held], trial.predict(x[held]), classes)
        scores["strokes_held_out"] = int(len(np.unique(groups[held])))
        metrics["heldout_strokes"] = scores
        if progress:
            progress("held-out strokes", 1, 1)
    else:
        metrics["heldout_strokes"] = None
        if options.holdout_fraction:
            warnings.append("no held-out-stroke accuracy: every class needs at least two separate strokes")
    heldout_seconds = time.perf_counter() - started
    if progress:
        progress("forest", 0, 1)
    started = time.perf_counter()
    forest = train_forest(x, y, options.forest, threads=options.threads)
    fit_seconds = time.perf_counter() - started
    if progress:
        progress("forest", 1, 1)
    metrics["oob_accuracy"] = float(forest.oob_score_)
    table = importance_table(forest, names)
    metrics["importance_by"] = importance_by_part(table)
    for w in warnings:
        log.warning(w)
    return TrainedPixelClassifier(
        classes=classes, features=options.features, forest=ForestArrays.from_sklearn(forest), settings=options.forest,
        channel_names=channel_names, feature_names=tuple(names), metrics=metrics, importance=table, label_counts=counts,
        warnings=warnings, images=[im.name for im in images],
        seconds={"features": round(feature_seconds, 3), "heldout": round(heldout_seconds, 3),
                 "forest": round(fit_seconds, 3)})
