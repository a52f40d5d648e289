"""InstanSeg TorchScript files in the real format, from randomly initialised InstanSeg networks.

No trained InstanSeg weights can be downloaded here, so tests build what InstanSeg's model zoo ships the
way InstanSeg itself exports it (``instanseg.utils.utils.export_to_torchscript``): the real classes from
the ``instanseg-torch`` package (``InstanSeg_UNet`` built by ``build_model_from_dict`` from the
``experiment_log.csv`` its trainer writes, the pixel classifier added by
``InstanSeg.initialize_pixel_classifier``), wrapped in ``InstanSeg_Torchscript`` (backbone traced, the
wrapper with its post-processing scripted) and saved with ``torch.jit.save``.  Only the export helper's
example-image preview is left out (it needs torchvision).  The weights are random: the files are for
checking import, loading, tiling and output structure, not accuracy.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch


def write_instanseg_torchscript(path: Path, *, pixel_size: float = 0.5, layers=(16, 32, 64), seed: int = 0,
                                cells_and_nuclei: bool = False, seed_bias: float | None = None) -> Path:
    """Write a randomly initialised InstanSeg model as TorchScript at ``path``; returns ``path``.

    ``seed_bias``: when given, the backbone's seed-map output bias, so that a random network finds
    seeds (InstanSeg's default seed threshold is 0.7 on ``seeds / 15 + 0.5``).
    """
    from instanseg.utils.loss.instanseg_loss import InstanSeg, InstanSeg_Torchscript
    from instanseg.utils.model_loader import build_model_from_dict, load_model, read_model_args_from_csv

    path = Path(path)
    work = path.parent / f".{path.stem}-models"
    name = "random_instanseg"
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    args = {"model_str": "InstanSeg_UNet", "dim_in": 3, "n_sigma": 2, "dim_coords": 2, "dim_seeds": 1,
            "dim_out": 10 if cells_and_nuclei else 5, "layers": str(list(layers)), "requested_pixel_size": pixel_size,
            "cells_and_nuclei": cells_and_nuclei, "target_segmentation": "NC" if cells_and_nuclei else "N",
            "norm": "BATCH", "feature_engineering": "0", "mlp_width": 5, "multihead": False,
            "channel_invariant": False, "adaptor_net_str": "1", "dropprob": 0.0, "only_positive_labels": True}
    with (folder / "experiment_log.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(args.items())
    read = read_model_args_from_csv(path=str(work), folder=name)
    torch.manual_seed(seed)
    model = build_model_from_dict(read)
    method = InstanSeg(n_sigma=int(read["n_sigma"]), feature_engineering_function=read["feature_engineering"],
                       dim_coords=read["dim_coords"], dim_seeds=read["dim_seeds"], device="cpu")
    model = method.initialize_pixel_classifier(model, MLP_width=int(read["mlp_width"]))
    state = model.state_dict()
    if seed_bias is not None:
        # the decoder's last block is the seed channel: a 1x1 convolution and a batch norm
        seed_norm = sorted(k for k in state if k.startswith("decoders.0.final_block.") and k.endswith(".1.bias"))[-1]
        state[seed_norm][:] = seed_bias
        # and the pixel classifier (seed embedding vs pixel embedding -> membership) leans to "member"
        state[sorted(k for k in state if k.startswith("pixel_classifier.") and k.endswith(".bias"))[-1]][:] = 2.0
    torch.save({"model_state_dict": state}, folder / "model_weights.pth")
    old = os.environ.get("INSTANSEG_MODEL_PATH")
    os.environ["INSTANSEG_MODEL_PATH"] = str(work)
    try:
        model, model_dict = load_model(folder=name, path=str(work))
    finally:
        if old is None:
            os.environ.pop("INSTANSEG_MODEL_PATH", None)
        else:
            os.environ["INSTANSEG_MODEL_PATH"] = old
    model.eval()
    wrapper = InstanSeg_Torchscript(model, cells_and_nuclei=model_dict["cells_and_nuclei"],
                                    pixel_size=model_dict["pixel_size"], n_sigma=model_dict["n_sigma"], params=None,
                                    feature_engineering_function=str(model_dict["feature_engineering"]),
                                    backbone_dim_in=3)
    example = torch.rand(1, 3, 256, 256)
    with torch.jit.optimized_execution(True):
        scripted = torch.jit.script(wrapper, example)
    torch.jit.save(scripted, str(path))
    return path
