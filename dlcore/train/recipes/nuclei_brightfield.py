"""Recipe: ``nuclei-brightfield-unet``, nuclei instances on H&E at 0.5 µm/px (20x).

One brightfield model, meant for both stains because both show nuclei by haematoxylin, though only real
H&E outlines exist offline: it learns from MoNuSeg's hand-drawn H&E nuclei
(:mod:`dlcore.train.recipes.monuseg`), a third of the training tiles re-stained as IHC with the same
exact masks (eosin removed, a paler counterstain, DAB in a random share of nuclei or in the cytoplasm:
:func:`dlcore.train.restain.as_ihc`), under strong stain jitter (HED), blur, brightness and ±25 % zoom.
It is validated on H&E only: on scikit-image's real IHC section it outlines nuclei smaller than they
are, and heavier IHC re-staining taught it that brown cytoplasm is nuclear (BENCHMARKS.md), so
``dlcore run nuclei`` runs the classical pipeline on slides that show DAB
(:func:`dlcore.tasks.auto.brightfield_stain`).

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
                                         blur_sigma=1.2, scale_jitter=0.25, ihc_probability=0.33),
        boundary_width=1, min_size=30, tile_size=512, halo=32, seed=0, threads=2, max_seconds=60 if quick else 2700,
        description="Nuclei instance segmentation for brightfield H&E at 0.5 µm/px (20x): a U-Net predicts "
                    "foreground and nucleus boundaries, a seeded watershed separates touching nuclei.",
        training_data=f"{SOURCE}: the 13 training images with complete outlines in the copy at "
                      "github.com/ykrmm/monuseg @ 93a696d (of the challenge's 30; 4,949 hand-drawn nuclei, 7 organs, "
                      "TCGA H&E at 40x), resampled from ~0.25 to 0.5 µm/px. A third of the training tiles are "
                      "re-stained as IHC (eosin removed, counterstain 40-100 %, DAB in a random share of nuclei, in "
                      "the cytoplasm of random regions, both, or none) with the same exact masks; strong HED stain jitter, blur, brightness and ±25 % zoom. 4 of the 13 "
                      "images are validation (early stopping, watershed settings). Test: the 14 MoNuSeg test "
                      "images (6,697 nuclei, incl. 2 organs absent from training), never used for training or "
                      "stopping.",
        limits="Trained on 13 real H&E images: other scanners, stains and tissues (e.g. dense lymphocytes, "
               "very pale or elongated stromal nuclei) may do worse; check on your own slides. Validated on H&E "
               "only: there is no real annotated IHC image, and on scikit-image's real IHC section it outlines "
               "the nuclei smaller than they are (its matches with the classical pipeline's nuclei at IoU 0.5: "
               "F1 0.11), so 'dlcore run nuclei' runs the classical pipeline on slides that show DAB; name "
               "the model to run it on IHC anyway. The weights "
               "derive from CC BY-NC-SA 4.0 data: non-commercial use, share alike.",
        reproduce="python -m dlcore.train.recipes nuclei-brightfield --data MONUSEG_COPY",
        tags=("nuclei", "instance-segmentation", "he", "ihc", "brightfield", "pytorch", "dlcore"),
        license="CC-BY-NC-SA-4.0")
