"""Recipe: ``nuclei-ihc-unet``, nuclei instances (foreground + boundary U-Net and watershed).

Data: scikit-image's IHC image.  Labels: dlcore's classical nuclei pipeline run on the whole image
(haematoxylin by colour deconvolution, Gaussian sigma 3, k-means threshold, watershed, objects
>= 60 px): an automatic reference, not a manual one.  Training and validation use the twelve
128 px blocks outside the bottom-right quadrant; the quadrant (256 x 256 px) is the test image.
"""
from __future__ import annotations

from dlcore.train.augment import AugmentSpec
from dlcore.train.data import AnnotatedDataset, Sample
from dlcore.train.recipes import BLOCK, HELD_OUT, NOMINAL_MPP, ihc_image, training_blocks
from dlcore.train.spec import TrainSpec

NAME = "nuclei-ihc-unet"


def build_dataset() -> AnnotatedDataset:
    """Training blocks (one group each) and the held-out quadrant (group ``held-out-quadrant``)."""
    from dlcore.tasks.classical import ClassicalNuclei

    image = ihc_image()
    labels = ClassicalNuclei().prepare([image]).segment(image)
    samples = [Sample(image[y:y + BLOCK, x:x + BLOCK], labels[y:y + BLOCK, x:x + BLOCK], None,
                      f"skimage.data.immunohistochemistry()[{y}:{y + BLOCK}, {x}:{x + BLOCK}]", f"block-{y}-{x}",
                      NOMINAL_MPP) for y, x in training_blocks()]
    samples.append(Sample(image[HELD_OUT], labels[HELD_OUT], None,
                          "skimage.data.immunohistochemistry()[256:512, 256:512]", "held-out-quadrant", NOMINAL_MPP))
    return AnnotatedDataset(tuple(samples), "instances", ("nucleus",))


def spec(*, quick: bool = False) -> TrainSpec:
    """The training settings of the shipped model (``quick``: a smoke-test version)."""
    return TrainSpec(
        task="instances", name=NAME, epochs=3 if quick else 15, steps_per_epoch=4 if quick else 20, batch_size=8,
        patch_size=96, channels=(16, 32, 64), lr=3e-3, val_fraction=0.15, test_groups=("held-out-quadrant",),
        patience=6, augment=AugmentSpec(hed_sigma=0.05, hed_bias=0.01, brightness=0.05, blur_probability=0.2),
        boundary_width=2, min_size=30, tile_size=512, halo=32, seed=0, threads=2,
        description="Nuclei instance segmentation for IHC/H&E brightfield (foreground + boundary U-Net, "
                    "watershed post-processing).",
        training_data="scikit-image's `immunohistochemistry()` image (one real 512 x 512 IHC section, "
                      "haematoxylin + DAB; nominal 0.5 µm/px). Labels are AUTOMATIC: dlcore's classical nuclei "
                      "pipeline (colour deconvolution, Gaussian sigma 3, k-means threshold, watershed, objects >= "
                      "60 px), not manual annotations. Train/validation: the twelve 128 px blocks outside the "
                      "bottom-right quadrant; test: that quadrant (256 x 256 px), never seen in training.",
        limits="The reference is the classical pipeline, so the test metrics measure agreement with it, not with "
               "a pathologist; the model inherits its errors (merged or split nuclei, faint nuclei missed). "
               "Trained on a single IHC image: expect weaker results on other stains, scanners and "
               "magnifications. Pixel size is nominal (the source image has none).",
        reproduce="python -m dlcore.train.recipes nuclei", tags=("nuclei", "instance-segmentation", "ihc", "he",
                                                                 "brightfield", "pytorch", "dlcore"))
