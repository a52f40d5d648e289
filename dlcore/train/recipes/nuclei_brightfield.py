"""Recipe: ``nuclei-brightfield-unet``, nuclei instances on H&E and IHC at 0.5 µm/px (20x).

One model for both stains, because both show nuclei by haematoxylin and only real H&E outlines exist
offline: it learns from MoNuSeg's hand-drawn H&E nuclei (:mod:`dlcore.train.recipes.monuseg`), a
share (45 %) of the training tiles re-stained as IHC with the same exact masks (eosin removed, a paler
counterstain, DAB in a random share of nuclei or in the cytoplasm and partly over the nuclei:
:func:`dlcore.train.restain.as_ihc`), under strong stain jitter (HED), blur,
brightness and ±25 % zoom.

Method: a U-Net predicts each pixel's foreground and nucleus-boundary probability; a seeded
watershed (seeds: foreground cores away from boundaries) separates touching nuclei
(:mod:`dlcore.models.instances`, ``fg_boundary_watershed``), in the engine's workers.

Split: of the 13 complete MoNuSeg training images, 9 train and 4 validate (early stopping and the
watershed settings: ``val_fraction`` counts the test groups too); the 14 MoNuSeg *test* images are the
held-out test, never seen in training, stopping or tuning.
"""
from __future__ import annotations

from pathlib import Path

from dlcore.train.augment import AugmentSpec
from dlcore.train.data import AnnotatedDataset
from dlcore.train.recipes.monuseg import SOURCE, read_monuseg
from dlcore.train.spec import TrainSpec

NAME = "nuclei-brightfield-unet"
MPP = 0.5
TEST_PREFIX = "test-"


def build_dataset(data: Path | None = None) -> AnnotatedDataset:
    """MoNuSeg training images (a group each) and its test images (groups ``test-NAME``), at 0.5 µm/px."""
    if data is None:
        from dlcore.errors import ParameterError

        raise ParameterError(f"{NAME} trains on MoNuSeg: give its folder with --data (see dlcore.train.recipes.monuseg)")
    samples = read_monuseg(data, "train", mpp=MPP) + read_monuseg(data, "test", mpp=MPP, group_prefix=TEST_PREFIX)
    return AnnotatedDataset(tuple(samples), "instances", ("nucleus",))


def spec(*, quick: bool = False, dataset: AnnotatedDataset | None = None) -> TrainSpec:
    """The training settings of the shipped model (``quick``: a smoke-test version)."""
    tests = tuple(sorted({g for g in (dataset.groups if dataset else ()) if g.startswith(TEST_PREFIX)}))
    return TrainSpec(
        task="instances", name=NAME, epochs=2 if quick else 20, steps_per_epoch=3 if quick else 100, batch_size=8,
        patch_size=128, channels=(16, 32, 64), lr=3e-3, val_fraction=0.15, test_groups=tests or None,
        patience=20, augment=AugmentSpec(hed_sigma=0.1, hed_bias=0.02, brightness=0.1, blur_probability=0.3,
                                         blur_sigma=1.2, scale_jitter=0.25, ihc_probability=0.45),
        boundary_width=1, min_size=30, tile_size=512, halo=32, seed=0, threads=2, max_seconds=60 if quick else 2700,
        description="Nuclei instance segmentation for brightfield H&E and IHC at 0.5 µm/px (20x): a U-Net "
                    "predicts foreground and nucleus boundaries, a seeded watershed separates touching nuclei.",
        training_data=f"{SOURCE}: the 13 training images with complete outlines in the copy at "
                      "github.com/ykrmm/monuseg @ 93a696d (of the challenge's 30; 4,949 hand-drawn nuclei, 7 organs, "
                      "TCGA H&E at 40x), resampled from ~0.25 to 0.5 µm/px. 45 % of the training tiles are "
                      "re-stained as IHC (eosin removed, counterstain 20-100 %, DAB in a random share of nuclei or "
                      "in the cytoplasm, partly over the nuclei) with the "
                      "same exact masks; strong HED stain jitter, blur, brightness and ±25 % zoom. 4 of the 13 "
                      "images are validation (early stopping, watershed settings). Test: the 14 MoNuSeg test "
                      "images (6,697 nuclei, incl. 2 organs absent from training), never used for training or "
                      "stopping.",
        limits="Trained on 13 real H&E images: other scanners, stains and tissues (e.g. dense lymphocytes, "
               "very pale or elongated stromal nuclei) may do worse; check on your own slides. There is no real "
               "annotated IHC image: IHC tolerance comes from re-stained H&E and is measured only on re-stained "
               "held-out images and against the classical pipeline on scikit-image's IHC image. The weights "
               "derive from CC BY-NC-SA 4.0 data: non-commercial use, share alike.",
        reproduce="python -m dlcore.train.recipes nuclei-brightfield --data MONUSEG_COPY",
        tags=("nuclei", "instance-segmentation", "he", "ihc", "brightfield", "pytorch", "dlcore"),
        license="CC-BY-NC-SA-4.0")
