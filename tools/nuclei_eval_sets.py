"""Build the held-out evaluation folders the nuclei models' cards and BENCHMARKS.md quote.

    python tools/nuclei_eval_sets.py MONUSEG_COPY OUT

From the 14 MoNuSeg *test* images (never used in training; ``MONUSEG_COPY`` as for the recipes) and
the DSB 2018 crop the ``stardist`` package ships, it writes ``OUT/<set>/images`` + ``labels``:

- ``monuseg-test-20x``: the H&E images resampled to 0.5 µm/px (``--mpp 0.5``; the others are at
  the source's ~0.25 µm/px, ``--mpp 0.25``, which the engine resamples);
- ``monuseg-test-ihc``: re-stained as IHC, same masks (:func:`dlcore.train.restain.as_ihc`, seed 1);
- ``monuseg-test-fluo8`` / ``monuseg-test-fluo16``: rendered as 8- and 16-bit nuclear fluorescence
  (:func:`dlcore.train.restain.as_fluorescence`, seeds 2 and 3);
- ``dsb2018-stardist``: the real fluorescence crop and its mask (``--mpp 0.5``, nominal).

Then, for example: ``dlcore evaluate nuclei-brightfield-unet OUT/monuseg-test-ihc --mpp 0.25``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile


def _write(folder: Path, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "images" / f"{name}.tif", image, photometric="rgb" if image.ndim == 3 and
                     image.shape[-1] == 3 else "minisblack")
    tifffile.imwrite(folder / "labels" / f"{name}.tif", labels.astype(np.uint16))


def main(argv: list[str]) -> int:
    from dlcore.train.recipes.monuseg import read_monuseg, resample
    from dlcore.train.recipes.nuclei_fluorescence import stardist_test_image
    from dlcore.train.restain import as_fluorescence, as_ihc

    monuseg, out = Path(argv[0]), Path(argv[1])
    native = read_monuseg(monuseg, "test", mpp=0.25)  # ~0.25 µm/px: the source's own pixels
    rngs = {name: np.random.default_rng(seed) for name, seed in (("ihc", 1), ("fluo8", 2), ("fluo16", 3))}
    for sample in native:
        name = sample.group
        _write(out / "monuseg-test-20x", name, *resample(sample.image, sample.mask, 2.0))
        _write(out / "monuseg-test-ihc", name, as_ihc(sample.image, sample.mask, rngs["ihc"]), sample.mask)
        _write(out / "monuseg-test-fluo8", name, as_fluorescence(sample.image, rngs["fluo8"], dtype=np.uint8)[..., 0],
               sample.mask)
        _write(out / "monuseg-test-fluo16", name, as_fluorescence(sample.image, rngs["fluo16"],
                                                                  dtype=np.uint16)[..., 0], sample.mask)
    dsb = stardist_test_image()
    _write(out / "dsb2018-stardist", "img2d", dsb.image[..., 0], dsb.mask)
    print(f"{len(native)} MoNuSeg test images and the DSB 2018 crop written under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
