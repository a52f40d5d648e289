"""A slide-sized label image kept on disk while it is written, and its exports.

The tile engine writes labels region by region into a chunked zarr array (compressed, empty chunks
not stored), so no slide-sized array is ever in memory.  When the run is done the canvas builds a
pyramid chunk by chunk and exports it as a pyramidal OME-TIFF (QuPath, napari, OMERO and Fiji open it)
or as an OME-Zarr (NGFF 0.4) image.
"""
from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dlcore.errors import InvariantError

LABEL_DTYPE = np.uint32


def _compressor():
    import numcodecs

    return numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


class LabelCanvas:
    """A ``height x width`` label image stored as an OME-Zarr-style pyramid in ``path``.

    Level 0 is written with :meth:`write` and :meth:`merge`; :meth:`build_pyramid` derives the coarser
    levels by nearest-neighbour subsampling (labels must not be averaged).

    Level 0 is read and written through a bounded cache of decoded chunks (``cache_chunks`` of
    ``chunk x chunk`` labels, 256 MB by default): the tile engine reads back the halo its neighbours
    wrote and writes windows that do not align with chunks, and without the cache every such access
    would decompress and recompress whole chunks.  Changed chunks are stored when they leave the cache
    and by :meth:`flush`, which everything that reads the stored arrays (``levels``, the pyramid, the
    exports) calls first.
    """

    def __init__(self, path: Path, width: int, height: int, *, chunk: int = 256, dtype=LABEL_DTYPE,
                 cache_chunks: int = 1024, reopen: bool = False) -> None:
        """A new, empty canvas in ``path``; with ``reopen``, the level 0 an earlier run left there (a
        checkpoint, :mod:`dlcore.tiling.checkpoint`), whose coarser levels are dropped."""
        import zarr

        self.path = Path(path)
        self.width, self.height, self.chunk = width, height, chunk
        self.dtype = np.dtype(dtype)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._dirty: set[tuple[int, int]] = set()
        self._cache_chunks = max(1, int(cache_chunks))
        if reopen:
            self._group = zarr.open_group(str(self.path), mode="r+", zarr_format=2)
            level0 = self._group["0"]
            if level0.shape != (height, width) or level0.chunks != (chunk, chunk) or level0.dtype != self.dtype:
                raise InvariantError(f"the label canvas in {self.path} is {level0.shape} {level0.dtype} in chunks of "
                                     f"{level0.chunks}, not ({height}, {width}) {self.dtype} in chunks of {chunk}")
            for name in [n for n in self._group.array_keys() if n != "0"]:
                del self._group[name]
            self._levels = [level0]
            self._stored = self._chunks_on_disk(0)
        else:
            self._group = zarr.open_group(str(self.path), mode="w", zarr_format=2)
            self._levels = [self._create_level(0, width, height)]
            self._stored: set[tuple[int, int]] = set()  # chunks ever stored (mode "w": the array starts empty)

    @property
    def levels(self) -> list:
        """The stored zarr arrays, level 0 first (the cache is flushed first)."""
        self.flush()
        return self._levels

    def _create_level(self, index: int, width: int, height: int):
        return self._group.create_array(
            str(index), shape=(height, width), chunks=(self.chunk, self.chunk), dtype=self.dtype,
            compressors=[_compressor()], fill_value=0, config={"write_empty_chunks": False},
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )

    # -- level 0 through the chunk cache ------------------------------------------------------
    def _chunk_bounds(self, row: int, col: int) -> tuple[int, int, int, int]:
        c = self.chunk
        return row * c, min((row + 1) * c, self.height), col * c, min((col + 1) * c, self.width)

    def _store_many(self, chunks: dict[tuple[int, int], np.ndarray]) -> None:
        """Store chunks, each run of neighbouring chunks in a row with one zarr write (a zarr call costs
        milliseconds of its own, more than compressing a chunk)."""
        keys = sorted(chunks)
        start = 0
        while start < len(keys):
            row, col = keys[start]
            end = start + 1
            while end < len(keys) and keys[end] == (row, col + end - start):
                end += 1
            y0, y1, x0, _ = self._chunk_bounds(row, col)
            _, _, _, x1 = self._chunk_bounds(row, keys[end - 1][1])
            self._levels[0][y0:y1, x0:x1] = np.concatenate([chunks[k] for k in keys[start:end]], axis=1)
            self._stored.update(keys[start:end])
            start = end

    def _chunk(self, key: tuple[int, int]) -> np.ndarray:
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            return data
        y0, y1, x0, x1 = self._chunk_bounds(*key)
        if key in self._stored:
            data = np.asarray(self._levels[0][y0:y1, x0:x1])
        else:  # never stored: all background, and no zarr call (milliseconds each) to learn it
            data = np.zeros((y1 - y0, x1 - x0), dtype=self.dtype)
        self._cache[key] = data
        if len(self._cache) > self._cache_chunks:  # evict the oldest quarter at once (grouped stores)
            evicted = [self._cache.popitem(last=False) for _ in range(max(1, self._cache_chunks // 4))]
            self._store_many({k: d for k, d in evicted if k in self._dirty})
            self._dirty.difference_update(k for k, _ in evicted)
        return data

    def _pieces(self, x0: int, y0: int, x1: int, y1: int):
        """``(chunk key, chunk slices, region slices)`` covering the canvas region ``[y0, y1) x [x0, x1)``."""
        c = self.chunk
        for row in range(y0 // c, (y1 - 1) // c + 1):
            for col in range(x0 // c, (x1 - 1) // c + 1):
                cy0, cy1, cx0, cx1 = self._chunk_bounds(row, col)
                ry0, ry1, rx0, rx1 = max(y0, cy0), min(y1, cy1), max(x0, cx0), min(x1, cx1)
                yield ((row, col), (slice(ry0 - cy0, ry1 - cy0), slice(rx0 - cx0, rx1 - cx0)),
                       (slice(ry0 - y0, ry1 - y0), slice(rx0 - x0, rx1 - x0)))

    def _read_region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0), dtype=self.dtype)
        for key, in_chunk, in_region in self._pieces(x0, y0, x1, y1):
            out[in_region] = self._chunk(key)[in_chunk]
        return out

    def _write_region(self, x0: int, y0: int, labels: np.ndarray) -> None:
        h, w = labels.shape
        for key, in_chunk, in_region in self._pieces(x0, y0, x0 + w, y0 + h):
            piece = labels[in_region]
            data = self._chunk(key)
            if not np.array_equal(data[in_chunk], piece):
                data[in_chunk] = piece
                self._dirty.add(key)

    def flush(self) -> None:
        """Store every changed chunk of the cache."""
        if self._dirty:
            self._store_many({key: self._cache[key] for key in self._dirty})
            self._dirty.clear()

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Level-0 labels of the region, clipped to the canvas (the result may be smaller)."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0)), dtype=self.dtype)
        return self._read_region(x0, y0, x1, y1)

    def read_padded(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Level-0 labels of a region that may reach outside the canvas (outside reads as 0)."""
        out = np.zeros((height, width), dtype=self.dtype)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_region(x0, y0, x1, y1)
        return out

    def write(self, x: int, y: int, labels: np.ndarray) -> None:
        """Overwrite the region at ``(x, y)`` with ``labels`` (the part outside the canvas is dropped)."""
        h, w = labels.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 > x0 and y1 > y0:
            self._write_region(x0, y0, np.asarray(labels[y0 - y:y1 - y, x0 - x:x1 - x], dtype=self.dtype))

    def merge(self, x: int, y: int, labels: np.ndarray) -> None:
        """Write the non-zero ``labels`` at ``(x, y)`` where the canvas is still 0.

        The region may reach outside the canvas; the outside part is dropped.  Pixels already
        labelled (an object a neighbouring tile owns) are kept: the first owner wins.
        """
        h, w = labels.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        new = labels[y0 - y:y1 - y, x0 - x:x1 - x]
        if not new.any():
            return
        current = self._read_region(x0, y0, x1, y1)
        free = (current == 0) & (new != 0)
        current[free] = new[free]
        self._write_region(x0, y0, current)

    def clear_ids_from(self, first_id: int, regions) -> int:
        """Set every label ``>= first_id`` inside the ``(x, y, width, height)`` regions to 0; return how
        many chunks changed.  A resumed run calls it on the windows it redoes: labels a killed run wrote
        after its last checkpoint are exactly those ids (:mod:`dlcore.tiling.checkpoint`)."""
        keys: set[tuple[int, int]] = set()
        for x, y, w, h in regions:
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
            if x1 > x0 and y1 > y0:
                keys.update(key for key, _, _ in self._pieces(x0, y0, x1, y1))
        changed = 0
        for key in sorted(keys & (self._stored | set(self._cache))):
            data = self._chunk(key)
            stale = data >= first_id
            if stale.any():
                data[stale] = 0
                self._dirty.add(key)
                changed += 1
        return changed

    def stored_chunks(self, level: int) -> set[tuple[int, int]]:
        """(row, column) indices of the chunks of ``level`` that hold labels (empty ones are not stored)."""
        self.flush()
        return self._chunks_on_disk(level)

    def _chunks_on_disk(self, level: int) -> set[tuple[int, int]]:
        root = self.path / str(level)
        return {
            (int(row.name), int(col.name))
            for row in root.iterdir() if row.is_dir() and row.name.isdigit()
            for col in row.iterdir() if col.name.isdigit()
        }

    def _has_labels(self, stored: set[tuple[int, int]], y0: int, x0: int, y1: int, x1: int) -> bool:
        """True when a stored chunk overlaps rows ``[y0, y1)`` and columns ``[x0, x1)``."""
        c = self.chunk
        return any((r, q) in stored for r in range(y0 // c, (y1 - 1) // c + 1) for q in range(x0 // c, (x1 - 1) // c + 1))

    def build_pyramid(self, *, min_side: int = 256, block: int = 2048) -> None:
        """Add levels, each half the previous, until the long side is below ``min_side``.

        Blocks without any stored chunk (no objects) are skipped: they stay empty.
        """
        while max(self.levels[-1].shape) > min_side and min(self.levels[-1].shape) > 1:
            prev = self.levels[-1]
            stored = self.stored_chunks(len(self.levels) - 1)
            h, w = (prev.shape[0] + 1) // 2, (prev.shape[1] + 1) // 2
            level = self._create_level(len(self.levels), w, h)
            for by in range(0, h, block):
                for bx in range(0, w, block):
                    y0, x0 = 2 * by, 2 * bx
                    y1, x1 = min(2 * (by + block), prev.shape[0]), min(2 * (bx + block), prev.shape[1])
                    if self._has_labels(stored, y0, x0, y1, x1):
                        level[by:by + block, bx:bx + block] = np.asarray(prev[y0:y1, x0:x1])[::2, ::2]
            self._levels.append(level)

    def iter_tiles(self, level: int, tile: int, *, tiles_per_read: int = 16) -> Iterator[np.ndarray]:
        """Tiles of ``level`` in row-major order, each ``tile x tile`` (edges zero-padded).

        Tiles over chunks that were never stored are yielded as zeros without reading the store; the
        others are read ``tiles_per_read`` neighbours of a row at a time (a zarr call costs milliseconds
        of its own, more than decoding a chunk), so at most ``tile x tiles_per_read x tile`` labels are held.
        """
        array = self.levels[level]
        stored = self.stored_chunks(level)
        empty = np.zeros((tile, tile), dtype=self.dtype)
        h, w = array.shape
        span = tile * max(1, tiles_per_read)
        for ty in range(0, h, tile):
            y1 = min(ty + tile, h)
            for gx in range(0, w, span):
                g1 = min(gx + span, w)
                band = np.asarray(array[ty:y1, gx:g1]) if self._has_labels(stored, ty, gx, y1, g1) else None
                for tx in range(gx, g1, tile):
                    x1 = min(tx + tile, w)
                    if band is None or not self._has_labels(stored, ty, tx, y1, x1):
                        yield empty
                        continue
                    block = band[:, tx - gx:x1 - gx]
                    if block.shape != (tile, tile):
                        block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
                    yield block

    def write_ome_tiff(self, path: Path, *, mpp: float | None, tile: int = 256, name: str = "labels") -> Path:
        """Export the pyramid as a tiled, zlib-compressed pyramidal OME-TIFF (SubIFDs)."""
        import tifffile

        if len(self.levels) == 1:
            self.build_pyramid()
        metadata: dict = {"axes": "YX", "Name": name}
        if mpp:
            metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
            for index, array in enumerate(self.levels):
                options = dict(
                    shape=array.shape, dtype=self.dtype, tile=(tile, tile), compression="zlib",
                    compressionargs={"level": 1}, photometric="minisblack",
                )
                if index == 0:
                    tif.write(self.iter_tiles(0, tile), subifds=len(self.levels) - 1, metadata=metadata, **options)
                else:
                    tif.write(self.iter_tiles(index, tile), subfiletype=1, metadata=None, **options)
        return path

    def write_ome_zarr(self, path: Path, *, mpp: float | None, name: str = "labels") -> Path:
        """Copy the pyramid to ``path`` as an OME-Zarr (NGFF 0.4) image with multiscales metadata."""
        if len(self.levels) == 1:
            self.build_pyramid()
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        shutil.copytree(self.path, path)
        scale0 = mpp or 1.0
        datasets = [
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [scale0 * 2**i, scale0 * 2**i]}]}
            for i in range(len(self.levels))
        ]
        unit = {"unit": "micrometer"} if mpp else {}
        attrs = {
            "multiscales": [{
                "version": "0.4", "name": name,
                "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
                "datasets": datasets,
            }]
        }
        (path / ".zattrs").write_text(json.dumps(attrs, indent=1))
        return path

    def close(self) -> None:
        """Delete the store (a run's checkpoint keeps it by not calling this)."""
        shutil.rmtree(self.path, ignore_errors=True)

