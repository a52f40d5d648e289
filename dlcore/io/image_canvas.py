"""A slide-sized predicted image (float channels per pixel) kept on disk while tiles are blended into it,
and its exports.

An ``image`` task (denoising, image translation) predicts new pixel values for every pixel of a tile's
window.  Neighbouring windows overlap by twice the halo; their predictions are cross-faded so that no
seam shows:

- **Weights.**  Along each axis a tile's weight is 0 within ``m = halo // 2`` pixels of its window's
  edge, then rises linearly over ``B = 2 * (halo - m)`` pixels (the band centred on the seam between two
  cores) to 1 (:func:`blend_weights`).  Where two tiles overlap their weights sum to exactly 1, and every
  pixel that gets weight is at least ``m`` pixels from its window's edge: a model whose receptive field
  reaches no further than half the halo gives exactly the whole-image prediction; one that reaches further
  is cross-faded over a band one halo wide instead of cut at the core's edge.
- **Writing.**  Tiles are stored in four planes by their grid parity ``(row % 2, col % 2)``.  With
  ``2 * halo <= tile_size`` two tiles of one parity never overlap, so each tile *overwrites* its values in
  its plane: a tile done twice (a run continued from a checkpoint redoes the tiles after its last commit)
  writes the same values again and nothing is counted twice.  The weights are not stored: they follow
  from the grid and from which plane holds a value (unwritten pixels are NaN).
- **Finishing** (:meth:`ImageCanvas.finalise`): chunk by chunk, the planes are blended
  (``sum(w * v) / sum(w)``), the value range is measured (or taken from the task), and level 0 is written
  in the output type: float32 as is, or uint16 / uint8 with a per-channel ``scale`` and ``offset``
  (``value = offset + scale * stored``); the planes are then deleted and a pyramid built by 2x2 means.
  Pixels no tile covered are stored as 0.

Scratch space: about 4 bytes per pixel and channel for the planes (each pixel lies in one plane, in two
to four near seams), then the output.  No slide-sized array is ever held in memory.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InvariantError, ParameterError

OUTPUT_DTYPES = ("float32", "uint16", "uint8")
PLANES = 4  # tile parities (row % 2, col % 2)
BLOCK = 1024  # pixels a side of the blocks finalise() works in


def _compressor():
    import numcodecs

    return numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


def blend_weights(length: int, halo: int) -> np.ndarray:
    """The 1-D weights of a window of ``length`` pixels with ``halo`` pixels of context on each side.

    0 within ``halo // 2`` of either edge, then a linear ramp over ``2 * (halo - halo // 2)`` pixels to 1
    (the minimum of the ramps from both edges).  Two windows overlapping by ``2 * halo`` have weights
    summing to 1 over the overlap.  ``halo == 0``: all ones.
    """
    if halo <= 0:
        return np.ones(length, np.float32)
    margin = halo // 2
    band = 2 * (halo - margin)
    d = np.arange(length, dtype=np.float64)
    ramp = np.minimum((d - margin + 0.5) / band, (length - 1 - d - margin + 0.5) / band)
    return np.clip(ramp, 0.0, 1.0).astype(np.float32)


def parity_weights(size: int, tile_size: int, halo: int) -> np.ndarray:
    """``(2, size)``: along one axis of the canvas, the weight of the tile of each parity (even, odd tile
    index) that covers each pixel (0 where none of that parity does).  Every tile of the grid counted."""
    out = np.zeros((2, size), np.float32)
    for index, start in enumerate(range(0, size, tile_size)):
        core = min(tile_size, size - start)
        weights = blend_weights(core + 2 * halo, halo)
        lo, hi = start - halo, start + core + halo
        a, b = max(lo, 0), min(hi, size)
        out[index % 2, a:b] = np.maximum(out[index % 2, a:b], weights[a - lo:b - lo])
    return out


@dataclass(frozen=True)
class Quantisation:
    """How the stored values map to the predicted ones, per channel: ``value = offset + scale * stored``.

    ``value_range`` is the range of predicted values the stored type spans (measured over the covered
    pixels, or the task's known range; values outside it are clipped); ``measured`` says which."""

    dtype: str
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    value_range: tuple[tuple[float, float], ...]
    measured: bool

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "scale": list(self.scale), "offset": list(self.offset),
                "value_range": [list(r) for r in self.value_range], "range_measured": self.measured,
                "rule": "value = offset + scale * stored"}


def quantisation_for(dtype: str, ranges: Sequence[tuple[float, float]], *, measured: bool) -> Quantisation:
    """The :class:`Quantisation` that spans each channel's ``(low, high)`` with ``dtype``'s integers
    (float32: scale 1, offset 0)."""
    if dtype not in OUTPUT_DTYPES:
        raise ParameterError(f"output_dtype={dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")
    ranges = tuple((float(lo), float(hi)) for lo, hi in ranges)
    if dtype == "float32":
        return Quantisation(dtype, (1.0,) * len(ranges), (0.0,) * len(ranges), ranges, measured)
    top = float(np.iinfo(dtype).max)
    scale = tuple((hi - lo) / top if hi > lo else 1.0 for lo, hi in ranges)
    return Quantisation(dtype, scale, tuple(lo for lo, _ in ranges), ranges, measured)


class ImageCanvas:
    """A ``height x width`` image of ``channels`` predicted values, blended from tiles in ``path`` (zarr).

    Tiles are added with :meth:`add` while the run streams; :meth:`finalise` then blends, quantises and
    builds the pyramid; :attr:`levels` and the exports read the result.  See the module docstring.
    """

    def __init__(self, path: Path, width: int, height: int, channels: Sequence[str], *, tile_size: int,
                 halo: int, chunk: int = 256, reopen: bool = False) -> None:
        """A new canvas in ``path``, or with ``reopen`` the planes an earlier run left there (a checkpoint)."""
        import zarr

        if 2 * halo > tile_size:
            raise ParameterError(f"halo={halo} is more than half of tile_size={tile_size}: blended tiles would "
                                 f"overlap more than their neighbours; use halo <= {tile_size // 2}")
        if not channels:
            raise ParameterError("a predicted image needs at least one channel")
        self.path = Path(path)
        self.width, self.height, self.chunk = int(width), int(height), int(chunk)
        self.channels = tuple(str(c) for c in channels)
        self.tile_size, self.halo = int(tile_size), int(halo)
        self.quantisation: Quantisation | None = None
        self._levels: list = []
        shape = (PLANES, len(self.channels), self.height, self.width)
        if reopen:
            self._group = zarr.open_group(str(self.path), mode="r+", zarr_format=2)
            planes = self._group["planes"]
            if planes.shape != shape or planes.chunks != (1, len(self.channels), chunk, chunk):
                raise InvariantError(f"the image canvas in {self.path} is {planes.shape} in chunks of {planes.chunks}, "
                                     f"not {shape} in chunks of {(1, len(self.channels), chunk, chunk)}")
            for name in [n for n in self._group.array_keys() if n != "planes"]:
                del self._group[name]
        else:
            self._group = zarr.open_group(str(self.path), mode="w", zarr_format=2)
            self._group.create_array("planes", shape=shape, chunks=(1, len(self.channels), chunk, chunk),
                                     dtype="float32", compressors=[_compressor()], fill_value=np.nan,
                                     config={"write_empty_chunks": False},
                                     chunk_key_encoding={"name": "v2", "separator": "/"})
        self._planes = self._group["planes"]

    # -- while tiles stream ------------------------------------------------------------------------
    def add(self, tile, values: np.ndarray) -> None:
        """Store a tile's ``(C, Y, X)`` predictions for its whole window (``tile.window``, halo included).

        Only the part that gets weight (and lies inside the canvas) is stored, in the tile's parity plane,
        overwriting whatever an earlier attempt at the same tile wrote there."""
        x, y, w, h = tile.window
        values = np.asarray(values)
        if values.shape != (len(self.channels), h, w):
            raise InvariantError(f"tile {tile.row},{tile.col}: the task returned {values.shape}, not "
                                 f"({len(self.channels)}, {h}, {w}) (channels, window height, width)")
        if not np.isfinite(values).all():
            raise InvariantError(f"tile {tile.row},{tile.col}: the task predicted NaN or infinite values")
        margin = self.halo // 2
        x0, y0 = max(x + margin, 0), max(y + margin, 0)
        x1, y1 = min(x + w - margin, self.width), min(y + h - margin, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        plane = (tile.row % 2) * 2 + tile.col % 2
        self._planes[plane, :, y0:y1, x0:x1] = values[:, y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)

    def flush(self) -> None:
        """Nothing is cached: every :meth:`add` is stored at once (for the checkpoint's commit)."""

    # -- finishing ---------------------------------------------------------------------------------
    def _blocks(self) -> Iterator[tuple[int, int, int, int]]:
        for y0 in range(0, self.height, BLOCK):
            for x0 in range(0, self.width, BLOCK):
                yield y0, min(y0 + BLOCK, self.height), x0, min(x0 + BLOCK, self.width)

    def blended(self, y0: int, y1: int, x0: int, x1: int, weights_y: np.ndarray, weights_x: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(values (C, Y, X) float32, covered (Y, X) bool)`` of a block: the planes' weighted mean."""
        planes = np.asarray(self._planes[:, :, y0:y1, x0:x1])
        total = np.zeros(planes.shape[1:], np.float64)
        weight = np.zeros(planes.shape[2:], np.float64)
        for p in range(PLANES):
            present = ~np.isnan(planes[p, 0])
            if not present.any():
                continue
            w = np.outer(weights_y[p // 2, y0:y1], weights_x[p % 2, x0:x1]) * present
            total += np.where(present, planes[p], 0.0) * w
            weight += w
        covered = weight > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(covered, total / np.where(covered, weight, 1.0), 0.0)
        return values.astype(np.float32), covered

    def finalise(self, *, dtype: str = "float32", value_range: tuple[float, float] | None = None,
                 progress=None) -> Quantisation:
        """Blend the planes into level 0 of ``dtype`` (quantised over ``value_range``, else over each channel's
        measured range), delete the planes and build the pyramid.  Returns the :class:`Quantisation`."""
        weights_y = parity_weights(self.height, self.tile_size, self.halo)
        weights_x = parity_weights(self.width, self.tile_size, self.halo)
        blocks = list(self._blocks())
        n = len(self.channels)
        if value_range is not None:
            quant = quantisation_for(dtype, [tuple(value_range)] * n, measured=False)
        elif dtype == "float32":
            quant = quantisation_for(dtype, [(0.0, 0.0)] * n, measured=True)
        else:
            quant = quantisation_for(dtype, self._measured_ranges(blocks, weights_y, weights_x), measured=True)
        level0 = self._create_level(0, self.width, self.height, dtype)
        low, high = np.full(n, np.inf), np.full(n, -np.inf)
        for i, (y0, y1, x0, x1) in enumerate(blocks):
            values, covered = self.blended(y0, y1, x0, x1, weights_y, weights_x)
            if covered.any():
                low = np.minimum(low, values[:, covered].min(axis=1))
                high = np.maximum(high, values[:, covered].max(axis=1))
                level0[:, y0:y1, x0:x1] = self._stored(values, covered, quant)
            if progress:
                progress("image", i + 1, len(blocks))
        if dtype == "float32":
            found = [(float(lo), float(hi)) if lo <= hi else (0.0, 0.0) for lo, hi in zip(low, high)]
            quant = quantisation_for(dtype, found, measured=True)
        del self._group["planes"]
        self._planes = None
        self.quantisation = quant
        self._levels = [level0]
        self._build_pyramid(dtype)
        self._write_attrs()
        return quant

    def _measured_ranges(self, blocks, weights_y, weights_x) -> list[tuple[float, float]]:
        low, high = np.full(len(self.channels), np.inf), np.full(len(self.channels), -np.inf)
        for y0, y1, x0, x1 in blocks:
            values, covered = self.blended(y0, y1, x0, x1, weights_y, weights_x)
            if covered.any():
                low = np.minimum(low, values[:, covered].min(axis=1))
                high = np.maximum(high, values[:, covered].max(axis=1))
        return [(float(lo), float(hi)) if lo <= hi else (0.0, 1.0) for lo, hi in zip(low, high)]

    @staticmethod
    def _stored(values: np.ndarray, covered: np.ndarray, quant: Quantisation) -> np.ndarray:
        if quant.dtype == "float32":
            return np.where(covered, values, 0.0).astype(np.float32)
        top = np.iinfo(quant.dtype).max
        offset = np.asarray(quant.offset, np.float64)[:, None, None]
        scale = np.asarray(quant.scale, np.float64)[:, None, None]
        stored = np.clip(np.rint((values - offset) / scale), 0, top)
        return np.where(covered, stored, 0).astype(quant.dtype)

    def _create_level(self, index: int, width: int, height: int, dtype: str):
        return self._group.create_array(
            str(index), shape=(len(self.channels), height, width), chunks=(1, self.chunk, self.chunk), dtype=dtype,
            compressors=[_compressor()], fill_value=0, config={"write_empty_chunks": False},
            chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True)

    def _build_pyramid(self, dtype: str, *, min_side: int = 256) -> None:
        """Levels of 2x2 means (rounded for integer types) until the long side is below ``min_side``."""
        while max(self._levels[-1].shape[1:]) > min_side and min(self._levels[-1].shape[1:]) > 1:
            prev = self._levels[-1]
            ph, pw = prev.shape[1:]
            h, w = (ph + 1) // 2, (pw + 1) // 2
            level = self._create_level(len(self._levels), w, h, dtype)
            for by in range(0, h, BLOCK):
                for bx in range(0, w, BLOCK):
                    block = np.asarray(prev[:, 2 * by:min(2 * (by + BLOCK), ph), 2 * bx:min(2 * (bx + BLOCK), pw)])
                    level[:, by:by + BLOCK, bx:bx + BLOCK] = _halve(block, dtype)
            self._levels.append(level)

    def _write_attrs(self) -> None:
        self._group.attrs["dlcore_image"] = {"channels": list(self.channels), **self.quantisation.as_dict()}

    # -- reading the result ------------------------------------------------------------------------
    def _finished(self) -> Quantisation:
        if self.quantisation is None:
            raise InvariantError("the predicted image is read before finalise() blended it")
        return self.quantisation

    @property
    def levels(self) -> list:
        """The stored zarr arrays of the finished image, ``(C, Y, X)`` each, level 0 first."""
        self._finished()
        return self._levels

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._finished().dtype)

    @property
    def scale(self) -> tuple[float, ...]:
        return self._finished().scale

    @property
    def offset(self) -> tuple[float, ...]:
        return self._finished().offset

    def stored_range(self, channel: int) -> tuple[float, float]:
        """The range of stored values that spans the channel's predicted values (for display windows)."""
        quant = self._finished()
        lo, hi = quant.value_range[channel]
        return (round((lo - quant.offset[channel]) / quant.scale[channel], 6),
                round((hi - quant.offset[channel]) / quant.scale[channel], 6))

    def read(self, level: int, channel: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Stored values of one channel's region of ``level`` (clipped to the level)."""
        array = self.levels[level]
        return np.asarray(array[channel, max(y, 0):y + height, max(x, 0):x + width])

    def values(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(C, Y, X)`` float32 predicted values of a region of ``level`` (stored values scaled back)."""
        quant = self._finished()
        stored = np.asarray(self.levels[level][:, max(y, 0):y + height, max(x, 0):x + width], np.float64)
        scale = np.asarray(quant.scale)[:, None, None]
        offset = np.asarray(quant.offset)[:, None, None]
        return (offset + scale * stored).astype(np.float32) if quant.dtype != "float32" else stored.astype(np.float32)

    def iter_tiles(self, level: int, channel: int, tile: int, *, tiles_per_read: int = 16) -> Iterator[np.ndarray]:
        """``tile x tile`` blocks of one channel of ``level``, row-major, zero-padded at the edges."""
        array = self.levels[level]
        _, h, w = array.shape
        span = tile * max(1, tiles_per_read)
        for ty in range(0, h, tile):
            for gx in range(0, w, span):
                band = np.asarray(array[channel, ty:ty + tile, gx:gx + span])
                for tx in range(0, band.shape[1], tile):
                    block = band[:, tx:tx + tile]
                    if block.shape != (tile, tile):
                        block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
                    yield block

    def write_ome_tiff(self, path: Path, *, mpp: float | None, tile: int = 256, name: str = "prediction") -> Path:
        """Export as a tiled, zlib-compressed, pyramidal (SubIFDs) OME-TIFF with named channels."""
        import tifffile

        levels = self.levels
        metadata: dict = {"axes": "CYX", "Name": name, "Channel": {"Name": list(self.channels)}}
        if mpp:
            metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
            for index, array in enumerate(levels):
                tiles = (t for c in range(len(self.channels)) for t in self.iter_tiles(index, c, tile))
                options = dict(shape=array.shape, dtype=self.dtype, tile=(tile, tile), compression="zlib",
                               compressionargs={"level": 1}, photometric="minisblack")
                if index == 0:
                    tif.write(tiles, subifds=len(levels) - 1, metadata=metadata, **options)
                else:
                    tif.write(tiles, subfiletype=1, metadata=None, **options)
        return path

    def write_ome_zarr(self, path: Path, *, mpp: float | None, name: str = "prediction") -> Path:
        """Copy the pyramid to ``path`` as an OME-Zarr (NGFF 0.4) image with channel names (omero metadata)."""
        levels = self.levels
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        shutil.copytree(self.path, path)
        scale0 = mpp or 1.0
        unit = {"unit": "micrometer"} if mpp else {}
        datasets = [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, scale0 * 2 ** i, scale0 * 2 ** i]}]} for i in range(len(levels))]
        attrs = json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").exists() else {}
        attrs["multiscales"] = [{"version": "0.4", "name": name, "datasets": datasets, "axes": [
            {"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit},
            {"name": "x", "type": "space", **unit}]}]
        attrs["omero"] = {"channels": [{"label": c, "active": True, "color": "FFFFFF",
                                        "window": dict(zip(("start", "end"), self.stored_range(i)))}
                                       for i, c in enumerate(self.channels)]}
        (path / ".zattrs").write_text(json.dumps(attrs, indent=1))
        return path

    def close(self) -> None:
        """Delete the store (a run's checkpoint keeps it by not calling this)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _halve(block: np.ndarray, dtype: str) -> np.ndarray:
    """``(C, Y, X)`` -> 2x2 means (edge rows / columns averaged with themselves)."""
    c, h, w = block.shape
    padded = np.pad(block.astype(np.float64), ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    mean = padded.reshape(c, math.ceil(h / 2), 2, math.ceil(w / 2), 2).mean(axis=(2, 4))
    return mean.astype(np.float32) if dtype == "float32" else np.rint(mean).astype(dtype)
