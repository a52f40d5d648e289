"""Stitching per-tile predictions into slide-wide results.

Instances follow the ownership rule (stardist's big-image approach): an object found in a tile's
window belongs to the tile whose *core* holds its centroid.  Only the owner writes it, whole, with a
new slide-wide id, so an object crossing a tile border is neither cut in two nor counted twice.  The
halo must be wider than the largest object; objects that touch a window edge inside the slide are
counted as ``truncated`` so a too-small halo shows up in the summary.

Neighbouring tiles can segment the same object slightly differently near their borders.  An owned
object more than half of whose pixels another tile has already written is the same object seen
twice and is dropped (counted as ``duplicates``); otherwise it keeps only its unclaimed pixels (and is
dropped too if fewer than ``min_pixels`` remain), so the label image, the measurements and the
outlines always agree.

Windows at the slide's edge reach outside it (the reader mirrors the image there).  Nothing found
outside the image is a result: label pixels outside the canvas are cleared before any object is
measured or owned, so every centroid, outline, bounding box and label lies inside the image, and
:meth:`InstanceStitcher.add` checks that invariant for every object it writes.  An object the image's
edge cuts keeps its inside part, and is dropped like any other object when that part is smaller than
``min_pixels``.

Semantic maps need no ownership: each tile writes its core.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dlcore.errors import InvariantError
from dlcore.io.labels import LabelCanvas
from dlcore.objects import ObjectRecord, measure_object, object_record
from dlcore.tiling.grid import Tile


class InstanceStitcher:
    """Turns tile-local instance labels into slide-wide objects on a :class:`LabelCanvas`.

    Not thread-safe: the engine calls :meth:`add` from one writer thread.
    """

    def __init__(
        self,
        canvas: LabelCanvas,
        *,
        factor: float,
        mpp: float | None,
        classify: Callable[[np.ndarray, np.ndarray], str | None] | None = None,
        min_pixels: int = 0,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        self.canvas = canvas
        self.bounds = bounds  # the image's level-0 (width, height): object coordinates are clipped to it
        self.factor = factor
        self.mpp = mpp
        self.classify = classify
        self.min_pixels = min_pixels
        self.next_id = 1
        self.truncated = 0
        self.duplicates = 0
        self.total_area_px = 0
        self._coords: tuple | None = None  # (window shape, flattened rows, flattened columns)

    def add(self, tile: Tile, window: np.ndarray, labels: np.ndarray) -> list[ObjectRecord]:
        """Stitch one tile: write the objects it owns and return their records.

        Areas, centroids, mean intensities and overlaps with already-written objects are computed
        for all objects of the window at once; only owned objects get outlines.
        """
        from scipy import ndimage as ndi

        wx, wy, ww, wh = tile.window
        labels = self.clip_to_canvas(wx, wy, labels)
        current = self.canvas.read_padded(wx, wy, ww, wh)
        n = int(labels.max())
        if n == 0:
            return []
        flat = labels.ravel()
        area = np.bincount(flat, minlength=n + 1)
        rows, cols = self._coordinates(labels.shape)
        sum_y = np.bincount(flat, weights=rows, minlength=n + 1)
        sum_x = np.bincount(flat, weights=cols, minlength=n + 1)
        channels = window.reshape(-1, window.shape[2])
        sums = [np.bincount(flat, weights=channels[:, c], minlength=n + 1) for c in range(window.shape[2])]
        taken = np.bincount(flat[current.ravel() > 0], minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cy, cx = sum_y / area, sum_x / area
            means = np.stack(sums, axis=1) / area[:, None]
        # the ownership rule, in slide coordinates (pixel centres at +0.5)
        owned_ids = np.nonzero(
            (area > 0) & (wx + cx + 0.5 >= tile.x) & (wx + cx + 0.5 < tile.x + tile.width)
            & (wy + cy + 0.5 >= tile.y) & (wy + cy + 0.5 < tile.y + tile.height)
        )[0]
        owned_ids = owned_ids[(owned_ids > 0) & (area[owned_ids] >= max(self.min_pixels, 1))]  # edge-cut slivers go
        duplicates = taken[owned_ids] * 2 > area[owned_ids]
        self.duplicates += int(duplicates.sum())
        owned_ids = owned_ids[~duplicates]
        if owned_ids.size == 0:
            return []
        slices = ndi.find_objects(labels)
        out = current.copy()
        records: list[ObjectRecord] = []
        for local_id in owned_ids:
            sl = slices[local_id - 1]
            mask = labels[sl] == local_id
            trimmed = bool(taken[local_id])
            if trimmed:  # a sliver overlaps a neighbour's object: keep only the free pixels
                mask &= current[sl] == 0
                if mask.sum() < max(self.min_pixels, 1):
                    self.duplicates += 1
                    continue
            object_id = self.next_id
            self.next_id += 1
            origin = (wx + sl[1].start, wy + sl[0].start)
            self._check_inside(object_id, origin, mask.shape)
            image = window[sl]
            class_name = self.classify(mask, image) if self.classify else None
            if trimmed:
                record = measure_object(object_id=object_id, mask=mask, image=image, origin=origin,
                                        factor=self.factor, mpp=self.mpp, class_name=class_name, bounds=self.bounds)
            else:
                record = object_record(
                    object_id=object_id, mask=mask, origin=origin, factor=self.factor, mpp=self.mpp,
                    area=int(area[local_id]), centroid=(cx[local_id] - sl[1].start, cy[local_id] - sl[0].start),
                    means=tuple(float(v) for v in means[local_id]), class_name=class_name, bounds=self.bounds,
                )
            out[sl][mask] = object_id
            records.append(record)
            self.total_area_px += record.area_px
            if self._touches_inner_edge(sl, labels.shape, tile):
                self.truncated += 1
        self.canvas.write(wx, wy, out)
        return records

    def clip_to_canvas(self, wx: int, wy: int, labels: np.ndarray) -> np.ndarray:
        """``labels`` of the window at ``(wx, wy)`` with every pixel outside the canvas set to 0.

        Returns the input itself when the window lies inside the canvas, else a cleared copy.
        """
        h, w = labels.shape
        top, left = max(0, -wy), max(0, -wx)
        bottom, right = max(0, wy + h - self.canvas.height), max(0, wx + w - self.canvas.width)
        if not (top or left or bottom or right):
            return labels
        clipped = np.zeros_like(labels)
        clipped[top:h - bottom, left:w - right] = labels[top:h - bottom, left:w - right]
        return clipped

    def _check_inside(self, object_id: int, origin: tuple[int, int], shape: tuple[int, int]) -> None:
        """Raise :class:`InvariantError` unless the object's bounding box lies inside the canvas."""
        x0, y0 = origin
        if x0 < 0 or y0 < 0 or x0 + shape[1] > self.canvas.width or y0 + shape[0] > self.canvas.height:
            raise InvariantError(
                f"object {object_id} spans x {x0}..{x0 + shape[1]}, y {y0}..{y0 + shape[0]}, outside the "
                f"{self.canvas.width}x{self.canvas.height} image"
            )

    def _coordinates(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Flattened row and column indices of a window (cached: windows share their shape)."""
        cached = self._coords
        if cached is None or cached[0] != shape:
            h, w = shape
            cached = (shape, np.repeat(np.arange(h, dtype=np.float64), w), np.tile(np.arange(w, dtype=np.float64), h))
            self._coords = cached
        return cached[1], cached[2]

    def _touches_inner_edge(self, sl: tuple[slice, slice], shape: tuple[int, int], tile: Tile) -> bool:
        """True when the object reaches a window edge that is not the slide's edge (it may be cut)."""
        wx, wy, _, _ = tile.window
        h, w = shape
        top = sl[0].start == 0 and wy > 0
        left = sl[1].start == 0 and wx > 0
        bottom = sl[0].stop == h and wy + h < self.canvas.height
        right = sl[1].stop == w and wx + w < self.canvas.width
        return top or left or bottom or right


class SemanticStitcher:
    """Writes the core of each tile's class map to the canvas and counts pixels per class."""

    def __init__(self, canvas: LabelCanvas, n_classes: int) -> None:
        self.canvas = canvas
        self.class_pixels = np.zeros(n_classes + 1, dtype=np.int64)

    def add(self, tile: Tile, window: np.ndarray, labels: np.ndarray) -> list[ObjectRecord]:
        h = tile.halo
        core = labels[h:h + tile.height, h:h + tile.width]
        counts = np.bincount(core.ravel().astype(np.int64), minlength=len(self.class_pixels))
        self.class_pixels += counts[: len(self.class_pixels)]
        self.canvas.merge(tile.x, tile.y, core.astype(self.canvas.dtype))
        return []

