"""How a prediction network's input is made from a slide window (``config.dlcore.input_transform``).

- ``{type: none}``: the window's channels as they are (or the one ``channel`` a single-channel model
  sees), as float32;
- ``{type: hed, stain: haematoxylin|eosin|dab}``: one stain's concentration from Ruifrok and Johnston's
  colour deconvolution of 8-bit RGB (scikit-image's ``rgb2hed``, fixed stain vectors): a per-pixel
  computation, so a tile gives exactly the whole image's values.

Training recipes make their inputs with the same function, so a model sees on a slide what it saw in
training.
"""
from __future__ import annotations

import numpy as np

from dlcore.errors import SlideError

HED_INDEX = {"haematoxylin": 0, "eosin": 1, "dab": 2}


def hed_stain(rgb: np.ndarray, stain: str) -> np.ndarray:
    """One stain's ``(Y, X)`` concentration (float32) from an 8-bit ``(Y, X, 3)`` RGB image."""
    from skimage.color import rgb2hed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise SlideError(f"colour deconvolution needs 8-bit RGB (Y, X, 3) pixels, got {rgb.dtype} {rgb.shape}")
    return rgb2hed(rgb)[..., HED_INDEX[stain]].astype(np.float32)


def network_input(window: np.ndarray, transform: dict, *, channel: int | None = None) -> np.ndarray:
    """The ``(Y, X, C)`` float32 network input (before normalisation) made from a ``(Y, X, C)`` window."""
    window = np.asarray(window)
    if window.ndim == 2:
        window = window[..., None]
    if transform.get("type", "none") == "hed":
        return hed_stain(window, transform["stain"])[..., None]
    if channel is not None:
        window = window[..., channel:channel + 1]
    return window.astype(np.float32, copy=False)


__all__ = ["hed_stain", "network_input", "HED_INDEX"]
