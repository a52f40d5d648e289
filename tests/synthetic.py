"""Small synthetic images for the tests (made in the test run; nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def disc_image(size: int = 512, *, spacing: int = 32, radius: int = 9, seed: int = 0, tile: int = 128) -> np.ndarray:
    """A grey ``(size, size)`` uint8 image of bright discs, many straddling multiples of ``tile``.

    Discs sit on a jittered grid and on purpose on every tile border (x or y a multiple of ``tile``);
    some pairs touch, so the watershed has to split them.
    """
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    image = np.full((size, size), 20, np.float32)
    centres = []
    for cy in range(spacing // 2, size - radius, spacing):
        for cx in range(spacing // 2, size - radius, spacing):
            centres.append((cy + rng.integers(-4, 5), cx + rng.integers(-4, 5)))
    for border in range(tile, size, tile):  # objects centred exactly on tile borders
        for along in range(radius + 4, size - radius - 4, 3 * radius):
            centres.append((border, along))
            centres.append((along, border))
    kept: list[tuple[int, int]] = []
    for c in centres:
        if all((c[0] - k[0]) ** 2 + (c[1] - k[1]) ** 2 >= (1.6 * radius) ** 2 for k in kept):
            kept.append(c)
    for cy, cx in kept:
        rr, cc = disk((cy, cx), radius, shape=image.shape)
        image[rr, cc] = 200
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


def write_ome_tiff(path: Path, image: np.ndarray, *, mpp: float | None = 0.5, tile: int = 128, levels: int = 2,
                   axes: str | None = None) -> Path:
    """A tiled pyramidal OME-TIFF of ``image`` ((Y,X), (Y,X,3) RGB, or (C,Y,X) with axes='CYX')."""
    import tifffile

    axes = axes or ("YXS" if image.ndim == 3 else "YX")
    metadata: dict = {"axes": axes}
    if mpp:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    photometric = "rgb" if axes == "YXS" else "minisblack"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(image, tile=(tile, tile), subifds=levels - 1, metadata=metadata, photometric=photometric)
        current = image
        for _ in range(levels - 1):
            current = current[:, ::2, ::2] if axes == "CYX" else current[::2, ::2]
            tif.write(current, tile=(tile, tile), subfiletype=1, photometric=photometric)
    return path


# -- real tissue that installed packages ship (nothing is downloaded) ------------------------------
def real_ihc_field() -> np.ndarray:
    """scikit-image's ``immunohistochemistry()``: a real 512 x 512 IHC section (haematoxylin + DAB),
    colon glands whose DAB-rich epithelium touches the image's edges."""
    from skimage import data

    return data.immunohistochemistry()


def real_he_field() -> np.ndarray:
    """A real 500 x 300 H&E field (tumour, from The Cancer Imaging Archive) that stardist's wheel ships
    as ``stardist/data/images/histo.jpg``; tissue covers it to all four edges.  Read from the file, so
    stardist (and TensorFlow) is never imported."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the test extra's stardist package is missing: bash tools/install.sh installs it")
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / "histo.jpg"
    return np.asarray(Image.open(path).convert("RGB"))
