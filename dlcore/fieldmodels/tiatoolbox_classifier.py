"""TIAToolbox's pretrained patch classifiers (Kather-100K tissue types, PCam tumour), run with TIAToolbox's code.

Runs only inside the field-models environment, through :mod:`dlcore.fieldmodels.tiatoolbox_runtime`
(which identifies a weights file among all of TIAToolbox's pretrained entries and hands the
``vanilla.CNNModel`` ones to this module).  The weights are TIAToolbox's published state dicts
(``resnet18-kather100k.pth`` and so on) of its ``CNNModel``: a torchvision backbone, global average
pooling and a linear layer, whose ``forward`` ends in a softmax.

:func:`inspected` describes such an entry for the importer: the patch size and pixel size of its
``IOPatchPredictorConfig`` (224 px at 0.5 µm/px for Kather-100K, 96 px at 1 µm/px for PCam), its classes,
and tiles of four by four patches with no halo (a patch is classified alone).  :class:`TiaPatchNetwork`
classifies patches exactly as TIAToolbox's ``PatchPredictor`` does once a patch is read: the dataset's
``predefined_preproc_func`` (``ToTensor``: HWC uint8 to float in [0, 1]), then ``CNNModel.infer_batch``
(which returns the softmax probabilities).
"""
from __future__ import annotations

import numpy as np

from dlcore.errors import ModelError, ParameterError

CLASS_KEY = "vanilla.CNNModel"
BATCH = 16
PATCHES_PER_TILE = 4  # tiles of 4 x 4 patches
# the class order of TIAToolbox's KatherPatchDataset (tiatoolbox.models.dataset.info: BACK, NORM, DEB, TUM,
# ADI, MUC, MUS, STR, LYM) and what Kather et al. call them
KATHER = (("BACK", "background"), ("NORM", "normal mucosa"), ("DEB", "debris"), ("TUM", "tumour epithelium"),
          ("ADI", "adipose"), ("MUC", "mucus"), ("MUS", "smooth muscle"), ("STR", "stroma"), ("LYM", "lymphocytes"))
# PCam's labels: 1 when the centre 32 x 32 px of the patch holds tumour (metastasis in a lymph node section)
PCAM = (("0", "normal"), ("1", "tumour"))
DATASETS = {
    "kather100k": {"labels": KATHER, "background": "background", "short": "Kather 100K",
                   "training_data": "Kather 100K (NCT-CRC-HE-100K: colorectal cancer and normal tissue H&E patches, "
                                    "224 px at 0.5 µm/px), as TIAToolbox's pretrained_model.yaml names it "
                                    "('kather100k'); TIAToolbox does not say whether the colour-normalised or the "
                                    "NONORM release was used",
                   "citation": "Kather et al., Predicting survival from colorectal cancer histology slides using "
                               "deep learning: a retrospective multicenter study, PLOS Medicine 16, 2019 (Kather 100K)"},
    "pcam": {"labels": PCAM, "background": None, "short": "PCam",
             "training_data": "PatchCamelyon (PCam: 96 px patches of lymph node sections from Camelyon16, labelled "
                              "tumour when their centre holds metastasis), as TIAToolbox's pretrained_model.yaml names "
                              "it ('pcam')",
             "citation": "Veeling et al., Rotation equivariant CNNs for digital pathology, MICCAI 2018 (PCam)"},
}
AUTHORS = ("TIA Centre, University of Warwick (TIAToolbox)",)


def entries() -> dict[str, dict]:
    """The installed TIAToolbox's patch-classifier pretrained entries (``vanilla.CNNModel``), by name."""
    from tiatoolbox import rcParam

    return {name: entry for name, entry in rcParam["pretrained_model_info"].items()
            if entry.get("architecture", {}).get("class") == CLASS_KEY}


def is_classifier_state(weights: dict) -> bool:
    """Whether a state dict has the layout of TIAToolbox's ``CNNModel`` (``feat_extract.*`` and ``classifier.*``)."""
    return bool(weights) and "classifier.weight" in weights and \
        all(str(k).startswith(("feat_extract.", "classifier.")) for k in weights)


def candidates(weights: dict) -> dict[str, dict]:
    """The classifier entries whose number of classes is the state dict's; ModelError when there is none."""
    n_classes = int(weights["classifier.weight"].shape[0])
    known = entries()
    found = {name: entry for name, entry in known.items()
             if int(entry["architecture"].get("kwargs", {}).get("num_classes", 1)) == n_classes}
    if not found:
        counts = sorted({f"{e['architecture']['kwargs']['num_classes']} ({e.get('dataset')})" for e in known.values()})
        raise ModelError(f"these weights are a TIAToolbox-style patch classifier with {n_classes} classes, but "
                         f"TIAToolbox's pretrained classifiers have {' or '.join(counts)} classes: dlcore imports "
                         "TIAToolbox's published files (e.g. resnet18-kather100k.pth); a classifier trained "
                         "elsewhere can be packaged as a bioimage.io model instead")
    return found


def _labels(entry: dict) -> tuple[tuple[str, str], ...]:
    n_classes = int(entry["architecture"]["kwargs"]["num_classes"])
    dataset = DATASETS.get(entry.get("dataset"))
    if dataset and len(dataset["labels"]) == n_classes:
        return dataset["labels"]
    return tuple((str(i), f"class {i}") for i in range(n_classes))


def reported_f1(name: str) -> str:
    """The F1 TIAToolbox's ``PatchPredictor`` documentation reports for the entry ``name`` ('' if none)."""
    import re

    from tiatoolbox.models.engine.patch_predictor import PatchPredictor

    table = dict(re.findall(r"\* - ([\w-]+)\s*\n\s*- ([0-9.]+)", PatchPredictor.__doc__ or ""))
    dataset = name.rsplit("-", 1)[-1]
    return (f"F1 {table[name]} on {DATASETS.get(dataset, {}).get('short', dataset)}, as TIAToolbox's PatchPredictor "
            "documentation reports it (it does not say on which split)") if name in table else ""


def inspected(name: str, entry: dict, weights: dict, how: str, path: str, versions: dict) -> dict:
    """The :class:`~dlcore.fieldmodels.base.Inspected` fields (paths as strings) of the identified entry."""
    io = entry["ioconfig"]["kwargs"]
    patch = int(io["patch_input_shape"][0])
    resolution = (io.get("input_resolutions") or [{}])[0]
    mpp = float(resolution["resolution"]) if resolution.get("units") == "mpp" else None
    labels = _labels(entry)
    dataset_name = entry.get("dataset")
    dataset = DATASETS.get(dataset_name) or {}
    backbone = entry["architecture"]["kwargs"]["backbone"]
    runtime = {"pretrained": name, "class": "CNNModel", "module": "tiatoolbox.models.architecture.vanilla",
               "kwargs": dict(entry["architecture"]["kwargs"]), "dataset": dataset_name,
               "tiatoolbox_labels": [code for code, _ in labels], "patch_input": [patch, patch],
               "normalization": {"type": "tiatoolbox", "how": f"predefined_preproc_func({dataset_name!r}): ToTensor",
                                 "gain": 1 / 255},
               "weights_read": how, "tiatoolbox_version": versions["tiatoolbox"],
               "torch_version": versions["torch"], "tensors": len(weights)}
    from dlcore.fieldmodels.tiatoolbox_runtime import HF_REPO, LICENCE, REPOSITORY, TOOLBOX_CITATION

    classes = [label for _, label in labels]
    publisher = {"source": f"TIAToolbox pretrained model {name}, {REPOSITORY} (weights: Hugging Face {HF_REPO})",
                 "training_data": dataset.get("training_data") or f"{dataset_name} (as stated by TIAToolbox)",
                 "licence": LICENCE, "citation": "; ".join(c for c in (dataset.get("citation"), TOOLBOX_CITATION) if c),
                 "authors": list(AUTHORS), "performance": reported_f1(name)}
    return {"kind": "tiatoolbox", "files": {"weights.pth": path}, "weights_file": "weights.pth",
            "weights_format": "pytorch_state_dict", "in_channels": 3, "mpp": mpp, "classes": classes,
            "tile_size": PATCHES_PER_TILE * patch, "halo": 0, "runtime": runtime, "publisher": publisher,
            "description": f"TIAToolbox {name} ({backbone} patch classifier): {', '.join(classes)} on {patch} px "
                           "patches" + (f" at {mpp} µm/px" if mpp else ""),
            "default_name": name, "scratch": None, "output": "patch_classification", "patch_size": patch,
            "background_class": dataset.get("background")}


def load(model, runtime: dict, device: str, batch: int) -> "TiaPatchNetwork":
    """The network of an installed classifier package (``model``: the CNNModel with its weights loaded)."""
    return TiaPatchNetwork(model, runtime, device, batch)


class TiaPatchNetwork:
    """A TIAToolbox ``CNNModel`` classifying patches as TIAToolbox's ``PatchPredictor`` does (module docstring)."""

    def __init__(self, model, runtime: dict, device: str, batch: int = BATCH) -> None:
        from tiatoolbox.models.dataset.classification import predefined_preproc_func

        self.model = model.to(device) if device.startswith("cuda") else model
        self.model.eval()
        self.runtime = runtime
        self.device = device
        self.batch = max(1, batch)
        self.patch = int(runtime["patch_input"][0])
        dataset = runtime.get("dataset")
        try:
            self.preproc = predefined_preproc_func(dataset)
        except ValueError as exc:
            raise ModelError(f"TIAToolbox has no preprocessing for the dataset {dataset!r} of "
                             f"{runtime.get('pretrained')} ({exc})") from exc

    def fit(self, samples) -> "TiaPatchNetwork":
        """Nothing to fit: each patch is scaled to [0, 1] alone, as TIAToolbox does."""
        return self

    def with_parameters(self, params: dict) -> "TiaPatchNetwork":
        """TIAToolbox's classifiers take no run-time parameters; any name is refused (ParameterError)."""
        if params:
            raise ParameterError(f"TIAToolbox classifiers take no parameters besides min_tissue (got "
                                 f"{', '.join(map(str, params))})")
        return self

    def classify(self, patches: list[np.ndarray]) -> np.ndarray:
        """``(N, K)`` softmax probabilities of ``(P, P, 3)`` patches (other dtypes are clipped to uint8)."""
        import torch

        from tiatoolbox.models.architecture.vanilla import CNNModel

        out = []
        for start in range(0, len(patches), self.batch):
            chunk = []
            for patch in patches[start:start + self.batch]:
                patch = np.asarray(patch)
                if patch.shape[:2] != (self.patch, self.patch):
                    raise ModelError(f"{self.runtime.get('pretrained')} classifies {self.patch} px patches, not "
                                     f"{patch.shape[0]} x {patch.shape[1]}")
                if patch.dtype != np.uint8:
                    patch = np.clip(patch, 0, 255).astype(np.uint8)
                if patch.ndim == 2:
                    patch = np.repeat(patch[..., None], 3, axis=-1)
                chunk.append(self.preproc(np.ascontiguousarray(patch[..., :3])))
            out.append(np.asarray(CNNModel.infer_batch(self.model, torch.stack(chunk), device=self.device),
                                  np.float32))
        n_classes = int(self.runtime["kwargs"]["num_classes"])
        return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)

    def predict(self, windows):
        raise ModelError(f"{self.runtime.get('pretrained')} is a patch classifier: it classifies patches, it does "
                         "not segment windows")

    def describe(self) -> dict:
        """What the run's provenance records."""
        import tiatoolbox
        import torch

        return {"architecture": f"CNNModel({self.runtime['kwargs']['backbone']})",
                "pretrained": self.runtime.get("pretrained"), "device": self.device, "patch_input": self.patch,
                "normalization": {"type": "tiatoolbox", "scope": "patch",
                                  "how": f"predefined_preproc_func({self.runtime.get('dataset')!r}): ToTensor"},
                "postproc": "softmax in CNNModel.forward (TIAToolbox)",
                "labels": self.runtime.get("tiatoolbox_labels"),
                "tiatoolbox_version": tiatoolbox.__version__, "torch_version": torch.__version__}
