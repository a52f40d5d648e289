"""Recipe: ``patch-ihc-classifier``, a 64 px patch classifier: background / DAB-negative / DAB-positive tissue.

Data: 64 px patches of the tissue recipe's mosaics (:mod:`dlcore.train.recipes.tissue`).  A patch's
class is the majority of its automatic tissue labels: ``background`` when >= 90% background,
``dab_negative`` / ``dab_positive`` when >= 90% tissue of which < 25% / > 60% is DAB-positive; other
patches (mixed) are left out.  A slide-level score is the mean, over tissue patches, of
P(dab_positive) / (P(dab_positive) + P(dab_negative)) (:func:`slide_score`).
"""
from __future__ import annotations

import numpy as np

from dlcore.train.augment import AugmentSpec
from dlcore.train.data import AnnotatedDataset, Sample
from dlcore.train.recipes import NOMINAL_MPP
from dlcore.train.recipes.tissue import mosaics
from dlcore.train.spec import TrainSpec

NAME = "patch-ihc-classifier"
CLASSES = ("background", "dab_negative", "dab_positive")
PATCH = 64


def patch_class(labels: np.ndarray) -> str | None:
    """The class of a patch from its tissue labels (0/1/2), or None for a mixed patch."""
    n = labels.size
    background = np.count_nonzero(labels == 0) / n
    if background >= 0.9:
        return "background"
    if background > 0.1:
        return None
    positive = np.count_nonzero(labels == 2) / np.count_nonzero(labels)
    return "dab_positive" if positive > 0.6 else "dab_negative" if positive < 0.25 else None


def build_dataset(*, stride: int = 32) -> AnnotatedDataset:
    """Patches of every mosaic (group = its mosaic), mixed patches left out."""
    samples = []
    for m, group, _ in mosaics():
        for y in range(0, m.image.shape[0] - PATCH + 1, stride):
            for x in range(0, m.image.shape[1] - PATCH + 1, stride):
                label = patch_class(m.labels[y:y + PATCH, x:x + PATCH])
                if label:
                    samples.append(Sample(m.image[y:y + PATCH, x:x + PATCH], None, label,
                                          f"{group}[{y}:{y + PATCH}, {x}:{x + PATCH}]", group, NOMINAL_MPP))
    return AnnotatedDataset(tuple(samples), "classification", CLASSES)


def slide_score(proba: np.ndarray, classes=CLASSES) -> float | None:
    """Slide-level DAB positivity: mean over tissue patches of P(pos) / (P(pos) + P(neg)); None without tissue."""
    proba = np.asarray(proba)
    bg, neg, pos = (classes.index(c) for c in CLASSES)
    tissue = proba.argmax(1) != bg
    if not tissue.any():
        return None
    p = proba[tissue]
    return float(np.mean(p[:, pos] / np.maximum(p[:, pos] + p[:, neg], 1e-9)))


def spec(*, quick: bool = False) -> TrainSpec:
    """The training settings of the shipped model (``quick``: a smoke-test version)."""
    from dlcore.train.recipes.tissue import heldout_groups

    return TrainSpec(
        task="classification", name=NAME, epochs=3 if quick else 15, steps_per_epoch=4 if quick else 15,
        batch_size=32, patch_size=PATCH, classifier_width=8, classifier_depth=4, lr=3e-3, val_fraction=0.15,
        test_groups=heldout_groups(), patience=8, augment=AugmentSpec(hed_sigma=0.03, hed_bias=0.005, brightness=0.05,
                                                                  blur_probability=0.2),
        tile_size=512, seed=0, threads=2,
        description="Patch classifier (64 px at nominal 0.5 µm/px) for IHC brightfield: background, DAB-negative "
                    "tissue, DAB-positive tissue; a slide score aggregates tissue patches.",
        training_data="64 px patches (stride 32) of synthetic mosaics made from scikit-image's `immunohistochemistry()` "
                      "image (one real IHC section) on white glass or black margins. Patch classes are AUTOMATIC: the "
                      "majority of colour-deconvolution tissue labels (background >= 90% -> background; tissue >= 90% "
                      "with < 25% / > 60% DAB-positive pixels -> dab_negative / dab_positive; mixed patches left out). "
                      "Training/validation patches come from mosaics of crops outside the bottom-right quadrant of "
                      "the image; test patches only from mosaics of crops inside it.",
        limits="The task is easy by construction (clear-cut colour classes) and the test set is small (the patches of "
               "four mosaics of one quadrant of one image): a perfect test score here does not predict accuracy on "
               "other slides. The classes are stain classes from a colour-deconvolution threshold, not diagnoses; mixed patches "
               "were excluded from training and test, so real accuracy on boundary patches is lower. The slide "
               "decision (mean DAB-positive share of tissue patches, threshold chosen by the user) was not validated "
               "on real positive/negative slides. One source image, one stain.",
        reproduce="python -m dlcore.train.recipes classifier",
        tags=("classification", "patch-classification", "ihc", "dab", "brightfield", "pytorch", "dlcore"))
