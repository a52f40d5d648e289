"""The ``config.dlcore`` block of a prediction package (``kind: image_prediction``); pure Python.

Besides the common keys (``mpp``, ``tile_size``, ``halo``, ``normalization``; see
:mod:`dlcore.models.spec`)::

    config:
      dlcore:
        kind: image_prediction
        mode: translate                     # n2v | care | translate: how it was trained
        normalization: {type: percentile, low: 1, high: 99.8}   # the input, per channel, per slide
        input_channels: 1                   # what the network sees
        input_dtype: uint8                  # the pixel type of the images it was trained on
        input_transform: {type: hed, stain: haematoxylin}   # or {type: none}: how the network's input
                                            # is made from a slide window (hed: Ruifrok-Johnston colour
                                            # deconvolution of 8-bit RGB, scikit-image's rgb2hed)
        output_channels: [DAB]              # names of the predicted channels
        output_scale: {type: fixed, low: [0.0], high: [1.0]}   # network output -> output units:
                                            # out * (high - low + 1e-6) + low; or {type: input_percentiles}:
                                            # the input's own normalisation undone (Noise2Void, CARE)
        value_range: [0.0, 1.0]             # the outputs' known range, or null (the engine measures it)
        output_dtype: float32               # default written type: float32 | uint16 | uint8
        training: {...}                     # the options, the split, the history
        training_data: {...}                # what it learned from
        metrics: {...}                      # held-out figures (model and baselines)
        qc_files: [report/metrics.csv, ...] # the QC report's files in the package
"""
from __future__ import annotations

from dlcore.errors import ModelError

KIND = "image_prediction"
MODES = ("n2v", "care", "translate")
TRANSFORMS = ("none", "hed")
HED_STAINS = ("haematoxylin", "eosin", "dab")
OUTPUT_DTYPES = ("float32", "uint16", "uint8")
SCALES = ("input_percentiles", "fixed")


def check_image_config(cfg: dict, where: str = "config.dlcore") -> None:
    """Raise ModelError naming a bad field of a prediction package's (completed) ``config.dlcore`` block.

    Fills in ``input_transform`` (none), ``value_range`` (null) and ``output_dtype`` (float32) when missing.
    """
    if cfg.get("mode") not in MODES:
        raise ModelError(f"{where}.mode={cfg.get('mode')!r} must be one of {MODES}")
    if cfg["normalization"]["type"] not in ("percentile", "none"):
        raise ModelError(f"{where}.normalization.type={cfg['normalization']['type']!r}: a prediction model's input is "
                         "normalised by percentiles (or not at all)")
    if cfg["halo"] > cfg["tile_size"] // 2:
        raise ModelError(f"{where}.halo={cfg['halo']} must be at most tile_size // 2 = {cfg['tile_size'] // 2}")
    n_in = cfg.get("input_channels")
    if not isinstance(n_in, int) or isinstance(n_in, bool) or n_in < 1:
        raise ModelError(f"{where}.input_channels={n_in!r} must be a positive integer")
    if not isinstance(cfg.get("input_dtype"), str):
        raise ModelError(f"{where}.input_dtype must name the pixel type the model was trained on (e.g. uint8)")
    transform = cfg.setdefault("input_transform", {"type": "none"})
    if not isinstance(transform, dict) or transform.get("type") not in TRANSFORMS:
        raise ModelError(f"{where}.input_transform={transform!r} must have a type among {TRANSFORMS}")
    if transform["type"] == "hed":
        if transform.get("stain") not in HED_STAINS:
            raise ModelError(f"{where}.input_transform.stain={transform.get('stain')!r} must be one of {HED_STAINS}")
        if n_in != 1:
            raise ModelError(f"{where}: a colour-deconvolution input is one stain: input_channels must be 1, not {n_in}")
    names = cfg.get("output_channels")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ModelError(f"{where}.output_channels must name the predicted channels (a non-empty list of strings)")
    if len(set(names)) != len(names):
        raise ModelError(f"{where}.output_channels has duplicates: {names}")
    scale = cfg.get("output_scale")
    if not isinstance(scale, dict) or scale.get("type") not in SCALES:
        raise ModelError(f"{where}.output_scale={scale!r} must have a type among {SCALES}")
    if scale["type"] == "fixed":
        for key in ("low", "high"):
            values = scale.get(key)
            if not isinstance(values, list) or len(values) != len(names) or not all(
                    isinstance(v, (int, float)) for v in values):
                raise ModelError(f"{where}.output_scale.{key} must hold one number per output channel ({len(names)})")
    elif len(names) != n_in:
        raise ModelError(f"{where}.output_scale input_percentiles undoes the input's normalisation: it needs as many "
                         f"output channels as input channels ({len(names)} != {n_in})")
    value_range = cfg.setdefault("value_range", None)
    if value_range is not None and not (isinstance(value_range, list) and len(value_range) == 2
                                        and all(isinstance(v, (int, float)) for v in value_range)
                                        and value_range[0] < value_range[1]):
        raise ModelError(f"{where}.value_range={value_range!r} must be [low, high] with low < high, or null")
    dtype = cfg.setdefault("output_dtype", "float32")
    if dtype not in OUTPUT_DTYPES:
        raise ModelError(f"{where}.output_dtype={dtype!r} must be one of {OUTPUT_DTYPES}")


__all__ = ["KIND", "MODES", "OUTPUT_DTYPES", "check_image_config"]
