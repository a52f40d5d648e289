"""dlcore: deep learning and classical image analysis for whole-slide histology images.

The engine (reading slides, tiling, tasks, models, training) never imports ``omero``;
:mod:`dlcore.omero` is the only adapter that does.  Heavy imports are lazy, so
``import dlcore`` stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
