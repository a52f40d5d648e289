"""Network architectures of dlcore's model packages (plain PyTorch, nothing else).

This file only imports ``torch``: it is copied verbatim into every model package as the
architecture source of the ``pytorch_state_dict`` weights, so other bioimage.io tools
(bioimageio.core, deepImageJ via torchscript, ilastik) can rebuild the networks without dlcore.

- :class:`UNet2D`: a small 2-D U-Net for semantic segmentation and for the pixel maps behind
  instance segmentation (foreground + boundary, or a distance map).
- :class:`PatchClassifier`: a small CNN that classifies a square patch into one of ``n_classes``.

Both expose ``encoder_stages`` (an :class:`torch.nn.ModuleList`, ordered shallow → deep) so that
transfer learning can freeze the first N stages::

    for stage in model.encoder_stages[:n]:
        stage.requires_grad_(False)

Constructor arguments are plain JSON values (ints, tuples of ints, strings, floats): they are
recorded as the ``kwargs`` of the architecture in the package's rdf.yaml.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

__all__ = ["UNet2D", "PatchClassifier", "conv_block"]

_NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def conv_block(in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by normalisation and ReLU (spatial size kept)."""
    layers: List[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none"),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def _check_common(in_channels: int, out_channels: int, channels: Sequence[int], norm: str) -> None:
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels={in_channels} and out_channels/n_classes={out_channels} must be >= 1")
    if len(channels) < 1 or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels={tuple(channels)} must be one or more positive widths")
    if norm not in _NORMS:
        raise ValueError(f"norm={norm!r} must be one of {_NORMS}")


class _DownStage(nn.Module):
    """Max-pool by 2 then a conv block (an encoder stage below the first)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = conv_block(in_channels, out_channels, norm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class _UpStage(nn.Module):
    """Transposed-convolution upsampling by 2, concatenation with the skip, then a conv block."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = conv_block(out_channels + skip_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet2D(nn.Module):
    """A 2-D U-Net: ``(B, in_channels, Y, X)`` → ``(B, out_channels, Y, X)`` logits.

    Parameters
    ----------
    in_channels
        Input channels (3 for RGB).
    out_channels
        Output channels: classes for semantic segmentation, 2 (foreground, boundary) or 1
        (distance map) for instance segmentation.
    channels
        Feature widths of the encoder stages, shallow → deep; there are ``len(channels) - 1``
        poolings, so Y and X must be multiples of ``2 ** (len(channels) - 1)``.
    norm
        ``"batch"`` (default), ``"instance"`` or ``"none"``.
    dropout
        Dropout probability in the deepest stage (0 = none).
    final_activation
        ``"none"`` (logits, default), ``"sigmoid"`` or ``"softmax"`` (over channels).

    Attributes
    ----------
    encoder_stages : nn.ModuleList
        The encoder, shallow → deep (freeze the first N for transfer learning).
    decoder_stages : nn.ModuleList
        The decoder, deep → shallow.
    head : nn.Conv2d
        The 1x1 convolution to ``out_channels``.
    divisor : int
        Y and X of the input must be multiples of this.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        norm: str = "batch",
        dropout: float = 0.0,
        final_activation: str = "none",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        _check_common(in_channels, out_channels, channels, norm)
        if final_activation not in ("none", "sigmoid", "softmax"):
            raise ValueError(f"final_activation={final_activation!r} must be 'none', 'sigmoid' or 'softmax'")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels = channels
        self.final_activation = final_activation
        self.divisor = 2 ** (len(channels) - 1)  # Y and X of the input must be multiples of this
        stages: List[nn.Module] = [conv_block(in_channels, channels[0], norm)]
        for i in range(1, len(channels)):
            deepest = i == len(channels) - 1
            stages.append(_DownStage(channels[i - 1], channels[i], norm, dropout if deepest else 0.0))
        self.encoder_stages = nn.ModuleList(stages)
        self.decoder_stages = nn.ModuleList(
            [_UpStage(channels[i], channels[i - 1], channels[i - 1], norm) for i in range(len(channels) - 1, 0, -1)]
        )
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(x)
        skips.pop()
        for up in self.decoder_stages:
            x = up(x, skips.pop())
        x = self.head(x)
        if self.final_activation == "sigmoid":
            x = torch.sigmoid(x)
        elif self.final_activation == "softmax":
            x = torch.softmax(x, dim=1)
        return x


class PatchClassifier(nn.Module):
    """A small CNN classifying a patch: ``(B, in_channels, P, P)`` → ``(B, n_classes)`` logits.

    Parameters
    ----------
    in_channels
        Input channels (3 for RGB).
    n_classes
        Number of classes.
    width
        Feature width of the first stage; stage ``i`` has ``width * 2**i`` features.
    depth
        Number of encoder stages (each halves Y and X after the first).
    norm
        ``"batch"`` (default), ``"instance"`` or ``"none"``.
    dropout
        Dropout before the linear head.

    Attributes
    ----------
    encoder_stages : nn.ModuleList
        Convolution stages, shallow → deep (freeze the first N for transfer learning).
    head : nn.Linear
        Global-average-pooled features → class logits.
    """

    def __init__(
        self,
        in_channels: int = 3,
        n_classes: int = 3,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"width={width} and depth={depth} must be >= 1")
        channels = tuple(int(width) * 2**i for i in range(depth))
        _check_common(in_channels, n_classes, channels, norm)
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        stages: List[nn.Module] = [conv_block(in_channels, channels[0], norm)]
        for i in range(1, depth):
            stages.append(_DownStage(channels[i - 1], channels[i], norm, 0.0))
        self.encoder_stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(channels[-1], n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, width * 2**(depth-1))`` of a batch of patches."""
        for stage in self.encoder_stages:
            x = stage(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
