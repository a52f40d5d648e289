"""Recipe: ``nuclei-fluorescence-unet``, nuclei instances in one nuclear-stain channel (DAPI/Hoechst-like).

There is no real annotated fluorescence training set offline, so the training images are rendered
from real annotated H&E (:func:`dlcore.train.restain.as_fluorescence`): the haematoxylin optical
density of MoNuSeg's images (:mod:`dlcore.train.recipes.monuseg`) carries real chromatin texture,
shapes and crowding and becomes an emission image (offset, gain, gamma, photon and read noise, 8 bit
and 10–16 bit; each nucleus's brightness scaled on its own, as DNA content makes it vary), with
MoNuSeg's hand-drawn outlines as exact masks.  Cultured cells' nuclei are larger
than tissue nuclei, so every image is used at two pixel sizes (0.5 and 0.3 µm/px: nuclei of about
10–30 px), with ±30 % zoom on top.  Input is scaled by the slide's 1st and 99.8th percentiles, so 8-
and 16-bit images (any bit depth used) look alike to the network.

Split: the 13 complete MoNuSeg training images train (2 validate); the test is the one real
annotated fluorescence image available offline, the DSB 2018 crop the ``stardist`` package ships
(``stardist/data/images/img2d.tif`` + ``mask2d.tif``, 512 x 512, 125 nuclei; pixel size not given,
used at a nominal 0.5 µm/px), never used for training.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dlcore.train.augment import AugmentSpec
from dlcore.train.data import AnnotatedDataset, Sample
from dlcore.train.recipes.monuseg import SOURCE, read_monuseg
from dlcore.train.spec import TrainSpec

NAME = "nuclei-fluorescence-unet"
MPP = 0.5
SCALES = (0.5, 0.3)  # µm/px at which each H&E image is rendered
TEST_GROUP = "test-dsb2018-stardist"


def stardist_test_image() -> Sample:
    """The DSB 2018 fluorescence crop and its nuclei mask from the installed ``stardist`` package."""
    import importlib.util

    import tifffile

    from dlcore.errors import InputError

    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the fluorescence test image comes from the stardist package: pip install stardist")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
    image, mask = tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")
    return Sample(image[..., None], mask.astype(np.int32), None, "stardist/data/images/img2d.tif (DSB 2018)",
                  TEST_GROUP, MPP)


def fluorescence_samples(he_samples: list[Sample], seed: int) -> list[Sample]:
    """Two renderings (8 bit and 16 bit) of each H&E sample, with its labels and group."""
    from dlcore.train.restain import as_fluorescence

    rng = np.random.default_rng(seed)
    return [Sample(as_fluorescence(s.image, rng, dtype=dtype, labels=s.mask), s.mask, None, f"{s.source} as fluorescence "
                   f"({np.dtype(dtype).name})", s.group, MPP) for s in he_samples for dtype in (np.uint8, np.uint16)]


def build_dataset(data: Path | None = None) -> AnnotatedDataset:
    """Fluorescence renderings of MoNuSeg's training images at two scales, and the real test image."""
    if data is None:
        from dlcore.errors import ParameterError

        raise ParameterError(f"{NAME} renders MoNuSeg: give its folder with --data (see dlcore.train.recipes.monuseg)")
    he = [s for mpp in SCALES for s in read_monuseg(data, "train", mpp=mpp)]
    return AnnotatedDataset(tuple(fluorescence_samples(he, seed=0) + [stardist_test_image()]), "instances", ("nucleus",))


def spec(*, quick: bool = False, dataset: AnnotatedDataset | None = None) -> TrainSpec:
    """The training settings of the shipped model (``quick``: a smoke-test version)."""
    return TrainSpec(
        task="instances", name=NAME, epochs=2 if quick else 25, steps_per_epoch=3 if quick else 100, batch_size=8,
        patch_size=128, channels=(16, 32, 64), lr=3e-3, val_fraction=0.15, test_groups=(TEST_GROUP,),
        patience=25, augment=AugmentSpec(hed_sigma=0.0, hed_bias=0.0, brightness=0.2, blur_probability=0.3,
                                         blur_sigma=1.5, scale_jitter=0.3),
        normalization="percentile", boundary_width=1, min_size=30, tile_size=512, halo=32, seed=0, threads=2,
        max_seconds=60 if quick else 1800,
        description="Nuclei instance segmentation for one fluorescence nuclear-stain channel (DAPI/Hoechst-like, "
                    "8 or 16 bit) at 0.5 µm/px: a U-Net predicts foreground and nucleus boundaries, a seeded "
                    "watershed separates touching nuclei.",
        training_data=f"Rendered from real annotated H&E, {SOURCE}: the haematoxylin optical density of the 13 "
                      "complete training images (github.com/ykrmm/monuseg @ 93a696d; 4,949 hand-drawn nuclei) made "
                      "into nuclear-fluorescence images (offset, gain, gamma, Poisson and read noise; one 8-bit and "
                      "one 10-16-bit rendering each; each nucleus's brightness scaled on its own, log-normal, a few "
                      "2-4 times brighter, as DNA content varies), at 0.5 and 0.3 µm/px, with the hand-drawn outlines as exact "
                      "masks; ±30 % zoom, brightness and blur. 2 of the 13 images validate. Test: the real DSB 2018 "
                      "fluorescence crop shipped by the stardist package (512 x 512, 125 annotated nuclei), never "
                      "used in training.",
        limits="No real fluorescence image was used in training; the one real test image is small (125 nuclei) "
               "and its pixel size is unknown (taken as 0.5 µm/px). Expect weaker results on very dim, "
               "saturated or out-of-focus images, and on nuclei much larger than 30 px at 0.5 µm/px; set the "
               "slide's pixel size correctly. The weights derive from CC BY-NC-SA 4.0 data.",
        reproduce="python -m dlcore.train.recipes nuclei-fluorescence --data MONUSEG_COPY",
        tags=("nuclei", "instance-segmentation", "fluorescence", "dapi", "pytorch", "dlcore"),
        license="CC-BY-NC-SA-4.0")
