"""QC validation figures: artefacts painted onto two real tissues, found or not, with their area IoU.

    python tools/qc_validation.py [--out FOLDER]

Slides: the demo slide (scikit-image's real IHC section) and a mosaic of stardist's real H&E field,
each clean and with artefacts painted in (tests/painted_artefacts.py says how each is painted).  Prints,
per artefact, the IoU of the QC mask's class with the painted region, the artefact fractions found on the
clean slides, and how the blur detection responds to the defocus strength (Gaussian sigma in µm).
Nothing here tunes a threshold: the rules in dlcore/qc are fixed, and this reports what they do.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from painted_artefacts import (at_mask_resolution, iou, paint_blur, painted_demo, painted_he,  # noqa: E402
                               tissue_pixels)
from synthetic import write_ome_tiff  # noqa: E402

from dlcore.io import open_slide  # noqa: E402
from dlcore.qc.classes import BY_NAME  # noqa: E402
from dlcore.qc.run import run_qc  # noqa: E402


def qc_of(image: np.ndarray, folder: Path, name: str):
    slide = open_slide(write_ome_tiff(folder / f"{name}.ome.tif", image, tile=256, levels=4))
    try:
        return run_qc(slide)
    finally:
        slide.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the slides here (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="qc-validation-"))
    folder.mkdir(parents=True, exist_ok=True)
    print("| tissue | artefact | painted px (QC grid) | found px | IoU |\n|---|---|---|---|---|")
    for tissue_name, (clean, painted, truth) in (("IHC (demo)", painted_demo()), ("H&E (stardist field)", painted_he())):
        key = tissue_name.split()[0].replace("&", "")
        found_clean = qc_of(clean, folder, f"{key}-clean")
        result = qc_of(painted, folder, f"{key}-painted")
        for artefact, mask in truth.items():
            expected = at_mask_resolution(mask, result.mask.shape)
            found = result.mask == BY_NAME[artefact].value
            print(f"| {tissue_name} | {artefact} | {int(expected.sum())} | {int(found.sum())} | {iou(found, expected):.3f} |")
        print(f"| {tissue_name}, clean | every artefact | 0 | "
              f"{int((found_clean.mask > 1).sum())} | verdict {found_clean.verdict} |")
    clean = painted_demo()[0]
    print("\n| defocus sigma (µm) | blurred region found (recall) | blur found elsewhere (px) |\n|---|---|---|")
    for sigma_um in (0.5, 1.0, 1.5, 2.0, 4.0):
        image = clean.copy()
        mask = paint_blur(image, (600, 1300, 1000, 900), sigma=sigma_um / 0.5) & tissue_pixels(clean)
        result = qc_of(image, folder, f"blur-{sigma_um}")
        expected = at_mask_resolution(mask, result.mask.shape)
        found = result.mask == BY_NAME["blur"].value
        print(f"| {sigma_um} | {(found & expected).sum() / expected.sum():.3f} | {int((found & ~expected).sum())} |")


if __name__ == "__main__":
    main()
