"""A patch classifier mapped over a slide: class map, heatmap and slide-level decision.

Each tile core is cut into ``patch_size`` squares aligned on the slide's working-resolution grid
(tile sizes are multiples of the patch size).  Patches that are mostly tissue are classified in one
batch; the class map holds ``class index + 1`` (0 = not classified).  The per-patch probabilities go
to a :class:`PatchStitcher`, which keeps them on a slide-wide grid of patches (a few MB even for a
gigapixel slide) for the heatmap and the slide decision: the mean class probabilities over tissue
patches (background class left out), renormalised, and the top class.
"""
from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.tiling.stitch import SemanticStitcher


def tissue_fraction(patch: np.ndarray) -> float:
    """Fraction of pixels that look like tissue: not glass (bright, grey) and not black margin."""
    if patch.dtype != np.uint8:
        return 1.0
    rgb = patch[..., :3].astype(np.int16)
    grey = rgb.mean(axis=-1)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1) if rgb.shape[-1] >= 3 else np.full(grey.shape, 255)
    tissue = (grey > 25) & ((grey < 215) | (spread > 20))
    return float(tissue.mean())


def classify_windows(task, windows: list[np.ndarray]) -> tuple[list[np.ndarray], list[dict]]:
    """Class maps and patch grids (``{"probs": (rows, cols, K), "tissue": (rows, cols)}``) for windows;
    the tissue patches' probabilities come from ``task.patch_probabilities(patches) -> (N, K)``."""
    p, h = task.patch_size, task.halo
    patches, where, grids = [], [], []
    for index, window in enumerate(windows):
        core_h, core_w = window.shape[0] - 2 * h, window.shape[1] - 2 * h
        rows, cols = math.ceil(core_h / p), math.ceil(core_w / p)
        grids.append({"probs": np.zeros((rows, cols, len(task.class_names)), np.float32),
                      "tissue": np.zeros((rows, cols), bool)})
        for r in range(rows):
            for c in range(cols):
                patch = window[h + r * p:h + (r + 1) * p, h + c * p:h + (c + 1) * p]
                if tissue_fraction(patch) < task.min_tissue:
                    continue
                if patch.shape[:2] != (p, p):
                    patch = np.pad(patch, ((0, p - patch.shape[0]), (0, p - patch.shape[1]), (0, 0)), mode="edge")
                patches.append(patch)
                where.append((index, r, c))
    labels = [np.zeros(w.shape[:2], np.int32) for w in windows]
    if patches:
        probs = np.concatenate([np.asarray(task.patch_probabilities(patches[i:i + 256]), np.float32)
                                for i in range(0, len(patches), 256)])
        for (index, r, c), prob in zip(where, probs):
            grids[index]["probs"][r, c] = prob
            grids[index]["tissue"][r, c] = True
            labels[index][h + r * p:h + (r + 1) * p, h + c * p:h + (c + 1) * p] = int(np.argmax(prob)) + 1
    return labels, grids


def labelled_patches(tile, labels: np.ndarray, p: int, rows: int, cols: int) -> np.ndarray:
    """Patches of a tile's core still labelled on at least half of their pixels: a patch whose class
    was cleared on QC artefacts (``--qc exclude``) no longer counts in the slide's decision."""
    h = tile.halo
    core = labels[h:h + tile.height, h:h + tile.width] > 0
    kept = np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            block = core[r * p:(r + 1) * p, c * p:(c + 1) * p]
            kept[r, c] = block.size > 0 and block.mean() >= 0.5
    return kept


@dataclass(frozen=True)
class PatchGridOutputs:
    """The settings and tile-engine hooks every patch-classifier task shares (its own model aside).

    A task using it is a frozen dataclass that also has ``halo``, ``class_names`` and ``class_colors``, and
    a ``patch_probabilities(patches) -> (N, K)`` method; its ``prepare`` returns a copy with a fresh
    ``_pending``.  A patch is classified when at least ``min_tissue`` of its pixels look like tissue.
    ``predict`` gives the engine class maps (class index + 1, 0 where no patch was classified) and keeps
    each window's patch grid, in engine order, for the :class:`PatchStitcher`, which writes the heatmap
    and the slide's decision (``background_class`` left out of it).
    """

    patch_size: int = 64
    min_tissue: float = 0.5
    background_class: str | None = None
    # per-window patch probabilities, in engine order, from predict() to the stitcher
    _pending: collections.deque = field(default_factory=collections.deque, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    kind = "semantic"

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        labels, grids = classify_windows(self, windows)
        with self._lock:
            self._pending.extend(grids)
        return labels

    def make_stitcher(self, canvas, plan):
        return PatchStitcher(canvas, self)

    def pop_grid(self):
        """The next window's patch grid (called by the stitcher, in engine order)."""
        with self._lock:
            return self._pending.popleft()

    def summarize(self, stitcher) -> dict:
        return stitcher.slide_decision()

    def extra_outputs(self, stitcher, folder: Path) -> dict[str, Path]:
        return stitcher.write_heatmap(folder)


class PatchStitcher(SemanticStitcher):
    """A :class:`SemanticStitcher` that also keeps every patch's probabilities on a slide-wide grid."""

    def __init__(self, canvas, task) -> None:
        super().__init__(canvas, len(task.class_names))
        self.task = task
        p = task.patch_size
        self.grid = np.zeros((math.ceil(canvas.height / p), math.ceil(canvas.width / p), len(task.class_names)), np.float16)
        self.tissue = np.zeros(self.grid.shape[:2], bool)

    def add(self, tile, window, labels):
        records = super().add(tile, window, labels)
        grid = self.task.pop_grid()
        p = self.task.patch_size
        r0, c0 = tile.y // p, tile.x // p
        rows, cols = grid["tissue"].shape
        self.grid[r0:r0 + rows, c0:c0 + cols] = grid["probs"]
        self.tissue[r0:r0 + rows, c0:c0 + cols] = grid["tissue"] & labelled_patches(tile, labels, p, rows, cols)
        return records

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "grid": self.grid.copy(), "tissue": self.tissue.copy()}

    def restore_state(self, state: dict, *, redo_windows=()) -> None:
        super().restore_state(state, redo_windows=redo_windows)
        self.grid = np.asarray(state["grid"], dtype=np.float16).copy()
        self.tissue = np.asarray(state["tissue"], dtype=bool).copy()

    def slide_decision(self) -> dict:
        """``slide_classification`` (class -> score), the top class as a tag, and patch counts."""
        names = list(self.task.class_names)
        probs = self.grid[self.tissue].astype(np.float64)
        counts = {n: int(c) for n, c in zip(names, np.bincount(probs.argmax(axis=1), minlength=len(names)))} if len(probs) else {n: 0 for n in names}
        keep = [i for i, n in enumerate(names) if n != self.task.background_class]
        if len(probs):
            top_is_bg = np.isin(probs.argmax(axis=1), [i for i in range(len(names)) if i not in keep])
            probs = probs[~top_is_bg] if (~top_is_bg).any() else probs
        if not len(probs):
            return {"slide_classification": {names[i]: 0.0 for i in keep}, "tags": [], "tissue_patches": 0,
                    "patch_counts": counts}
        mean = probs[:, keep].mean(axis=0)
        mean = mean / max(mean.sum(), 1e-12)
        scores = {names[i]: round(float(s), 4) for i, s in zip(keep, mean)}
        top = max(scores, key=scores.get)
        return {"slide_classification": scores, "slide_class": top, "tags": [top],
                "tissue_patches": int(self.tissue.sum()), "patch_counts": counts}

    def write_heatmap(self, folder: Path) -> dict[str, Path]:
        """``heatmap.npy`` (rows, cols, classes; NaN off tissue) and ``heatmap.png`` (class colours by probability)."""
        from dlcore.models.outputs import write_probability_map

        npy, png = write_probability_map(self.grid, self.tissue, self.task.class_colors, folder, "heatmap")
        return {"heatmap": png, "heatmap probabilities": npy}
