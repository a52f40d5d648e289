"""Reading regions of tiled images one native tile at a time, through a shared LRU cache.

Whole-slide formats store each level as a grid of native tiles; reading a region touches only the
tiles it overlaps.  Tiles a neighbouring region also needs (the halos of the tile engine) come from
the cache instead of being decoded twice.  The cache is bounded in bytes, so memory does not grow
with the slide's size.  Local OME-TIFF files and OMERO's RawPixelsStore both read this way.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class TileCache:
    """A thread-safe least-recently-used cache of decoded tiles, bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The tile stored under ``key``, calling ``load()`` (outside the lock) on a miss."""
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return tile
            self.misses += 1
        tile = load()
        with self._lock:
            if key not in self._items:
                self._items[key] = tile
                self._bytes += tile.nbytes
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return tile

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._bytes


def assemble_region(
    *,
    level: int,
    x: int,
    y: int,
    width: int,
    height: int,
    level_size: tuple[int, int],
    tile_size: tuple[int, int],
    channels: int,
    dtype: np.dtype,
    read_tile: Callable[[int, int, int, int, int], np.ndarray],
    cache: TileCache,
    cache_key: Hashable = None,
) -> np.ndarray:
    """Build the ``(Y, X, C)`` region from the native tiles it overlaps.

    ``read_tile(level, x0, y0, w, h)`` must return the native tile whose top-left corner is
    ``(x0, y0)`` as ``(h, w, C)``; edge tiles are clipped to the level.  The region must already have
    been checked to lie inside the level.
    """
    tw, th = tile_size
    lw, lh = level_size
    out = np.empty((height, width, channels), dtype=dtype)
    for ty in range(y // th, (y + height - 1) // th + 1):
        for tx in range(x // tw, (x + width - 1) // tw + 1):
            x0, y0 = tx * tw, ty * th
            w0, h0 = min(tw, lw - x0), min(th, lh - y0)
            tile = cache.get((cache_key, level, tx, ty), lambda: read_tile(level, x0, y0, w0, h0))
            sx0, sy0 = max(x, x0), max(y, y0)
            sx1, sy1 = min(x + width, x0 + w0), min(y + height, y0 + h0)
            out[sy0 - y:sy1 - y, sx0 - x:sx1 - x] = tile[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out
