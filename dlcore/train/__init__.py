"""Training: annotated datasets, splits, augmentations, metrics, the training loop, QC reports.

``import dlcore.train`` stays light (no torch); :func:`train_model` and :class:`TrainSpec` are
imported on first use from :mod:`dlcore.train.api`.
"""
from __future__ import annotations

__all__ = ["TrainSpec", "TrainResult", "train_model"]


def __getattr__(name: str):
    if name in __all__:
        from dlcore.train import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlcore.train' has no attribute {name!r}")
