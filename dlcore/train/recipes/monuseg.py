"""Reading MoNuSeg 2018 (Kumar et al.), real H&E with hand-drawn nuclei outlines, for the nuclei recipes.

MoNuSeg is not shipped with dlcore (licence CC BY-NC-SA 4.0).  Get a copy once, e.g.
``git clone https://github.com/ykrmm/monuseg`` (commit 93a696d holds 13 complete training images and all
14 test images), and give its folder to the recipe with ``--data``.  The layout read is the challenge's:

- training: ``datasets/MoNuSegTrainingData/Tissue_Images/NAME.tif`` + ``Annotations/NAME.xml``;
- test: ``datasets/MoNuSegTestData/NAME.tif`` + ``NAME.xml``.

Each image is 1000 x 1000 px at about 0.25 µm/px (the ``MicronsPerPixel`` of its Aperio XML); it is
resampled to the model's working pixel size (area averaging for the image, nearest for the labels).
A training image whose XML is missing is skipped (and reported), never guessed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dlcore.errors import InputError
from dlcore.train.data import Sample

log = logging.getLogger(__name__)

SOURCE = "MoNuSeg 2018 (Kumar et al., IEEE TMI 2017/2019), CC BY-NC-SA 4.0"


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    base = root / "datasets" if (root / "datasets").is_dir() else root
    if split == "train":
        images, outlines = base / "MoNuSegTrainingData" / "Tissue_Images", base / "MoNuSegTrainingData" / "Annotations"
    else:
        images = outlines = base / "MoNuSegTestData"
    if not images.is_dir():
        raise InputError(f"{images} does not exist: --data must be a MoNuSeg copy (git clone "
                         "https://github.com/ykrmm/monuseg) or its datasets/ folder")
    pairs = []
    for tif in sorted(images.glob("*.tif")):
        xml = outlines / f"{tif.stem}.xml"
        if xml.is_file() and xml.stat().st_size > 0:
            pairs.append((tif, xml))
        else:
            log.warning("MoNuSeg %s: %s has no outlines %s; skipped", split, tif.name, xml)
    if not pairs:
        raise InputError(f"no MoNuSeg {split} image with its .xml outlines under {images}")
    return pairs


def resample(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``labels`` shrunk (``factor`` > 1) or enlarged by ``factor`` (area / nearest)."""
    import cv2

    if abs(factor - 1) < 1e-3:
        return image, labels
    h, w = labels.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor > 1 else cv2.INTER_LINEAR)
    out = out.reshape(size[1], size[0], -1)
    ids = cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST_EXACT)
    return out, ids.astype(labels.dtype)


def read_monuseg(root: str | Path, split: str, *, mpp: float, group_prefix: str = "") -> list[Sample]:
    """MoNuSeg's ``split`` (``"train"`` or ``"test"``) as samples at ``mpp`` µm/px, one group per image."""
    from dlcore.io.aperio_xml import instance_mask, read_aperio_xml
    from dlcore.train.data import read_image

    samples = []
    for tif, xml in _pairs(Path(root), split):
        image = read_image(tif)[..., :3]
        outlines = read_aperio_xml(xml)
        labels = instance_mask(outlines, image.shape[:2])
        source_mpp = outlines.mpp or 0.25
        image, labels = resample(image, labels, mpp / source_mpp)
        samples.append(Sample(image, labels, None, f"MoNuSeg {split}: {tif.name}", f"{group_prefix}{tif.stem}", mpp))
    return samples
