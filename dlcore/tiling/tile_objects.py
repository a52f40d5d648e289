"""The objects one tile owns, found and measured without the rest of the slide (a worker's job).

Everything about a tile's objects that does not depend on other tiles is computed here, in one
vectorised pass over the tile's labels: areas, centroids and mean intensities (``np.bincount``), the
ownership rule (an object belongs to the tile whose core holds its centroid), the smallest-object
rule, bounding boxes (``ndimage.find_objects``), outlines and classes.  This is the CPU-heavy part
of stitching, and it runs in the engine's worker processes (:mod:`dlcore.tiling.pool`).

What does depend on other tiles (which pixels a neighbouring tile's object already holds, and the
slide-wide ids) is left to :meth:`dlcore.tiling.stitch.InstanceStitcher.add_objects`, which runs
in grid order in the main process; so the results do not depend on how many workers there are.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dlcore.objects import ObjectRecord, object_records, outlines
from dlcore.tiling.grid import Tile


@dataclass
class TileObjects:
    """The candidate objects of one tile: those it owns, before the overlap check with its neighbours.

    ``owned`` is the tile's label window with candidate ``k`` (1..n, in ascending order of the task's
    local ids) where it lies inside the canvas, 0 elsewhere.  Per candidate (index ``k - 1``): ``area``
    in pixels, ``boxes`` ((y0, y1, x0, x1) in window pixels), ``records`` (its
    :class:`~dlcore.objects.ObjectRecord`, complete but for the slide-wide id, 0 here) and
    ``touches_edge`` (reaches a window edge that is not the slide's).
    """

    owned: np.ndarray
    area: np.ndarray
    boxes: np.ndarray
    records: list[ObjectRecord]
    touches_edge: np.ndarray

    @property
    def count(self) -> int:
        return len(self.area)

    def box_slices(self, k: int) -> tuple[slice, slice]:
        y0, y1, x0, x1 = (int(v) for v in self.boxes[k])
        return slice(y0, y1), slice(x0, x1)


def clip_to_canvas(wx: int, wy: int, labels: np.ndarray, canvas_size: tuple[int, int]) -> np.ndarray:
    """``labels`` of the window at ``(wx, wy)`` with every pixel outside the canvas (``(width, height)``)
    set to 0.  Returns the input itself when the window lies inside the canvas, else a cleared copy."""
    width, height = canvas_size
    h, w = labels.shape
    top, left = max(0, -wy), max(0, -wx)
    bottom, right = max(0, wy + h - height), max(0, wx + w - width)
    if not (top or left or bottom or right):
        return labels
    clipped = np.zeros_like(labels)
    clipped[top:h - bottom, left:w - right] = labels[top:h - bottom, left:w - right]
    return clipped


@dataclass(frozen=True)
class TypedLabels:
    """A window's instance labels with each object's class, as a model that classifies its own objects
    returns them (HoVer-Net's nucleus types, say): ``class_names[class_of_label[i]]`` is label ``i``'s class
    (entry 0, background, is unused).  :func:`find_tile_objects` takes it where it takes labels."""

    labels: np.ndarray
    class_of_label: np.ndarray
    class_names: tuple[str, ...]

    def class_of(self, label: int) -> str | None:
        """The class name of ``label`` (None when the model gave it none)."""
        if 0 < label < len(self.class_of_label):
            index = int(self.class_of_label[label])
            return self.class_names[index] if 0 <= index < len(self.class_names) else None
        return None


def find_tile_objects(
    tile: Tile,
    window: np.ndarray,
    labels: np.ndarray,
    *,
    canvas_size: tuple[int, int],
    factor: float = 1.0,
    mpp: float | None = None,
    bounds: tuple[float, float] | None = None,
    min_pixels: int = 0,
    classify: Callable[[np.ndarray, np.ndarray], str | None] | None = None,
    excluded: np.ndarray | None = None,
) -> TileObjects:
    """The objects of ``labels`` (the task's map of ``tile``'s window) that ``tile`` owns, measured.

    An object is owned when its centroid (pixel centres at +0.5, slide coordinates) lies in the tile's
    core, it has at least ``max(min_pixels, 1)`` pixels inside the canvas, and it is not background;
    with ``excluded`` (a boolean mask of the window: QC artefacts), also when the window pixel holding
    its centroid is not excluded.
    ``factor``, ``mpp`` and ``bounds`` are as for :func:`dlcore.objects.object_record`.
    ``labels`` may be :class:`TypedLabels`: each object then has the class the model gave it.
    """
    from scipy import ndimage as ndi

    typed = labels if isinstance(labels, TypedLabels) else None
    if typed is not None:
        labels = typed.labels
    wx, wy, _, _ = tile.window
    labels = clip_to_canvas(wx, wy, np.asarray(labels), canvas_size)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return _empty(labels.shape, window.shape[2])
    foreground = np.flatnonzero(labels)  # measure object pixels only (background is most of a window)
    flat = labels.ravel()[foreground].astype(np.intp, copy=False)
    area = np.bincount(flat, minlength=n + 1)
    rows, cols = np.divmod(foreground, labels.shape[1])
    sum_y = np.bincount(flat, weights=rows.astype(np.float64), minlength=n + 1)
    sum_x = np.bincount(flat, weights=cols.astype(np.float64), minlength=n + 1)
    channels = window.reshape(-1, window.shape[2])[foreground]
    sums = np.stack([np.bincount(flat, weights=channels[:, c], minlength=n + 1) for c in range(window.shape[2])], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy, cx = sum_y / area, sum_x / area
        means = sums / area[:, None]
    owned_ids = np.nonzero(
        (area > 0) & (wx + cx + 0.5 >= tile.x) & (wx + cx + 0.5 < tile.x + tile.width)
        & (wy + cy + 0.5 >= tile.y) & (wy + cy + 0.5 < tile.y + tile.height)
    )[0]
    owned_ids = owned_ids[(owned_ids > 0) & (area[owned_ids] >= max(min_pixels, 1))]
    if excluded is not None and owned_ids.size:
        at_y = np.clip(np.floor(cy[owned_ids] + 0.5).astype(np.int64), 0, labels.shape[0] - 1)  # the pixel holding
        at_x = np.clip(np.floor(cx[owned_ids] + 0.5).astype(np.int64), 0, labels.shape[1] - 1)  # the centroid
        owned_ids = owned_ids[~excluded[at_y, at_x]]
    if owned_ids.size == 0:
        return _empty(labels.shape, window.shape[2])
    renumber = np.zeros(n + 1, np.uint32)
    renumber[owned_ids] = np.arange(1, owned_ids.size + 1, dtype=np.uint32)
    owned = renumber[labels]
    slices = ndi.find_objects(labels)
    boxes = np.array([[slices[i - 1][0].start, slices[i - 1][0].stop, slices[i - 1][1].start, slices[i - 1][1].stop]
                      for i in owned_ids], dtype=np.int64)
    masks = [labels[y0:y1, x0:x1] == local_id for local_id, (y0, y1, x0, x1) in zip(owned_ids, boxes)]
    polygons = outlines(masks)
    if typed is not None:
        classes = [typed.class_of(int(local_id)) for local_id in owned_ids]
    elif classify:
        classes = [classify(mask, window[y0:y1, x0:x1]) for mask, (y0, y1, x0, x1) in zip(masks, boxes)]
    else:
        classes = [None] * len(masks)
    h, w = labels.shape
    width, height = canvas_size
    touches = ((boxes[:, 0] == 0) & (wy > 0)) | ((boxes[:, 2] == 0) & (wx > 0)) \
        | ((boxes[:, 1] == h) & (wy + h < height)) | ((boxes[:, 3] == w) & (wx + w < width))
    records = object_records(
        ids=[0] * len(owned_ids), shapes=boxes[:, [1, 3]] - boxes[:, [0, 2]], polygons=polygons,
        origins=np.stack([wx + boxes[:, 2], wy + boxes[:, 0]], 1), factor=factor, mpp=mpp, areas=area[owned_ids],
        centroids=np.stack([cx[owned_ids] - boxes[:, 2], cy[owned_ids] - boxes[:, 0]], 1), means=means[owned_ids],
        class_names=classes, bounds=bounds)
    return TileObjects(owned=_compact(owned, owned_ids.size), area=area[owned_ids].astype(np.int64), boxes=boxes,
                       records=records, touches_edge=touches)


def _compact(owned: np.ndarray, n: int) -> np.ndarray:
    """The smallest unsigned type that holds ``n`` ids (less to send back from a worker)."""
    return owned.astype(np.uint16 if n < 65536 else np.uint32, copy=False)


def _empty(shape: tuple[int, int], channels: int) -> TileObjects:
    return TileObjects(owned=np.zeros(shape, np.uint16), area=np.zeros(0, np.int64), boxes=np.zeros((0, 4), np.int64),
                       records=[], touches_edge=np.zeros(0, bool))
