"""Classifying segmented objects from their measurements.

An :class:`ObjectClassifier` is a multinomial logistic regression over a few shape and intensity
features of an object (:data:`FEATURES`), stored inline in a package's ``config.dlcore`` as::

    object_classifier:
      type: logistic
      classes: [lymphocyte, tumour_nucleus]
      features: [area, perimeter, circularity, eccentricity, mean_0, mean_1, mean_2, std_grey]
      mean: [...]           # feature standardisation
      scale: [...]
      coef: [[...], [...]]  # (classes, features); one row for two classes (sklearn's binary form)
      intercept: [...]
      colors: [[r, g, b], ...]

:func:`fit_object_classifier` makes that block from labelled objects (scikit-learn).  Instance tasks
call :meth:`ObjectClassifier.classify` for every object they find (``Task.classify_object``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dlcore.errors import ModelError

FEATURES = ("area", "perimeter", "circularity", "eccentricity", "mean_0", "mean_1", "mean_2", "std_grey")


def object_features(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of one object (``mask`` boolean, ``image`` the ``(Y, X, C)`` pixels under it)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    area = float(mask.sum())
    if area == 0:
        return np.zeros(len(FEATURES), np.float64)
    perimeter = float((mask & ~ndi.binary_erosion(mask, border_value=0)).sum())
    circularity = 4 * np.pi * area / max(perimeter, 1.0) ** 2
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.vstack([ys, xs])) if area > 2 else np.eye(2)
    eig = np.sort(np.linalg.eigvalsh(np.atleast_2d(cov)))
    eccentricity = float(np.sqrt(1 - eig[0] / eig[1])) if eig[1] > 0 else 0.0
    pixels = np.asarray(image, np.float64)[mask]
    if pixels.ndim == 1:
        pixels = pixels[:, None]
    means = [float(pixels[:, i].mean()) if i < pixels.shape[1] else 0.0 for i in range(3)]
    std_grey = float(pixels.mean(axis=1).std())
    return np.array([area, perimeter, circularity, eccentricity, *means, std_grey], np.float64)


@dataclass(frozen=True)
class ObjectClassifier:
    """A logistic-regression object classifier (see the module docstring)."""

    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def from_config(cls, block: dict) -> "ObjectClassifier":
        """Build it from the ``object_classifier`` block; raises ModelError when it is malformed."""
        if block.get("type") != "logistic":
            raise ModelError(f"object_classifier.type={block.get('type')!r}: dlcore knows 'logistic'")
        if tuple(block.get("features", FEATURES)) != FEATURES:
            raise ModelError(f"object_classifier.features must be {list(FEATURES)}")
        try:
            clf = cls(classes=tuple(block["classes"]), mean=np.asarray(block["mean"], float),
                      scale=np.asarray(block["scale"], float), coef=np.atleast_2d(np.asarray(block["coef"], float)),
                      intercept=np.asarray(block["intercept"], float).ravel())
        except KeyError as exc:
            raise ModelError(f"object_classifier lacks {exc.args[0]!r}") from exc
        rows = 1 if len(clf.classes) == 2 else len(clf.classes)
        if clf.coef.shape != (rows, len(FEATURES)) or clf.intercept.shape != (rows,) or clf.mean.shape != (len(FEATURES),):
            raise ModelError(f"object_classifier: coef must be {rows}x{len(FEATURES)} for {len(clf.classes)} classes")
        return clf

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for ``(N, features)``."""
        z = (np.atleast_2d(features) - self.mean) / self.scale @ self.coef.T + self.intercept
        if len(self.classes) == 2:
            p1 = 1 / (1 + np.exp(-z[:, 0]))
            return np.stack([1 - p1, p1], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def classify(self, mask: np.ndarray, image: np.ndarray) -> str:
        """The class name of one object."""
        return self.classes[int(np.argmax(self.probabilities(object_features(mask, image))[0]))]

    def describe(self) -> dict:
        return {"type": "logistic", "classes": list(self.classes), "features": list(FEATURES)}


def fit_object_classifier(masks: Sequence[np.ndarray], images: Sequence[np.ndarray], labels: Sequence[str], *,
                          colors: Sequence[Sequence[int]] | None = None, c: float = 1.0) -> dict:
    """Fit a classifier on labelled objects; returns the ``object_classifier`` block for ``config.dlcore``.

    Parameters
    ----------
    masks, images
        Each object's boolean mask and the ``(Y, X, C)`` pixels under its bounding box.
    labels
        Each object's class name (at least two classes).
    colors
        An RGB colour per class (sorted class names order); default: a palette.
    c
        Inverse regularisation strength.
    """
    from sklearn.linear_model import LogisticRegression

    from dlcore.models.spec import default_colors

    x = np.stack([object_features(m, i) for m, i in zip(masks, images)])
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ModelError("an object classifier needs objects of at least two classes")
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    model = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, [classes.index(v) for v in labels])
    return {"type": "logistic", "classes": classes, "features": list(FEATURES), "mean": mean.tolist(),
            "scale": scale.tolist(), "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
            "colors": [list(map(int, col)) for col in colors] if colors else default_colors(len(classes))}
