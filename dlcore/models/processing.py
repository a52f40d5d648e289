"""bioimage.io pre- and post-processing steps, in numpy.

Runs the ``preprocessing`` / ``postprocessing`` lists of an rdf.yaml (format 0.5: ``{id, kwargs}``)
on tensors whose axes are named (``batch``, ``channel``, ``y``, ``x``).  Supported: ``scale_linear``,
``scale_range``, ``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``, ``clip``,
``ensure_dtype``, ``binarize``, ``sigmoid``, ``softmax``.

Data-dependent steps (``scale_range``, ``zero_mean_unit_variance``) compute their statistics per
tensor, as bioimage.io says, unless :meth:`Processing.fit` fixed them first: dlcore fits them once per
slide on sample windows, so that every tile is normalised alike and tiling cannot change the answer.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import ModelError

SUPPORTED = ("scale_linear", "scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "clip",
             "ensure_dtype", "binarize", "sigmoid", "softmax")
_DATA_DEPENDENT = ("scale_range", "zero_mean_unit_variance")


def _along(values, axis: str | None, axes: Sequence[str], ndim: int) -> np.ndarray | float:
    """Values given along one axis, shaped to broadcast over a tensor with ``axes``."""
    if axis is None or np.isscalar(values):
        return np.float32(values) if np.isscalar(values) else np.asarray(values, np.float32)
    shape = [1] * ndim
    shape[list(axes).index(axis)] = -1
    return np.asarray(values, np.float32).reshape(shape)


@dataclass
class Processing:
    """A list of processing steps for a tensor with named ``axes``.

    Parameters
    ----------
    steps
        ``[{"id": ..., "kwargs": {...}}, ...]`` as in rdf.yaml format 0.5.
    axes
        The tensor's axis ids, e.g. ``("batch", "channel", "y", "x")``.
    """

    steps: list[dict]
    axes: tuple[str, ...]
    fitted: list[dict | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        for step in self.steps:
            if step.get("id") not in SUPPORTED:
                raise ModelError(f"processing step {step.get('id')!r} is not supported by dlcore; supported: "
                                 f"{', '.join(SUPPORTED)}")
        if not self.fitted:
            self.fitted = [None] * len(self.steps)

    @property
    def data_dependent(self) -> bool:
        """True when a step computes statistics from the data."""
        return any(s["id"] in _DATA_DEPENDENT for s in self.steps)

    def fit(self, samples: Sequence[np.ndarray]) -> "Processing":
        """A copy whose data-dependent steps use statistics of all ``samples`` together.

        Each sample has this tensor's axes (batch size 1 or more) and may differ in Y, X.
        """
        if not self.data_dependent or not samples:
            return self
        ci = self.axes.index("channel") if "channel" in self.axes else None
        flat = []
        for s in samples:  # to (1, C, 1, P) so statistics can be taken over the pixels of every sample
            s = np.asarray(s, np.float32)
            s = np.moveaxis(s, ci, 0).reshape(s.shape[ci], -1) if ci is not None else s.reshape(1, -1)
            flat.append(s)
        joint = np.concatenate(flat, axis=1)[None, :, None, :]
        joint_axes = ("batch", "channel", "y", "x")
        fitted: list[dict | None] = []
        for step in self.steps:
            stats = None
            if step["id"] in _DATA_DEPENDENT:
                kwargs = dict(step.get("kwargs") or {})
                axes = kwargs.get("axes")
                kwargs["axes"] = None if axes is None else [a for a in axes if a in ("channel", "y", "x")] + ["batch"]
                stats = _stats(step["id"], kwargs, joint, joint_axes)
                # back to this tensor's layout: one value per channel or a scalar
                stats = {k: _relayout(v, self.axes) for k, v in stats.items()}
            fitted.append(stats)
            joint = _apply(step, joint, joint_axes, _as_joint(stats))
        return Processing(steps=self.steps, axes=self.axes, fitted=fitted)

    def __call__(self, tensor: np.ndarray) -> np.ndarray:
        out = np.asarray(tensor)
        for step, stats in zip(self.steps, self.fitted):
            out = _apply(step, out, self.axes, stats)
        return out

    def describe(self) -> list[dict]:
        """The steps and any fitted statistics, JSON-ready (for provenance)."""
        out = []
        for step, stats in zip(self.steps, self.fitted):
            entry = {"id": step["id"], "kwargs": step.get("kwargs") or {}}
            if stats:
                entry["slide_statistics"] = {k: np.asarray(v).ravel().round(4).tolist() for k, v in stats.items()}
            out.append(entry)
        return out


def _relayout(values: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
    """(1, C, 1, 1) or (1, 1, 1, 1) statistics reshaped to broadcast over a tensor with ``axes``."""
    values = np.asarray(values).reshape(-1)
    shape = [1] * len(axes)
    if values.size > 1:
        shape[axes.index("channel")] = values.size
    return values.reshape(shape)


def _as_joint(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    return {k: np.asarray(v).reshape(1, -1, 1, 1) for k, v in stats.items()}


def _reduce_axes(kwargs: dict, axes: Sequence[str]) -> tuple[int, ...]:
    names = kwargs.get("axes")
    if names is None:  # bioimage.io default: all axes but batch (each sample on its own)
        names = [a for a in axes if a != "batch"]
    return tuple(i for i, a in enumerate(axes) if a in names)


def _stats(step_id: str, kwargs: dict, x: np.ndarray, axes: Sequence[str]) -> dict:
    reduce = _reduce_axes(kwargs, axes)
    x = x.astype(np.float32, copy=False)
    if step_id == "scale_range":
        low = np.percentile(x, kwargs.get("min_percentile", 0.0), axis=reduce, keepdims=True)
        high = np.percentile(x, kwargs.get("max_percentile", 100.0), axis=reduce, keepdims=True)
        return {"low": low.astype(np.float32), "high": high.astype(np.float32)}
    mean = x.mean(axis=reduce, keepdims=True)
    std = x.std(axis=reduce, keepdims=True)
    return {"mean": mean, "std": std}


def _apply(step: dict, x: np.ndarray, axes: Sequence[str], stats: dict | None) -> np.ndarray:
    sid, kw = step["id"], dict(step.get("kwargs") or {})
    n = x.ndim
    if sid == "ensure_dtype":
        return x.astype(kw.get("dtype", "float32"))
    x = x.astype(np.float32, copy=False)
    if sid == "scale_linear":
        return x * _along(kw.get("gain", 1.0), kw.get("axis"), axes, n) + _along(kw.get("offset", 0.0), kw.get("axis"), axes, n)
    if sid == "fixed_zero_mean_unit_variance":
        mean = _along(kw["mean"], kw.get("axis"), axes, n)
        std = _along(kw["std"], kw.get("axis"), axes, n)
        return (x - mean) / std
    if sid == "scale_range":
        stats = stats or _stats(sid, kw, x, axes)
        return (x - stats["low"]) / (stats["high"] - stats["low"] + kw.get("eps", 1e-6))
    if sid == "zero_mean_unit_variance":
        stats = stats or _stats(sid, kw, x, axes)
        return (x - stats["mean"]) / (stats["std"] + kw.get("eps", 1e-6))
    if sid == "clip":
        return np.clip(x, kw.get("min"), kw.get("max"))
    if sid == "binarize":
        return (x > _along(kw["threshold"], kw.get("axis"), axes, n)).astype(np.float32)
    if sid == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if sid == "softmax":
        ax = list(axes).index(kw.get("axis", "channel"))
        e = np.exp(x - x.max(axis=ax, keepdims=True))
        return e / e.sum(axis=ax, keepdims=True)
    raise ModelError(f"processing step {sid!r} is not supported")  # pragma: no cover - checked in __post_init__
