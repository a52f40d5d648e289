"""TIAToolbox weights files for the tests: the real architecture of a pretrained entry with random weights.

Run with the field-models environment's Python (it imports torch and tiatoolbox)::

    python tests/tiatoolbox_weights.py hovernet_fast-pannuke OUT.pth [--seed N] [--nuclei]

writes ``OUT.pth`` as TIAToolbox's published files are written: ``torch.save(model.state_dict(), OUT)`` of
the class and keyword arguments TIAToolbox's ``pretrained_model.yaml`` gives the entry, initialised by
``torch.manual_seed(N)`` (default 0) and the class's own initialisation.

A randomly initialised HoVer-Net finds no nuclei (its nucleus-probability map never crosses 0.5).  With
``--nuclei`` (HoVer-Net, HoVer-Net original and HoVer-Net+ entries) only the final 1x1 convolution of each
output head (``decoder.np.u0.conv``, ``decoder.hv.u0.conv`` and ``decoder.tp.u0.conv``; weight and bias,
the rest of the network untouched and random) is replaced by a linear read-out fitted by ridge regression
on the random network's own features (the input of those convolutions) for one synthetic H&E-like patch at
0.25 µm/px (pink background with noise, dark purple disks of radius 10-14 px; :func:`training_patch`):

- ``np``: channel 0 weights and bias set to 0; channel 1 fitted to +6 on nucleus pixels and -6 elsewhere
  (so the softmax nucleus probability is ~1 on nuclei, ~0 elsewhere);
- ``hv``: channel 0 fitted to the horizontal distance of a nucleus pixel to its nucleus's centre divided by
  the nucleus's largest such distance (in [-1, 1]; 0 outside nuclei), channel 1 likewise vertically (the
  targets HoVer-Net is trained on);
- ``tp``: every channel 0 except channel 1 (the entry's first nucleus type, e.g. PanNuke "Neoplastic"),
  which is the same read-out as ``np`` channel 1: every nucleus gets type 1, background type 0.

The fitted network then finds roughly one object per dark disk of an H&E-like image.  MicroNet is not
supported with ``--nuclei``.

For HoVer-Net+ (``hovernetplus-oed``) ``--nuclei`` also fits its layer head's final convolution
(``decoder.ls.u0.conv``) on one :func:`layer_patch`: rows 0 (Background), 1 (Other Tissue) and 3 ((Core)
Epithelium) fitted to +6 on glass, on pink tissue and on the darker purple "epithelium" respectively and -6
elsewhere, the other rows 0, so that :func:`layered_image` comes out as glass / other tissue / epithelium.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

NUCLEUS_LOGIT = 6.0
RIDGE = 1e-3


def build(entry_name: str):
    """The entry's class built with its pretrained_model.yaml kwargs (random weights)."""
    from tiatoolbox import rcParam

    info = rcParam["pretrained_model_info"]
    if entry_name not in info:
        raise SystemExit(f"{entry_name!r} is not a TIAToolbox pretrained entry; known: {', '.join(info)}")
    architecture = info[entry_name]["architecture"]
    module_name, class_name = architecture["class"].rsplit(".", 1)
    cls = getattr(importlib.import_module(f"tiatoolbox.models.architecture.{module_name}"), class_name)
    return cls(**(architecture.get("kwargs") or {})), info[entry_name]


def training_patch(size: int, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size, 3) uint8 H&E-like patch and its nucleus instance labels (0 background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    centres: list[tuple[float, float]] = []
    for _ in range(2000):
        cy, cx = rng.uniform(14, size - 14, 2)
        if all((cy - a) ** 2 + (cx - b) ** 2 > 34 ** 2 for a, b in centres):
            centres.append((cy, cx))
            r = rng.uniform(10, 14)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = len(centres)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (235, 180, 205)
    image[labels > 0] = (90, 55, 140)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


GLASS, PINK, EPITHELIUM = (245, 245, 245), (235, 180, 205), (165, 105, 180)
LAYER_ROWS = (0, 1, 3)  # HoVer-Net+ layer ids of glass, other tissue, (core) epithelium


def layered_image(height: int, width: int, seed: int = 5, glass: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A (height, width, 3) uint8 image with a glass strip on top (``glass`` of its height), then other
    tissue (pink) on the right and "epithelium" (darker purple) on the left half, nuclei on both; and its
    layer ids."""
    rng = np.random.default_rng(seed)
    layers = np.full((height, width), 1, np.uint8)
    layers[:, : width // 2] = 3
    layers[: int(height * glass)] = 0
    colours = {0: GLASS, 1: PINK, 3: EPITHELIUM}
    image = np.empty((height, width, 3), np.float32)
    for layer, colour in colours.items():
        image[layers == layer] = colour
    yy, xx = np.mgrid[:height, :width]
    for _ in range(height * width // 1200):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if layers[int(cy), int(cx)]:
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = (90, 55, 140)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), layers


def layer_patch(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The training patch of HoVer-Net+'s layer read-out (:func:`layered_image` of one patch, its glass
    reaching well into the patch's output region)."""
    return layered_image(size, size, seed=11, glass=0.45)


def _hv_targets(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape + (2,), np.float32)
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    for i in np.unique(labels)[1:]:
        sel = labels == i
        for axis, coords in enumerate((xx, yy)):
            d = coords[sel] - coords[sel].mean()
            out[..., axis][sel] = d / max(np.abs(d).max(), 1)
    return out


def _ridge(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out, in) and bias (out,) of the least-squares read-out features -> targets."""
    x = np.concatenate([features, np.ones((len(features), 1))], axis=1).astype(np.float64)
    gram = x.T @ x + RIDGE * len(x) * np.eye(x.shape[1])
    solution = np.linalg.solve(gram, x.T @ targets.astype(np.float64))
    return solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)


def fit_nuclei(model, entry: dict) -> None:
    """Replace the heads' final 1x1 convolutions by read-outs that find nuclei (the module docstring)."""
    import torch

    io = entry["ioconfig"]["kwargs"]
    patch_in, patch_out = int(io["patch_input_shape"][0]), int(io["patch_output_shape"][0])
    image, labels = training_patch(patch_in)
    margin = (patch_in - patch_out) // 2
    labels = labels[margin:margin + patch_out, margin:margin + patch_out]
    heads = {name: model.decoder[name].u0.conv for name in ("np", "hv", "tp") if name in model.decoder}
    captured = {}
    hooks = [conv.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, i[0].detach()))
             for name, conv in heads.items()]
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float())
    for hook in hooks:
        hook.remove()
    nucleus = np.where(labels > 0, NUCLEUS_LOGIT, -NUCLEUS_LOGIT).astype(np.float32)
    targets = {"np": nucleus[..., None], "hv": _hv_targets(labels), "tp": nucleus[..., None]}
    with torch.no_grad():
        for name, conv in heads.items():
            feats = captured[name][0].permute(1, 2, 0).reshape(-1, conv.in_channels).numpy()
            weight, bias = _ridge(feats, targets[name].reshape(len(feats), -1))
            conv.weight.zero_()
            conv.bias.zero_()
            rows = {"np": [1], "hv": [0, 1], "tp": [1]}[name]
            for k, row in enumerate(rows):
                conv.weight[row, :, 0, 0] = torch.from_numpy(weight[k])
                conv.bias[row] = float(bias[k])


def fit_layers(model, entry: dict) -> None:
    """Replace HoVer-Net+'s layer head's final 1x1 convolution by a read-out that finds glass, other tissue
    and epithelium by colour (the module docstring)."""
    import torch

    io = entry["ioconfig"]["kwargs"]
    patch_in, patch_out = int(io["patch_input_shape"][0]), int(io["patch_output_shape"][0])
    image, layers = layer_patch(patch_in)
    margin = (patch_in - patch_out) // 2
    layers = layers[margin:margin + patch_out, margin:margin + patch_out]
    conv = model.decoder["ls"].u0.conv
    captured = {}
    hook = conv.register_forward_hook(lambda m, i, o: captured.__setitem__("ls", i[0].detach()))
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float())
    hook.remove()
    feats = captured["ls"][0].permute(1, 2, 0).reshape(-1, conv.in_channels).numpy()
    targets = np.stack([np.where(layers == row, NUCLEUS_LOGIT, -NUCLEUS_LOGIT) for row in LAYER_ROWS], axis=-1)
    weight, bias = _ridge(feats, targets.reshape(len(feats), -1))
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias.fill_(-2 * NUCLEUS_LOGIT)  # the rows not fitted never win
        for k, row in enumerate(LAYER_ROWS):
            conv.weight[row, :, 0, 0] = torch.from_numpy(weight[k])
            conv.bias[row] = float(bias[k])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entry")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nuclei", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    model, entry = build(args.entry)
    if args.nuclei:
        if not hasattr(model, "decoder") or "np" not in model.decoder:
            raise SystemExit(f"--nuclei supports HoVer-Net entries, not {args.entry}")
        fit_nuclei(model, entry)
        if "ls" in model.decoder:
            fit_layers(model, entry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
