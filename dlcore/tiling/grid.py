"""Tile-grid geometry: pure functions, no pixels.

A :class:`Tile` is a core rectangle (the part of the output it owns) plus a halo of context on each
side.  Coordinates are in working-resolution pixels.  The grid covers the slide with non-overlapping
cores; halos overlap the neighbours' cores.  Tiles whose core holds no tissue are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlcore.errors import ParameterError


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    ``x, y, width, height`` is the core; ``halo`` pixels of context surround it on every side (the
    read window may reach outside the slide: the reader pads it).  ``row, col`` index the grid.
    """

    row: int
    col: int
    x: int
    y: int
    width: int
    height: int
    halo: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        """The read window (x, y, width, height): core plus halo."""
        return (self.x - self.halo, self.y - self.halo, self.width + 2 * self.halo, self.height + 2 * self.halo)

    def owns(self, cx: float, cy: float) -> bool:
        """True when the point (slide coordinates) lies in this tile's core (half-open)."""
        return self.x <= cx < self.x + self.width and self.y <= cy < self.y + self.height


@dataclass(frozen=True)
class GridSpec:
    """Tile size and halo, in working-resolution pixels."""

    tile_size: int = 1024
    halo: int = 64

    def __post_init__(self) -> None:
        if self.tile_size < 32:
            raise ParameterError(f"tile_size={self.tile_size} is too small; use at least 32 (typical: 512-2048)")
        if self.halo < 0 or self.halo >= self.tile_size:
            raise ParameterError(f"halo={self.halo} must be >= 0 and smaller than tile_size={self.tile_size}")


def make_grid(width: int, height: int, spec: GridSpec, *, mask: np.ndarray | None = None) -> list[Tile]:
    """Tiles covering a ``width x height`` image, row by row.

    ``mask`` is an optional low-resolution boolean tissue mask covering the whole image; tiles
    whose core (grown by one mask pixel, so tissue at a core's edge is not missed) has no tissue are
    left out.
    """
    if width <= 0 or height <= 0:
        raise ParameterError(f"cannot tile an empty image ({width}x{height})")
    ts = spec.tile_size
    tiles = []
    for row, y in enumerate(range(0, height, ts)):
        for col, x in enumerate(range(0, width, ts)):
            tile = Tile(row=row, col=col, x=x, y=y, width=min(ts, width - x), height=min(ts, height - y), halo=spec.halo)
            if mask is None or _has_tissue(mask, tile, width, height):
                tiles.append(tile)
    return tiles


def _has_tissue(mask: np.ndarray, tile: Tile, width: int, height: int) -> bool:
    sy, sx = mask.shape[0] / height, mask.shape[1] / width
    y0, y1 = int(tile.y * sy) - 1, int(np.ceil((tile.y + tile.height) * sy)) + 1
    x0, x1 = int(tile.x * sx) - 1, int(np.ceil((tile.x + tile.width) * sx)) + 1
    return bool(mask[max(y0, 0):y1, max(x0, 0):x1].any())
