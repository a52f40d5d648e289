"""Training losses of prediction models.

- ``l1``: mean absolute error (CSBDeep's CARE default, robust to outliers);
- ``mse``: mean squared error (Noise2Void's);
- ``ssim``: ``1 - SSIM`` (MONAI's :class:`monai.losses.SSIMLoss`: Gaussian 11 x 11 window, sigma 1.5, the
  same SSIM as scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``);
- ``l1+ssim``: ``0.84 * (1 - SSIM) + 0.16 * L1``, the mix Zhao, Gallo, Frosio and Kautz found best for
  image restoration ("Loss Functions for Image Restoration with Neural Networks", IEEE TCI 2017): SSIM
  keeps structure and contrast, L1 the intensities.  The default for translation.

Noise2Void's loss is one of these on the masked pixels only (:func:`masked_loss`).
"""
from __future__ import annotations

from dlcore.errors import ParameterError

LOSSES = ("l1", "mse", "ssim", "l1+ssim")
MASKED_LOSSES = ("l1", "mse")
SSIM_WEIGHT = 0.84
DEFAULT_LOSS = {"n2v": "mse", "care": "l1", "translate": "l1+ssim"}


def check_loss(name: str, mode: str) -> str:
    """The loss ``name`` for training ``mode`` (None: the mode's default); ParameterError when it cannot be used."""
    if name is None:
        return DEFAULT_LOSS[mode]
    allowed = MASKED_LOSSES if mode == "n2v" else LOSSES
    if name not in allowed:
        why = " (Noise2Void's loss is on single masked pixels: SSIM needs whole windows)" if mode == "n2v" else ""
        raise ParameterError(f"loss={name!r} cannot train {mode}; choose one of {', '.join(allowed)}{why}")
    return name


def make_loss(name: str, *, data_range: float = 1.0):
    """The loss ``name`` as ``(prediction, target) -> scalar tensor`` on ``(B, C, Y, X)`` tensors.

    ``data_range`` is SSIM's dynamic range (1 for targets normalised to about 0-1).
    """
    import torch

    if name not in LOSSES:
        raise ParameterError(f"loss={name!r} must be one of {', '.join(LOSSES)}")
    if name == "l1":
        return torch.nn.L1Loss()
    if name == "mse":
        return torch.nn.MSELoss()
    from monai.losses import SSIMLoss

    ssim = SSIMLoss(spatial_dims=2, data_range=float(data_range))
    if name == "ssim":
        return ssim
    l1 = torch.nn.L1Loss()

    def combined(prediction, target):
        return SSIM_WEIGHT * ssim(prediction, target) + (1 - SSIM_WEIGHT) * l1(prediction, target)

    return combined


def masked_loss(prediction, target, mask, name: str = "mse"):
    """Noise2Void's loss: ``name`` (``mse`` or ``l1``) over the masked pixels only.

    ``prediction`` and ``target`` are ``(B, C, Y, X)``, ``mask`` ``(B, Y, X)`` bool; the mean is over the
    masked pixels and channels.
    """
    if name not in MASKED_LOSSES:
        raise ParameterError(f"masked loss {name!r} must be one of {', '.join(MASKED_LOSSES)}")
    diff = prediction - target
    err = diff * diff if name == "mse" else diff.abs()
    weights = mask[:, None].to(err.dtype).expand_as(err)
    return (err * weights).sum() / weights.sum().clamp(min=1)


__all__ = ["LOSSES", "DEFAULT_LOSS", "make_loss", "masked_loss", "check_loss"]
