"""Synthetic whole-slide images built from real tissue, for the demo, the tests and the benchmarks.

The tissue is scikit-image's ``immunohistochemistry()`` image (a real IHC section: haematoxylin
nuclei, DAB staining), cut into patches that are flipped, rotated and brightness-jittered, mosaicked into
irregular tissue islands, and surrounded by a glass background (white, or black like some scanners'
margins).  Every level of the pyramid is rendered directly from downsampled patches, tile by tile, so
a slide of any size is written in bounded memory.  The pixel size written is a nominal 0.5 µm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATCH = 512
NOMINAL_MPP = 0.5


@dataclass(frozen=True)
class SyntheticSlideSpec:
    """Size and look of a synthetic slide."""

    width: int = 6144
    height: int = 4096
    seed: int = 0
    background: str = "white"  # or "black"
    tissue_fraction: float = 0.55
    tile: int = 512
    mpp: float = NOMINAL_MPP


def _patch_variants(seed: int, count: int = 8) -> list[np.ndarray]:
    from skimage import data

    base = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    variants = []
    for index in range(count):
        patch = np.rot90(base, k=index % 4)
        if index >= 4:
            patch = patch[:, ::-1]
        gain = rng.uniform(0.97, 1.03)  # brightness only: per-channel shifts would change the stains
        variants.append(np.clip(patch.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return variants


def _tissue_field(spec: SyntheticSlideSpec, cells_x: int, cells_y: int) -> np.ndarray:
    """A smooth random field over the slide at 8 samples per patch; tissue where it is positive."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(spec.seed + 1)
    h, w = cells_y * 8 + 1, cells_x * 8 + 1
    noise = ndi.gaussian_filter(rng.standard_normal((h, w)), sigma=max(3.0, min(h, w) / 6))
    yy, xx = np.mgrid[0:h, 0:w]
    margin = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]) / max(min(h, w) * 0.12, 1)
    noise = noise / (noise.std() + 1e-9) - (1 - np.clip(margin, 0, 1)) * 3  # fade to glass at the edges
    cut = np.quantile(noise, 1 - spec.tissue_fraction)
    return (noise - cut).astype(np.float32)


class SyntheticSlide:
    """Renders any region of any level of a synthetic slide (deterministic for a spec)."""

    def __init__(self, spec: SyntheticSlideSpec) -> None:
        self.spec = spec
        self.cells_x = math.ceil(spec.width / PATCH)
        self.cells_y = math.ceil(spec.height / PATCH)
        self.variants = _patch_variants(spec.seed)
        self.layout = np.random.default_rng(spec.seed + 2).integers(0, len(self.variants), (self.cells_y, self.cells_x))
        self.field = _tissue_field(spec, self.cells_x, self.cells_y)
        self._scaled: dict[int, list[np.ndarray]] = {}

    def levels(self, min_side: int = 512) -> list[int]:
        """Downsample factors of the pyramid (powers of two) down to ``min_side``."""
        factors = [1]
        while max(self.spec.width, self.spec.height) / (factors[-1] * 2) >= min_side:
            factors.append(factors[-1] * 2)
        return factors

    def _variants_at(self, downsample: int) -> list[np.ndarray]:
        if downsample not in self._scaled:
            from skimage.transform import downscale_local_mean

            size = PATCH // downsample
            self._scaled[downsample] = [
                np.clip(downscale_local_mean(v.astype(np.float32), (downsample, downsample, 1)), 0, 255).astype(np.uint8)[:size, :size]
                if downsample > 1 else v for v in self.variants
            ]
        return self._scaled[downsample]

    def region(self, downsample: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(Y, X, 3)`` uint8 pixels of the level with this downsample (a power of two <= 512)."""
        from scipy import ndimage as ndi

        size = PATCH // downsample
        patches = self._variants_at(downsample)
        out = np.empty((height, width, 3), np.uint8)
        for cy in range(y // size, (y + height - 1) // size + 1):
            for cx in range(x // size, (x + width - 1) // size + 1):
                px0, py0 = cx * size, cy * size
                sx0, sy0 = max(x, px0), max(y, py0)
                sx1, sy1 = min(x + width, px0 + size), min(y + height, py0 + size)
                variant = patches[self.layout[min(cy, self.cells_y - 1), min(cx, self.cells_x - 1)]]
                out[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = variant[sy0 - py0:sy1 - py0, sx0 - px0:sx1 - px0]
        # tissue mask: the smooth field (8 samples per patch) interpolated to these pixels
        step = size / 8
        rows = (np.arange(y, y + height) + 0.5) / step
        cols = (np.arange(x, x + width) + 0.5) / step
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        tissue = ndi.map_coordinates(self.field, [rr, cc], order=1, mode="nearest") > 0
        glass = 255 if self.spec.background == "white" else 8
        rng = np.random.default_rng((self.spec.seed, downsample, x, y))
        background = np.clip(glass - np.abs(rng.normal(0, 3, (height, width, 1))) * (1 if glass > 128 else -1), 0, 255).astype(np.uint8)
        return np.where(tissue[..., None], out, background)


def write_synthetic_slide(path: str | Path, spec: SyntheticSlideSpec = SyntheticSlideSpec(), *,
                          compression: str = "jpeg", progress=None) -> Path:
    """Write a pyramidal, tiled OME-TIFF of the synthetic slide; returns the path.

    Memory stays bounded by one tile per level, whatever the slide size.
    """
    import tifffile

    path = Path(path)
    synth = SyntheticSlide(spec)
    factors = synth.levels()
    tile = spec.tile
    total = sum(math.ceil(spec.width / f / tile) * math.ceil(spec.height / f / tile) for f in factors)
    done = 0

    def tiles(factor: int):
        nonlocal done
        w, h = math.ceil(spec.width / factor), math.ceil(spec.height / factor)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                block = np.full((tile, tile, 3), 255, np.uint8)
                bw, bh = min(tile, w - tx), min(tile, h - ty)
                block[:bh, :bw] = synth.region(factor, tx, ty, bw, bh)
                done += 1
                if progress and done % 64 == 0:
                    progress("write slide", done, total)
                yield block

    options = {"jpeg": {"compression": "jpeg", "compressionargs": {"level": 90}}, "zlib": {"compression": "zlib"},
               "none": {}}[compression]
    metadata = {"axes": "YXS", "Name": path.name, "PhysicalSizeX": spec.mpp, "PhysicalSizeY": spec.mpp,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for index, factor in enumerate(factors):
            shape = (math.ceil(spec.height / factor), math.ceil(spec.width / factor), 3)
            kwargs = dict(shape=shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb", **options)
            if index == 0:
                tif.write(tiles(factor), subifds=len(factors) - 1, metadata=metadata, **kwargs)
            else:
                tif.write(tiles(factor), subfiletype=1, metadata=None, **kwargs)
    if progress:
        progress("write slide", total, total)
    return path
