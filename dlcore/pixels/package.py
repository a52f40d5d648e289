"""A pixel classifier as a versioned bioimage.io package in the registry, with no pickle in it.

:func:`register_pixel_classifier` writes one folder::

    <registry>/<name>[-vN]/
      rdf.yaml                  bioimage.io model (format 0.5); dlcore's settings in config.dlcore
      forest.npz                the forest as plain arrays (loaded with allow_pickle=False)
      weights_torchscript.pt    features + forest as one TorchScript graph, for other tools and GPUs
      test_input.npy            a raw crop of a training image (1, C, Y, X), float32
      test_output.npy           its class probabilities (1, classes, Y, X), computed by dlcore
      feature_importance.csv    every feature's mean decrease in impurity
      cover.png, README.md      the cover and the model card

``config.dlcore`` holds ``kind: pixel_classifier``, the working resolution and tiling, the classes
and colours, the features (:class:`~dlcore.pixels.features.FeatureSpec`), the forest file with its
SHA-256 and settings, the training record and the metrics.

What runs where: dlcore runs the package from ``forest.npz`` and the feature settings alone, in numpy,
OpenCV and scikit-learn's compiled trees (no torch needed, and faster on a CPU).  The TorchScript graph
is the same computation in torch (:mod:`dlcore.pixels.torch_graph`): bioimageio.core, deepImageJ-style
consumers and a GPU run it, and :func:`dlcore.models.registry.validate_package` checks that it
reproduces dlcore's test output.  Neither path unpickles anything: ``np.load(allow_pickle=False)`` and
TorchScript's loader, which restores tensors and TorchScript code, never Python objects.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError
from dlcore.pixels.features import FeatureSpec
from dlcore.pixels.forest import ForestArrays, ForestSettings

log = logging.getLogger(__name__)

KIND = "pixel_classifier"
FOREST_FILE = "forest.npz"
IMPORTANCE_FILE = "feature_importance.csv"
TEST_SIDE = 64  # test tensor side, pixels
# A feature value a rounding error away from a split threshold may take the other branch in torch:
# one tree of the forest then differs (by 1/trees in a probability) at such rare pixels: they may be 0.2 %.
REPRODUCIBILITY = {"relative_tolerance": 0.0, "absolute_tolerance": 0.01, "mismatched_elements_per_million": 2000}


@dataclass(frozen=True)
class PixelPackage:
    """What dlcore runs from a pixel classifier package (read by :func:`read_pixel_package`)."""

    folder: Path
    name: str
    version: str
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    channel_names: tuple[str, ...]
    features: FeatureSpec
    forest: ForestArrays
    forest_sha256: str
    mpp: float | None
    tile_size: int
    halo: int

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)


def check_model_name(name: str, *, what: str = "the model name") -> str:
    """``name`` when it can be a bioimage.io model name and a registry folder (5 to 64 letters, digits,
    ``-`` or ``_``); else ParameterError saying so, before any training time is spent."""
    import re

    from dlcore.errors import ParameterError

    if not re.fullmatch(r"[A-Za-z0-9_-]{5,64}", name or ""):
        raise ParameterError(f"{what} {name!r}: give the classifier a name of 5 to 64 letters, digits, '-' or '_', "
                             "without spaces (a bioimage.io model name), e.g. 'tumour-stroma-pixels'")
    return name


def check_pixel_config(cfg: dict, where: str = "config.dlcore") -> None:
    """Raise ModelError naming a bad field of a pixel classifier's ``config.dlcore`` block."""
    try:
        spec = FeatureSpec.from_dict(cfg.get("features") or {})
    except Exception as exc:  # noqa: BLE001 - ParameterError and TypeError from a bad block
        raise ModelError(f"{where}.features: {exc}") from exc
    forest = cfg.get("forest") or {}
    if not isinstance(forest, dict) or not forest.get("source"):
        raise ModelError(f"{where}.forest.source must name the forest file ({FOREST_FILE})")
    if len(cfg.get("classes") or ()) < 2:
        raise ModelError(f"{where}.classes must name at least two classes")
    if not cfg.get("channel_names"):
        raise ModelError(f"{where}.channel_names must name the input channels")
    if cfg["halo"] < spec.radius():
        raise ModelError(f"{where}.halo={cfg['halo']} is smaller than the features' radius {spec.radius()}")


def read_pixel_package(folder: str | Path) -> PixelPackage:
    """The pixel classifier in ``folder``: settings from rdf.yaml, the forest (SHA-256 checked)."""
    from dlcore.models.loader import check_sha256
    from dlcore.models.package import inside
    from dlcore.models.spec import check_dlcore_config
    from dlcore.train.registry_io import read_rdf

    folder = Path(folder)
    rdf = read_rdf(folder)
    raw = ((rdf.get("config") or {}).get("dlcore")) or {}
    if raw.get("kind") != KIND:
        raise ModelError(f"{folder} is not a pixel classifier (kind {raw.get('kind')!r})")
    cfg = check_dlcore_config(raw, where=f"{folder.name}: config.dlcore")
    path = folder / str(cfg["forest"]["source"])
    if not inside(path, folder):
        raise ModelError(f"{folder.name}: the forest file {cfg['forest']['source']} lies outside the package")
    check_sha256(path, cfg["forest"].get("sha256"), "forest")
    forest = ForestArrays.load(path)
    features = FeatureSpec.from_dict(cfg["features"])
    n_features = features.count(len(cfg["channel_names"]))
    if forest.n_features != n_features or forest.n_classes != len(cfg["classes"]):
        raise ModelError(f"{folder.name}: the forest takes {forest.n_features} features for {forest.n_classes} "
                         f"classes, the settings give {n_features} features for {len(cfg['classes'])} classes")
    return PixelPackage(folder=folder, name=str(rdf.get("name", folder.name)), version=str(rdf.get("version", "")),
                        classes=tuple(cfg["classes"]), colors=tuple(tuple(c) for c in cfg["colors"]),
                        channel_names=tuple(cfg["channel_names"]), features=features, forest=forest,
                        forest_sha256=str(cfg["forest"].get("sha256") or ""), mpp=cfg["mpp"],
                        tile_size=int(cfg["tile_size"]), halo=int(cfg["halo"]))


def _test_crop(image: np.ndarray) -> np.ndarray:
    """A central ``TEST_SIDE`` square (or the whole image when smaller) of a ``(Y, X, C)`` image."""
    h, w = image.shape[:2]
    y0, x0 = max(0, (h - TEST_SIDE) // 2), max(0, (w - TEST_SIDE) // 2)
    return image[y0:y0 + TEST_SIDE, x0:x0 + TEST_SIDE]


def _cover(image: np.ndarray, classes_map: np.ndarray, colors) -> np.ndarray:
    """The image (8-bit display) beside its class map in the class colours."""
    from dlcore.overview import display_thumbnail

    shown, _ = display_thumbnail(image, max(image.shape[:2]))
    palette = np.asarray([(255, 255, 255), *colors], np.uint8)
    return np.concatenate([shown[..., :3], palette[classes_map]], axis=1)


def _importance_csv(path: Path, table) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["feature", "channel", "kind", "sigma", "importance"])
        for name, value in table:
            channel, kind, sigma = name.split("/")
            writer.writerow([name, channel, kind, sigma, f"{value:.6f}"])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def card(name: str, description: str, trained, *, mpp, training_data: str, reproduce: str) -> str:
    """The model card: what it is, what it learned from, how well it does on held-out strokes, its limits."""
    m = trained.metrics
    held = m.get("heldout_strokes")
    lines = [f"# {name}", "", description or "A pixel classifier trained in dlcore from sparse labels.", "",
             "A random forest on multiscale filter features (ilastik's family) labels every pixel with one of: "
             + ", ".join(f"**{c}**" for c in trained.classes) + ".", "",
             "## Training data", "", f"- **source**: {training_data or 'not stated'}",
             f"- **images** ({len(trained.images)}): {', '.join(trained.images)}",
             f"- **working resolution**: {mpp if mpp else 'the images native pixels'} µm/px", "",
             "| class | labelled pixels | strokes |", "|---|---:|---:|"]
    lines += [f"| {c} | {v['pixels']} | {v['strokes']} |" for c, v in trained.label_counts.items()]
    spec = trained.features
    lines += ["", "## Features", "",
              f"- **input**: {spec.colour} ({', '.join(trained.channel_names)}), values scaled by 1/{spec.max_value:g}",
              f"- **scales** (sigma, working px): {', '.join(f'{s:g}' for s in spec.scales)}",
              f"- **features**: {', '.join(spec.features)} ({len(trained.feature_names)} planes)",
              f"- **forest**: {json.dumps(trained.settings.as_dict())}", "", "## Validation", ""]
    lines.append(f"- **out-of-bag accuracy** (optimistic: pixels of one stroke look alike): {_fmt(m['oob_accuracy'])}")
    if held:
        lines += [f"- **held-out strokes** ({held['strokes_held_out']} strokes, {held['pixels']} pixels, "
                  f"never seen in training): accuracy {_fmt(held['accuracy'])}, balanced accuracy "
                  f"{_fmt(held['balanced_accuracy'])}", "", "| class | recall | precision |", "|---|---:|---:|"]
        lines += [f"| {c} | {_fmt(held['recall'][c])} | {_fmt(held['precision'][c])} |" for c in trained.classes]
    else:
        lines.append("- **held-out strokes**: not measured (a class had fewer than two strokes)")
    lines += ["", "These figures come from the labelled pixels only: sparse labels sit where the annotator was sure, "
              "so accuracy on every pixel of a new slide is lower. Check the class map on slides it was not "
              "trained on.", "", "## Most important features", "", "| feature | importance |", "|---|---:|"]
    lines += [f"| {n} | {v:.4f} |" for n, v in trained.importance[:15]]
    lines += ["", "By part: " + "; ".join(f"{part}: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                                        for part, parts in m["importance_by"].items())]
    if trained.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in trained.warnings]
    lines += ["", "## Limits", "",
              "- It knows only what the labels showed: another stain, scanner or tissue needs new labels.",
              "- Every analysed pixel gets a class: label the background and glass as a class of their own.",
              "", "## Running it", "", f"`dlcore run {name} SLIDE -o OUT` (class map, areas, outlines, probabilities); "
              f"`--param objects=CLASS` turns one class into measured objects.",
              "", f"Reproduce: `{reproduce}`" if reproduce else ""]
    return "\n".join(lines).rstrip() + "\n"


def _rdf(*, name, description, version, cfg, trained, files, authors, tags, license) -> dict:
    import torch

    from dlcore.models.package import FORMAT_VERSION, _authors
    from dlcore.models.spec import identifier

    space = {"min": 1, "step": 1}
    axes_in = [{"type": "batch"}, {"type": "channel", "channel_names": [identifier(c) for c in trained.channel_names]}]
    axes_in += [{"type": "space", "id": a, "size": space} for a in ("y", "x")]
    axes_out = [{"type": "batch"}, {"type": "channel", "channel_names": [identifier(c) for c in trained.classes]}]
    axes_out += [{"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}} for a in ("y", "x")]
    if cfg["mpp"]:
        for axis in axes_in[2:] + axes_out[2:]:
            axis.update({"unit": "micrometer", "scale": cfg["mpp"]})
    return {
        "type": "model", "format_version": FORMAT_VERSION, "name": name, "version": version,
        "description": description or f"pixel classifier ({', '.join(trained.classes)}) trained in dlcore",
        "authors": _authors(authors), "license": license, "tags": list(tags), "documentation": "README.md",
        "covers": ["cover.png"],
        "inputs": [{"id": "input", "axes": axes_in, "data": {"type": "float32"},
                    "description": "raw pixel values as read from the image (e.g. 0-255), no normalisation",
                    "test_tensor": {"source": "test_input.npy", "sha256": files["test_input.npy"]}}],
        "outputs": [{"id": "output", "axes": axes_out, "data": {"type": "float32"},
                     "description": "class probabilities (the forest's mean leaf fractions); dlcore takes the arg-max",
                     "test_tensor": {"source": "test_output.npy", "sha256": files["test_output.npy"]}}],
        "weights": {"torchscript": {"source": "weights_torchscript.pt", "sha256": files["weights_torchscript.pt"],
                                    "pytorch_version": torch.__version__.split("+")[0]}},
        "attachments": [{"source": FOREST_FILE, "sha256": files[FOREST_FILE]},
                        {"source": IMPORTANCE_FILE, "sha256": files[IMPORTANCE_FILE]}],
        "config": {"bioimageio": {"reproducibility_tolerance": [REPRODUCIBILITY],
                                  "task": "semantic segmentation (pixel classification)"},
                   "dlcore": cfg},
    }


def write_pixel_package(out_dir: str | Path, trained, *, name: str, version: str = "1.0.0", mpp: float | None = None,
                        example: np.ndarray, description: str = "", training_data: str = "", reproduce: str = "",
                        tile_size: int = 1024, authors=("dlcore",), tags=(), license: str = "CC-BY-4.0",
                        extra_files: dict[str, str] | None = None) -> Path:
    """Write ``trained`` (:class:`~dlcore.pixels.training.TrainedPixelClassifier`) as a validated package.

    ``example`` is a raw ``(Y, X, C)`` training image: its centre becomes the test tensors and the
    cover.  ``tile_size`` 1024: the halo (the features' radius) then adds 12 % to the pixels computed,
    against 25 % at 512, for a window's features of about 450 MB (96 planes) per worker.  The folder is written beside ``out_dir`` and renamed into place only once bioimageio.spec
    accepted it and its TorchScript graph reproduced dlcore's test output, so nothing half-written is
    ever visible.  ``extra_files`` (name -> text, e.g. owner.json) are written before that rename.
    """
    from dlcore.models.package import _validate_and_write, sha256_file, staged_package
    from dlcore.models.spec import default_colors
    from dlcore.pixels.forest import CompiledForest
    from dlcore.pixels.task import classify_pixels
    from dlcore.pixels.torch_graph import export_torchscript

    check_model_name(name)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ModelError(f"{out_dir} already exists; remove it or choose another name")
    example = np.asarray(example)
    if example.ndim == 2:
        example = example[..., None]
    colors = default_colors(len(trained.classes))
    halo = trained.features.radius()
    cfg = {"kind": KIND, "mpp": mpp, "tile_size": int(max(tile_size, 2 * halo)), "halo": int(halo),
           "normalization": {"type": "none"}, "output_activation": "none", "classes": list(trained.classes),
           "colors": colors, "channel_names": list(trained.channel_names), "features": trained.features.as_dict(),
           "forest": {"source": FOREST_FILE, **trained.settings.as_dict(), "n_features": trained.forest.n_features},
           "training_data": {"description": training_data, "images": trained.images, "labels": trained.label_counts,
                             "seconds": trained.seconds},
           "metrics": json.loads(json.dumps(trained.metrics, default=float)), "warnings": list(trained.warnings)}
    forest = CompiledForest(trained.forest)
    crop = _test_crop(example)
    test_input = np.ascontiguousarray(np.moveaxis(crop, -1, 0)[None].astype(np.float32))
    test_output = classify_pixels(crop, trained.features, forest)[None].astype(np.float32)
    preview = example[: 512, : 512]
    cover = _cover(preview, np.argmax(classify_pixels(preview, trained.features, forest), axis=0) + 1, colors)

    with staged_package(out_dir, extra_files) as staging:
        trained.forest.save(staging / FOREST_FILE)
        cfg["forest"]["sha256"] = sha256_file(staging / FOREST_FILE)
        _importance_csv(staging / IMPORTANCE_FILE, trained.importance)
        np.save(staging / "test_input.npy", test_input)
        np.save(staging / "test_output.npy", test_output)
        from PIL import Image

        Image.fromarray(cover).save(staging / "cover.png")
        export_torchscript(trained.features, trained.forest, test_input.shape[1], staging / "weights_torchscript.pt")
        _check_torchscript(staging / "weights_torchscript.pt", test_input, test_output)
        (staging / "README.md").write_text(card(name, description, trained, mpp=mpp, training_data=training_data,
                                                reproduce=reproduce))
        files = {f: sha256_file(staging / f) for f in ("test_input.npy", "test_output.npy", "weights_torchscript.pt",
                                                       FOREST_FILE, IMPORTANCE_FILE)}
        rdf = _rdf(name=name, description=description, version=version, cfg=cfg, trained=trained, files=files,
                   authors=authors, tags=list(tags) or ["dlcore", "pixel-classification", "random-forest", "ilastik"],
                   license=license)
        _validate_and_write(rdf, staging)
    log.info("wrote pixel classifier %s", out_dir)
    return out_dir


def _check_torchscript(path: Path, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """Raise ModelError unless the TorchScript graph reproduces dlcore's probabilities within REPRODUCIBILITY."""
    import torch

    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        got = module(torch.from_numpy(test_input)).numpy()
    bad = ~np.isclose(got, test_output, rtol=0, atol=REPRODUCIBILITY["absolute_tolerance"])
    if got.shape != test_output.shape or bad.sum() / bad.size * 1e6 > REPRODUCIBILITY["mismatched_elements_per_million"]:
        raise ModelError(f"the TorchScript export does not reproduce dlcore's probabilities ({int(bad.sum())} of "
                         f"{bad.size} values differ)")


def register_pixel_classifier(trained, registry: str | Path, *, name: str, example: np.ndarray, mpp: float | None,
                              owner: dict | None = None, **kwargs) -> Path:
    """Write ``trained`` into ``registry`` as a new version of ``name`` (``name/`` first, then
    ``name-vN/``), under the registry's lock so that concurrent trainings never take the same folder.
    ``owner`` (:mod:`dlcore.models.ownership`) is written as owner.json inside the package.  Other
    keyword arguments go to :func:`write_pixel_package`.  Returns the package folder."""
    from dlcore.models.ownership import OWNER_FILE
    from dlcore.models.registry import registry_name
    from dlcore.train.registry_io import next_version, registry_lock

    registry = Path(registry)
    key = registry_name(name)
    with registry_lock(registry):
        version, folder = next_version(key, registry)
        extra = {OWNER_FILE: json.dumps(owner, indent=2)} if owner else None
        return write_pixel_package(registry / folder, trained, name=key, version=version, mpp=mpp, example=example,
                                   extra_files=extra, **kwargs)


__all__ = ["PixelPackage", "read_pixel_package", "write_pixel_package", "register_pixel_classifier",
           "check_pixel_config", "ForestSettings"]
