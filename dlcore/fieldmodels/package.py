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
AGREEMENT = 0.999  # share of test pixels whose object/background verdict must be reproduced


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


def _card(name: str, inspected: Inspected, publisher: Publisher | None, cfg: dict, record: dict,
          n_objects: int) -> str:
    p = publisher
    facts = [("Kind", f"{inspected.kind} ({inspected.weights_format} weights, run by dlcore without the "
                      "publisher's software)" if inspected.kind == "stardist" else inspected.kind),
             ("Source", p.source if p else "not stated (the file carries no source; give --source)"),
             ("Training data", p.training_data if p else "not stated (give --training-data)"),
             ("Licence", p.licence if p else "not stated (give --licence)"),
             ("Citation", p.citation if p and p.citation else "-"),
             ("Weights", f"`{inspected.weights_file}`, sha256 `{record['sha256'][inspected.weights_file]}`"),
             ("Imported", f"{record['imported']} from `{record['original']}` by dlcore {record['dlcore_version']}")]
    settings = {k: cfg[k] for k in ("mpp", "tile_size", "halo", "classes")}
    return (f"# {name}\n\n{inspected.description}\n\n"
            + "".join(f"- **{k}**: {v}\n" for k, v in facts)
            + "\n## Performance\n\nAs its publisher reports it; dlcore has not measured this model on annotated "
              "data. The import only checked that the file is a complete, intact model of its kind and that it "
              f"runs: on the package's synthetic test image it finds {n_objects} objects (`test_output.npy`), "
              "which every later validation must reproduce.\n"
            + "\n## Running it in dlcore\n\n`dlcore run " + name + " SLIDE -o OUT`, or Run_Model in OMERO. The "
              "slide is read at the model's pixel size, normalised once per slide as the model's software "
              "does, cut into tiles with a halo, and the objects are stitched by ownership. Settings "
              "(`config.dlcore` in rdf.yaml):\n\n```json\n" + json.dumps({**settings, "runtime": cfg["runtime"]},
                                                                       indent=2, default=str) + "\n```\n")


def build_package(kind_name: str, source: str | Path, out_dir: Path, *, name: str | None = None,
                  mpp: float | None = None, publisher: Publisher | None = None) -> Path:
    """Write the package of ``source`` (a weights file or folder of kind ``kind_name``) into the new folder
    ``out_dir`` (see the module docstring); returns ``out_dir``.  ``mpp`` overrides the model's pixel size,
    ``publisher`` the source/training data/licence (fields left empty keep what the file states)."""
    from dlcore.fieldmodels.kinds import get_kind

    kind = get_kind(kind_name)
    source = Path(source)
    if not source.exists():
        raise ModelError(f"no such file or folder: {source}")
    inspected = kind.inspect(source)
    try:
        return _build(kind, inspected, source, Path(out_dir), name=name, mpp=mpp, publisher=publisher)
    finally:
        if inspected.scratch is not None:
            shutil.rmtree(inspected.scratch, ignore_errors=True)


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
    cfg = check_dlcore_config({"kind": "imported", "mpp": inspected.mpp, "tile_size": inspected.tile_size,
                               "halo": inspected.halo, "normalization": {"type": "none"},
                               "classes": list(inspected.classes), "runtime": runtime,
                               "source": dataclasses.asdict(stated) if stated else None}, where=f"{name}: config.dlcore")
    with staged_package(Path(out_dir)) as staging:
        for file_name, path in inspected.files.items():
            shutil.copyfile(path, staging / file_name)
        record = {"original": str(source.name), "imported": datetime.datetime.now(datetime.timezone.utc)
                  .isoformat(timespec="seconds"), "dlcore_version": __version__,
                  "sha256": {f: sha256_file(staging / f) for f in inspected.files}}
        cfg["import"] = record
        network = kind.load(staging, cfg, "cpu")
        image = test_image(inspected.in_channels)
        labels = _labels_of(network.predict([image])[0])
        raw = np.ascontiguousarray(np.moveaxis(image, -1, 0)[None].astype(np.float32))
        np.save(staging / "test_input.npy", raw)
        np.save(staging / "test_output.npy", labels[None, None])
        n_objects = int(np.count_nonzero(np.unique(labels)))
        cover = _save_cover(_cover(image, labels), staging)
        (staging / "README.md").write_text(_card(name, inspected, stated, cfg, record, n_objects))
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
                     authors=given.authors or found.authors)


def _rdf(name: str, inspected: Inspected, publisher: Publisher | None, cfg: dict, folder: Path, cover: str,
         format_version: str) -> dict:
    from dlcore.models.package import INPUT_ID, sha256_file

    n_in = inspected.in_channels
    in_names = ["red", "green", "blue"] if n_in == 3 else [f"channel{i}" for i in range(n_in)]
    scale = {"unit": "micrometer", "scale": cfg["mpp"]} if cfg["mpp"] else {}
    percentiles = cfg["runtime"].get("normalization", {}).get("percentiles") or [1.0, 99.8]
    licence = _spdx_licence(publisher)
    return {
        "type": "model", "format_version": format_version, "name": name, "version": "0.1.0",
        "description": inspected.description or f"{inspected.kind} model imported into dlcore",
        "authors": [{"name": a.replace("/", "-")} for a in (publisher.authors if publisher else ())]
        or [{"name": "not stated by the weights (see README.md)"}],
        "license": licence, "tags": ["instance-segmentation", "nuclei", inspected.kind, "imported"],
        "documentation": "README.md", "covers": [cover],
        "inputs": [{
            "id": INPUT_ID, "description": "raw image read from the slide at the model's pixel size",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": in_names}] + [
                {"type": "space", "id": a, "size": {"min": 64, "step": 16}, **scale} for a in ("y", "x")],
            "test_tensor": {"source": "test_input.npy", "sha256": sha256_file(folder / "test_input.npy")},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": percentiles[0],
                                                               "max_percentile": percentiles[1]}}]}],
        "outputs": [{
            "id": "labels", "description": "instance labels (0 background), after the model's own post-processing",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["instances"]}] + [
                {"type": "space", "id": a, "size": {"tensor_id": INPUT_ID, "axis_id": a}, **scale} for a in ("y", "x")],
            "test_tensor": {"source": "test_output.npy", "sha256": sha256_file(folder / "test_output.npy")},
            "data": {"type": "int32"}}],
        "weights": _weights_entry(inspected, folder),
        "config": {"dlcore": cfg},
    }


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
    """Run an imported package on its test input; ModelError unless its test output is reproduced
    (the same object/background verdict on at least 99.9% of the pixels, the same number of objects)."""
    from dlcore.fieldmodels.kinds import get_kind

    folder = Path(folder)
    try:
        raw = np.load(folder / "test_input.npy")
        expected = np.load(folder / "test_output.npy")[0, 0]
    except (OSError, ValueError, IndexError) as exc:
        raise ModelError(f"{folder}: unreadable test tensors ({exc})") from exc
    network = get_kind(cfg["runtime"]["kind"]).load(folder, cfg, "cpu")
    image = np.moveaxis(raw[0], 0, -1).astype(np.uint8)
    got = _labels_of(network.predict([image])[0])
    agreement = float(np.mean((got > 0) == (expected > 0)))
    counts = (int(np.count_nonzero(np.unique(got))), int(np.count_nonzero(np.unique(expected))))
    if agreement < AGREEMENT or counts[0] != counts[1]:
        raise ModelError(f"{folder.name}: its weights do not reproduce the test output ({counts[0]} objects for "
                         f"{counts[1]}, {100 * agreement:.2f}% of pixels agree); the weights were changed or damaged")
    return f"reproduces its test output ({counts[1]} objects, {100 * agreement:.2f}% of pixels agree)"


def import_model(kind_name: str, source: str | Path, *, name: str | None = None, mpp: float | None = None,
                 publisher: Publisher | None = None, force: bool = False, config=None):
    """Import ``source`` as a model of kind ``kind_name`` into the registry; returns its
    :class:`~dlcore.models.registry.ModelRecord`.  Refuses a name already installed unless ``force``."""
    from dlcore.models.registry import _config, install, registry_name

    config = _config(config)
    root = Path(config.models_dir)
    root.mkdir(parents=True, exist_ok=True)
    if name and (root / registry_name(name)).exists() and not force:
        raise ModelError(f"a model called {registry_name(name)!r} is installed already; remove it first or use --force")
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        package = build_package(kind_name, source, work / "package", name=name, mpp=mpp, publisher=publisher)
        import yaml

        package_name = yaml.safe_load((package / "rdf.yaml").read_text())["name"]
        return install(package, config, name=package_name, force=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
