"""TIAToolbox's pretrained nucleus instance-segmentation models, run with TIAToolbox's own code (its patch
classifiers are identified here too and run by :mod:`dlcore.fieldmodels.tiatoolbox_classifier`).

This module runs only inside the field-models environment (the worker imports it; see
:mod:`dlcore.fieldmodels.external`): torch and tiatoolbox are imported inside the functions.

The weights are TIAToolbox's published files (``hovernet_fast-pannuke.pth`` and so on, from the Hugging
Face repository ``TIACentre/TIAToolbox_pretrained_weights``): plain PyTorch state dicts that TIAToolbox
loads with ``model.load_state_dict(torch.load(path), strict=True)`` into the architecture its
``pretrained_model.yaml`` names.  :func:`inspect` identifies the entry by doing exactly that with every
instance-segmentation entry of the installed TIAToolbox (HoVer-Net fast and original, HoVer-Net+,
MicroNet), the one named by the file's stem first.

:func:`load` gives a network that does for one dlcore window what TIAToolbox's engine does for a tile:
the window is padded by ``(patch_input - patch_output) / 2`` on each side with white (255, the value
TIAToolbox's ``WSIPatchDataset`` pads reads outside the slide with), cut into ``patch_input`` patches at
the entry's stride, run through the class's own ``infer_batch``, the output patches are placed into
window-sized maps (overlaps, MicroNet's, averaged), and the class's own ``postproc`` (HoVer-Net's
``_proc_np_hv`` watershed and ``get_instance_info``, MicroNet's labelling and hole filling) turns them into
instances with types.  Normalisation is TIAToolbox's: HoVer-Net and HoVer-Net+ divide by 255 inside
``forward``; MicroNet standardises each patch by its own mean and standard deviation (``MicroNet.preproc``),
so a MicroNet result depends slightly on where the patch grid falls.  :meth:`TiaNetwork.fit` therefore
keeps nothing: there are no slide statistics in TIAToolbox's models.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError, ParameterError

KIND = "tiatoolbox"
WEIGHTS = "weights.pth"
# the architectures of TIAToolbox's instance-segmentation entries (pretrained_model.yaml "class")
CLASSES = {"hovernet.HoVerNet": "HoVerNet", "hovernetplus.HoVerNetPlus": "HoVerNetPlus", "micronet.MicroNet": "MicroNet"}
PAD_VALUE = 255            # TIAToolbox's WSIPatchDataset reads outside the image as white
NUCLEUS_RADIUS_UM = 12.0   # the halo adds this radius to the model's context: room for a large nucleus or a clump
BATCH = 4
TILE = 512                 # dlcore's tile size for models whose patches overlap (MicroNet)
WINDOW = 1024              # HoVer-Net: the smallest window (tile + 2 halos), then rounded up to whole output patches
MIN_TILE = 256
REPOSITORY = "https://github.com/TissueImageAnalytics/tiatoolbox"
HF_REPO = "TIACentre/TIAToolbox_pretrained_weights"
TRAINING_DATA = {"pannuke": "PanNuke", "monusac": "MoNuSAC", "consep": "CoNSeP", "kumar": "Kumar (MoNuSeg)",
                 "oed": "OED (oral epithelial dysplasia, Warwick)"}
CITATIONS = {
    "HoVerNet": ("Graham et al., HoVer-Net: simultaneous segmentation and classification of nuclei in multi-tissue "
                 "histology images, Medical Image Analysis 58, 2019 (HoVer-Net)",
                 ("Simon Graham", "Quoc Dang Vu", "Shan E Ahmed Raza", "Ayesha Azam", "Yee Wah Tsang",
                  "Jin Tae Kwak", "Nasir Rajpoot")),
    "HoVerNetPlus": ("Shephard et al., Simultaneous nuclear instance and layer segmentation in oral epithelial "
                     "dysplasia, ICCV Workshops (CDpath) 2021 (HoVer-Net+)",
                     ("Adam J. Shephard", "Simon Graham", "Saad Bashir", "Mostafa Jahanifar", "Hanya Mahmood",
                      "Syed Ali Khurram", "Nasir M. Rajpoot")),
    "MicroNet": ("Raza et al., Micro-Net: a unified model for segmentation of various objects in microscopy images, "
                 "Medical Image Analysis 52, 2019 (MicroNet)",
                 ("Shan E Ahmed Raza", "Linda Cheung", "Muhammad Shaban", "Simon Graham", "David Epstein",
                  "Stella Pelengaris", "Michael Khan", "Nasir M. Rajpoot")),
}
TOOLBOX_CITATION = "Pocock et al., TIAToolbox as an end-to-end library for advanced tissue image analytics, " \
                   "Communications Medicine 2, 2022"
# the installed package says only "Model weights are provided under a different license ... see
# https://tia-toolbox.readthedocs.io/en/latest/pretrained.html" (LICENSE) and "Models weights are dependent
# on the datasets that they were trained on" (README): no licence is stated, so the user gives it.
LICENCE = "not stated"
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network")


# -- TIAToolbox's entries ------------------------------------------------------------------------
def entries() -> dict[str, dict]:
    """The installed TIAToolbox's instance-segmentation pretrained entries, by name, in its order."""
    from tiatoolbox import rcParam

    info = rcParam["pretrained_model_info"]
    return {name: entry for name, entry in info.items()
            if entry.get("architecture", {}).get("class") in CLASSES}


def _model_class(entry: dict):
    import importlib

    module_name, class_name = entry["architecture"]["class"].rsplit(".", 1)
    module = importlib.import_module(f"tiatoolbox.models.architecture.{module_name}")
    return getattr(module, class_name)


def _jsonable(value):
    """The YAML kwargs as JSON (dict keys as strings; the loader turns type-dict keys back to int)."""
    return json.loads(json.dumps(value))


def _kwargs(runtime_kwargs: dict) -> dict:
    """JSON kwargs back to the constructor's (``nuc_type_dict``/``layer_type_dict`` keyed by int)."""
    out = dict(runtime_kwargs)
    for key in ("nuc_type_dict", "layer_type_dict"):
        if isinstance(out.get(key), dict):
            out[key] = {int(k): v for k, v in out[key].items()}
    return out


def _build(entry: dict, *, shapes_only: bool = False):
    """The entry's architecture with its own initial weights; ``shapes_only``: built on PyTorch's meta
    device (parameters without storage, a fraction of the time), enough to compare keys and shapes."""
    if shapes_only:
        import torch

        with torch.device("meta"):
            return _model_class(entry)(**_kwargs(entry["architecture"].get("kwargs") or {}))
    return _model_class(entry)(**_kwargs(entry["architecture"].get("kwargs") or {}))


# -- the weights file ------------------------------------------------------------------------------
def state_dict(path: str | Path) -> tuple[dict, str]:
    """The state dict in ``path`` and how it was found (``"plain"``, or the unwrapping done).

    TIAToolbox's files are plain state dicts.  Two common wrappings are accepted because undoing them is
    unambiguous: a dict whose only tensor-dict value sits under one of ``state_dict``, ``model_state_dict``,
    ``model``, ``net``, ``network`` (other entries such as an epoch number are ignored), and keys that
    all start with ``module.`` (a ``DataParallel`` save).  Anything else is refused (ModelError)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such file: {path}; give the TIAToolbox weights file (e.g. hovernet_fast-pannuke.pth "
                         f"from the Hugging Face repository {HF_REPO})")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code (refused by weights_only)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{path} cannot be read as PyTorch weights ({first}); the file is truncated, damaged "
                         f"or not a TIAToolbox weights file: download it again from {HF_REPO}") from exc
    how = "plain"
    if not isinstance(loaded, dict):
        raise ModelError(f"{path} holds a {type(loaded).__name__}, not a state dict; TIAToolbox's weights files "
                         "are plain state dicts (torch.save(model.state_dict()))")
    if loaded and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        inner = [k for k in WRAPPERS if isinstance(loaded.get(k), dict) and loaded[k]
                 and all(isinstance(v, torch.Tensor) for v in loaded[k].values())]
        if len(inner) != 1:
            raise ModelError(f"{path} is a dict of {', '.join(map(str, list(loaded)[:6]))} rather than a state dict, "
                             "and no single state dict could be found in it; give TIAToolbox's plain weights file")
        loaded, how = loaded[inner[0]], f"unwrapped from {inner[0]!r}"
    if not loaded:
        raise ModelError(f"{path} is an empty state dict; download the weights again from {HF_REPO}")
    if all(str(k).startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
        how = "'module.' prefix removed" if how == "plain" else how + ", 'module.' prefix removed"
    return loaded, how


def _mismatch(model, weights: dict) -> str:
    """'' when ``weights`` fit ``model`` exactly, else the first differences (for the message)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} for {tuple(own[k].shape)}" for k in own
              if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing (first {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} unexpected keys (first {', '.join(map(str, extra[:3]))})")
    if shapes:
        parts.append(f"{len(shapes)} shapes differ (first {'; '.join(shapes[:2])})")
    return ", ".join(parts)


def _candidates(weights: dict) -> dict[str, dict]:
    """The entries a state dict may belong to: the patch classifiers with its number of classes when it has
    ``CNNModel``'s layout, else the instance-segmentation entries."""
    from dlcore.fieldmodels import tiatoolbox_classifier

    if tiatoolbox_classifier.is_classifier_state(weights):
        return tiatoolbox_classifier.candidates(weights)
    return entries()


def identify(path: str | Path) -> tuple[str, dict, object, dict, str]:
    """(entry name, entry, loaded model, state dict, how it was read) of a TIAToolbox weights file."""
    weights, how = state_dict(path)
    try:
        known = _candidates(weights)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    stem = Path(path).stem
    order = ([stem] if stem in known else []) + [n for n in known if n != stem]
    fits, tried, built = [], [], {}
    for name in order:
        entry = known[name]
        signature = json.dumps(entry["architecture"], sort_keys=True, default=str)
        model = built.get(signature) or _build(entry, shapes_only=True)
        built[signature] = model
        problem = _mismatch(model, weights)
        if problem:
            tried.append(f"{name}: {problem}")
            continue
        fits.append(name)
        if name == stem:
            break
    if not fits:
        raise ModelError(f"{path} is not the weights of any TIAToolbox model dlcore runs "
                         f"({len(weights)} tensors, first keys {', '.join(map(str, list(weights)[:3]))}); tried "
                         + "; ".join(tried) + ". Give one of TIAToolbox's files (" + ", ".join(known)
                         + f") as published in {HF_REPO}")
    distinct = {json.dumps(known[n]["architecture"], sort_keys=True, default=str) for n in fits}
    if len(fits) > 1 and not (fits[0] == stem):
        if len(distinct) > 1 or len({json.dumps(known[n].get("ioconfig"), sort_keys=True, default=str)
                                     for n in fits}) > 1:
            raise ModelError(f"{path} fits several TIAToolbox entries ({', '.join(fits)}) that differ in classes or "
                             "resolution; rename the file to the entry's name (e.g. " + fits[0] + ".pth) and import "
                             "it again")
    name = fits[0]
    entry = known[name]
    model = _build(entry)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: TIAToolbox's {name} refuses these weights ({str(exc).splitlines()[0][:200]})") from exc
    return name, entry, model, weights, how


# -- geometry of an entry ------------------------------------------------------------------------
def _geometry(entry: dict) -> dict:
    io = entry["ioconfig"]["kwargs"]
    patch_in = [int(v) for v in io["patch_input_shape"]]
    patch_out = [int(v) for v in io["patch_output_shape"]]
    stride = [int(v) for v in io.get("stride_shape") or patch_out]
    resolution = (io.get("input_resolutions") or [{}])[0]
    mpp = float(resolution["resolution"]) if resolution.get("units") == "mpp" else None
    return {"patch_input": patch_in, "patch_output": patch_out, "stride": stride, "mpp": mpp,
            "io_class": entry["ioconfig"]["class"], "margin": io.get("margin"), "tile_shape": io.get("tile_shape")}


def _halo(geometry: dict) -> int:
    """The model's context ((input - output) / 2, or (input - stride) / 2 for overlapping patches) plus a
    large nucleus's radius, rounded up to 8 px."""
    context = max((geometry["patch_input"][0] - min(geometry["patch_output"][0], geometry["stride"][0])) / 2, 0)
    radius = NUCLEUS_RADIUS_UM / (geometry["mpp"] or 0.25)
    return int(8 * math.ceil((context + radius) / 8))


def _tile_size(geometry: dict, halo: int) -> int:
    """The tile size for ``halo``: for HoVer-Net and HoVer-Net+ (stride = output patch) the window (tile plus
    two halos) is the smallest whole number of output patches of at least WINDOW px, so that no patch runs
    past the window (a 512 px tile with a 96 px halo, 704 px, took 25 patches of 164 px where about 16 hold
    the tile); MicroNet's overlapping patches are averaged wherever they fall, so it keeps TILE."""
    out, stride = geometry["patch_output"][0], geometry["stride"][0]
    if stride != out or out <= 0:
        return TILE
    patches = max(math.ceil(WINDOW / out), math.ceil((2 * halo + MIN_TILE) / out))
    return patches * out - 2 * halo


def _versions() -> dict:
    import tiatoolbox
    import torch

    return {"tiatoolbox": tiatoolbox.__version__, "torch": torch.__version__}


def inspect(path: str) -> dict:
    """The :class:`~dlcore.fieldmodels.base.Inspected` fields (paths as strings) of a TIAToolbox weights file.

    Refuses (ModelError naming the file, the problem and the fix) a missing file, one torch cannot read, and
    a state dict that fits none of TIAToolbox's instance-segmentation entries.  A ``{"state_dict": ...}``
    wrapping or a ``module.`` prefix is undone (see :func:`state_dict`); the package keeps the file as given
    and the loader undoes it again."""
    path = str(Path(path).resolve())
    name, entry, _, weights, how = identify(path)
    if entry["architecture"]["class"] not in CLASSES:  # a patch classifier
        from dlcore.fieldmodels import tiatoolbox_classifier

        return tiatoolbox_classifier.inspected(name, entry, weights, how, path, _versions())
    class_name = CLASSES[entry["architecture"]["class"]]
    kwargs = _jsonable(entry["architecture"].get("kwargs") or {})
    geometry = _geometry(entry)
    types = kwargs.get("nuc_type_dict")
    classes = tuple(v for k, v in sorted(types.items(), key=lambda kv: int(kv[0])) if int(k) != 0) if types \
        else ("nucleus",)
    versions = _versions()
    module = "tiatoolbox.models.architecture." + entry["architecture"]["class"].rsplit(".", 1)[0]
    runtime = {"pretrained": name, "class": class_name, "module": module, "kwargs": kwargs,
               "patch_input": geometry["patch_input"], "patch_output": geometry["patch_output"],
               "stride": geometry["stride"], "ioconfig": geometry["io_class"], "types": types or {"0": "Background", "1": "nucleus"},
               "pad_value": PAD_VALUE, "weights_read": how, "tiatoolbox_version": versions["tiatoolbox"],
               "torch_version": versions["torch"], "tensors": len(weights)}
    if kwargs.get("layer_type_dict"):
        runtime["layers"] = kwargs["layer_type_dict"]
    dataset = name.rsplit("-", 1)[-1]
    citation, authors = CITATIONS[class_name]
    publisher = {"source": f"TIAToolbox pretrained model {name}, {REPOSITORY} (weights: Hugging Face {HF_REPO})",
                 "training_data": f"{TRAINING_DATA.get(dataset, dataset)} (as stated by TIAToolbox)",
                 "licence": LICENCE, "citation": f"{citation}; {TOOLBOX_CITATION}", "authors": list(authors)}
    what = "nuclei with types " + ", ".join(classes) if types else "nuclei"
    mpp = geometry["mpp"]
    halo = _halo(geometry)
    return {"kind": KIND, "files": {WEIGHTS: path}, "weights_file": WEIGHTS, "weights_format": "pytorch_state_dict",
            "in_channels": 3, "mpp": mpp, "classes": list(classes), "tile_size": _tile_size(geometry, halo),
            "halo": halo,
            "runtime": runtime, "publisher": publisher,
            "description": f"TIAToolbox {name} ({class_name}): {what}" + (f" at {mpp} µm/px" if mpp else ""),
            "default_name": name, "scratch": None, "alternatives": _alternatives(name, kwargs, geometry, runtime)}


def _alternatives(name: str, kwargs: dict, geometry: dict, runtime: dict) -> dict:
    """What else the model gives, for ``dlcore models import --task``: HoVer-Net+'s tissue layers (a class
    map of ``layer_type_dict`` without its Background), tiled as TIAToolbox's engine tiles it (2048 px tiles
    with a 128 px margin, the entry's ``tile_shape`` and ``margin``): its layer post-processing (``_proc_ls``:
    epithelium smaller than 20000 px removed, 20 px closing and opening) works on whole tiles."""
    layers = kwargs.get("layer_type_dict")
    if not layers:
        return {}
    names = [v for k, v in sorted(layers.items(), key=lambda kv: int(kv[0])) if int(k) != 0]
    window = int((geometry.get("tile_shape") or [2048])[0])
    margin = int(geometry.get("margin") or 128)
    mpp = geometry["mpp"]
    return {"semantic": {
        "output": "semantic", "classes": names, "tile_size": window - 2 * margin, "halo": margin,
        "runtime": {**runtime, "returns": "layers"}, "default_name": f"{name}-layers",
        "description": f"TIAToolbox {name} (HoVerNetPlus): tissue layers " + ", ".join(names)
                       + (f" at {mpp} µm/px" if mpp else "")}}


# -- running ---------------------------------------------------------------------------------------
def load(folder: str, cfg: dict, device: str) -> "TiaNetwork":
    """The network of an installed package: its ``weights.pth`` in the class and entry its runtime names."""
    runtime = cfg.get("runtime") or {}
    path = Path(folder) / (runtime.get("weights") or WEIGHTS)
    weights, _ = state_dict(path)
    name = runtime.get("pretrained")
    known = _candidates(weights)
    entry = known.get(name)
    architectures = {**CLASSES, "vanilla.CNNModel": "CNNModel"}
    if entry is None:  # an entry of another TIAToolbox version: build it from the stored settings
        if runtime.get("class") not in architectures.values():
            raise ModelError(f"{folder}: runtime names no TIAToolbox architecture ({runtime.get('class')!r})")
        module = [k for k, v in architectures.items() if v == runtime["class"]][0]
        entry = {"architecture": {"class": module, "kwargs": runtime.get("kwargs") or {}}}
    model = _model_class(entry)(**_kwargs(runtime.get("kwargs") or entry["architecture"].get("kwargs") or {}))
    problem = _mismatch(model, weights)
    if problem:
        raise ModelError(f"{path} does not fit TIAToolbox's {name} ({problem}); install the model again")
    model.load_state_dict(weights, strict=True)
    model.eval()
    if runtime.get("class") == "CNNModel":
        from dlcore.fieldmodels import tiatoolbox_classifier

        return tiatoolbox_classifier.load(model, runtime, str(device or "cpu"),
                                          int(cfg.get("batch_size") or tiatoolbox_classifier.BATCH))
    return TiaNetwork(model=model, runtime=runtime, device=str(device or "cpu"),
                      batch=int(cfg.get("batch_size") or runtime.get("batch_size") or BATCH))


class TiaNetwork:
    """A TIAToolbox model run on dlcore windows as TIAToolbox's engine runs it on a tile (module docstring)."""

    def __init__(self, model, runtime: dict, device: str, batch: int = BATCH) -> None:
        import torch

        self.model = model
        self.runtime = runtime
        self.device = device
        self.batch = max(1, batch)
        self.class_name = runtime.get("class", type(model).__name__)
        self.patch_in = int(runtime["patch_input"][0])
        self.patch_out = int(runtime["patch_output"][0])
        self.stride = int((runtime.get("stride") or runtime["patch_output"])[0])
        if self.class_name != "MicroNet" and self.stride != self.patch_out:
            # HoVer-Net's type and layer maps are argmax ids: averaging overlapping patches would invent types
            raise ModelError(f"TIAToolbox's {self.class_name} runs with stride = patch output; this package has "
                             f"stride {self.stride} for output {self.patch_out}")
        self.returns = runtime.get("returns", "nuclei")
        if self.returns == "layers" and self.class_name != "HoVerNetPlus":
            raise ModelError(f"only HoVer-Net+ gives tissue layers, not {self.class_name}")
        types = runtime.get("types") or {"0": "Background", "1": "nucleus"}
        self.class_names = tuple(v for _, v in sorted(types.items(), key=lambda kv: int(kv[0])))
        if device.startswith("cuda"):
            self.model = self.model.to(device)
        torch.set_grad_enabled(False)

    def fit(self, samples) -> "TiaNetwork":
        """Nothing to fit: HoVer-Net divides by 255 in its forward, MicroNet standardises each patch itself."""
        return self

    def with_parameters(self, params: dict) -> "TiaNetwork":
        """TIAToolbox's models take no run-time parameters; any name is refused (ParameterError)."""
        if params:
            raise ParameterError(f"TIAToolbox models take no parameters (got {', '.join(map(str, params))}); their "
                                 "post-processing is TIAToolbox's own, with its fixed thresholds")
        return self

    # the patch grid: output patch k covers [k * step, k * step + out) of the window
    def _maps(self, window: np.ndarray) -> list[np.ndarray]:
        """The model's output maps for the whole window, assembled from its patches."""
        import torch

        height, width = window.shape[:2]
        out, step = self.patch_out, self.stride
        context = (self.patch_in - out) // 2
        rows = max(1, math.ceil(max(height - out, 0) / step) + 1)
        cols = max(1, math.ceil(max(width - out, 0) / step) + 1)
        span_y, span_x = (rows - 1) * step + out, (cols - 1) * step + out
        padded = np.pad(window[..., :3], ((context, span_y - height + (self.patch_in - out - context)),
                                          (context, span_x - width + (self.patch_in - out - context)), (0, 0)),
                        mode="constant", constant_values=PAD_VALUE)
        corners = [(r * step, c * step) for r in range(rows) for c in range(cols)]
        sums: list[np.ndarray] | None = None
        counts = np.zeros((span_y, span_x, 1), np.float32)
        cls = type(self.model)
        for start in range(0, len(corners), self.batch):
            chunk = corners[start:start + self.batch]
            patches = [padded[y:y + self.patch_in, x:x + self.patch_in] for y, x in chunk]
            if self.class_name == "MicroNet":
                batch = torch.stack([torch.as_tensor(np.asarray(cls.preproc(p)), dtype=torch.float32)
                                     for p in patches])
            else:
                batch = torch.from_numpy(np.ascontiguousarray(np.stack(patches)))
            outputs = cls.infer_batch(self.model, batch, device=self.device)
            outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
            if sums is None:
                sums = [np.zeros((span_y, span_x, o.shape[-1]), np.float32) for o in outputs]
            for i, (y, x) in enumerate(chunk):
                for total, o in zip(sums, outputs):
                    total[y:y + out, x:x + out] += o[i]
                counts[y:y + out, x:x + out] += 1
        return [(total / np.maximum(counts, 1))[:height, :width] for total in sums]

    def predict(self, windows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
        """Per window ``(labels int32, class_of_label, class_names)``: TIAToolbox's instances, labelled
        1..n in the order of TIAToolbox's ids, and each one's TIAToolbox type id (an index into
        ``class_names``, which starts with "Background"; MicroNet's and type-less HoVer-Net's objects are
        all "nucleus").  A HoVer-Net+ package imported for its layers (runtime ``returns: layers``) gives
        each window's layer map instead (int32, TIAToolbox's layer ids, 0 background)."""
        results = []
        for window in windows:
            window = np.asarray(window)
            if window.dtype != np.uint8:
                window = np.clip(window, 0, 255).astype(np.uint8)
            if window.ndim == 2:
                window = np.repeat(window[..., None], 3, axis=-1)
            maps = self._maps(window)
            # the model's own post-processing (HoVer-Net+: all four maps; it returns (nuclei, layers))
            seg = self.model.postproc(maps)
            if self.returns == "layers":  # HoVer-Net+'s layer map: 0 background, ids of layer_type_dict
                results.append(np.asarray(seg[1]["predictions"], np.int32))
                continue
            nuclei = seg[0] if isinstance(seg, (tuple, list)) else seg
            instances = np.asarray(nuclei["predictions"])
            info = nuclei.get("info_dict") or {}
            ids = np.unique(instances)
            ids = ids[ids > 0]
            kinds = np.asarray(info.get("type", []))
            if len(kinds) != len(ids) or kinds.dtype == object:
                # get_instance_info skips instances whose contour has < 3 points: TIAToolbox reports no
                # such object, so neither does dlcore
                ids, kinds = self._types(instances, maps, ids)
                instances = np.where(np.isin(instances, ids), instances, 0)
            lookup = np.zeros(int(instances.max()) + 1 if instances.size else 1, np.int32)
            lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
            labels = lookup[instances].astype(np.int32)
            class_of_label = np.zeros(len(ids) + 1, np.int64)
            if len(self.class_names) == 2 and self.class_names[1] == "nucleus":
                class_of_label[1:] = 1
            else:
                class_of_label[1:] = np.asarray(kinds, np.int64)
            results.append((labels, class_of_label, self.class_names))
        return results

    def _types(self, instances: np.ndarray, maps: list[np.ndarray], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The instances TIAToolbox's get_instance_info keeps and each one's type (used when info_dict's
        columns cannot be matched to the ids one to one)."""
        from tiatoolbox.models.architecture.hovernet import HoVerNet

        pred_type = np.around(maps[2][..., 0]).astype(np.uint8) if len(maps) >= 3 and self.class_name != "MicroNet" \
            else None
        info = HoVerNet.get_instance_info(instances, pred_type)
        kept = np.asarray([i for i in ids if int(i) in info], ids.dtype)
        return kept, np.asarray([int(info[int(i)]["type"] or 0) for i in kept], np.int64)

    def describe(self) -> dict:
        """What the run's provenance records."""
        versions = _versions()
        return {"architecture": self.class_name, "pretrained": self.runtime.get("pretrained"), "device": self.device,
                "patch_input": self.patch_in, "patch_output": self.patch_out, "stride": self.stride,
                "padding": f"constant {PAD_VALUE} (as TIAToolbox's WSIPatchDataset)",
                "normalization": {"type": "tiatoolbox", "scope": "patch" if self.class_name == "MicroNet" else "none",
                                  "how": "MicroNet.preproc per patch" if self.class_name == "MicroNet"
                                  else "/255 in forward"},
                "postproc": f"{self.class_name}.postproc (TIAToolbox)" + (", its layer map" if self.returns == "layers"
                                                                         else ""),
                "returns": self.returns, "classes": list(self.class_names),
                "tiatoolbox_version": versions["tiatoolbox"], "torch_version": versions["torch"]}
