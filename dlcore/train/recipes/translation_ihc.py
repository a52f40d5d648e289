"""Recipe: ``translation-ihc-dab``, image translation: the DAB stain predicted from the haematoxylin stain.

Data: scikit-image's ``immunohistochemistry()`` (one real 512 x 512 IHC section).  Input: its
haematoxylin concentration by colour deconvolution (``rgb2hed``, the function the task runs on slides,
:mod:`dlcore.restore.transforms`), percentile-normalised over the whole image as the engine does per
slide.  Target: its DAB concentration divided by the 99.9th percentile of the training columns and
clipped to [0, 1].  The image is cut into vertical strips: the left 60 % trains, the next 10 % decides
early stopping, the right 30 % is held out (never in a training patch, never used to stop).  The
held-out figures are given beside three trivial predictors fitted on the training columns (the mean, a
linear regression from H, and the best per-pixel function of H: a 64-bin lookup), so they mean
something.

Run with ``python -m dlcore.train.recipes translation-ihc [--registry DIR] [--quick]``; the shipped
package is ``models/translation-ihc-dab``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

NAME = "translation-ihc-dab"
TEST_FRACTION = 0.3
VAL_FRACTION = 0.1
DAB_PERCENTILE = 99.9
INPUT_TRANSFORM = {"type": "hed", "stain": "haematoxylin"}
NOMINAL_MPP = 0.5  # the image carries no pixel size; dlcore's nominal value for it (see the other recipes)


def ihc_image() -> np.ndarray:
    """scikit-image's IHC image, ``(512, 512, 3)`` uint8."""
    from skimage import data

    return data.immunohistochemistry()


def heldout_start(width: int) -> int:
    """The first column of the held-out strip (the right ``TEST_FRACTION`` of the image)."""
    return width - int(round(width * TEST_FRACTION))


def dab_scale(image: np.ndarray) -> float:
    """The DAB concentration mapped to 1: the 99.9th percentile over the training columns only."""
    from dlcore.restore.transforms import hed_stain

    return float(np.percentile(hed_stain(image, "dab")[:, :heldout_start(image.shape[1])], DAB_PERCENTILE))


def source_and_target(image: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(haematoxylin (Y, X, 1), DAB scaled to [0, 1] (Y, X, 1))``, float32, of an 8-bit RGB IHC image."""
    from dlcore.restore.transforms import hed_stain, network_input

    scale = dab_scale(image) if scale is None else scale
    source = network_input(image, INPUT_TRANSFORM)
    target = np.clip(hed_stain(image, "dab") / scale, 0, 1).astype(np.float32)[..., None]
    return source, target


def build_split(image: np.ndarray | None = None):
    """The recipe's :class:`~dlcore.restore.data.Split` (training | validation | held-out strips)."""
    from dlcore.restore.data import ImagePair, prepare_images, strip_split

    image = ihc_image() if image is None else image
    source, target = source_and_target(image)
    prepared = prepare_images([ImagePair("immunohistochemistry", source, target)], mode="translate",
                              target_normalization="none")[0]
    return strip_split(prepared, val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION, min_width=16)


def options(*, quick: bool = False):
    """The training settings of the shipped model (``quick``: a smoke test)."""
    from dlcore.restore.training import ImageTrainingOptions

    return ImageTrainingOptions(
        epochs=2 if quick else 40, steps_per_epoch=3 if quick else 20, batch_size=16, patch_size=64, lr=3e-3,
        loss="l1+ssim", channels=(8, 16, 32, 64), norm="batch", final_activation="sigmoid",
        target_normalization="none", patience=10, seed=0, threads=2)


def heldout_through_task(task, image: np.ndarray | None = None) -> dict:
    """The held-out figures recomputed through a loaded task (as the engine runs it): normalisation from
    the whole image (``prepare``), the held-out strip predicted on its own, compared with its DAB."""
    from dlcore.restore.metrics import image_metrics

    image = ihc_image() if image is None else image
    x0 = heldout_start(image.shape[1])
    _, target = source_and_target(image)
    task = task.prepare([image])
    prediction = task.predict([image[:, x0:]])[0]
    return image_metrics(prediction, np.moveaxis(target[:, x0:], -1, 0), data_range=1.0)


NOTES = """## What the figures mean

The haematoxylin channel of a colour deconvolution is not an independent acquisition: fixed stain vectors
leave crosstalk. But a per-pixel function of H (the lookup baseline above) explains almost none of the
DAB, so the network uses spatial context. In this section the DAB stains the epithelium (cell membranes
and cytoplasm), and epithelium is recognisable in H by its nuclei: the network learned where epithelium
is and paints DAB there (see `report/error_map_1.png`: the largest errors are on the brightest membranes).
It predicts a tissue type, not a stain. This model demonstrates dlcore's translation pipeline (training,
held-out QC, packaging, tiled prediction) on real tissue; it is not evidence that DAB staining can be
predicted from a haematoxylin-only slide.

"""

LIMITS = """One 512 x 512 section (scikit-image's `immunohistochemistry()`), one scanner, one DAB antibody; the
held-out strip is from the same section. Colour deconvolution uses fixed stain vectors: another stain
batch shifts H and the prediction. It needs 8-bit RGB brightfield input. Do not use its output as a
measurement of DAB: measure DAB from the DAB channel."""

TRAINING_DATA = (  # {columns}: the split's strips
    "scikit-image's `immunohistochemistry()` (one real 512 x 512 IHC section; nominal 0.5 µm/px). Input: its "
    "haematoxylin concentration by colour deconvolution (scikit-image `rgb2hed`), normalised by the image's 1st and "
    "99.8th percentiles. Target: its DAB concentration divided by the 99.9th percentile of the training columns "
    "and clipped to [0, 1]. Vertical strips: columns {columns}.")


def _columns(split) -> str:
    c = split.notes["columns"]
    return (f"{c['train'][0]}-{c['train'][1]} train, {c['val'][0]}-{c['val'][1]} validation (early stopping), "
            f"{c['test'][0]}-{c['test'][1]} held out")


def run(*, registry: Path | None = None, quick: bool = False, data: Path | None = None) -> int:
    """Train, evaluate against the baselines, write the package into ``registry`` and print the figures."""
    from dlcore.config import Config, load_config
    from dlcore.models.registry import load_task
    from dlcore.progress import LineProgress
    from dlcore.restore.metrics import evaluate
    from dlcore.restore.package import register_image_model
    from dlcore.restore.training import train_image_model

    if data is not None:
        raise SystemExit("recipe translation-ihc builds its own data; it takes no --data")
    started = time.monotonic()
    image = ihc_image()
    split = build_split(image)
    trained = train_image_model(split, mode="translate", options=options(quick=quick),
                                progress=LineProgress(interval=15))
    evaluation = evaluate(trained, data_range=1.0)
    registry = Path(registry or load_config().models_dir)
    source, _ = source_and_target(image)
    folder = register_image_model(
        trained, registry, name=NAME + ("-quick" if quick else ""), example=source, output_channels=["DAB"],
        evaluation=evaluation, mpp=NOMINAL_MPP, tile_size=512, halo=32, input_transform=INPUT_TRANSFORM,
        description="Image translation for IHC brightfield: the DAB stain (0-1) predicted from the haematoxylin "
                    "stain of colour deconvolution (a demonstration model).",
        training_data=TRAINING_DATA.format(columns=_columns(split)),
        reproduce="python -m dlcore.train.recipes translation-ihc",
        limits=LIMITS, notes=NOTES, metrics_extra={"dab_scale": dab_scale(image), "dab_percentile": DAB_PERCENTILE},
        tags=["image-translation", "virtual-staining", "ihc", "dab", "brightfield", "pytorch", "dlcore"],
        license="BSD-3-Clause")
    h = trained.history
    print(f"translation-ihc: {folder} in {time.monotonic() - started:.0f} s (training {h['seconds']:.0f} s, "
          f"{h['epochs_run']} epochs, kept {h['best_epoch'] + 1}); columns {_columns(split)}")
    print("  held-out strip (never trained on):  PSNR dB   SSIM  Pearson r  NRMSE")
    for predictor, m in evaluation.summary.items():
        print(f"    {predictor:<32} {m['psnr']:7.2f} {m['ssim']:6.3f} {m['pearson_r']:9.3f} {m['nrmse']:6.3f}")
    task = load_task(folder.name, {"device": "cpu"}, config=Config(models_dir=registry, device="cpu"))
    check = heldout_through_task(task, image)
    print(f"  through the package's task: PSNR {check['psnr']:.2f} dB, SSIM {check['ssim']:.3f}, "
          f"Pearson r {check['pearson_r']:.3f}")
    return 0
