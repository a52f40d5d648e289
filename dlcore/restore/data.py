"""Training images of prediction models: reading them, normalising them, splitting them, patches.

Two layouts on disk:

- **Noise2Void** (``n2v``): a folder of noisy images (PNG or TIFF; 2-D, or ``(Y, X, C)``) — the folder
  itself, or its ``images/`` sub-folder;
- **CARE / translation** (``care``, ``translate``): paired folders ``low/`` + ``high/`` or ``source/`` +
  ``target/`` (or any two given by name), the images of a pair matched by file stem and of the same
  height and width.

Every image is normalised on its own (as CSBDeep does): per channel, its 1st percentile goes to 0 and
its 99.8th to 1, ``(x - low) / (high - low + 1e-6)``, the formula of bioimage.io's ``scale_range`` step
the package declares, so that a model sees at inference what it saw in training.  The statistics are
recorded.  Targets are normalised the same way, or kept as they are (``target_normalization="none"``,
for targets already on a known scale, e.g. a stain concentration scaled to 0-1).

The held-out split is by image; with a single image, by vertical strips of it (train | validation |
test, left to right), so that no held-out pixel is ever in a training patch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dlcore.errors import InputError, ParameterError

MODES = ("n2v", "care", "translate")
PAIRED_FOLDERS = (("low", "high"), ("source", "target"))
TARGET_NORMALIZATIONS = ("percentile", "none")
PERCENTILES = (1.0, 99.8)
EPS = 1e-6  # as bioimage.io's scale_range
MIN_HELDOUT = 11  # narrowest validation or test strip: SSIM's window


@dataclass(frozen=True)
class ImagePair:
    """One training image: ``source`` ``(Y, X, C)`` as read, and its ``target`` (None for Noise2Void)."""

    name: str
    source: np.ndarray
    target: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedImage:
    """An image normalised for training: float32 ``(C, Y, X)`` arrays and the statistics used.

    Attributes
    ----------
    name : where it comes from (file name, plus ``[x0:x1]`` for a strip).
    source : the network input, normalised.
    target : what the network should predict, normalised (for Noise2Void: ``source`` itself).
    source_low, source_high : per-channel percentiles of the whole source image.
    target_low, target_high : the same for the target (0 and 1 when it is kept as it is).
    dtype : the source's pixel type as read.
    """

    name: str
    source: np.ndarray
    target: np.ndarray
    source_low: tuple[float, ...]
    source_high: tuple[float, ...]
    target_low: tuple[float, ...]
    target_high: tuple[float, ...]
    dtype: str

    @property
    def height(self) -> int:
        return int(self.source.shape[1])

    @property
    def width(self) -> int:
        return int(self.source.shape[2])

    def columns(self, x0: int, x1: int) -> "PreparedImage":
        """The vertical strip ``[x0, x1)`` (the same normalisation statistics: the whole image's)."""
        return replace(self, name=f"{self.name}[{x0}:{x1}]", source=self.source[:, :, x0:x1],
                       target=self.target[:, :, x0:x1])


@dataclass(frozen=True)
class Split:
    """Training, validation (early stopping) and test (QC figures) images; ``method`` says how."""

    train: tuple[PreparedImage, ...]
    val: tuple[PreparedImage, ...]
    test: tuple[PreparedImage, ...]
    method: str = "images"
    notes: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-ready: the method and each part's images and pixels."""
        return {"method": self.method, **self.notes, **{
            part: {"images": [p.name for p in items], "pixels": int(sum(p.height * p.width for p in items))}
            for part, items in (("train", self.train), ("val", self.val), ("test", self.test))}}


# -- reading ---------------------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    from dlcore.train.data import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _read(path: Path) -> np.ndarray:
    from dlcore.train.data import read_image

    try:
        image = read_image(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile and imageio raise many types; say which file
        raise InputError(f"cannot read {path}: {exc}") from exc
    if image.ndim != 3 or min(image.shape[:2]) < 8:
        raise InputError(f"{path} is {'x'.join(map(str, image.shape))}: give 2-D images (Y, X) or (Y, X, C) of at "
                         "least 8 x 8 pixels")
    return image


def read_noisy_folder(folder: str | Path) -> list[ImagePair]:
    """The noisy images of ``folder`` (or of its ``images/``), sorted by name, for Noise2Void.

    Raises
    ------
    InputError
        When the folder holds no image, or images with different channel counts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of noisy images (PNG or TIFF)")
    if (folder / "images").is_dir():
        folder = folder / "images"
    files = _images_in(folder)
    if not files:
        raise InputError(f"{folder} holds no PNG or TIFF image; Noise2Void trains on a folder of noisy images")
    pairs = [ImagePair(p.name, _read(p)) for p in files]
    _same_channels(pairs, "source")
    return pairs


def paired_folders(folder: Path, source_dir: str | Path | None = None,
                   target_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The source and target folders of a paired dataset: given (relative to ``folder`` or absolute),
    else ``low/`` + ``high/``, else ``source/`` + ``target/``."""
    folder = Path(folder)
    if (source_dir is None) != (target_dir is None):
        raise ParameterError("give both --source-dir and --target-dir (or neither, for low/ + high/ or "
                             "source/ + target/)")
    if source_dir is not None:
        found = (folder / source_dir, folder / target_dir)
    else:
        found = next(((folder / a, folder / b) for a, b in PAIRED_FOLDERS if (folder / a).is_dir()
                      and (folder / b).is_dir()), None)
        if found is None:
            raise InputError(f"{folder} needs paired folders low/ + high/ (CARE) or source/ + target/ "
                             "(translation), images matched by file name; or name them with --source-dir and "
                             "--target-dir")
    for path in found:
        if not path.is_dir():
            raise InputError(f"{path} is not a folder")
    return found


def read_paired_folders(folder: str | Path, *, source_dir: str | Path | None = None,
                        target_dir: str | Path | None = None) -> list[ImagePair]:
    """The ``(source, target)`` pairs of a paired dataset, matched by file stem, sorted by name.

    Raises
    ------
    InputError
        Naming the files: an image without a partner, a pair whose sizes differ, no pairs at all.
    """
    from dlcore.train.data import image_stem

    sources, targets = paired_folders(Path(folder), source_dir, target_dir)
    by_stem = {image_stem(p): p for p in _images_in(targets)}
    source_files = _images_in(sources)
    lonely = [p.name for p in source_files if image_stem(p) not in by_stem]
    unmatched = sorted(set(by_stem) - {image_stem(p) for p in source_files})
    if lonely or unmatched:
        parts = []
        if lonely:
            parts.append(f"{', '.join(lonely)} in {sources} ha{'s' if len(lonely) == 1 else 've'} no partner in {targets}")
        if unmatched:
            parts.append(f"{', '.join(by_stem[s].name for s in unmatched)} in {targets} ha"
                         f"{'s' if len(unmatched) == 1 else 've'} no partner in {sources}")
        raise InputError("unpaired images: " + "; ".join(parts) + " (pairs share their file name, e.g. "
                         f"{sources.name}/cell01.tif + {targets.name}/cell01.tif)")
    if not source_files:
        raise InputError(f"{sources} and {targets} hold no PNG or TIFF images")
    pairs = []
    for path in source_files:
        partner = by_stem[image_stem(path)]
        source, target = _read(path), _read(partner)
        if source.shape[:2] != target.shape[:2]:
            raise InputError(f"{path} is {source.shape[1]}x{source.shape[0]} but its partner {partner} is "
                             f"{target.shape[1]}x{target.shape[0]}: the images of a pair must be the same size "
                             "(registered, same field of view)")
        pairs.append(ImagePair(path.name, source, target))
    _same_channels(pairs, "source")
    _same_channels(pairs, "target")
    return pairs


def load_training_images(folder: str | Path, *, mode: str, source_dir: str | Path | None = None,
                         target_dir: str | Path | None = None) -> list[ImagePair]:
    """The training images of ``folder`` for ``mode`` (``n2v``: noisy images; ``care``/``translate``: pairs)."""
    check_mode(mode)
    if mode == "n2v":
        if source_dir is not None or target_dir is not None:
            raise ParameterError("Noise2Void trains on noisy images alone: --source-dir/--target-dir are for "
                                 "care and translate")
        return read_noisy_folder(folder)
    return read_paired_folders(folder, source_dir=source_dir, target_dir=target_dir)


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`, else ParameterError."""
    if mode not in MODES:
        raise ParameterError(f"mode={mode!r} must be one of {', '.join(MODES)} (n2v: Noise2Void denoising from "
                             "noisy images alone; care: restoration from low/high pairs; translate: one image to "
                             "another modality or stain)")
    return mode


def _same_channels(pairs: Sequence[ImagePair], which: str) -> None:
    counts = {}
    for p in pairs:
        image = getattr(p, which)
        if image is not None:
            counts.setdefault(image.shape[-1], []).append(p.name)
    if len(counts) > 1:
        raise InputError(f"the {which} images have different channel counts: "
                         + "; ".join(f"{c} channel(s): {', '.join(names[:3])}" for c, names in sorted(counts.items()))
                         + " — give images with the same channels")


# -- normalisation ---------------------------------------------------------------------------------
def percentile_range(image: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(low, high)`` percentiles of a ``(Y, X, C)`` image (float32 arrays of C values)."""
    x = np.asarray(image, np.float32).reshape(-1, image.shape[-1])
    return (np.percentile(x, low, axis=0).astype(np.float32), np.percentile(x, high, axis=0).astype(np.float32))


def apply_range(image: np.ndarray, low, high) -> np.ndarray:
    """``(Y, X, C)`` → float32 ``(C, Y, X)``: ``(x - low) / (high - low + 1e-6)`` per channel."""
    low = np.asarray(low, np.float32)
    high = np.asarray(high, np.float32)
    x = (np.asarray(image, np.float32) - low) / (high - low + EPS)
    return np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32)


def prepare_images(pairs: Sequence[ImagePair], *, mode: str, target_normalization: str = "percentile",
                   percentiles: tuple[float, float] = PERCENTILES) -> list[PreparedImage]:
    """Normalise every image on its own (see the module docstring).

    Parameters
    ----------
    pairs
        The images as read.
    mode
        ``n2v`` (the target is the source), ``care`` or ``translate`` (targets required).
    target_normalization
        ``percentile`` (each target by its own percentiles) or ``none`` (targets kept as they are).
    percentiles
        The low and high percentiles (CSBDeep: 1 and 99.8).
    """
    check_mode(mode)
    if target_normalization not in TARGET_NORMALIZATIONS:
        raise ParameterError(f"target_normalization={target_normalization!r} must be one of {TARGET_NORMALIZATIONS}")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ParameterError(f"percentiles={percentiles} must satisfy 0 <= low < high <= 100")
    if not pairs:
        raise InputError("no training images")
    out = []
    for pair in pairs:
        lo, hi = percentile_range(pair.source, *percentiles)
        source = apply_range(pair.source, lo, hi)
        if mode == "n2v":
            target, tlo, thi = source, lo, hi
        else:
            if pair.target is None:
                raise InputError(f"{pair.name} has no target image; {mode} trains on (source, target) pairs")
            if target_normalization == "percentile":
                tlo, thi = percentile_range(pair.target, *percentiles)
                target = apply_range(pair.target, tlo, thi)
            else:
                channels = pair.target.shape[-1]
                tlo, thi = np.zeros(channels, np.float32), np.ones(channels, np.float32)
                target = np.ascontiguousarray(np.moveaxis(np.asarray(pair.target, np.float32), -1, 0))
        out.append(PreparedImage(name=pair.name, source=source, target=target,
                                 source_low=tuple(map(float, lo)), source_high=tuple(map(float, hi)),
                                 target_low=tuple(map(float, tlo)), target_high=tuple(map(float, thi)),
                                 dtype=str(pair.source.dtype)))
    return out


# -- splits ----------------------------------------------------------------------------------------
def strip_split(image: PreparedImage, *, val_fraction: float, test_fraction: float, min_width: int = 1) -> Split:
    """One image split into vertical strips, left to right: training | validation | test.

    Raises ParameterError when the training strip would be narrower than ``min_width`` pixels (a training
    patch), or a held-out strip narrower than 11 (SSIM's window).
    """
    width = image.width
    n_test = int(round(width * test_fraction))
    n_val = int(round(width * val_fraction))
    n_train = width - n_val - n_test
    if n_train < min_width:
        raise ParameterError(f"{image.name} is {width} px wide: its training strip ({n_train} px) would be narrower than "
                             f"a {min_width} px patch; use a smaller patch size or smaller held-out fractions")
    for part, n, fraction in (("validation", n_val, val_fraction), ("test", n_test, test_fraction)):
        if fraction > 0 and n < MIN_HELDOUT:
            raise ParameterError(f"{image.name} is {width} px wide: its {part} strip ({fraction:.0%}) would be {n} px, "
                                 f"narrower than {MIN_HELDOUT} px (SSIM's window); use a larger fraction or a wider image")
    a, b = n_train, n_train + n_val
    return Split(train=(image.columns(0, a),), val=(image.columns(a, b),) if n_val else (),
                 test=(image.columns(b, width),) if n_test else (), method="vertical strips of one image",
                 notes={"columns": {"train": [0, a], "val": [a, b], "test": [b, width]}})


def split_images(images: Sequence[PreparedImage], *, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 seed: int = 0, min_width: int = 1) -> Split:
    """The held-out split: by image (shuffled with ``seed``; at least one training image, and one
    validation image when there are two or more), or by vertical strips when there is one image."""
    if not images:
        raise InputError("no training images")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ParameterError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and leave "
                             "images for training (sum below 1)")
    if len(images) == 1:
        return strip_split(images[0], val_fraction=val_fraction, test_fraction=test_fraction, min_width=min_width)
    order = np.random.default_rng(seed).permutation(len(images))
    n = len(images)
    n_test = int(round(n * test_fraction)) if test_fraction else 0
    n_val = max(int(round(n * val_fraction)), 1) if val_fraction else 0
    while n_test + n_val >= n:
        if n_test > 0 and n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    test = tuple(images[i] for i in order[:n_test])
    val = tuple(images[i] for i in order[n_test:n_test + n_val])
    train = tuple(images[i] for i in order[n_test + n_val:])
    return Split(train=train, val=val, test=test, method="by image")


# -- patches ---------------------------------------------------------------------------------------
def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def random_patch(image: PreparedImage, size: int, rng: np.random.Generator, *, augment: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` square ``(source, target)`` of ``image`` (``(C, size, size)`` each), flipped and
    rotated by multiples of 90 degrees when ``augment``."""
    if image.height < size or image.width < size:
        raise ParameterError(f"{image.name} ({image.width}x{image.height}) is smaller than the {size} px patch size")
    y = int(rng.integers(0, image.height - size + 1))
    x = int(rng.integers(0, image.width - size + 1))
    src = image.source[:, y:y + size, x:x + size]
    tgt = image.target[:, y:y + size, x:x + size]
    return _augment(src, tgt, rng) if augment else (src.copy(), tgt.copy())


def validation_crops(images: Sequence[PreparedImage], size: int, *, limit: int = 32
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic ``(source, target)`` crops of at most ``size`` x ``size`` tiling the images (the last
    row and column clipped at the edge; at most ``limit``, evenly spread over the images), for
    validation losses.  Crops may be smaller than ``size``: a narrow strip is used as it is."""
    out = []
    per = max(limit // max(len(images), 1), 1)
    for image in images:
        corners = [(y, x) for y in range(0, image.height, size) for x in range(0, image.width, size)]
        if len(corners) > per:
            corners = [corners[i] for i in np.linspace(0, len(corners) - 1, per).round().astype(int)]
        out += [(image.source[:, y:y + size, x:x + size], image.target[:, y:y + size, x:x + size]) for y, x in corners]
    return out[:limit]


__all__ = ["MODES", "ImagePair", "PreparedImage", "Split", "read_noisy_folder", "read_paired_folders",
           "load_training_images", "percentile_range", "apply_range", "prepare_images", "split_images", "strip_split",
           "random_patch", "validation_crops", "check_mode"]
