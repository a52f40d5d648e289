"""An imported field model as a tile-engine task (see :mod:`dlcore.tasks.base`).

:class:`FieldModelTask` is an ``instances`` task: the kind's network (:mod:`dlcore.fieldmodels.base`)
is fitted once per slide on sample windows (its normalisation), then maps each window to instance
labels, which the engine stitches by ownership; a network that classifies its own objects returns
:class:`~dlcore.tiling.tile_objects.TypedLabels` and its classes become the objects' classes.
:class:`FieldSemanticTask` is the same for a model whose output is a class map (HoVer-Net+'s layers):
the engine keeps each tile's core and counts class areas.  :class:`FieldPatchTask` maps a patch
classifier over the slide as dlcore's own patch classifiers are (:mod:`dlcore.models.patches`: class map,
heatmap, slide decision and tag), the patches' probabilities coming from the network's ``classify``.
:func:`load_field_task` builds the one the package's ``output`` names, checking the weights' sha256 first.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError, ParameterError, SlideError
from dlcore.io.slide import SlideInfo
from dlcore.models.patches import PatchGridOutputs

COMMON = ("mpp", "tile_size", "halo", "batch_size", "device")


@dataclass(frozen=True)
class FieldModelTask:
    """Runs an imported model over a slide (see the module docstring)."""

    network: object = field(repr=False, compare=False)
    name: str
    version: str
    package: str
    runtime_kind: str
    weights_sha256: str
    mpp: float | None
    tile_size: int
    halo: int
    batch_size: int
    in_channels: int
    channel_invariant: bool
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    device: str = "cpu"
    min_object_pixels: int = 0
    kind = "instances"

    def check(self, info: SlideInfo) -> None:
        if not self.channel_invariant and len(info.channels) != self.in_channels:
            raise SlideError(f"model {self.name!r} ({self.runtime_kind}) takes {self.in_channels}-channel images but "
                             f"{info.name} has {len(info.channels)} ({', '.join(info.channels)})")

    def prepare(self, samples: list[np.ndarray]) -> "FieldModelTask":
        """A copy whose network is normalised with statistics of the slide's sample windows."""
        return dataclasses.replace(self, network=self.network.fit(samples))

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def predict(self, windows: list[np.ndarray]) -> list:
        return self.network.predict(windows)

    def provenance(self) -> dict:
        return {"task": self.name, "kind": self.kind, "model_version": self.version, "package": self.package,
                "imported_kind": self.runtime_kind, "weights_sha256": self.weights_sha256, "device": self.device,
                "network": self.network.describe(),
                "parameters": {"mpp": self.mpp, "tile_size": self.tile_size, "halo": self.halo,
                               "batch_size": self.batch_size}}


@dataclass(frozen=True)
class FieldSemanticTask(FieldModelTask):
    """An imported model whose network maps windows to class maps (0 background, class i = classes[i-1])."""

    kind = "semantic"


@dataclass(frozen=True)
class FieldPatchTask(PatchGridOutputs, FieldModelTask):
    """An imported patch classifier mapped over the slide (see :class:`~dlcore.models.patches.PatchGridOutputs`).

    A patch is classified when at least ``min_tissue`` of its pixels look like tissue; the class map holds
    class index + 1 (0: not classified)."""

    kind = "semantic"

    def prepare(self, samples: list[np.ndarray]) -> "FieldPatchTask":
        return dataclasses.replace(self, network=self.network.fit(samples), _pending=collections.deque())

    def patch_probabilities(self, patches: list[np.ndarray]) -> np.ndarray:
        """``(N, K)`` class probabilities of ``(P, P, C)`` patches, by the imported model's own code."""
        probs = np.asarray(self.network.classify(patches), np.float32)
        if probs.shape != (len(patches), len(self.class_names)):
            raise ModelError(f"model {self.name!r} gave probabilities of shape {probs.shape} for {len(patches)} "
                             f"patches and {len(self.class_names)} classes")
        return probs

    def provenance(self) -> dict:
        out = super().provenance()
        out["parameters"].update({"patch_size": self.patch_size, "min_tissue": self.min_tissue,
                                  "background_class": self.background_class})
        return out


def load_field_task(folder: Path, name: str, params: dict | None = None, *, device: str = "cpu",
                    batch_size: int = 8) -> FieldModelTask:
    """The task of the imported package in ``folder`` with the user's ``params``: ``mpp``, ``tile_size``,
    ``halo``, ``batch_size`` (default: the node's, at most the package's ``runtime.batch_size``), ``device``,
    a patch classifier's ``min_tissue``, and the kind's own (e.g. InstanSeg's ``seed_threshold``)."""
    from dlcore.fieldmodels.kinds import get_kind
    from dlcore.models.device import choose_device
    from dlcore.models.package import sha256_file
    from dlcore.models.registry import _read_yaml
    from dlcore.models.spec import check_dlcore_config

    folder = Path(folder)
    rdf = _read_yaml(folder / "rdf.yaml")
    cfg = check_dlcore_config(dict((rdf.get("config") or {}).get("dlcore") or {}), where=f"{name}: config.dlcore")
    runtime = cfg["runtime"]
    weights = folder / runtime["weights"]
    expected = next(iter((rdf.get("weights") or {}).values()), {}).get("sha256")
    if not weights.is_file():
        raise ModelError(f"model {name!r}: its weights file {weights} is missing; install the model again")
    actual = sha256_file(weights)
    if expected and actual != expected:
        raise ModelError(f"model {name!r}: {weights.name} has sha256 {actual[:12]}… but the package states "
                         f"{str(expected)[:12]}…: the weights were changed or damaged; install the model again")
    params = dict(params or {})
    output = cfg.get("output", "instances")
    patch = {}
    if output == "patch_classification":
        patch = {"patch_size": int(cfg["patch_size"]), "background_class": cfg.get("background_class"),
                 "min_tissue": float(params.pop("min_tissue", 0.5))}
        if not 0 <= patch["min_tissue"] <= 1:
            raise ParameterError(f"model {name!r}: min_tissue={patch['min_tissue']} must lie in [0, 1] (the share "
                                 "of a patch's pixels that must look like tissue for it to be classified)")
    common = {"mpp": cfg["mpp"], "tile_size": cfg["tile_size"], "halo": cfg["halo"],
              "batch_size": min(batch_size, int(runtime.get("batch_size") or batch_size)), "device": device}
    for key in COMMON:
        if params.get(key) is not None:
            common[key] = params.pop(key)
    if common["tile_size"] < 16 or common["halo"] < 0 or common["batch_size"] < 1 or common["halo"] >= common["tile_size"]:
        raise ParameterError(f"model {name!r}: tile_size >= 16, 0 <= halo < tile_size and batch_size >= 1 "
                             f"(got {common['tile_size']}, {common['halo']}, {common['batch_size']})")
    if patch and (common["tile_size"] % patch["patch_size"] or common["halo"]):
        raise ParameterError(f"model {name!r}: tile_size must be a multiple of the patch size {patch['patch_size']} "
                             f"and halo 0 (got {common['tile_size']}, {common['halo']})")
    chosen = choose_device(str(common.pop("device") or "auto"))
    network = get_kind(runtime["kind"]).load(folder, cfg, chosen.name)
    if params:
        with_parameters = getattr(network, "with_parameters", None)
        if with_parameters is None:
            raise ParameterError(f"model {name!r} ({runtime['kind']}) has no parameter(s) {sorted(params)}; its "
                                 f"parameters: {', '.join(COMMON)}")
        try:
            network = with_parameters(params)
        except ModelError as exc:
            raise ParameterError(f"model {name!r}: {exc}") from exc
    task_class = {"instances": FieldModelTask, "semantic": FieldSemanticTask,
                  "patch_classification": FieldPatchTask}[output]
    return task_class(network=network, name=name, version=str(rdf.get("version", "")), package=str(folder),
                          runtime_kind=runtime["kind"], weights_sha256=actual, in_channels=_in_channels(rdf),
                          channel_invariant=bool(runtime.get("channel_invariant")),
                          class_names=tuple(cfg["classes"]), class_colors=tuple(tuple(c) for c in cfg["colors"]),
                          device=chosen.name, **common, **patch)


def _in_channels(rdf: dict) -> int:
    axes = rdf["inputs"][0]["axes"]
    return next((len(a["channel_names"]) for a in axes if a.get("type") == "channel"), 1)
