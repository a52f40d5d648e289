"""What dlcore needs to run a model package, read from its rdf.yaml: the ``config.dlcore`` block.

The block (written by :func:`dlcore.models.package.write_package`, documented in
``dlcore/models/README.md``)::

    config:
      dlcore:
        kind: semantic | instances | patch_classification | pixel_classifier | image_prediction | imported
        mpp: 0.5                  # working resolution, µm/pixel (null: the slide's native pixels)
        tile_size: 512            # working pixels, multiple of the network's divisor
        halo: 32                  # context on each side, working pixels
        normalization: {type: scale_0_1}   # or {type: percentile, low: 1, high: 99.8}
                                           # or {type: imagenet}
        classes: [tumour, stroma]          # semantic: foreground classes 1..n (output channels: n+1)
                                           # instances: object classes (optional)
                                           # patch_classification: one name per output class
        colors: [[255, 0, 0], [0, 160, 0]] # RGB per class
        output_activation: softmax         # none | sigmoid | softmax: how outputs become probabilities
                                           # (auto: softmax, or sigmoid for one or two channels of
                                           # fg/boundary; none for distance maps and for networks
                                           # that end in their own activation)
        postprocess:                       # instances only
          type: fg_boundary_watershed      # or distance_watershed
          ...                              # thresholds, see POSTPROCESS_DEFAULTS
        patch_size: 64                     # patch_classification only
        background_class: background       # patch_classification: class left out of the slide decision
        features: {scales: [...], ...}     # pixel_classifier: see dlcore.pixels (features, forest, channel_names)
        output_channels: [DAB]             # image_prediction: predicted pixel values, see dlcore.restore.config
        runtime: {kind: stardist, ...}     # imported: a field model run by its own code, see dlcore.fieldmodels

Packages from other tools have no such block: they run as semantic segmentation with defaults
(:func:`foreign_config`) and the rdf's own pre-processing.

This module is pure Python + numpy: no torch, no bioimageio.spec.
"""
from __future__ import annotations

import copy
import re
from typing import Any

from dlcore.errors import ModelError

KINDS = ("semantic", "instances", "patch_classification", "pixel_classifier", "image_prediction", "imported")
NORMALIZATIONS = ("scale_0_1", "percentile", "imagenet", "none")
ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

POSTPROCESS_DEFAULTS: dict[str, dict[str, Any]] = {
    # foreground probability above fg_threshold is an object; seeds are foreground pixels whose
    # boundary probability is below boundary_threshold; objects under min_size pixels are dropped.
    "fg_boundary_watershed": {"fg_threshold": 0.5, "boundary_threshold": 0.5, "min_size": 30, "min_seed_size": 5},
    # the distance map above fg_threshold is an object; seeds are maxima at least min_distance apart
    # and above seed_threshold; objects under min_size pixels are dropped.
    "distance_watershed": {"fg_threshold": 0.5, "seed_threshold": 2.0, "min_distance": 4, "min_size": 30},
}

DEFAULTS = {"mpp": None, "tile_size": 512, "halo": 32, "normalization": {"type": "scale_0_1"}, "classes": [],
            "colors": [], "output_activation": "auto"}

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def default_colors(n: int) -> list[list[int]]:
    """``n`` distinct RGB colours (cycling a 10-colour palette)."""
    return [list(_PALETTE[i % len(_PALETTE)]) for i in range(n)]


def identifier(name: str) -> str:
    """A bioimage.io identifier made from a class name (letters, digits, underscores)."""
    ident = re.sub(r"\W+", "_", str(name)).strip("_") or "c"
    return ident if not ident[0].isdigit() else f"c{ident}"


def check_dlcore_config(config: dict, *, where: str = "config.dlcore") -> dict:
    """The ``config.dlcore`` block with defaults filled in; raises ModelError naming a bad field.

    Parameters
    ----------
    config
        The block as read from rdf.yaml (not modified).
    where
        Where the block comes from, for messages.

    Returns
    -------
    dict
        A completed copy.
    """
    if not isinstance(config, dict):
        raise ModelError(f"{where} must be a mapping, got {type(config).__name__}")
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(config))
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ModelError(f"{where}.kind={kind!r} must be one of {KINDS}")
    if cfg["mpp"] is not None and not (isinstance(cfg["mpp"], (int, float)) and cfg["mpp"] > 0):
        raise ModelError(f"{where}.mpp={cfg['mpp']!r} must be a positive pixel size in µm, or null")
    for key in ("tile_size", "halo"):
        if not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ModelError(f"{where}.{key}={cfg[key]!r} must be a non-negative integer")
    if cfg["halo"] >= cfg["tile_size"]:
        raise ModelError(f"{where}.halo={cfg['halo']} must be smaller than tile_size={cfg['tile_size']}")
    norm = cfg["normalization"]
    if isinstance(norm, str):
        norm = cfg["normalization"] = {"type": norm}
    if not isinstance(norm, dict) or norm.get("type") not in NORMALIZATIONS:
        raise ModelError(f"{where}.normalization={norm!r} must have a type among {NORMALIZATIONS}")
    if norm["type"] == "percentile":
        norm.setdefault("low", 1.0)
        norm.setdefault("high", 99.8)
        norm.setdefault("per_channel", True)
        if not 0 <= norm["low"] < norm["high"] <= 100:
            raise ModelError(f"{where}.normalization: need 0 <= low < high <= 100, got {norm['low']}, {norm['high']}")
    cfg["classes"] = [str(c) for c in cfg["classes"]]
    if len(set(cfg["classes"])) != len(cfg["classes"]):
        raise ModelError(f"{where}.classes has duplicates: {cfg['classes']}")
    if not cfg["colors"]:
        cfg["colors"] = default_colors(len(cfg["classes"]))
    if len(cfg["colors"]) != len(cfg["classes"]) or any(len(c) != 3 for c in cfg["colors"]):
        raise ModelError(f"{where}.colors must hold one [r, g, b] per class ({len(cfg['classes'])} classes)")
    cfg["colors"] = [[int(v) for v in c] for c in cfg["colors"]]
    if cfg["output_activation"] not in ACTIVATIONS:
        raise ModelError(f"{where}.output_activation={cfg['output_activation']!r} must be one of {ACTIVATIONS}")
    if kind == "instances":
        post = cfg.get("postprocess") or {}
        if post.get("type") not in POSTPROCESS_DEFAULTS:
            raise ModelError(f"{where}.postprocess.type={post.get('type')!r} must be one of {tuple(POSTPROCESS_DEFAULTS)}")
        cfg["postprocess"] = {**POSTPROCESS_DEFAULTS[post["type"]], **post}
    if kind == "pixel_classifier":
        from dlcore.pixels.package import check_pixel_config

        check_pixel_config(cfg, where)
    if kind == "image_prediction":
        from dlcore.restore.config import check_image_config

        check_image_config(cfg, where)
    if kind == "imported":
        from dlcore.fieldmodels.kinds import check_runtime

        check_runtime(cfg, where)
    if kind == "patch_classification":
        check_patch_settings(cfg, where)
    return cfg


def check_patch_settings(cfg: dict, where: str) -> None:
    """Raise ModelError unless a patch classifier's ``patch_size`` (>= 8 px) divides ``tile_size``, it names
    at least two classes, and its ``background_class`` (if any) is one of them."""
    patch = cfg.get("patch_size")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 8:
        raise ModelError(f"{where}.patch_size={patch!r} must be an integer >= 8 (pixels)")
    if cfg["tile_size"] % patch:
        raise ModelError(f"{where}.tile_size={cfg['tile_size']} must be a multiple of patch_size={patch}")
    if len(cfg["classes"]) < 2:
        raise ModelError(f"{where}.classes must name the classifier's outputs (at least 2)")
    background = cfg.get("background_class")
    if background is not None and background not in cfg["classes"]:
        raise ModelError(f"{where}.background_class={background!r} is not one of the classes {cfg['classes']}")


def resolve_activation(cfg: dict, n_out: int, network_activation: str = "none") -> str:
    """The activation that turns ``n_out`` network outputs into probabilities (resolves ``auto``)."""
    if cfg["output_activation"] != "auto":
        return cfg["output_activation"]
    if network_activation in ("sigmoid", "softmax"):
        return "none"
    post = (cfg.get("postprocess") or {}).get("type")
    if post == "distance_watershed":
        return "sigmoid" if n_out == 2 else "none"  # 2 channels: foreground logit + distance
    if n_out == 1 or (post == "fg_boundary_watershed" and n_out == 2):
        return "sigmoid"
    return "softmax"


def foreign_config(n_out_channels: int, channel_names: list[str] | None) -> dict:
    """Defaults for a package without ``config.dlcore``: semantic segmentation of its output channels.

    One output channel is thresholded at 0.5 (class ``foreground``); several are arg-maxed, channel 0
    being background.
    """
    if n_out_channels == 1:
        classes = [channel_names[0] if channel_names else "foreground"]
    else:
        names = list(channel_names or [f"class_{i}" for i in range(n_out_channels)])
        classes = names[1:]
    return check_dlcore_config({"kind": "semantic", "classes": classes, "normalization": {"type": "none"},
                                "output_activation": "none"}, where="defaults")


def normalization_to_preprocessing(norm: dict, n_channels: int) -> list[dict]:
    """The bioimage.io 0.5 ``preprocessing`` steps equivalent to a dlcore normalisation.

    So that other tools (bioimageio.core, deepImageJ) feed the model exactly what dlcore feeds it.
    """
    kind = norm["type"]
    if kind == "scale_0_1":
        return [{"id": "scale_linear", "kwargs": {"gain": 1 / float(norm.get("max_value", 255.0)), "offset": 0.0}}]
    if kind == "percentile":
        axes = ["y", "x"] if norm.get("per_channel", True) else ["channel", "y", "x"]
        return [{"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": float(norm["low"]),
                                                 "max_percentile": float(norm["high"])}}]
    if kind == "imagenet":
        if n_channels != 3:
            raise ModelError(f"imagenet normalisation needs 3 input channels, the model has {n_channels}")
        max_value = float(norm.get("max_value", 255.0))
        return [{"id": "fixed_zero_mean_unit_variance", "kwargs": {
            "axis": "channel", "mean": [m * max_value for m in IMAGENET_MEAN],
            "std": [s * max_value for s in IMAGENET_STD]}}]
    return []
