"""A trained pixel classifier as tile-engine tasks (see :mod:`dlcore.tasks.base`).

- :class:`PixelClassifierTask` (semantic): every pixel's most probable class (1..n), per-class areas,
  class outlines (``class_outlines.geojson``) and the class probabilities on a coarse grid
  (``probabilities.npy`` and ``probabilities.png``, mean probability per block of at most 2048 blocks a
  side, so memory stays bounded whatever the slide).
- :class:`PixelObjectsTask` (instances, ``objects=CLASS``): the connected regions of one class
  (8-connected) become objects, those under ``min_size`` pixels (the classical pipeline's 60) dropped,
  then measured, outlined and stitched like nuclei.  Regions wider than the tile halo may be cut at tile
  seams: use it for cell- or gland-sized objects, not for whole tissue regions.

Both run whole in the engine's worker processes (features in OpenCV, the forest in scikit-learn's
compiled trees, no torch): the tile's window with a halo of at least the features' radius, so the class
map does not depend on the tiling.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ParameterError, SlideError
from dlcore.io.slide import SlideInfo
from dlcore.pixels.features import FeatureSpec, compute_features, full_scale, pixel_rows
from dlcore.pixels.forest import CompiledForest
from dlcore.tiling.stitch import SemanticStitcher

MAX_GRID_SIDE = 2048  # probability grid: at most this many blocks on the long side
MIN_BLOCK = 16  # working pixels per probability block, at least
ROWS_PER_CHUNK = 4096  # pixels per forest call: their features (1.5 MB) stay in cache for every tree
DEFAULT_MIN_SIZE = 60  # the classical pipeline's smallest object, pixels


@dataclass(frozen=True)
class TileClasses:
    """A tile's class map (``labels``, ``(Y, X)`` int32) and its ``(C, Y, X)`` float32 probabilities."""

    labels: np.ndarray
    probabilities: np.ndarray

    def with_excluded(self, excluded: np.ndarray) -> "TileClasses":
        """The class map cleared (0) where ``excluded`` (QC artefacts); probabilities kept."""
        return dataclasses.replace(self, labels=np.where(excluded, 0, self.labels).astype(self.labels.dtype))


def prepare_process() -> None:
    """Once per process: keep freed memory in the heap (a window's feature planes are a few hundred MB,
    allocated and freed per tile: without it every tile page-faults them in again, see
    :mod:`dlcore.models.allocator`), and one OpenCV thread in an engine worker (one worker per core)."""
    import multiprocessing

    import cv2

    from dlcore.models.allocator import keep_freed_memory

    keep_freed_memory()
    if multiprocessing.parent_process() is not None:
        cv2.setNumThreads(1)


def classify_pixels(window: np.ndarray, features: FeatureSpec, forest: CompiledForest) -> np.ndarray:
    """``(C, Y, X)`` float32 class probabilities of every pixel of a ``(Y, X, C)`` window."""
    prepare_process()
    planes = compute_features(window, features)
    n = planes.shape[1] * planes.shape[2]
    probs = np.empty((n, forest.arrays.n_classes), np.float32)
    for start in range(0, n, ROWS_PER_CHUNK):
        probs[start:start + ROWS_PER_CHUNK] = forest.predict_proba(pixel_rows(planes, start, start + ROWS_PER_CHUNK))
    return np.ascontiguousarray(probs.T).reshape(-1, planes.shape[1], planes.shape[2])


@dataclass(frozen=True)
class _PixelTask:
    """What both pixel-classifier tasks share: the package's features and forest, tiling, checks."""

    name: str
    forest: CompiledForest = field(repr=False, compare=False)
    features: FeatureSpec = field(repr=False)
    in_channels: int = 3
    mpp: float | None = None
    tile_size: int = 512
    halo: int = 32
    batch_size: int = 1
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    version: str = ""
    package: str = ""
    forest_sha256: str = ""
    all_classes: tuple[str, ...] = ()  # every class of the classifier (class_names: what the task reports)
    runs_in_process = True
    calibrates = False  # nothing is fitted per slide: the features and the forest are fixed

    def check(self, info: SlideInfo) -> None:
        if len(info.channels) != self.in_channels:
            raise SlideError(f"pixel classifier {self.name!r} was trained on {self.in_channels}-channel images but "
                             f"{info.name} has {len(info.channels)} ({', '.join(info.channels)}); train one on "
                             "images like this slide")
        if self.features.colour in ("od", "hed") and info.dtype != "uint8":
            raise SlideError(f"pixel classifier {self.name!r} works on 8-bit RGB (colour {self.features.colour}), "
                             f"but {info.name} is {info.dtype}")
        top = full_scale(info.dtype)
        if self.features.colour == "raw" and np.dtype(info.dtype).kind in "ui" and top > self.features.max_value:
            raise SlideError(f"pixel classifier {self.name!r} was trained on values up to {self.features.max_value:g} "
                             f"but {info.name} is {info.dtype} (up to {top:g}); train one on {info.dtype} images")

    def prepare(self, samples: list[np.ndarray]) -> "PixelClassifierTask":
        return self

    def tile_classes(self, window: np.ndarray) -> TileClasses:
        """The class map (most probable class, 1..n) and probabilities of one window."""
        probs = classify_pixels(window, self.features, self.forest)
        return TileClasses((np.argmax(probs, axis=0) + 1).astype(np.int32), probs)

    def provenance(self) -> dict:
        return {"task": self.name, "kind": f"pixel_classifier ({self.kind})", "model_version": self.version,
                "package": self.package, "forest_sha256": self.forest_sha256, "classes": list(self.all_classes),
                "features": self.features.as_dict(),
                "parameters": {"mpp": self.mpp, "tile_size": self.tile_size, "halo": self.halo,
                               **self._extra_parameters()}}

    def _extra_parameters(self) -> dict:
        return {}


@dataclass(frozen=True)
class PixelClassifierTask(_PixelTask):
    """Semantic segmentation by a pixel classifier package (see the module docstring)."""

    kind = "semantic"

    def predict(self, windows: list[np.ndarray]) -> list:
        return [self.tile_classes(w) for w in windows]

    def make_stitcher(self, canvas, plan):
        stitcher = ProbabilityStitcher(canvas, self)
        stitcher.factor = plan.factor  # level-0 pixels per working pixel, for the outlines
        return stitcher

    def summarize(self, stitcher) -> dict:
        return stitcher.mean_probabilities()

    def extra_outputs(self, stitcher, folder: Path) -> dict[str, Path]:
        """Class outlines (GeoJSON) and the probability grid (``probabilities.npy`` / ``.png``)."""
        from dlcore.models.outputs import write_class_outlines, write_probability_map

        outlines = write_class_outlines(stitcher, self.class_names, self.class_colors, folder / "class_outlines.geojson")
        npy, png = write_probability_map(stitcher.grid, stitcher.seen, self.class_colors, folder, "probabilities")
        return {"class outlines": outlines, "class probabilities": png, "class probabilities grid": npy}


class ProbabilityStitcher(SemanticStitcher):
    """A :class:`SemanticStitcher` that also averages each class's probability over blocks of the slide."""

    def __init__(self, canvas, task: PixelClassifierTask) -> None:
        super().__init__(canvas, len(task.class_names))
        self.class_names = task.class_names
        self.block = max(MIN_BLOCK, math.ceil(max(canvas.width, canvas.height) / MAX_GRID_SIDE))
        rows, cols = math.ceil(canvas.height / self.block), math.ceil(canvas.width / self.block)
        self.sums = np.zeros((rows, cols, len(task.class_names)), np.float32)
        self.counts = np.zeros((rows, cols), np.int32)

    @property
    def seen(self) -> np.ndarray:
        return self.counts > 0

    @property
    def grid(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[..., None]

    def add(self, tile, window, result: TileClasses):
        records = super().add(tile, window, result.labels)
        h, b = tile.halo, self.block
        core = result.probabilities[:, h:h + tile.height, h:h + tile.width]
        ys = (tile.y + np.arange(core.shape[1])) // b
        xs = (tile.x + np.arange(core.shape[2])) // b
        keep_y, keep_x = ys < self.sums.shape[0], xs < self.sums.shape[1]
        core = core[:, keep_y][:, :, keep_x]
        ys, xs = ys[keep_y], xs[keep_x]
        cell = (ys[:, None] - ys[0]) * (xs[-1] - xs[0] + 1) + (xs[None, :] - xs[0])
        n_cells = (ys[-1] - ys[0] + 1) * (xs[-1] - xs[0] + 1)
        counts = np.bincount(cell.ravel(), minlength=n_cells).reshape(ys[-1] - ys[0] + 1, -1)
        region = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        self.counts[region] += counts
        for c in range(core.shape[0]):
            sums = np.bincount(cell.ravel(), weights=core[c].ravel(), minlength=n_cells)
            self.sums[region + (c,)] += sums.reshape(counts.shape).astype(np.float32)
        return records

    def mean_probabilities(self) -> dict:
        """``mean_class_probability``: each class's probability averaged over every analysed pixel."""
        total = int(self.counts.sum())
        if not total:
            return {"mean_class_probability": {}}
        means = self.sums.sum(axis=(0, 1)) / total
        return {"mean_class_probability": {n: round(float(v), 4) for n, v in zip(self.class_names, means)}}

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "prob_sums": self.sums.copy(), "prob_counts": self.counts.copy()}

    def restore_state(self, state: dict, *, redo_windows=()) -> None:
        """Continue from :meth:`checkpoint_state`; tiles redone after the checkpoint add their blocks again,
        so the sums are those committed with the class map, never counted twice."""
        super().restore_state(state, redo_windows=redo_windows)
        self.sums = np.asarray(state["prob_sums"], np.float32).copy()
        self.counts = np.asarray(state["prob_counts"], np.int32).copy()


@dataclass(frozen=True)
class ComponentsOf:
    """One class's connected regions in a class map, numbered 1..n (8-connected), as a picklable callable."""

    index: int

    def __call__(self, classes: np.ndarray) -> np.ndarray:
        import cv2

        _, labels = cv2.connectedComponents((classes == self.index).astype(np.uint8), connectivity=8,
                                            ltype=cv2.CV_32S)
        return labels


@dataclass(frozen=True)
class PixelObjectsTask(_PixelTask):
    """The regions of one class of a pixel classifier as objects (see the module docstring)."""

    objects: str = ""
    min_size: int = DEFAULT_MIN_SIZE
    kind = "instances"

    @property
    def min_object_pixels(self) -> int:
        return self.min_size

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        components = ComponentsOf(self.all_classes.index(self.objects) + 1)
        return [components(self.tile_classes(w).labels) for w in windows]

    def _extra_parameters(self) -> dict:
        return {"objects": self.objects, "min_size": self.min_size}


def load_pixel_task(folder: Path, name: str, params: dict | None = None) -> PixelClassifierTask:
    """The task of the pixel classifier package in ``folder`` with the user's ``params``.

    Parameters: ``mpp``, ``tile_size``, ``halo`` (at least the features' radius), ``objects`` (a class
    name: its regions become objects) and ``min_size`` (objects' smallest area, pixels).  Unknown names
    raise ParameterError listing the valid ones.
    """
    from dlcore.pixels.package import read_pixel_package

    package = read_pixel_package(folder)
    params = {k: v for k, v in dict(params or {}).items() if v is not None}
    params.pop("device", None)  # the forest runs on the CPU whatever the configured device
    params.pop("weights_format", None)
    valid = {"mpp", "tile_size", "halo", "objects", "min_size", "batch_size"}
    unknown = set(params) - valid
    if unknown:
        raise ParameterError(f"pixel classifier {name!r} has no parameter(s) {sorted(unknown)}; its parameters: "
                             f"{', '.join(sorted(valid))}")
    radius = package.features.radius()
    halo = int(params.pop("halo", package.halo))
    if halo < radius:
        raise ParameterError(f"halo={halo} is smaller than the features' radius {radius} px: tiles would change the "
                             f"result; use halo >= {radius}")
    tile_size = int(params.pop("tile_size", package.tile_size))
    if tile_size < 16:
        raise ParameterError(f"tile_size={tile_size} must be at least 16 pixels")
    base = dict(name=name, forest=CompiledForest(package.forest), features=package.features,
                in_channels=package.in_channels, mpp=params.pop("mpp", package.mpp), tile_size=tile_size, halo=halo,
                batch_size=int(params.pop("batch_size", 1)), class_names=package.classes,
                class_colors=package.colors, version=package.version, package=str(folder),
                forest_sha256=package.forest_sha256, all_classes=package.classes)
    objects = params.pop("objects", None)
    min_size = params.pop("min_size", None)
    if objects is None:
        if min_size is not None:
            raise ParameterError("min_size applies to objects: give objects=CLASS too")
        return PixelClassifierTask(**base)
    if objects not in package.classes:
        raise ParameterError(f"objects={objects!r} is not a class of {name!r}; its classes: {', '.join(package.classes)}")
    min_size = DEFAULT_MIN_SIZE if min_size is None else int(min_size)
    if min_size < 1:
        raise ParameterError(f"min_size={min_size} must be at least 1 pixel")
    return PixelObjectsTask(**{**base, "class_names": (), "class_colors": ()}, objects=objects, min_size=min_size)
