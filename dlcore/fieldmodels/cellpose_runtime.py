"""Cellpose 3 models (Stringer et al. 2021; Stringer & Pachitariu 2025), run in the field-models environment.

This module runs inside the field-models worker (:mod:`dlcore.fieldmodels.worker`), where cellpose 3.1.1.3
and torch are installed; the main environment never imports it.  It imports only NumPy and dlcore's errors
at the top: cellpose and torch are imported inside the functions.

A Cellpose 3 model file is what ``CPnet.save_model`` writes (``torch.save`` of the CPnet's state dict; the
builtin ``cyto3``, ``nucleitorch_0``, ``cyto2torch_0``..., or a model a user trained).  dlcore keeps that
file unchanged in its package (``cellpose_model.pth``) and runs it with ``cellpose.models.CellposeModel``:

- **No download, ever.**  Cellpose downloads a model when it is given a *name* (``cyto3``) whose file is not
  in its models folder, and ``models.Cellpose`` always fetches a size model.  This module only ever passes
  an existing file path to ``CellposeModel`` (never ``models.Cellpose``), points
  ``CELLPOSE_LOCAL_MODELS_PATH`` at an empty temporary folder before importing cellpose, and replaces
  cellpose's download functions by ones that raise ModelError.
- **Input.**  dlcore gives RGB brightfield windows.  They are converted as Cellpose's ``channels=[0, 0]``
  does (greyscale: the mean of R, G and B; the network's second channel is zeros), or with
  ``channels=[c, 0]`` (c = 1, 2, 3) to the one chosen channel.  The converted channel is normalised with
  1/99 percentiles computed once per slide (:meth:`CellposeNetwork.fit`) and given to Cellpose with
  ``normalize=False``, so that every tile is normalised alike.  On H&E, nuclei are dark: ``invert`` (a
  parameter, default False, as Cellpose's) turns them bright.
- **Size.**  Cellpose models have no pixel size: they work in pixels with an object ``diameter`` (the
  image is rescaled by ``diam_mean / diameter``).  The user gives ``--mpp`` at import; ``diameter`` in
  pixels at that resolution is a parameter defaulting to the model's ``diam_mean`` (as stored in the file;
  17 for the builtin nuclei model, as Cellpose itself does).  The halo is at least twice the diameter.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError, ParameterError

PACKAGE_FILE = "cellpose_model.pth"
PERCENTILES = (1.0, 99.0)
EPSILON = 1e-3
NBASE = [32, 64, 128, 256]  # the CPnet widths CellposeModel builds (backbone "default")
# parameter -> (type, check, what it must be); eval() arguments of CellposeModel a user may set
PARAMETERS = {
    "diameter": (float, lambda v: v > 0, "a positive diameter in pixels"),
    "flow_threshold": (float, lambda v: v >= 0, "0 (no flow check) or more"),
    "cellprob_threshold": (float, lambda v: -20 <= v <= 20, "between -20 and 20"),
    "min_size": (int, lambda v: v >= -1, "-1 (keep all) or a number of pixels"),
    "invert": (bool, lambda v: True, "true or false"),
}
# file names of Cellpose's builtin models (stem, without "torch_N"): what their authors state they are
BUILTIN_DATA = {
    "cyto3": "the Cellpose 3 'super-generalist' training set (the Cellpose cyto2 images together with "
             "TissueNet, LIVECell, Omnipose, YeaZ, DeepBacs and nuclei data sets; Stringer & Pachitariu 2025)",
    "nuclei": "the Cellpose nuclei data set (about 1,100 images of nuclei from several sources; Stringer et al. "
              "2021)",
    "cyto2": "the Cellpose cyto data set plus images submitted by users (Cellpose 2.0, Pachitariu & Stringer 2022)",
    "cyto": "the Cellpose cyto data set (about 600 images of cells, mostly fluorescence; Stringer et al. 2021)",
}
NC_NOTE = ("; per the Cellpose README, all Cellpose models except yeast_BF_cp3, yeast_PhC_cp3 and deepbacs_cp3 "
           "are trained on some data that is CC-BY-NC, and the Cellpose data set is CC-BY-NC")
CITATION = "Stringer et al., Nature Methods 2021; Stringer & Pachitariu, Nature Methods 2025 (Cellpose3)"


# -- cellpose, imported without any network access ----------------------------------------------------------
def _cellpose_models():
    """``cellpose.models``, imported with an empty models folder and its download functions disabled."""
    if "CELLPOSE_LOCAL_MODELS_PATH" not in os.environ or not _is_ours(os.environ["CELLPOSE_LOCAL_MODELS_PATH"]):
        os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = tempfile.mkdtemp(prefix="dlcore-cellpose-nomodels-")
    from cellpose import models, utils

    models.MODEL_DIR = Path(os.environ["CELLPOSE_LOCAL_MODELS_PATH"])

    def refuse(*args, **kwargs):
        raise ModelError(f"cellpose tried to download {args[:1] or kwargs}; dlcore runs only the model file of its "
                         "package and never downloads (report this as a dlcore bug)")

    for module, name in ((models, "cache_model_path"), (models, "size_model_path"), (utils, "download_url_to_file"),
                         (models, "download_url_to_file")):
        if hasattr(module, name):
            setattr(module, name, refuse)
    return models


def _is_ours(path: str) -> bool:
    return Path(path).name.startswith("dlcore-cellpose-nomodels-")


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _version() -> str:
    from importlib.metadata import version

    return version("cellpose")


# -- inspecting a model file --------------------------------------------------------------------------------
def _state_dict(path: Path) -> dict:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage, a pickle of other objects
        raise ModelError(f"{path} cannot be read as a PyTorch model file ({str(exc).splitlines()[0][:200]}); it is "
                         "truncated, damaged or not a Cellpose model: copy it again from ~/.cellpose/models (builtin "
                         "models) or from the training run's models folder") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelError(f"{path} is a PyTorch file but not a Cellpose model (a Cellpose model file is a CPnet "
                         f"state dict, what CellposeModel.net.save_model writes; this holds {type(state).__name__})")
    return state


def _architecture(path: Path, state: dict) -> tuple[list[int], int]:
    """``nbase`` and ``nout`` of the CPnet in ``state``; ModelError for CPSAM or other networks."""
    if "W2" in state or any(k.startswith("encoder.") for k in state):
        raise ModelError(f"Cellpose 4 (CPSAM) models are not supported yet: {path} is a Cellpose-SAM model (its "
                         "state dict holds 'W2' and the SAM encoder); dlcore runs Cellpose 3 models (CPnet: cyto3, "
                         "nuclei, cyto2, or a model trained with cellpose 3)")
    first = state.get("downsample.down.res_down_0.conv.conv_0.2.weight")
    output = state.get("output.2.weight")
    if first is None or output is None or "diam_mean" not in state:
        hint = " (a Cellpose 3 transformer/segformer model?)" if any(k.startswith("encoder") or "segformer" in k
                                                                     for k in state) else ""
        raise ModelError(f"{path} is a PyTorch state dict but not a Cellpose CPnet{hint}: it lacks "
                         "downsample.down.res_down_0.conv.conv_0.2.weight, output.2.weight or diam_mean; give a "
                         "Cellpose 3 model file (cyto3, nucleitorch_0, or one trained with cellpose 3)")
    nbase = [int(first.shape[1])]
    n = 0
    while f"downsample.down.res_down_{n}.proj.1.weight" in state:
        nbase.append(int(state[f"downsample.down.res_down_{n}.proj.1.weight"].shape[0]))
        n += 1
    nout = int(output.shape[0])
    if nout != 3:
        raise ModelError(f"{path} is a CPnet with {nout} outputs, not a Cellpose segmentation model (3 outputs: two "
                         "flows and the cell probability); Cellpose's denoising/restoration models cannot segment")
    if nbase[1:] != NBASE:
        raise ModelError(f"{path} is a CPnet of widths {nbase[1:]}; CellposeModel runs only {NBASE}")
    if nbase[0] != 2:
        raise ModelError(f"{path} is a CPnet taking {nbase[0]} channels; dlcore runs Cellpose's 2-channel models")
    return nbase, nout


def _builtin(path: Path) -> str | None:
    """The builtin model a file name says it is (``cyto3``, ``nuclei``...), or None."""
    stem = path.name.split(".")[0].lower()
    stem = stem.split("torch_")[0]
    if stem in ("nuclei", "nucleitorch"):
        stem = "nuclei"
    return stem if stem in BUILTIN_DATA or stem.endswith("_cp3") else None


def _publisher(builtin: str | None) -> dict | None:
    if builtin is None:
        return None
    data = BUILTIN_DATA.get(builtin, f"the data set of the Cellpose 3 '{builtin}' model (Stringer & Pachitariu 2025)")
    return {"source": f"Cellpose {builtin}, https://github.com/MouseLand/cellpose",
            "training_data": data + NC_NOTE,
            # the package metadata says "BSD" for the code; the authors do not license the model files
            # plainly (README: trained on CC-BY-NC data; MouseLand/cellpose#192: "a gray zone"), so the
            # user must state the licence at import
            "licence": "not stated",
            "citation": CITATION, "authors": ["Carsen Stringer", "Marius Pachitariu"]}


def inspect(path: str) -> dict:
    """Check a Cellpose 3 model file and return :class:`~dlcore.fieldmodels.base.Inspected`'s fields.

    ModelError (naming the file and the fix) for a missing, truncated or non-Cellpose file, a Cellpose 4
    (CPSAM) model, a restoration model or a CPnet that ``CellposeModel`` cannot build.  Nothing is downloaded.
    """
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise ModelError(f"no such file: {source}")
    if not source.is_file():
        raise ModelError(f"{source} is a folder; give the Cellpose model file itself (e.g. ~/.cellpose/models/cyto3)")
    state = _state_dict(source)
    nbase, _ = _architecture(source, state)
    builtin = _builtin(source)
    diam_mean = float(state["diam_mean"].reshape(-1)[0])
    diam_labels = float(state["diam_labels"].reshape(-1)[0]) if "diam_labels" in state else diam_mean
    if builtin == "nuclei":
        diam_mean = 17.0  # what CellposeModel uses for nucleitorch_0 whatever the file stores
    if not (math.isfinite(diam_mean) and diam_mean > 0):
        raise ModelError(f"{source} stores diam_mean={diam_mean}: not a usable Cellpose model")
    models = _cellpose_models()
    try:  # the file as Cellpose itself loads it (strict state dict load); a path, never a name
        models.CellposeModel(gpu=False, pretrained_model=str(source), nchan=nbase[0], mkldnn=False)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"Cellpose cannot load {source}: {str(exc).splitlines()[0][:200]}") from exc
    classes = ("nucleus",) if "nucle" in source.name.lower() else ("cell",)
    halo = int(16 * math.ceil(max(64.0, 2.0 * diam_mean) / 16))
    runtime = {"diam_mean": diam_mean, "diam_labels": diam_labels, "diameter": diam_mean, "channels": [0, 0],
               "invert": False, "flow_threshold": 0.4, "cellprob_threshold": 0.0, "min_size": 15,
               "normalization": {"percentiles": list(PERCENTILES), "scope": "slide", "channel": "greyscale"},
               "cellpose_version": _version(), "nbase": nbase,
               # for the rdf's pytorch_state_dict weights entry (bioimage.io needs the architecture and torch)
               "architecture": {"callable": "CPnet", "import_from": "cellpose.resnet_torch",
                                "kwargs": {"nbase": nbase, "nout": 3, "sz": 3, "mkldnn": False, "max_pool": True,
                                           "diam_mean": diam_mean}},
               "pytorch_version": _torch_version()}
    label = builtin or source.name.split(".")[0]
    return {"kind": "cellpose", "files": {PACKAGE_FILE: str(source)}, "weights_file": PACKAGE_FILE,
            "weights_format": "pytorch_state_dict", "in_channels": 3, "mpp": None, "classes": list(classes),
            "tile_size": 512, "halo": halo, "runtime": runtime, "publisher": _publisher(builtin),
            "description": f"Cellpose 3 {label} model ({classes[0]}; diameter {diam_mean:g} px)",
            "default_name": f"cellpose-{label}".replace(" ", "-").replace("_", "-").lower(), "scratch": None}


# -- running -----------------------------------------------------------------------------------------------
def check_parameters(params: dict, halo: int | None = None) -> dict:
    """``params`` converted to Cellpose's eval arguments; ParameterError naming an unknown or invalid one."""
    out = {}
    for key, value in (params or {}).items():
        if key not in PARAMETERS:
            raise ParameterError(f"Cellpose has no parameter {key!r}; its parameters: {', '.join(PARAMETERS)}")
        kind, ok, what = PARAMETERS[key]
        try:
            if kind is bool:
                if str(value).lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                converted = str(value).lower() in ("1", "true", "yes")
            else:
                converted = kind(value)
                if kind is int and converted != float(value):
                    raise ValueError(value)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"Cellpose parameter {key}={value!r} must be {what}") from exc
        if not ok(converted) or (kind is float and not math.isfinite(converted)):
            raise ParameterError(f"Cellpose parameter {key}={value!r} must be {what}")
        if key == "diameter" and halo and converted * 2 > halo:
            raise ParameterError(f"diameter={converted:g} px needs a halo of at least {2 * converted:g} px, and this "
                                 f"package's halo is {halo}: import the model again with a larger halo")
        out[key] = converted
    return out


@dataclass
class CellposeNetwork:
    """A loaded Cellpose model with its per-slide normalisation (a FieldNetwork, inside the worker)."""

    model: object = field(repr=False)
    device: str = "cpu"
    settings: dict = field(default_factory=dict)   # diameter, channels, invert, thresholds, min_size
    halo: int | None = None
    low: float | None = None    # 1st percentile of the converted channel over the slide's samples
    high: float | None = None

    def _channel(self, window: np.ndarray) -> np.ndarray:
        """The channel Cellpose segments: greyscale (channels [0, 0]) or the chosen one, float32."""
        x = np.asarray(window, np.float32)
        if x.ndim == 2:
            return x
        first = int(self.settings["channels"][0])
        return x.mean(axis=-1) if first == 0 else x[..., min(first, x.shape[-1]) - 1]

    def fit(self, samples: list[np.ndarray]) -> "CellposeNetwork":
        """1/99 percentiles of the converted channel of all sample windows together: one normalisation per slide."""
        if not samples:
            return self
        pixels = np.concatenate([self._channel(s).reshape(-1) for s in samples])
        low, high = np.percentile(pixels, PERCENTILES)
        return dataclasses.replace(self, low=float(low), high=float(high))

    def with_parameters(self, params: dict) -> "CellposeNetwork":
        return dataclasses.replace(self, settings={**self.settings, **check_parameters(params, self.halo)})

    def _normalised(self, window: np.ndarray) -> np.ndarray:
        x = self._channel(window)
        low, high = self.low, self.high
        if low is None:
            low, high = np.percentile(x, PERCENTILES)
        x = (x - low) / max(high - low, EPSILON)
        return (1.0 - x if self.settings.get("invert") else x).astype(np.float32)

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Cellpose masks of each window, int32, the window's size (0 background)."""
        s = self.settings
        out = []
        for window in windows:
            masks, _, _ = self.model.eval(self._normalised(window), channels=[0, 0], normalize=False,
                                          diameter=float(s["diameter"]), flow_threshold=float(s["flow_threshold"]),
                                          cellprob_threshold=float(s["cellprob_threshold"]),
                                          min_size=int(s["min_size"]))
            masks = np.asarray(masks, np.int32)
            if masks.shape != tuple(window.shape[:2]):
                raise ModelError(f"Cellpose returned masks of shape {masks.shape} for a window of {window.shape[:2]}")
            out.append(masks)
        return out

    def describe(self) -> dict:
        return {"normalization": {"percentiles": list(PERCENTILES), "channel": "greyscale" if
                                  int(self.settings["channels"][0]) == 0 else f"channel {self.settings['channels'][0]}",
                                  "low": self.low, "high": self.high,
                                  "scope": "slide" if self.low is not None else "window"},
                "parameters": {k: self.settings[k] for k in PARAMETERS}, "diam_mean": self.settings.get("diam_mean"),
                "device": self.device, "cellpose_version": _version()}


def load(folder: str, cfg: dict, device: str = "cpu") -> CellposeNetwork:
    """The network of an installed package: its Cellpose model file, loaded by path, on ``device``."""
    import torch

    runtime = dict(cfg.get("runtime") or {})
    path = Path(folder) / str(runtime.get("weights") or PACKAGE_FILE)
    if not path.is_file():
        raise ModelError(f"the package {folder} lacks its Cellpose model file {path.name}; import the model again")
    models = _cellpose_models()
    gpu = str(device).startswith("cuda")
    try:
        model = models.CellposeModel(gpu=gpu, device=torch.device(device) if gpu else None, pretrained_model=str(path),
                                     nchan=int((runtime.get("nbase") or [2])[0]), mkldnn=False)
    except Exception as exc:
        raise ModelError(f"Cellpose cannot load {path}: {str(exc).splitlines()[0][:200]}") from exc
    diam_mean = float(runtime.get("diam_mean") or model.diam_mean)
    model.diam_mean = diam_mean  # the inspected value (17 for the builtin nuclei model, as Cellpose does by name)
    settings = {"diam_mean": diam_mean, "diameter": float(runtime.get("diameter") or diam_mean),
                "channels": list(runtime.get("channels") or [0, 0]), "invert": bool(runtime.get("invert", False)),
                "flow_threshold": float(runtime.get("flow_threshold", 0.4)),
                "cellprob_threshold": float(runtime.get("cellprob_threshold", 0.0)),
                "min_size": int(runtime.get("min_size", 15))}
    halo = cfg.get("halo")
    network = CellposeNetwork(model=model, device=str(device), settings=settings, halo=int(halo) if halo else None)
    return network.with_parameters(dict(runtime.get("parameters") or {}))
