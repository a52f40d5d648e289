"""Tile-engine tasks that run a model package on slides (see :mod:`dlcore.tasks.base`).

- :class:`SemanticModelTask`: class label image (arg-max, or a 0.5 threshold for one channel),
  per-class areas, and class outlines (``class_outlines.geojson``).
- :class:`InstanceModelTask`: foreground + boundary maps, or a distance map, then a seeded watershed:
  instance labels, objects and their measurements; objects are classified by the package's
  :class:`~dlcore.models.objects.ObjectClassifier` when it has one.
- :class:`PatchClassifierTask`: a patch classifier mapped over the slide: a class map at patch
  resolution, a probability heatmap (``heatmap.png`` + ``heatmap.npy``) and a slide-level decision
  (mean class probabilities over tissue patches) in ``summary['slide_classification']`` and
  ``summary['tags']``.

Every task holds a loaded :class:`~dlcore.models.loader.Network`; batches from the engine are padded to
a size the network accepts, stacked, and run at once.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError, ParameterError, SlideError
from dlcore.io.slide import SlideInfo
from dlcore.models.loader import Network
from dlcore.models.package import weights_digest
from dlcore.models.patches import PatchGridOutputs

COMMON_PARAMETERS = ("mpp", "tile_size", "halo", "batch_size", "channel", "device", "weights_format")


def _pad_to(window: np.ndarray, size_y: int, size_x: int) -> np.ndarray:
    py, px = size_y - window.shape[0], size_x - window.shape[1]
    if py == 0 and px == 0:
        return window
    mode = "reflect" if py < window.shape[0] and px < window.shape[1] else "edge"
    return np.pad(window, ((0, py), (0, px), (0, 0)), mode=mode)


@dataclass(frozen=True)
class _ModelTask:
    """What every model task shares: the network, tiling, and the Task protocol's plumbing."""

    network: Network = field(repr=False, compare=False)
    mpp: float | None
    tile_size: int
    halo: int
    batch_size: int
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    channel: int | None = None  # the one slide channel a single-channel network sees (None: all channels)

    kind = "semantic"

    @property
    def name(self) -> str:
        return self.network.spec.name

    def check(self, info: SlideInfo) -> None:
        channels = len(info.channels)
        if self.channel is not None:
            info.channel_name(self.channel)
            channels = 1
        if channels != self.network.spec.in_channels:
            hint = " (choose the nuclear channel with --channel N)" if self.network.spec.in_channels == 1 else ""
            raise SlideError(f"model {self.name!r} takes {self.network.spec.in_channels}-channel images but "
                             f"{info.name} has {len(info.channels)} ({', '.join(info.channels)}){hint}")
        norm = self.network.spec.dlcore["normalization"]["type"]
        if norm in ("scale_0_1", "imagenet") and info.dtype != "uint8" and "max_value" not in self.network.spec.dlcore["normalization"]:
            raise SlideError(f"model {self.name!r} expects 8-bit images (normalisation {norm}) but {info.name} is {info.dtype}")

    def network_input(self, window: np.ndarray) -> np.ndarray:
        """The channels of a ``(Y, X, C)`` window the network sees (all, or ``channel`` alone)."""
        return window if self.channel is None else window[..., self.channel:self.channel + 1]

    def prepare(self, samples: list[np.ndarray]) -> "_ModelTask":
        return dataclasses.replace(self, network=self.network.fit([self.network_input(s) for s in samples]))

    @property
    def on_gpu(self) -> bool:
        """Whether the network runs on a CUDA device."""
        return str(self.network.device.name).startswith("cuda")

    def probabilities(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Per-window ``(C, Y, X)`` probabilities, windows padded to a valid size and cropped back."""
        if not windows:
            return []
        windows = [self.network_input(w) for w in windows]
        spec = self.network.spec
        size_y = spec.valid_size(max(w.shape[0] for w in windows))
        size_x = spec.valid_size(max(w.shape[1] for w in windows))
        if spec.sizes["y"][1] == 0 and max(w.shape[0] for w in windows) > size_y:
            raise ModelError(f"model {self.name!r} takes {size_y} px tiles only; use tile_size + 2*halo <= {size_y}")
        batch = np.stack([_pad_to(w, size_y, size_x) for w in windows])
        probs = self.network(batch)
        return [p[:, : w.shape[0], : w.shape[1]] for p, w in zip(probs, windows)]

    def provenance(self) -> dict:
        spec = self.network.spec
        return {
            "task": self.name, "kind": self.kind, "model_version": spec.version, "package": str(spec.folder),
            "weights_format": self.network.weights_format,
            "weights_sha256": weights_digest(spec.weights[self.network.weights_format]),
            "device": self.network.device.name, "autocast": self.network.device.autocast_dtype,
            "preprocessing": self.network.pre.describe(), "output_activation": self.network.activation,
            "parameters": {"mpp": self.mpp, "tile_size": self.tile_size, "halo": self.halo, "batch_size": self.batch_size,
                           "channel": self.channel, **self._extra_parameters()},
            "dlcore_config_from_package": not spec.foreign,
        }

    def _extra_parameters(self) -> dict:
        return {}


@dataclass(frozen=True)
class ClassesFromMaps:
    """A semantic network's class map as a picklable ``(maps, window) -> labels``: the one channel
    above ``threshold``, else the most probable class (int32, 0 = background)."""

    threshold: float

    def __call__(self, maps: np.ndarray, window: np.ndarray) -> np.ndarray:
        if maps.shape[0] == 1:
            return (maps[0] > self.threshold).astype(np.int32)
        return np.argmax(maps, axis=0).astype(np.int32)


@dataclass(frozen=True)
class SemanticModelTask(_ModelTask):
    """Semantic segmentation: one class index per pixel (0 = background)."""

    threshold: float = 0.5
    kind = "semantic"

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        classes = ClassesFromMaps(self.threshold)
        return [classes(p, w) for p, w in zip(self.probabilities(windows), windows)]

    def split_for_workers(self):
        """``(infer, postprocess)``: the network's maps in the main process (its device), the class map
        in the engine's workers (:mod:`dlcore.tiling.pool`)."""
        return self.probabilities, ClassesFromMaps(self.threshold)

    def make_stitcher(self, canvas, plan):
        from dlcore.tiling.stitch import SemanticStitcher

        stitcher = SemanticStitcher(canvas, len(self.class_names))
        stitcher.factor = plan.factor  # level-0 pixels per working pixel, for the outlines
        return stitcher

    def extra_outputs(self, stitcher, folder: Path) -> dict[str, Path]:
        """``class_outlines.geojson``: each class's regions as polygons in level-0 pixels."""
        from dlcore.models.outputs import write_class_outlines

        path = write_class_outlines(stitcher, self.class_names, self.class_colors, folder / "class_outlines.geojson")
        return {"class outlines": path}

    def _extra_parameters(self) -> dict:
        return {"threshold": self.threshold}


@dataclass(frozen=True)
class InstancesFromMaps:
    """The seeded watershed of :mod:`dlcore.models.instances` as a picklable ``(maps, window) -> labels``."""

    params: dict

    def __call__(self, maps: np.ndarray, window: np.ndarray) -> np.ndarray:
        from dlcore.models.instances import instances_from_maps

        return instances_from_maps(maps, self.params)


@dataclass(frozen=True)
class InstanceModelTask(_ModelTask):
    """Instance segmentation: network pixel maps, then a seeded watershed (see :mod:`dlcore.models.spec`)."""

    postprocess: dict = field(default_factory=dict)
    object_classifier: object = field(default=None, repr=False, compare=False)
    kind = "instances"

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        return [InstancesFromMaps(self.postprocess)(p, w) for p, w in zip(self.probabilities(windows), windows)]

    def split_for_workers(self):
        """``(infer, postprocess)``: the network's maps in the main process (its device), the seeded
        watershed in the engine's workers (:mod:`dlcore.tiling.pool`)."""
        return self.probabilities, InstancesFromMaps(self.postprocess)

    @property
    def min_object_pixels(self) -> int:
        """Objects smaller than this are not kept, also after stitching (see :class:`InstanceStitcher`)."""
        return int(self.postprocess.get("min_size", 0))

    @property
    def classify_object(self):
        """The object classifier's ``(mask, image) -> class name`` (None when the package has none)."""
        return None if self.object_classifier is None else self.object_classifier.classify

    def _extra_parameters(self) -> dict:
        return {"postprocess": self.postprocess,
                "object_classifier": None if self.object_classifier is None else self.object_classifier.describe()}


@dataclass(frozen=True)
class PatchClassifierTask(PatchGridOutputs, _ModelTask):
    """A patch classifier mapped over the slide; see the module docstring for its outputs.

    A patch is classified when at least ``min_tissue`` of its pixels look like tissue (neither glass
    nor black margin); other patches stay 0.  The class map holds class index + 1.
    """

    kind = "semantic"

    def prepare(self, samples: list[np.ndarray]) -> "PatchClassifierTask":
        return dataclasses.replace(self, network=self.network.fit([self.network_input(s) for s in samples]),
                                   _pending=collections.deque())

    def patch_probabilities(self, patches: list[np.ndarray]) -> np.ndarray:
        """``(N, K)`` class probabilities of ``(P, P, C)`` patches."""
        return self.network(np.stack([self.network_input(q) for q in patches]))

    def _extra_parameters(self) -> dict:
        return {"patch_size": self.patch_size, "min_tissue": self.min_tissue, "background_class": self.background_class}


def build_task(network: Network, params: dict, *, batch_size: int = 8) -> _ModelTask:
    """The task for a loaded network with the user's ``params`` applied over the package's settings.

    Parameters common to every model: ``mpp``, ``tile_size``, ``halo``, ``batch_size``, ``channel`` (a
    single-channel model: the slide channel it sees, e.g. the DAPI of a multiplex); semantic:
    ``threshold``; instances: any ``postprocess`` key (e.g. ``fg_threshold``, ``min_size``); patch
    classification: ``min_tissue``.  Unknown names are an error listing the valid ones.
    """
    cfg = network.spec.dlcore
    kind = cfg["kind"]
    params = dict(params)
    common = {"mpp": cfg["mpp"], "tile_size": cfg["tile_size"], "halo": cfg["halo"], "batch_size": batch_size,
              "channel": None}
    for key in common:
        if key in params and params[key] is not None:
            common[key] = params.pop(key)
    if network.spec.foreign and network.spec.sizes["y"][1] == 0:  # a fixed-size network: tiles fit it
        common["tile_size"] = network.spec.sizes["y"][0] - 2 * common["halo"]
    if common["channel"] is not None:
        if isinstance(common["channel"], bool) or not isinstance(common["channel"], int) or common["channel"] < 0:
            raise ParameterError(f"model {network.spec.name!r}: channel={common['channel']!r} must be a channel index "
                                 "(0 for the first)")
        if network.spec.in_channels != 1:
            raise ParameterError(f"model {network.spec.name!r} takes {network.spec.in_channels} channels; channel= "
                                 "picks the one channel of a single-channel model")
    if common["tile_size"] < 1 or common["halo"] < 0 or common["batch_size"] < 1:
        raise ParameterError(f"model {network.spec.name!r}: tile_size, halo and batch_size must be positive ({common})")
    base = dict(network=network, class_names=tuple(cfg["classes"]),
                class_colors=tuple(tuple(c) for c in cfg["colors"]), **common)
    if kind == "semantic":
        valid = {"threshold"}
        _check_params(network, params, valid)
        return SemanticModelTask(**base, **params)
    if kind == "instances":
        post = dict(cfg["postprocess"])
        _check_params(network, params, set(post) - {"type"})
        post.update(params)
        classifier = None
        if cfg.get("object_classifier"):
            from dlcore.models.object_classifier import ObjectClassifier

            classifier = ObjectClassifier.from_config(cfg["object_classifier"])
            base["class_names"] = tuple(classifier.classes)
            base["class_colors"] = tuple(tuple(c) for c in cfg["object_classifier"].get("colors", cfg["colors"]))
        return InstanceModelTask(**base, postprocess=post, object_classifier=classifier)
    valid = {"min_tissue"}
    _check_params(network, params, valid)
    if common["tile_size"] % cfg["patch_size"]:
        raise ParameterError(f"tile_size={common['tile_size']} must be a multiple of the patch size {cfg['patch_size']}")
    return PatchClassifierTask(**base, patch_size=cfg["patch_size"], background_class=cfg.get("background_class"), **params)


def _check_params(network: Network, params: dict, valid: set[str]) -> None:
    unknown = set(params) - valid
    if unknown:
        raise ParameterError(f"model {network.spec.name!r} has no parameter(s) {sorted(unknown)}; its parameters: "
                             f"{', '.join(sorted(valid | set(COMMON_PARAMETERS)))}")


def describe_parameters(spec) -> dict:
    """Parameter name -> default for a model (for `dlcore models show`)."""
    cfg = spec.dlcore
    out = {k: cfg.get(k) for k in ("mpp", "tile_size", "halo")}
    if cfg["kind"] == "semantic":
        out["threshold"] = 0.5
    elif cfg["kind"] == "instances":
        out.update({k: v for k, v in cfg["postprocess"].items() if k != "type"})
    else:
        out["min_tissue"] = 0.5
    return json.loads(json.dumps(out))
