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
from dlcore.objects import ObjectRecord, measure_object
from dlcore.tiling.grid import Tile
from dlcore.tiling.tile_objects import TileObjects, find_tile_objects


class InstanceStitcher:
    """Turns tile-local instance labels into slide-wide objects on a :class:`LabelCanvas`.

    Not thread-safe: the engine calls :meth:`add_objects` from one writer thread, in grid order; the
    tile's own work (:meth:`find_objects`) may run anywhere, e.g. in a worker process.
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
        self.class_counts: dict[str, int] = {}  # objects per class, for those that have one

    def add(self, tile: Tile, window: np.ndarray, labels: np.ndarray) -> list[ObjectRecord]:
        """Stitch one tile from its label map: :func:`find_tile_objects`, then :meth:`add_objects`."""
        return self.add_objects(tile, window, self.find_objects(tile, window, labels))

    def find_objects(self, tile: Tile, window: np.ndarray, labels: np.ndarray) -> TileObjects:
        """The tile's candidate objects (what a worker process computes; see :mod:`dlcore.tiling.tile_objects`)."""
        return find_tile_objects(tile, window, labels, canvas_size=(self.canvas.width, self.canvas.height),
                                 factor=self.factor, mpp=self.mpp, bounds=self.bounds, min_pixels=self.min_pixels,
                                 classify=self.classify)

    def add_objects(self, tile: Tile, window: np.ndarray, found: TileObjects) -> list[ObjectRecord]:
        """Write the tile's candidates that are not already on the canvas; their records, with slide-wide ids.

        Must be called in grid order (the ids, and which tile keeps an object two tiles both found,
        follow it).  A candidate more than half of whose pixels a neighbour's object already holds is a
        duplicate and dropped; one that overlaps less keeps only its free pixels and is measured,
        outlined and classified again (dropped if fewer than ``min_pixels`` remain).  ``found`` is the
        stitcher's after the call: the records of whole candidates get their ids in place.
        """
        if found.count == 0:
            return []
        wx, wy, ww, wh = tile.window
        current = self.canvas.read_padded(wx, wy, ww, wh)
        occupied = current > 0
        taken = np.bincount(found.owned[occupied].astype(np.intp), minlength=found.count + 1)[1:]
        kept = taken * 2 <= found.area
        self.duplicates += int((~kept).sum())
        free_pixels: dict[int, np.ndarray] = {}  # a sliver overlapping a neighbour's object: its free pixels
        for k in np.nonzero(kept & (taken > 0))[0].tolist():
            sl = found.box_slices(k)
            mask = (found.owned[sl] == k + 1) & ~occupied[sl]
            if mask.sum() < max(self.min_pixels, 1):
                kept[k] = False
                self.duplicates += 1
            else:
                free_pixels[k] = mask
        written = np.nonzero(kept)[0]
        if written.size == 0:
            return []
        self._check_inside(self.next_id, found.boxes[written], wx, wy)
        ids = np.zeros(found.count + 1, np.uint32)  # candidate -> slide-wide id (0: not written)
        ids[written + 1] = self.next_id + np.arange(written.size, dtype=np.uint32)
        records: list[ObjectRecord] = []
        for k in written.tolist():
            object_id = int(ids[k + 1])
            mask = free_pixels.get(k)
            if mask is None:
                record = found.records[k]
                object.__setattr__(record, "id", object_id)  # the tile's own record: nobody else holds it
            else:
                sl = found.box_slices(k)
                image = window[sl]
                record = measure_object(object_id=object_id, mask=mask, image=image,
                                        origin=(wx + sl[1].start, wy + sl[0].start), factor=self.factor, mpp=self.mpp,
                                        bounds=self.bounds,
                                        class_name=(self.classify(mask, image) if self.classify
                                                    else found.records[k].class_name))  # a model's own class
            records.append(record)
        self.next_id += written.size
        self.total_area_px += sum(record.area_px for record in records)
        for record in records:
            if record.class_name:
                self.class_counts[record.class_name] = self.class_counts.get(record.class_name, 0) + 1
        self.truncated += int(found.touches_edge[written].sum())
        on_canvas = ids[found.owned]
        self.canvas.write(wx, wy, np.where(occupied | (on_canvas == 0), current, on_canvas).astype(current.dtype))
        return records

    def checkpoint_state(self) -> dict:
        """What :meth:`restore_state` needs to continue after the tiles stitched so far."""
        return {"next_id": self.next_id, "truncated": self.truncated, "duplicates": self.duplicates,
                "total_area_px": self.total_area_px, "class_counts": dict(self.class_counts)}

    def restore_state(self, state: dict, *, redo_windows=()) -> None:
        """Continue from :meth:`checkpoint_state`'s ``state``; labels at or above its next id in the
        ``redo_windows`` ((x, y, width, height) of the tiles still to do) are cleared: a killed run wrote
        them after the checkpoint."""
        self.next_id = int(state["next_id"])
        self.truncated, self.duplicates = int(state["truncated"]), int(state["duplicates"])
        self.total_area_px = int(state["total_area_px"])
        self.class_counts = {str(k): int(v) for k, v in (state.get("class_counts") or {}).items()}
        self.canvas.clear_ids_from(self.next_id, redo_windows)

    def _check_inside(self, first_id: int, boxes: np.ndarray, wx: int, wy: int) -> None:
        """Raise :class:`InvariantError` unless every bounding box ((y0, y1, x0, x1) in the window at
        ``(wx, wy)``, of consecutive ids from ``first_id``) lies inside the canvas."""
        y0, y1, x0, x1 = wy + boxes[:, 0], wy + boxes[:, 1], wx + boxes[:, 2], wx + boxes[:, 3]
        outside = np.nonzero((x0 < 0) | (y0 < 0) | (x1 > self.canvas.width) | (y1 > self.canvas.height))[0]
        if outside.size:
            i = int(outside[0])
            raise InvariantError(
                f"object {first_id + i} spans x {x0[i]}..{x1[i]}, y {y0[i]}..{y1[i]}, outside the "
                f"{self.canvas.width}x{self.canvas.height} image"
            )


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

    def checkpoint_state(self) -> dict:
        """What :meth:`restore_state` needs to continue after the tiles stitched so far."""
        return {"class_pixels": self.class_pixels.copy()}

    def restore_state(self, state: dict, *, redo_windows=()) -> None:
        """Continue from :meth:`checkpoint_state`'s ``state``.  Tiles redone write the same classes into
        their own cores, so nothing on the canvas needs clearing."""
        self.class_pixels = np.asarray(state["class_pixels"], dtype=np.int64).copy()



class ImageStitcher:
    """Hands each tile's ``(C, Y, X)`` predicted values to an :class:`~dlcore.io.image_canvas.ImageCanvas`,
    which blends overlapping tiles (an ``image`` task: denoising, image translation)."""

    def __init__(self, canvas) -> None:
        self.canvas = canvas
        self.tiles = 0

    def add(self, tile: Tile, window: np.ndarray, values: np.ndarray) -> list[ObjectRecord]:
        self.canvas.add(tile, values)
        self.tiles += 1
        return []

    def checkpoint_state(self) -> dict:
        """What :meth:`restore_state` needs to continue after the tiles stitched so far."""
        return {"tiles": self.tiles}

    def restore_state(self, state: dict, *, redo_windows=()) -> None:
        """Continue from :meth:`checkpoint_state`'s ``state``.  A tile redone overwrites its own values in its
        plane of the canvas (see :mod:`dlcore.io.image_canvas`), so nothing needs clearing."""
        self.tiles = int(state["tiles"])
