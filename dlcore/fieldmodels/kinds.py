"""The kinds of field model dlcore imports, by name, and the check of an imported package's ``runtime``.

A kind's module is imported only when it is used: each pulls its own libraries (InstanSeg's TorchScript
needs only torch; StarDist needs h5py and the ``stardist`` package's NMS).
"""
from __future__ import annotations

import importlib

from dlcore.errors import ModelError

KINDS = {
    "instanseg": ("dlcore.fieldmodels.instanseg", "InstanSeg TorchScript (instanseg.pt, or the model zoo's zip)"),
    "stardist": ("dlcore.fieldmodels.stardist", "StarDist 2D Keras folder (config.json, thresholds.json, "
                                                 "weights_best.h5), or its zip"),
}


# kinds whose software runs in the field-models environment, through a worker (dlcore.fieldmodels.external)
EXTERNAL = {
    "tiatoolbox": "TIAToolbox pretrained weights (.pth state dict: HoVer-Net, HoVer-Net+, MicroNet, and the "
                  "Kather-100K and PCam patch classifiers), run with TIAToolbox's own architectures and processing",
    "cellpose": "Cellpose 3 model file (CPnet: cyto3, nuclei, or one trained by a user)",
}


def kind_names() -> tuple[str, ...]:
    """The kinds ``dlcore models import`` takes."""
    return (*KINDS, *EXTERNAL)


def get_kind(name: str):
    """The :class:`~dlcore.fieldmodels.base.Kind` called ``name``; ModelError listing the known kinds."""
    if name in EXTERNAL:
        from dlcore.fieldmodels.external import ExternalKind

        return ExternalKind(name)
    if name not in KINDS:
        known = "; ".join([f"{k}: {what}" for k, (_, what) in KINDS.items()] + [f"{k}: {w}" for k, w in EXTERNAL.items()])
        raise ModelError(f"unknown model kind {name!r}; dlcore imports {known}")
    try:
        module = importlib.import_module(KINDS[name][0])
    except ImportError as exc:
        raise ModelError(f"the {name} kind needs {exc.name}, which is not installed: pip install "
                         f"'dlcore[{name}]'") from exc
    return module.KIND


def check_runtime(cfg: dict, where: str) -> None:
    """Raise ModelError unless ``cfg['runtime']`` names a known kind and a weights file of the package, and
    ``cfg['output']`` (default ``instances``) is one the engine runs, with a patch classifier's settings."""
    runtime = cfg.get("runtime")
    if not isinstance(runtime, dict) or runtime.get("kind") not in kind_names():
        raise ModelError(f"{where}.runtime.kind must be one of {kind_names()} (got {runtime!r:.80})")
    if not isinstance(runtime.get("weights"), str) or not runtime["weights"]:
        raise ModelError(f"{where}.runtime.weights must name the package's weights file")
    from dlcore.fieldmodels.base import OUTPUTS

    output = cfg.setdefault("output", "instances")
    if output not in OUTPUTS:
        raise ModelError(f"{where}.output={output!r} must be one of {OUTPUTS}")
    if output == "patch_classification":
        from dlcore.models.spec import check_patch_settings

        check_patch_settings(cfg, where)
        if cfg["halo"]:
            raise ModelError(f"{where}.halo={cfg['halo']}: a patch classifier's patches are classified alone (halo 0)")
