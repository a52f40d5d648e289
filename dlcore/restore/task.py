"""The tile engine's task for prediction models (task kind ``image``): windows in, predicted pixel values out.

:func:`load_image_task` reads a package with ``config.dlcore.kind: image_prediction`` (written by
:mod:`dlcore.restore.package`) and returns an :class:`ImagePredictionTask`.  For each ``(Y, X, C)``
window the task

1. makes the network's input (:mod:`dlcore.restore.transforms`: the channels, or a stain from colour
   deconvolution);
2. normalises it with the slide's percentiles, measured once by :meth:`~ImagePredictionTask.prepare`
   on sample windows (so every tile is scaled alike and tiling cannot change the result; without
   ``prepare`` each window uses its own, as bioimage.io's ``scale_range`` does);
3. pads it by reflection to a size the network takes, runs the network and crops back;
4. maps the output to the package's output units (``output_scale``: the input's normalisation undone
   for Noise2Void and CARE, a fixed scale for translation) and clips it to ``value_range`` when known;

and returns float32 ``(C_out, Y, X)`` with the window's Y and X.  The engine blends the windows' halos
and writes the image (quantised to ``output_dtype``).  On a GPU the network runs in float32 (no
autocast): predicted intensities are the result, not an intermediate to threshold.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ParameterError, SlideError
from dlcore.io.slide import SlideInfo
from dlcore.restore.config import OUTPUT_DTYPES
from dlcore.restore.data import EPS
from dlcore.restore.transforms import network_input

PARAMETERS = ("mpp", "tile_size", "halo", "batch_size", "device", "output_dtype", "channel", "weights_format")


@dataclass(frozen=True)
class ImagePredictionTask:
    """A prediction model run over a slide (see the module docstring).

    Attributes
    ----------
    name : the model's registry name.
    network : the loaded :class:`~dlcore.models.loader.Network` (its own pre-processing disabled: this
        task normalises).
    mpp, tile_size, halo, batch_size : the working resolution and tiling.
    output_channels : names of the predicted channels, e.g. ``("DAB",)`` or ``("denoised",)``.
    value_range : the outputs' known range, e.g. ``(0.0, 1.0)``, or None (the engine measures it).
    output_dtype : the written pixel type, ``float32``, ``uint16`` or ``uint8`` (the engine quantises).
    class_names : always empty (no classes).
    mode : ``n2v``, ``care`` or ``translate``.
    input_transform, channel : how the network's input is made from a window.
    input_channels, input_dtype : what the model was trained on.
    percentiles : the normalisation's percentiles; ``input_low`` / ``input_high`` the slide's values
        (None until :meth:`prepare`).
    output_scale : the package's ``output_scale`` block.
    """

    name: str
    network: object = field(repr=False, compare=False)
    mpp: float | None
    tile_size: int
    halo: int
    batch_size: int
    output_channels: tuple[str, ...]
    value_range: tuple[float, float] | None
    output_dtype: str = "float32"
    class_names: tuple[str, ...] = ()
    mode: str = ""
    input_transform: dict = field(default_factory=lambda: {"type": "none"})
    channel: int | None = None
    input_channels: int = 1
    input_dtype: str = ""
    normalize: bool = True
    percentiles: tuple[float, float] = (1.0, 99.8)
    input_low: tuple[float, ...] | None = None
    input_high: tuple[float, ...] | None = None
    output_scale: dict = field(default_factory=lambda: {"type": "input_percentiles"})

    kind = "image"
    calibrates = True

    @property
    def on_gpu(self) -> bool:
        """Whether the network runs on a CUDA device."""
        return str(self.network.device.name).startswith("cuda")

    def check(self, info: SlideInfo) -> None:
        """Raise SlideError when the slide's channels or pixel type are not those the model was trained on."""
        if self.input_transform.get("type") == "hed":
            if len(info.channels) != 3 or info.dtype != "uint8":
                raise SlideError(f"model {self.name!r} computes {self.input_transform['stain']} by colour deconvolution "
                                 f"of 8-bit RGB brightfield images; {info.name} has {len(info.channels)} "
                                 f"{info.dtype} channel(s) ({', '.join(info.channels)})")
            return
        channels = len(info.channels)
        if self.channel is not None:
            info.channel_name(self.channel)
            channels = 1
        if channels != self.input_channels:
            hint = " (choose one channel with --param channel=N)" if self.input_channels == 1 else ""
            raise SlideError(f"model {self.name!r} takes {self.input_channels}-channel images but {info.name} has "
                             f"{len(info.channels)} ({', '.join(info.channels)}){hint}")
        if self.input_dtype and info.dtype != self.input_dtype:
            raise SlideError(f"model {self.name!r} was trained on {self.input_dtype} images but {info.name} is "
                             f"{info.dtype}: its noise and intensities differ; train a model on {info.dtype} images")

    def inputs(self, window: np.ndarray) -> np.ndarray:
        """The network's ``(Y, X, C)`` float32 input for a window, before normalisation."""
        return network_input(window, self.input_transform, channel=self.channel)

    def prepare(self, samples: list[np.ndarray]) -> "ImagePredictionTask":
        """A copy normalising with the percentiles of the sample windows' pixels taken together (the slide's)."""
        if not self.normalize or not samples:
            return self
        from dlcore.restore.data import percentile_range

        pixels = np.concatenate([self.inputs(s).reshape(-1, self.input_channels) for s in samples])
        low, high = percentile_range(pixels[:, None, :], *self.percentiles)
        return dataclasses.replace(self, input_low=tuple(map(float, low)), input_high=tuple(map(float, high)))

    def _normalized(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(C, Y, X)`` normalised input and the per-channel low / high used."""
        from dlcore.restore.data import apply_range, percentile_range

        if not self.normalize:
            zeros = np.zeros(x.shape[-1], np.float32)
            return np.ascontiguousarray(np.moveaxis(x, -1, 0)), zeros, zeros + 1 - EPS
        if self.input_low is None:
            low, high = percentile_range(x, *self.percentiles)
        else:
            low, high = np.asarray(self.input_low, np.float32), np.asarray(self.input_high, np.float32)
        return apply_range(x, low, high), low, high

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """One float32 ``(C_out, Y, X)`` prediction per ``(Y, X, C)`` window, of the window's Y and X."""
        from dlcore.restore.inference import pad_reflect

        if not windows:
            return []
        prepared = [self._normalized(self.inputs(w)) for w in windows]
        spec = self.network.spec
        size_y = spec.valid_size(max(x.shape[1] for x, _, _ in prepared))
        size_x = spec.valid_size(max(x.shape[2] for x, _, _ in prepared))
        batch = np.stack([pad_reflect(x, size_y, size_x) for x, _, _ in prepared])
        raw = self.network.raw_outputs(batch)
        out = []
        for r, (x, low, high) in zip(raw, prepared):
            values = r[:, : x.shape[1], : x.shape[2]]
            out.append(self._to_output_units(values, low, high))
        return out

    def _to_output_units(self, values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        scale = self.output_scale
        if scale["type"] == "input_percentiles":
            gain, offset = high - low + EPS, low
        else:
            offset = np.asarray(scale["low"], np.float32)
            gain = np.asarray(scale["high"], np.float32) - offset
        values = values * gain[:, None, None] + offset[:, None, None]
        if self.value_range is not None:
            values = np.clip(values, *self.value_range)
        return np.ascontiguousarray(values, dtype=np.float32)

    def provenance(self) -> dict:
        from dlcore.models.package import weights_digest

        net = self.network
        return {
            "task": self.name, "kind": self.kind, "model_kind": "image_prediction", "mode": self.mode,
            "model_version": net.spec.version, "package": str(net.spec.folder), "weights_format": net.weights_format,
            "weights_sha256": weights_digest(net.spec.weights[net.weights_format]), "device": net.device.name,
            "autocast": None, "input_transform": self.input_transform,
            "normalization": ({"percentiles": list(self.percentiles),
                               "slide_low": None if self.input_low is None else list(self.input_low),
                               "slide_high": None if self.input_high is None else list(self.input_high)}
                              if self.normalize else None),
            "output_channels": list(self.output_channels), "output_scale": self.output_scale,
            "value_range": None if self.value_range is None else list(self.value_range),
            "parameters": {"mpp": self.mpp, "tile_size": self.tile_size, "halo": self.halo,
                           "batch_size": self.batch_size, "channel": self.channel, "output_dtype": self.output_dtype},
            "dlcore_config_from_package": True,
        }


def _positive_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def load_image_task(folder: Path, name: str, params: dict | None = None) -> ImagePredictionTask:
    """The task of the prediction package in ``folder`` with the user's ``params``.

    Parameters
    ----------
    folder
        The package folder (rdf.yaml with ``config.dlcore.kind: image_prediction``).
    name
        The model's registry name.
    params
        ``mpp``, ``tile_size``, ``halo`` (at most ``tile_size // 2``), ``batch_size``, ``device`` (auto,
        cpu, cuda, cuda:N), ``output_dtype`` (float32, uint16, uint8), ``channel`` (the slide channel a
        single-channel model sees) and ``weights_format`` (torchscript or pytorch_state_dict).  None values
        mean the package's default.

    Raises
    ------
    ParameterError
        For an unknown parameter (the valid ones are listed) or a bad value.
    ModelError
        When the package is not a prediction model or cannot be loaded.
    """
    from dlcore.errors import ModelError
    from dlcore.models.loader import Network, read_spec
    from dlcore.models.processing import Processing

    params = {k: v for k, v in dict(params or {}).items() if v is not None}
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise ParameterError(f"prediction model {name!r} has no parameter(s) {sorted(unknown)}; its parameters: "
                             f"{', '.join(PARAMETERS)}")
    spec = read_spec(folder)
    spec = dataclasses.replace(spec, name=name)
    cfg = spec.dlcore
    if cfg["kind"] != "image_prediction":
        raise ModelError(f"{folder} is a {cfg['kind']} model, not a prediction model")
    tile_size = _positive_int("tile_size", params.get("tile_size", cfg["tile_size"]), minimum=16)
    halo = _positive_int("halo", params.get("halo", cfg["halo"]), minimum=0)
    if halo > tile_size // 2:
        raise ParameterError(f"halo={halo} must be at most tile_size // 2 = {tile_size // 2} (tile_size={tile_size}); "
                             "use a larger tile_size or a smaller halo")
    batch_size = _positive_int("batch_size", params.get("batch_size", 8), minimum=1)
    mpp = params.get("mpp", cfg["mpp"])
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or mpp <= 0):
        raise ParameterError(f"mpp={mpp!r} must be a positive pixel size in µm")
    output_dtype = params.get("output_dtype", cfg["output_dtype"])
    if output_dtype not in OUTPUT_DTYPES:
        raise ParameterError(f"output_dtype={output_dtype!r} must be one of {', '.join(OUTPUT_DTYPES)}")
    channel = params.get("channel")
    transform = dict(cfg["input_transform"])
    if channel is not None:
        channel = _positive_int("channel", channel, minimum=0)
        if transform["type"] != "none" or cfg["input_channels"] != 1:
            raise ParameterError(f"channel= picks the one slide channel of a single-channel model; {name!r} takes "
                                 + ("8-bit RGB (it computes its input by colour deconvolution)"
                                    if transform["type"] != "none" else f"{cfg['input_channels']} channels"))
    network = Network.load(spec, device=params.get("device", "auto"), weights_format=params.get("weights_format"))
    network = dataclasses.replace(network, pre=Processing([], ("batch", "channel", "y", "x")),
                                  device=dataclasses.replace(network.device, autocast_dtype=None))
    norm = cfg["normalization"]
    value_range = cfg.get("value_range")
    return ImagePredictionTask(
        name=name, network=network, mpp=mpp, tile_size=tile_size, halo=halo, batch_size=batch_size,
        output_channels=tuple(cfg["output_channels"]),
        value_range=None if value_range is None else (float(value_range[0]), float(value_range[1])),
        output_dtype=output_dtype, mode=cfg["mode"], input_transform=transform, channel=channel,
        input_channels=int(cfg["input_channels"]), input_dtype=str(cfg["input_dtype"]),
        normalize=norm["type"] == "percentile",
        percentiles=(float(norm.get("low", 1.0)), float(norm.get("high", 99.8))), output_scale=dict(cfg["output_scale"]))


__all__ = ["ImagePredictionTask", "load_image_task", "PARAMETERS"]
