"""Recipes that build the shipped models from data available offline (see shared/DESIGN.md).

The nuclei models ``dlcore run nuclei`` picks learn from real hand-drawn nuclei outlines (MoNuSeg,
read from a local copy given with ``--data``; :mod:`.monuseg`):

- ``nuclei-brightfield``: H&E and IHC (:mod:`.nuclei_brightfield`);
- ``nuclei-fluorescence``: one nuclear-stain channel, rendered from the same images
  (:mod:`.nuclei_fluorescence`).

The other three start from scikit-image's ``immunohistochemistry()`` image (a real 512 x 512 IHC section:
haematoxylin nuclei, DAB staining) with *automatic* annotations, never manual ones:

- ``nuclei`` (``nuclei-ihc-unet``, superseded by ``nuclei-brightfield``): nuclei instances from dlcore's
  classical pipeline (:mod:`dlcore.tasks.classical`);
- ``tissue``: background / DAB-negative tissue / DAB-positive tissue from colour deconvolution on
  synthetic mosaics with glass (white) or black margins;
- ``classifier``: 64 px patches of the same mosaics labelled by their majority class.

For those, the bottom-right quadrant of the image is held out: every test figure comes from pixels no training
or validation sample contains.  Run one with ``python -m dlcore.train.recipes NAME [--registry DIR]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOMINAL_MPP = 0.5  # the image carries no pixel size; the same nominal value as dlcore's demo slides
HELD_OUT = (slice(256, 512), slice(256, 512))  # bottom-right quadrant: the test region
BLOCK = 128


def ihc_image() -> np.ndarray:
    """scikit-image's IHC image, ``(512, 512, 3)`` uint8."""
    from skimage import data

    return data.immunohistochemistry()


def in_test_region(y: int, x: int, size: int) -> bool:
    """Whether a ``size`` square at ``(y, x)`` overlaps the held-out quadrant."""
    return y + size > HELD_OUT[0].start and x + size > HELD_OUT[1].start


def training_blocks() -> list[tuple[int, int]]:
    """Top-left corners of the 128 px blocks outside the held-out quadrant (12 blocks)."""
    return [(y, x) for y in range(0, 512, BLOCK) for x in range(0, 512, BLOCK) if not in_test_region(y, x, BLOCK)]


def dab_labels(image: np.ndarray, *, sigma: float = 3.0) -> np.ndarray:
    """Per-pixel 1 = DAB-negative tissue, 2 = DAB-positive tissue, by a k-means threshold on the
    smoothed DAB optical density (colour deconvolution, Ruifrok & Johnston)."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    from dlcore.tasks.classical import kmeans_threshold

    dab = ndi.gaussian_filter(rgb2hed(image)[..., 2], sigma)
    return np.where(dab > kmeans_threshold(dab), 2, 1).astype(np.int32)


@dataclass(frozen=True)
class Mosaic:
    """A synthetic image: real IHC crops on a glass or black background, and its tissue labels."""

    image: np.ndarray
    labels: np.ndarray  # 0 background, 1 DAB-negative tissue, 2 DAB-positive tissue


def make_mosaic(source: np.ndarray, source_labels: np.ndarray, corners: list[tuple[int, int]],
                rng: np.random.Generator, *, size: int = 256, crop: int = 128) -> Mosaic:
    """Tile ``size`` x ``size`` with flipped/rotated ``crop`` squares taken at ``corners`` of the source,
    then cut an irregular tissue island out of it on white glass or a black scanner margin."""
    from scipy import ndimage as ndi

    image = np.empty((size, size, 3), np.uint8)
    labels = np.empty((size, size), np.int32)
    for ty in range(0, size, crop):
        for tx in range(0, size, crop):
            y, x = corners[int(rng.integers(len(corners)))]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            im, lb = source[y:y + crop, x:x + crop], source_labels[y:y + crop, x:x + crop]
            im, lb = np.rot90(im, k), np.rot90(lb, k)
            if flip:
                im, lb = im[:, ::-1], lb[:, ::-1]
            image[ty:ty + crop, tx:tx + crop], labels[ty:ty + crop, tx:tx + crop] = im, lb
    field = ndi.gaussian_filter(rng.standard_normal((size, size)), size / 8)
    tissue = field > np.quantile(field, rng.uniform(0.3, 0.6))
    glass = 245 if rng.random() < 0.7 else 10
    noise = np.abs(rng.normal(0, 3, (size, size, 1)))
    background = np.clip(glass - noise if glass > 128 else glass + noise, 0, 255)
    image = np.where(tissue[..., None], image, background.astype(np.uint8))
    return Mosaic(image, np.where(tissue, labels, 0).astype(np.int32))


def heldout_corners(crop: int = 128) -> list[tuple[int, int]]:
    """Crop corners inside the held-out quadrant."""
    y0, x0 = HELD_OUT[0].start, HELD_OUT[1].start
    return [(y, x) for y in range(y0, 512 - crop + 1, 32) for x in range(x0, 512 - crop + 1, 32)]


def training_corners(crop: int = 128) -> list[tuple[int, int]]:
    """Crop corners whose crops stay outside the held-out quadrant."""
    return [(y, x) for y in range(0, 512 - crop + 1, 32) for x in range(0, 512 - crop + 1, 32)
            if not in_test_region(y, x, crop)]
