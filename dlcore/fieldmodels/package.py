"""``dlcore models import``: a field model's weights file becomes a registry package.

:func:`import_model` asks the kind to check the file (:meth:`~dlcore.fieldmodels.base.Kind.inspect`),
then writes a bioimage.io package (rdf.yaml format 0.5, the weights in their own format, test tensors
made by running the model, a cover, and a card naming the source, the training data and the licence as
the publisher states them, and the weights' sha256), validates it with bioimageio.spec, runs it once more
from the package as :func:`reproduce` does, and installs it with :func:`dlcore.models.registry.install`.
Nothing is registered half-way: the package is built in a scratch folder and moved into the registry
only when every check passed.

Layout of an imported package::

    rdf.yaml          config.dlcore: kind "imported", mpp, tiling, classes, runtime (the kind, its weights
                      file and settings), source (publisher, licence, training data), import record
    <weights files>   as the publisher ships them (instanseg.pt; config.json, thresholds.json, weights_best.h5)
    test_input.npy    (1, C, Y, X) float32 raw image      test_output.npy  (1, 1, Y, X) int32 instance labels
                      (a semantic output: its class map; a patch classifier: (N, C, P, P) patches and
                      (N, K) float32 class probabilities)
    cover.png         README.md (the card)
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError
from dlcore.fieldmodels.base import Inspected, Publisher

log = logging.getLogger(__name__)

TEST_SIZE = 256
AGREEMENT = 0.999  # share of test pixels whose object/background verdict (or class) must be reproduced
PROBABILITY_TOLERANCE = 1e-3  # a patch classifier's test probabilities must be reproduced this closely


def test_image(channels: int, *, size: int = TEST_SIZE, seed: int = 7) -> np.ndarray:
    """A ``(Y, X, C)`` test image with round nuclei: dark purple on pink (3 channels, brightfield) or
    bright on dark (fluorescence); deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), np.float32)
    for _ in range(size * size // 900):
        cy, cx = rng.uniform(8, size - 8, 2)
        r = rng.uniform(4, 8)
        nuclei = np.maximum(nuclei, np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1))
    noise = rng.normal(0, 6, (size, size, channels))
    if channels == 3:
        background, nucleus = np.array([235, 190, 215]), np.array([95, 60, 140])
        image = background + nuclei[..., None] * (nucleus - background) + noise
    else:
        image = 20 + nuclei[..., None] * 180 + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _cover(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    rgb = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
    rgb = rgb.copy()
    rgb[find_boundaries(labels, mode="inner")] = (255, 255, 0)
    return rgb


def _weights_entry(inspected: Inspected, folder: Path) -> dict:
    """The rdf ``weights`` entry for the weights file in its own format."""
    from dlcore.models.package import sha256_file

    entry = {"source": inspected.weights_file, "sha256": sha256_file(folder / inspected.weights_file)}
    if inspected.weights_format == "torchscript":
        import torch

        entry["pytorch_version"] = torch.__version__.split("+")[0]
    elif inspected.weights_format == "keras_hdf5":
        entry["tensorflow_version"] = str(inspected.runtime.get("tensorflow_version") or "2.0")
    elif inspected.weights_format == "pytorch_state_dict":  # the publisher's class, from its own library
        runtime = inspected.runtime
        entry["architecture"] = runtime.get("architecture") or {
            "callable": runtime["class"], "import_from": runtime["module"], "kwargs": runtime.get("kwargs") or {}}
        entry["pytorch_version"] = str(runtime.get("pytorch_version") or runtime.get("torch_version")).split("+")[0]
    return {inspected.weights_format: entry}


def _test_run(network, inspected: Inspected) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The package's test tensors made by running ``network``: ``(test_input, test_output, cover, what it
    found)`` (see the module docstring for their shapes)."""
    if inspected.output == "patch_classification":
        size = int(inspected.patch_size)
        image = test_image(inspected.in_channels, size=2 * size)
        patches = [image[y:y + size, x:x + size] for y in (0, size) for x in (0, size)]
        probs = np.asarray(network.classify(patches), np.float32)
        raw = np.ascontiguousarray(np.stack([np.moveaxis(q, -1, 0) for q in patches]).astype(np.float32))
        top = [inspected.classes[int(i)] for i in probs.argmax(axis=1)]
        return raw, probs, image, f"classifies its 4 synthetic test patches as {', '.join(top)}"
    image = test_image(inspected.in_channels)
    labels = _labels_of(network.predict([image])[0])
    raw = np.ascontiguousarray(np.moveaxis(image, -1, 0)[None].astype(np.float32))
    if inspected.output == "semantic":
        found = [inspected.classes[int(v) - 1] for v in np.unique(labels) if 0 < v <= len(inspected.classes)]
        what = f"labels {', '.join(found) or 'nothing but background'}"
    else:
        what = f"finds {int(np.count_nonzero(np.unique(labels)))} objects"
    return raw, labels[None, None], _cover(image, labels), what + " on its synthetic test image"


def _card(name: str, inspected: Inspected, publisher: Publisher | None, cfg: dict, record: dict,
          found: str) -> str:
    p = publisher
    facts = [("Kind", f"{inspected.kind} ({inspected.weights_format} weights, run by dlcore without the "
                      "publisher's software)" if inspected.kind == "stardist" else inspected.kind),
             ("Source", p.source if p else "not stated (the file carries no source; give --source)"),
             ("Training data", p.training_data if p else "not stated (give --training-data)"),
             ("Licence", p.licence if p else "not stated (give --licence)"),
             ("Citation", p.citation if p and p.citation else "-"),
             ("Weights", f"`{inspected.weights_file}`, sha256 `{record['sha256'][inspected.weights_file]}`"),
             ("Imported", f"{record['imported']} from `{record['original']}` by dlcore {record['dlcore_version']}")]
    settings = {k: cfg[k] for k in ("output", "mpp", "tile_size", "halo", "patch_size", "background_class",
                                    "classes") if cfg.get(k) is not None}
    how = ("cut into patches of the model's size; patches that are mostly tissue are classified, giving a class "
           "map, a probability heatmap and the slide's class (the mean probabilities over tissue patches)"
           if inspected.output == "patch_classification" else
           "cut into tiles with a halo, and each tile's core kept (its class map)" if inspected.output == "semantic"
           else "cut into tiles with a halo, and the objects are stitched by ownership")
    return (f"# {name}\n\n{inspected.description}\n\n"
            + "".join(f"- **{k}**: {v}\n" for k, v in facts)
            + "\n## Performance\n\n"
            + (f"{p.performance}. " if p and p.performance else "As its publisher reports it. ")
            + "dlcore has not measured this model on annotated data. The import only checked that the file is a "
              f"complete, intact model of its kind and that it runs: it {found} (`test_output.npy`), which every "
              "later validation must reproduce.\n"
            + "\n## Running it in dlcore\n\n`dlcore run " + name + " SLIDE -o OUT`, or Run_Model in OMERO. The "
              "slide is read at the model's pixel size, normalised as the model's software does, " + how
            + ". Settings "
              "(`config.dlcore` in rdf.yaml):\n\n```json\n" + json.dumps({**settings, "runtime": cfg["runtime"]},
                                                                       indent=2, default=str) + "\n```\n")


def build_package(kind_name: str, source: str | Path, out_dir: Path, *, name: str | None = None,
                  mpp: float | None = None, publisher: Publisher | None = None, task: str | None = None) -> Path:
    """Write the package of ``source`` (a weights file or folder of kind ``kind_name``) into the new folder
    ``out_dir`` (see the module docstring); returns ``out_dir``.  ``mpp`` overrides the model's pixel size,
    ``publisher`` the source/training data/licence (fields left empty keep what the file states), ``task``
    picks one of the things a model gives when it gives several (HoVer-Net+: ``instances`` or ``semantic``)."""
    from dlcore.fieldmodels.kinds import get_kind

    kind = get_kind(kind_name)
    source = Path(source)
    if not source.exists():
        raise ModelError(f"no such file or folder: {source}")
    inspected = kind.inspect(source)
    try:
        inspected = _for_task(inspected, task)
        return _build(kind, inspected, source, Path(out_dir), name=name, mpp=mpp, publisher=publisher)
    finally:
        if inspected.scratch is not None:
            shutil.rmtree(inspected.scratch, ignore_errors=True)


def _for_task(inspected: Inspected, task: str | None) -> Inspected:
    """``inspected`` as the model that gives ``task`` (its own output, or one of its alternatives)."""
    if task is None or task == inspected.output:
        return inspected
    if task not in inspected.alternatives:
        given = ", ".join([inspected.output, *inspected.alternatives])
        raise ModelError(f"{inspected.default_name or inspected.kind} gives {given}, not {task}; import it with "
                         + " or ".join(f"--task {t}" for t in [inspected.output, *inspected.alternatives]))
    changes = dict(inspected.alternatives[task])
    changes["classes"] = tuple(changes.get("classes", inspected.classes))
    return dataclasses.replace(inspected, **changes, alternatives={})


def _build(kind, inspected: Inspected, source: Path, out_dir: Path, *, name: str | None, mpp: float | None,
           publisher: Publisher | None) -> Path:
    """:func:`build_package` once the source is inspected."""
    from dlcore import __version__
    from dlcore.models.package import (FORMAT_VERSION, _save_cover, _validate_and_write, sha256_file,
                                       staged_package)
    from dlcore.models.registry import registry_name
    from dlcore.models.spec import check_dlcore_config

    if mpp is not None:
        if not mpp > 0:
            raise ModelError(f"--mpp {mpp} must be a positive pixel size in µm")
        inspected = dataclasses.replace(inspected, mpp=float(mpp))
    stated = _merged(inspected.publisher, publisher)
    _spdx_licence(stated)  # before any work: the package cannot be written without it
    name = registry_name(name or inspected.default_name or source.stem)
    runtime = {"kind": inspected.kind, "weights": inspected.weights_file, **inspected.runtime}
    patch = {"patch_size": inspected.patch_size, "background_class": inspected.background_class} \
        if inspected.output == "patch_classification" else {}
    cfg = check_dlcore_config({"kind": "imported", "output": inspected.output, "mpp": inspected.mpp,
                               "tile_size": inspected.tile_size, "halo": inspected.halo,
                               "normalization": {"type": "none"}, "classes": list(inspected.classes), **patch,
                               "runtime": runtime, "source": dataclasses.asdict(stated) if stated else None},
                              where=f"{name}: config.dlcore")
    with staged_package(Path(out_dir)) as staging:
        for file_name, path in inspected.files.items():
            shutil.copyfile(path, staging / file_name)
        record = {"original": str(source.name), "imported": datetime.datetime.now(datetime.timezone.utc)
                  .isoformat(timespec="seconds"), "dlcore_version": __version__,
                  "sha256": {f: sha256_file(staging / f) for f in inspected.files}}
        cfg["import"] = record
        network = kind.load(staging, cfg, "cpu")
        raw, expected, cover_image, found = _test_run(network, inspected)
        np.save(staging / "test_input.npy", raw)
        np.save(staging / "test_output.npy", expected)
        cover = _save_cover(cover_image, staging)
        (staging / "README.md").write_text(_card(name, inspected, stated, cfg, record, found))
        _validate_and_write(_rdf(name, inspected, stated, cfg, staging, cover, FORMAT_VERSION), staging)
    log.info("imported %s (%s) into %s", source, inspected.kind, out_dir)
    return out_dir


def _merged(found: Publisher | None, given: Publisher | None) -> Publisher | None:
    if given is None:
        return found
    if found is None:
        return Publisher(source=given.source or "not stated", training_data=given.training_data or "not stated",
                         licence=given.licence or "not stated", citation=given.citation, authors=given.authors)
    return Publisher(source=given.source or found.source, training_data=given.training_data or found.training_data,
                     licence=given.licence or found.licence, citation=given.citation or found.citation,
                     authors=given.authors or found.authors, performance=given.performance or found.performance)


def _rdf(name: str, inspected: Inspected, publisher: Publisher | None, cfg: dict, folder: Path, cover: str,
         format_version: str) -> dict:
    from dlcore.models.package import INPUT_ID, sha256_file

    n_in = inspected.in_channels
    in_names = ["red", "green", "blue"] if n_in == 3 else [f"channel{i}" for i in range(n_in)]
    scale = {"unit": "micrometer", "scale": cfg["mpp"]} if cfg["mpp"] else {}
    preprocessing = _preprocessing(cfg["runtime"].get("normalization") or {})
    licence = _spdx_licence(publisher)
    output = cfg.get("output", "instances")
    if output == "patch_classification":
        size = cfg["patch_size"]
        space = [{"type": "space", "id": a, "size": size, **scale} for a in ("y", "x")]
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [_channel_name(c) for c in cfg["classes"]]}]
        out_description, out_type, tags = "class probabilities of each patch", "float32", ["classification", "patch"]
    else:
        space = [{"type": "space", "id": a, "size": {"min": 64, "step": 16}, **scale} for a in ("y", "x")]
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [output]}] + [
            {"type": "space", "id": a, "size": {"tensor_id": INPUT_ID, "axis_id": a}, **scale} for a in ("y", "x")]
        out_type = "int32"
        if output == "semantic":
            out_description, tags = "class map (0 background, class i the i-th of config.dlcore.classes)", \
                ["semantic-segmentation"]
        else:
            out_description, tags = "instance labels (0 background), after the model's own post-processing", \
                ["instance-segmentation", "nuclei"]
    return {
        "type": "model", "format_version": format_version, "name": name, "version": "0.1.0",
        "description": inspected.description or f"{inspected.kind} model imported into dlcore",
        "authors": [{"name": a.replace("/", "-")} for a in (publisher.authors if publisher else ())]
        or [{"name": "not stated by the weights (see README.md)"}],
        "license": licence, "tags": [*tags, inspected.kind, "imported"],
        "documentation": "README.md", "covers": [cover],
        "inputs": [{
            "id": INPUT_ID, "description": "raw image read from the slide at the model's pixel size",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": in_names}] + space,
            "test_tensor": {"source": "test_input.npy", "sha256": sha256_file(folder / "test_input.npy")},
            "data": {"type": "float32"},
            "preprocessing": preprocessing}],
        "outputs": [{
            "id": "labels" if output != "patch_classification" else "probabilities",
            "description": out_description, "axes": out_axes,
            "test_tensor": {"source": "test_output.npy", "sha256": sha256_file(folder / "test_output.npy")},
            "data": {"type": out_type}}],
        "weights": _weights_entry(inspected, folder),
        "config": {"dlcore": cfg},
    }


def _preprocessing(normalization: dict) -> list[dict]:
    """The rdf's account of the runtime's normalisation: per-channel percentiles (``scale_range``), a fixed
    gain (``scale_linear``, e.g. TIAToolbox's classifiers' /255), or nothing (the model normalises inside)."""
    if normalization.get("percentiles") or "pmin" in normalization:
        low, high = normalization.get("percentiles") or (normalization["pmin"], normalization["pmax"])
        return [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": low, "max_percentile": high}}]
    if normalization.get("gain"):
        return [{"id": "scale_linear", "kwargs": {"gain": float(normalization["gain"]), "offset": 0.0}}]
    return []


def _channel_name(name: str) -> str:
    """A class name as a bioimage.io channel name (an identifier: letters, digits, ``_``, ``-``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_") or "class"


def _labels_of(result) -> np.ndarray:
    """A network's labels for one window, as int32 (a model's TypedLabels carry them with their classes)."""
    return np.asarray(getattr(result, "labels", result), np.int32)


def _spdx_licence(publisher: Publisher | None) -> str:
    """The publisher's licence as the SPDX id bioimage.io needs; ModelError asking for it otherwise."""
    import json

    import bioimageio.spec

    known = json.loads((Path(bioimageio.spec.__file__).parent / "static" / "spdx_licenses.json").read_text())
    ids = {entry["licenseId"].lower(): entry["licenseId"] for entry in known["licenses"]}
    stated = (publisher.licence if publisher else "").strip()
    if stated.lower() in ids:
        return ids[stated.lower()]
    raise ModelError((f"the licence {stated!r} is not an SPDX licence id" if stated and stated != "not stated" else
                      "the weights do not state their licence")
                     + "; give it as its publisher states it with --licence (an SPDX id such as Apache-2.0, "
                       "BSD-3-Clause, CC-BY-4.0, CC-BY-NC-4.0)")


def reproduce(folder: Path, cfg: dict) -> str:
    """Run an imported package on its test input; ModelError unless its test output is reproduced: the same
    object/background verdict (a semantic output: the same class) on at least 99.9% of the pixels and the
    same number of objects; a patch classifier's probabilities within 0.001 and the same class per patch."""
    from dlcore.fieldmodels.kinds import get_kind

    folder = Path(folder)
    try:
        raw = np.load(folder / "test_input.npy")
        expected = np.load(folder / "test_output.npy")
        images = [np.moveaxis(x, 0, -1).astype(np.uint8) for x in raw]
    except (OSError, ValueError, IndexError) as exc:
        raise ModelError(f"{folder}: unreadable test tensors ({exc})") from exc
    network = get_kind(cfg["runtime"]["kind"]).load(folder, cfg, "cpu")
    output = cfg.get("output", "instances")
    if output == "patch_classification":
        got = np.asarray(network.classify(images), np.float32)
        if got.shape != expected.shape:
            raise ModelError(f"{folder.name}: probabilities of shape {got.shape} for the test output's "
                             f"{expected.shape}")
        gap = float(np.abs(got - expected).max())
        same = bool((got.argmax(axis=1) == expected.argmax(axis=1)).all())
        if gap > PROBABILITY_TOLERANCE or not same:
            raise ModelError(f"{folder.name}: its weights do not reproduce the test output (probabilities differ by "
                             f"up to {gap:.4f}); the weights were changed or damaged")
        return f"reproduces its test output ({len(got)} patches, probabilities within {gap:.1e})"
    got = _labels_of(network.predict([images[0]])[0])
    expected = expected[0, 0]
    if output == "semantic":
        agreement = float(np.mean(got == expected))
        if agreement < AGREEMENT:
            raise ModelError(f"{folder.name}: its weights do not reproduce the test output ({100 * agreement:.2f}% of "
                             "pixels have the same class); the weights were changed or damaged")
        return f"reproduces its test output ({100 * agreement:.2f}% of pixels have the same class)"
    agreement = float(np.mean((got > 0) == (expected > 0)))
    counts = (int(np.count_nonzero(np.unique(got))), int(np.count_nonzero(np.unique(expected))))
    if agreement < AGREEMENT or counts[0] != counts[1]:
        raise ModelError(f"{folder.name}: its weights do not reproduce the test output ({counts[0]} objects for "
                         f"{counts[1]}, {100 * agreement:.2f}% of pixels agree); the weights were changed or damaged")
    return f"reproduces its test output ({counts[1]} objects, {100 * agreement:.2f}% of pixels agree)"


def import_model(kind_name: str, source: str | Path, *, name: str | None = None, mpp: float | None = None,
                 publisher: Publisher | None = None, force: bool = False, config=None, task: str | None = None):
    """Import ``source`` as a model of kind ``kind_name`` into the registry (for ``task``, when its weights
    give several things; see :func:`build_package`); returns its :class:`~dlcore.models.registry.ModelRecord`.
    Refuses a name already installed unless ``force``."""
    from dlcore.models.registry import _config, _read_yaml, install, registry_name

    config = _config(config)
    root = Path(config.models_dir)
    root.mkdir(parents=True, exist_ok=True)
    if name and (root / registry_name(name)).exists() and not force:
        raise ModelError(f"a model called {registry_name(name)!r} is installed already; remove it first or use --force")
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        package = build_package(kind_name, source, work / "package", name=name, mpp=mpp, publisher=publisher,
                                task=task)
        package_name = _read_yaml(package / "rdf.yaml")["name"]
        return install(package, config, name=package_name, force=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
