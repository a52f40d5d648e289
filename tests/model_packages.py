"""Tiny but real bioimage.io packages for the tests (random weights, written with write_package)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_semantic_package(folder: Path) -> Path:
    import torch

    from dlcore.models.architectures import UNet2D
    from dlcore.models.package import write_package

    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "out_channels": 3, "channels": [4, 8]}
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return write_package(
        folder, name="Tiny Semantic", description="a tiny random U-Net for tests", model=UNet2D(**kwargs),
        architecture=("UNet2D", kwargs), test_input=image, cover=image, authors=["Test Author"], tags=["test"],
        dlcore_config={"kind": "semantic", "mpp": 2.0, "tile_size": 128, "halo": 16, "classes": ["tumour", "stroma"]},
        card_markdown="# Tiny semantic\n\nRandom weights; for tests only.\n\n## Limitations\n\nNone learnt.",
        training_data={"images": "none (random initialisation)"}, metrics={"accuracy": "n/a"},
    )
