"""The pixel classifier's random forest: trained with scikit-learn, stored as plain arrays, no pickle.

A trained forest is kept as :class:`ForestArrays`: per tree its nodes' children, split feature and
threshold, and per node the class fractions, all concatenated into a few integer and float arrays.
:meth:`ForestArrays.save` writes them into one ``.npz`` file and :meth:`ForestArrays.load` reads it
with ``allow_pickle=False``: loading a model never runs code or unpickles objects from the package.

Prediction rebuilds scikit-learn's compiled trees from those arrays (``sklearn.tree._tree.Tree``
restored from its documented state: the node table and the values), so a stored forest predicts with
scikit-learn's own compiled traversal, bit for bit what the trained forest predicts (tested), and
:func:`predict_proba` runs the trees on threads (the traversal releases the GIL).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError

FOREST_FORMAT = 1
_INT_FIELDS = ("left_child", "right_child", "feature")


@dataclass(frozen=True)
class ForestSettings:
    """How the forest is grown.  32 trees (ilastik grows 100): applying a forest costs in proportion to its
    trees, and on scribbles the held-out accuracy of 32 and 100 trees differs by less than the stroke-to-stroke
    spread (BENCHMARKS.md, "Pixel classification"); ``--trees 100`` gives ilastik's forest."""

    n_trees: int = 32
    max_depth: int | None = 16
    min_samples_leaf: int = 1
    max_features: str | float = "sqrt"
    class_weight: str | None = "balanced"  # scribbles are rarely balanced; each class counts alike
    seed: int = 0

    def as_dict(self) -> dict:
        return {"n_trees": self.n_trees, "max_depth": self.max_depth, "min_samples_leaf": self.min_samples_leaf,
                "max_features": self.max_features, "class_weight": self.class_weight, "seed": self.seed}


@dataclass(frozen=True)
class ForestArrays:
    """A forest as arrays: ``offsets[t]:offsets[t+1]`` are tree ``t``'s nodes in ``left``, ``right``,
    ``feature``, ``threshold`` (split when ``x[feature] <= threshold``; leaves have children -1) and
    ``values`` (class fractions, ``(nodes, classes)``)."""

    offsets: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    values: np.ndarray
    n_features: int
    depths: np.ndarray

    @property
    def n_trees(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_classes(self) -> int:
        return int(self.values.shape[1])

    @classmethod
    def from_sklearn(cls, forest) -> "ForestArrays":
        """The arrays of a fitted ``RandomForestClassifier`` (single output)."""
        trees = [est.tree_ for est in forest.estimators_]
        sizes = [t.node_count for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        values = np.concatenate([t.value[:, 0, :] for t in trees]).astype(np.float64)
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
        return cls(offsets=offsets,
                   left=np.concatenate([t.children_left for t in trees]).astype(np.int32),
                   right=np.concatenate([t.children_right for t in trees]).astype(np.int32),
                   feature=np.concatenate([t.feature for t in trees]).astype(np.int32),
                   threshold=np.concatenate([t.threshold for t in trees]).astype(np.float64),
                   values=values, n_features=int(forest.n_features_in_),
                   depths=np.array([t.max_depth for t in trees], np.int32))

    def save(self, path: str | Path) -> Path:
        """Write the arrays to ``path`` (an ``.npz`` of plain numeric arrays)."""
        path = Path(path)
        with open(path, "wb") as f:
            np.savez_compressed(f, format=np.array(FOREST_FORMAT), offsets=self.offsets, left=self.left,
                                right=self.right, feature=self.feature, threshold=self.threshold, values=self.values,
                                n_features=np.array(self.n_features), depths=self.depths)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ForestArrays":
        """Read :meth:`save`'s file without unpickling anything; raises ModelError naming a bad file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the forest {path}: {exc}") from exc
        needed = {"format", "offsets", "left", "right", "feature", "threshold", "values", "n_features", "depths"}
        if needed - set(fields) or int(fields["format"]) != FOREST_FORMAT:
            raise ModelError(f"{path} is not a dlcore forest (format {FOREST_FORMAT}); fields: {sorted(fields)}")
        forest = cls(offsets=fields["offsets"].astype(np.int64), left=fields["left"].astype(np.int32),
                     right=fields["right"].astype(np.int32), feature=fields["feature"].astype(np.int32),
                     threshold=fields["threshold"].astype(np.float64), values=fields["values"].astype(np.float64),
                     n_features=int(fields["n_features"]), depths=fields["depths"].astype(np.int32))
        forest.check()
        return forest

    def check(self) -> None:
        """Raise ModelError unless the arrays describe valid trees (children inside their own tree)."""
        n = int(self.offsets[-1]) if len(self.offsets) else 0
        if len(self.offsets) < 2 or any(len(a) != n for a in (self.left, self.right, self.feature, self.threshold,
                                                                self.values)):
            raise ModelError("the forest's arrays disagree in length")
        for t in range(self.n_trees):
            a, b = int(self.offsets[t]), int(self.offsets[t + 1])
            left, right = self.left[a:b], self.right[a:b]
            inner = left >= 0
            if np.any((left[inner] <= 0) | (left[inner] >= b - a) | (right[inner] <= 0) | (right[inner] >= b - a)):
                raise ModelError(f"tree {t} of the forest points outside itself")
            if np.any((self.feature[a:b][inner] < 0) | (self.feature[a:b][inner] >= self.n_features)):
                raise ModelError(f"tree {t} of the forest splits on a feature it does not have")

    def sklearn_trees(self) -> list:
        """scikit-learn's compiled trees restored from the arrays (no pickle)."""
        from sklearn.tree._tree import NODE_DTYPE, Tree

        trees = []
        for t in range(self.n_trees):
            a, b = int(self.offsets[t]), int(self.offsets[t + 1])
            nodes = np.zeros(b - a, dtype=NODE_DTYPE)
            nodes["left_child"] = self.left[a:b]
            nodes["right_child"] = self.right[a:b]
            leaf = self.left[a:b] < 0
            nodes["feature"] = np.where(leaf, -2, self.feature[a:b])
            nodes["threshold"] = np.where(leaf, -2.0, self.threshold[a:b])
            nodes["n_node_samples"] = 1
            nodes["weighted_n_node_samples"] = 1.0
            tree = Tree(self.n_features, np.array([self.n_classes], dtype=np.intp), 1)
            tree.__setstate__({"max_depth": int(self.depths[t]), "node_count": b - a, "nodes": nodes,
                               "values": np.ascontiguousarray(self.values[a:b, None, :])})
            trees.append(tree)
        return trees


def train_forest(x: np.ndarray, y: np.ndarray, settings: ForestSettings, *, threads: int | None = None):
    """A fitted scikit-learn random forest on ``x`` ``(N, F)`` float32 and classes ``y`` ``(N,)`` (0..k-1),
    with out-of-bag scores."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=settings.n_trees, max_depth=settings.max_depth,
                                    min_samples_leaf=settings.min_samples_leaf, max_features=settings.max_features,
                                    class_weight=settings.class_weight, oob_score=True, bootstrap=True,
                                    random_state=settings.seed, n_jobs=threads or os.cpu_count())
    return forest.fit(x, y)


class CompiledForest:
    """A stored forest ready to predict: scikit-learn trees rebuilt once, run on ``threads`` threads."""

    def __init__(self, arrays: ForestArrays, *, threads: int | None = None) -> None:
        self.arrays = arrays
        self.threads = max(1, threads or default_threads())
        self._trees: list | None = None
        self._lock = threading.Lock()

    @property
    def trees(self) -> list:
        """scikit-learn's trees, rebuilt on first use: where the forest predicts (an engine worker), not
        in the process that loaded the package and only hands it on."""
        with self._lock:
            if self._trees is None:
                self._trees = self.arrays.sklearn_trees()
            return self._trees

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` float32 for ``x`` ``(N, F)`` (the mean of the trees' leaf
        fractions, as ``RandomForestClassifier.predict_proba``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.arrays.n_features:
            raise ModelError(f"the forest takes {self.arrays.n_features} features per pixel, got {x.shape}")
        total = np.zeros((x.shape[0], self.arrays.n_classes), np.float64)
        lock = threading.Lock()

        def run(tree) -> None:
            leaf_values = tree.predict(x)  # (N, classes) for one output
            leaf_values = leaf_values.reshape(x.shape[0], -1)
            with lock:
                total.__iadd__(leaf_values)

        trees = self.trees
        if self.threads == 1:
            for tree in trees:
                run(tree)
        else:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(run, trees))
        return (total / len(trees)).astype(np.float32)

    def __getstate__(self) -> dict:  # send the arrays to worker processes, rebuild the trees there
        return {"arrays": self.arrays}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["arrays"])  # the threads of where it lands: one in an engine worker


def default_threads() -> int:
    """Threads for the trees: one in an engine worker process (one worker per core), else every core."""
    import multiprocessing

    return 1 if multiprocessing.parent_process() is not None else (os.cpu_count() or 1)
