"""Stitching per-tile predictions into slide-wide results.

Instances follow the ownership rule (stardist's big-image approach): an object found in a tile's
window belongs to the tile whose *core* holds its centroid.  Only the owner writes it, whole, with a
new slide-wide id, so an object crossing a tile border is neither cut in two nor counted twice.  The
halo must be wider than the largest object; objects that touch a window edge inside the slide are
counted as ``truncated`` so a too-small halo shows up in the summary.

Neighbouring tiles can segment the same object slightly differently near their borders.  An owned
object more than half of whose pixels another tile has already written is the same object seen
twice and is dropped (counted as ``duplicates``); otherwise it keeps only its unclaimed pixels, so
the label image, the measurements and the outlines always agree.

Semantic maps need no ownership: each tile writes its core.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dlcore.io.labels import LabelCanvas
from dlcore.objects import ObjectRecord, measure_object
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
    ) -> None:
        self.canvas = canvas
        self.factor = factor
        self.mpp = mpp
        self.classify = classify
        self.next_id = 1
        self.truncated = 0
        self.duplicates = 0
        self.total_area_px = 0

    def add(self, tile: Tile, window: np.ndarray, labels: np.ndarray) -> list[ObjectRecord]:
        """Stitch one tile: write the objects it owns and return their records."""
        from scipy import ndimage as ndi

        wx, wy, ww, wh = tile.window
        claimed = self.canvas.read_padded(wx, wy, ww, wh) > 0
        owned = np.zeros(labels.shape, dtype=self.canvas.dtype)
        records: list[ObjectRecord] = []
        slices = ndi.find_objects(labels)
        for local_id, sl in enumerate(slices, start=1):
            if sl is None:
                continue
            mask = labels[sl] == local_id
            ys, xs = np.nonzero(mask)
            cy = wy + sl[0].start + ys.mean() + 0.5
            cx = wx + sl[1].start + xs.mean() + 0.5
            if not tile.owns(cx, cy):
                continue
            taken = claimed[sl] & mask
            if taken.any():
                if taken.sum() * 2 > ys.size:
                    self.duplicates += 1
                    continue
                mask = mask & ~taken
                ys, xs = np.nonzero(mask)
            if self._touches_inner_edge(sl, labels.shape, tile):
                self.truncated += 1
            object_id = self.next_id
            self.next_id += 1
            owned[sl][mask] = object_id
            image = window[sl]
            records.append(measure_object(
                object_id=object_id, mask=mask, image=image,
                origin=(wx + sl[1].start, wy + sl[0].start), factor=self.factor, mpp=self.mpp,
                class_name=self.classify(mask, image) if self.classify else None,
            ))
            self.total_area_px += int(ys.size)
        if records:
            self.canvas.merge(wx, wy, owned)
        return records

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

