"""Recipe: ``tissue-ihc-unet``, semantic tissue segmentation: background / DAB-negative / DAB-positive.

Data: synthetic mosaics of 128 px crops of scikit-image's IHC image (flipped, rotated) cut into
irregular islands on white glass or a black scanner margin.  Labels: background by construction;
in tissue, DAB-positive where the smoothed DAB optical density exceeds its k-means threshold
(colour deconvolution), else DAB-negative.  Training mosaics use crops outside the bottom-right
quadrant, test mosaics crops inside it.
"""
from __future__ import annotations

import numpy as np

from dlcore.train.augment import AugmentSpec
from dlcore.train.data import AnnotatedDataset, Sample
from dlcore.train.recipes import NOMINAL_MPP, dab_labels, heldout_corners, ihc_image, make_mosaic, training_corners
from dlcore.train.spec import TrainSpec

NAME = "tissue-ihc-unet"
CLASSES = ("dab_negative_tissue", "dab_positive_tissue")


def mosaics(*, n_train: int = 24, n_test: int = 4, seed: int = 0):
    """``[(Mosaic, group, is_test)]`` built from disjoint parts of the IHC image."""
    image = ihc_image()
    labels = dab_labels(image)
    rng = np.random.default_rng(seed)
    out = [(make_mosaic(image, labels, training_corners(), rng), f"train-mosaic-{i}", False) for i in range(n_train)]
    out += [(make_mosaic(image, labels, heldout_corners(), rng), f"test-mosaic-{i}", True) for i in range(n_test)]
    return out


def build_dataset() -> AnnotatedDataset:
    """One sample (and group) per mosaic."""
    samples = [Sample(m.image, m.labels, None, f"synthetic mosaic {group} of skimage IHC crops", group, NOMINAL_MPP)
               for m, group, _ in mosaics()]
    return AnnotatedDataset(tuple(samples), "semantic", CLASSES)


def heldout_groups() -> tuple[str, ...]:
    return tuple(group for _, group, is_test in mosaics() if is_test)


def spec(*, quick: bool = False) -> TrainSpec:
    """The training settings of the shipped model (``quick``: a smoke-test version)."""
    return TrainSpec(
        task="semantic", name=NAME, epochs=3 if quick else 24, steps_per_epoch=4 if quick else 15, batch_size=8,
        patch_size=128, channels=(8, 16, 32, 64), lr=3e-3, val_fraction=0.15, test_groups=heldout_groups(),
        patience=8, augment=AugmentSpec(hed_sigma=0.03, hed_bias=0.005, brightness=0.05, blur_probability=0.2),
        tile_size=512, halo=32, seed=0, threads=2,
        description="Tissue segmentation for IHC brightfield: background (glass or black margin), DAB-negative "
                    "tissue, DAB-positive tissue.",
        training_data="Synthetic 256 x 256 mosaics of 128 px crops of scikit-image's `immunohistochemistry()` image "
                      "(one real IHC section; nominal 0.5 µm/px), flipped/rotated, cut into irregular islands on white "
                      "glass (70%) or a black margin (30%). Labels are AUTOMATIC: background by construction; in "
                      "tissue, DAB-positive where the smoothed (sigma 3) DAB optical density from colour "
                      "deconvolution exceeds its k-means threshold, else DAB-negative. Training/validation mosaics "
                      "use crops outside the bottom-right quadrant of the image; the test mosaics only crops inside it.",
        limits="The DAB classes reproduce a colour-deconvolution threshold, not a pathologist's reading of "
               "epithelium or stroma. Backgrounds are synthetic (flat glass, black margin): real slides with "
               "dust, pen marks, folds or bubbles were never seen. One source image, one stain; re-train for others.",
        reproduce="python -m dlcore.train.recipes tissue",
        tags=("tissue", "semantic-segmentation", "ihc", "dab", "brightfield", "pytorch", "dlcore"))
