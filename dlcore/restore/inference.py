"""Running a prediction network on normalised images of any size (training-time QC, test tensors).

A U-Net takes Y and X that are multiples of its ``divisor``: images are padded by reflection up to the
next multiple and the output is cropped back.  Images larger than ``tile`` are run in overlapping
tiles (``halo`` pixels of context on each side, only the tiles' cores kept), so that memory does not
grow with the image.
"""
from __future__ import annotations

import numpy as np


def pad_reflect(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """A ``(C, Y, X)`` array padded at the bottom and right, by reflection, to ``(C, height, width)``."""
    py, px = height - x.shape[1], width - x.shape[2]
    if py == 0 and px == 0:
        return x
    return np.pad(x, ((0, 0), (0, py), (0, px)), mode="reflect")


def valid_size(n: int, divisor: int) -> int:
    """The smallest multiple of ``divisor`` >= ``n``."""
    return -(-n // divisor) * divisor


def forward(model, batch: np.ndarray) -> np.ndarray:
    """The network's float32 output for a ``(B, C, Y, X)`` float32 batch (no gradients, the model's device)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)).float().cpu().numpy()


def predict_normalized(model, x: np.ndarray, *, tile: int = 512, halo: int = 32) -> np.ndarray:
    """The model's ``(C_out, Y, X)`` prediction for a normalised ``(C, Y, X)`` image.

    Parameters
    ----------
    model
        A torch module in eval mode with a ``divisor`` attribute (1 when absent).
    x
        The normalised image.
    tile, halo
        Images larger than ``tile`` in Y or X run in tiles of ``tile`` plus ``halo`` on each side.
    """
    divisor = int(getattr(model, "divisor", 1))
    _, height, width = x.shape
    if height <= tile and width <= tile:
        padded = pad_reflect(x, valid_size(height, divisor), valid_size(width, divisor))
        return forward(model, padded[None])[0, :, :height, :width]
    full = np.pad(x, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    out = None
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            h, w = min(tile, height - y0), min(tile, width - x0)
            window = full[:, y0:y0 + h + 2 * halo, x0:x0 + w + 2 * halo]
            wh, ww = window.shape[1:]
            pred = forward(model, pad_reflect(window, valid_size(wh, divisor), valid_size(ww, divisor))[None])[0]
            if out is None:
                out = np.empty((pred.shape[0], height, width), np.float32)
            out[:, y0:y0 + h, x0:x0 + w] = pred[:, halo:halo + h, halo:halo + w]
    return out


__all__ = ["pad_reflect", "valid_size", "forward", "predict_normalized"]
