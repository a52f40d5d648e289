"""The training folder of labels derived from a marker: what ``dlcore annotate-from-marker`` writes.

:func:`labels_from_marker` derives the labels of each image (:func:`dlcore.marker.labels.derive_labels`)
and :func:`write_dataset` writes them as a folder ``dlcore train`` reads as it is: ``images/`` and
``labels/`` (OME-TIFF, matching names; ``instances/`` beside them for positive cells), ``classes.txt``,
``objects.csv``, overviews, ``labels_provenance.json`` and a README with the same record.  The folder is
written hidden and renamed into place at the end: nothing half-written is left.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlcore.errors import InputError, ParameterError
from dlcore.marker.labels import OBJECTS_FILE, PROVENANCE_FILE, MarkerLabels, MarkerSpec, Progress, derive_labels

log = logging.getLogger(__name__)

def _label_dtype(labels: np.ndarray):
    top = int(labels.max()) if labels.size else 0
    return np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32


def _overview(image: np.ndarray, result: MarkerLabels, path: Path, *, max_side: int = 2048) -> None:
    """The input with the labels' outlines (positive yellow, negative cyan), at most ``max_side`` pixels."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    rgb = image if image.shape[2] == 3 else np.repeat(image[..., :1], 3, axis=2)
    if rgb.dtype != np.uint8:
        top = float(np.percentile(rgb, 99.8)) or 1.0
        rgb = np.clip(rgb.astype(np.float32) / top * 255, 0, 255).astype(np.uint8)
    out = rgb.copy()
    ids = result.instances if result.instances is not None else result.labels
    edges = find_boundaries(ids, mode="inner")
    classes = (result.labels > 0).astype(np.uint8) if result.task == "instances" else result.labels
    out[edges & (classes == len(result.classes))] = (255, 220, 0)
    if len(result.classes) > 1:
        out[edges & (classes == 1)] = (0, 200, 255)
    step = max(1, int(math.ceil(max(out.shape[:2]) / max_side)))
    imsave(path, out[::step, ::step], check_contrast=False)


def _readme(results: Sequence[MarkerLabels], provenance: dict) -> str:
    first = results[0]
    task, classes = first.task, first.classes
    name = "my-marker-model"
    lines = [
        "# Training labels derived from a marker", "",
        "Nobody drew these labels: dlcore derived them from a marker of the same section "
        f"(`dlcore annotate-from-marker`), method `{provenance['method']}`.", "",
        f"- task: `{task}`; classes (label values 1..n): {', '.join(classes)} (0 = background)",
        "- `images/`: the routine input a model sees (" + {
            "hematoxylin": "the image rendered as if stained with haematoxylin alone",
            "rgb": "the RGB image as it is"}.get(provenance["input"], f"channel {provenance['input']}") + ")",
        "- `labels/`: " + ("object ids (0 = background)" if task == "instances" else
                           "class ids (0 = background, i = classes[i-1])"),
    ]
    if first.instances is not None:
        lines.append("- `instances/`: the nuclei's ids; `objects.csv`: each nucleus's class and marker figures")
    elif first.objects:
        lines.append("- `objects.csv`: each object's marker figures")
    if provenance.get("tile"):
        lines.append(f"- every region is cut into {provenance['tile']} x {provenance['tile']} tiles "
                     "(`<name>_y<Y>_x<X>`), each its own split group: `dlcore train` holds out other parts of the "
                     "same tissue, not other sections")
    else:
        lines.append("- one file per image (one split group each): `dlcore train` needs at least three")
    lines += [
        "- `overview/`: the input with the labels' outlines (positive yellow, negative cyan), to check them",
        f"- `{PROVENANCE_FILE}`: the record below, as JSON", "",
        "Train a model on it:", "",
        f"    dlcore train {'OUT'} --task {task} --name {name}", "",
        "## Provenance", "",
    ]
    for r in results:
        p = r.provenance
        reg = p.get("registration")
        counts = p.get("counts", {})
        lines += [
            f"### {r.name}", "",
            f"- image: {p['image']} ({p['identity']}), region x={p['region']['x']} y={p['region']['y']} "
            f"{p['region']['width']}x{p['region']['height']}",
            f"- marker: {p['marker_source']['signal']} of {p['marker_source']['image']}",
            f"- threshold: {p['threshold']['value']:.6g} ({p['threshold']['how']}), sigma {p['parameters']['sigma']}, "
            f"min size {p['parameters']['min_size']} px",
        ]
        if reg:
            lines.append(f"- registration ({reg.get('kind')}, {reg.get('registered')}): residual "
                         f"{reg.get('residual_px')} px (90th percentile {reg.get('residual_p90_px')} px)")
        lines.append("- counts: " + json.dumps(counts))
        if p.get("warning"):
            lines.append(f"- warning: {p['warning']}")
        lines.append("")
    lines.append(f"dlcore {provenance['dlcore_version']}, {provenance['created']}")
    return "\n".join(lines) + "\n"


def _tiles(result: MarkerLabels, tile: int | None):
    """``(file name, (rows, cols) slices)`` of a region: itself, or its ``tile`` x ``tile`` tiles."""
    height, width = result.labels.shape
    if not tile:
        yield result.name, (slice(0, height), slice(0, width))
        return
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yield f"{result.name}_y{y}_x{x}", (slice(y, min(y + tile, height)), slice(x, min(x + tile, width)))


def write_dataset(results: Sequence[MarkerLabels], out: str | Path, *, spec: MarkerSpec,
                  tile: int | None = None) -> Path:
    """Write the labels as a training folder ``dlcore train`` reads (:func:`dlcore.train.data.load_folder`)::

        OUT/images/<name>.ome.tif     the routine input
        OUT/labels/<name>.ome.tif     class ids (semantic) or object ids (instances)
        OUT/instances/<name>.ome.tif  nuclei ids (positive-cells)
        OUT/objects.csv               one row per object: region, id, class, marker figures, centre (x, y)
        OUT/classes.txt               the class names of label values 1..n
        OUT/overview/<region>.png     the labels' outlines over the input
        OUT/labels_provenance.json    marker, method, threshold, registration, counts, dlcore version
        OUT/README.md                 the same record, and the command to train

    ``tile``: write every region as ``tile`` x ``tile`` tiles (``<name>_y<Y>_x<X>``), each a file of its own
    and so its own split group for ``dlcore train`` (a spatial split of one section: the held-out tiles are
    other parts of the same tissue); None: one file per region (one split group per image).

    Refuses a folder that exists and is not empty (nothing is overwritten).  Written into a hidden folder
    beside ``out`` and renamed into place, so a failure leaves nothing.
    """
    import shutil
    import tempfile

    import dlcore
    from dlcore.train.data import _write_ome

    out = Path(out)
    if not results:
        raise InputError("no labels to write")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output folder {out} exists and is not empty; choose a new folder (nothing is overwritten)")
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise InputError(f"two images would write files of the same name ({', '.join(names)}); give images with "
                         "different names")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for folder in ("images", "labels", "overview") + (("instances",) if results[0].instances is not None else ()):
            (work / folder).mkdir()
        rows, files = [], 0
        for r in results:
            for name, box in _tiles(r, tile):
                _write_ome(work / "images" / f"{name}.ome.tif", r.image[box], mpp=r.mpp, name=name)
                labels = r.labels[box]
                _write_ome(work / "labels" / f"{name}.ome.tif", labels.astype(_label_dtype(r.labels)), mpp=r.mpp,
                           name=f"{name} labels")
                if r.instances is not None:
                    _write_ome(work / "instances" / f"{name}.ome.tif",
                               r.instances[box].astype(_label_dtype(r.instances)), mpp=r.mpp, name=f"{name} nuclei")
                files += 1
            _overview(r.image, r, work / "overview" / f"{r.name}.png")
            rows += [{"image": r.name, **o} for o in r.objects]
        (work / "classes.txt").write_text("\n".join(spec.classes) + "\n")
        if rows:
            with (work / OBJECTS_FILE).open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        provenance = {
            "format": "dlcore-marker-labels", "method": spec.method, "task": spec.task, "classes": list(spec.classes),
            "input": spec.input, "parameters": dataclasses.asdict(spec), "dlcore_version": dlcore.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "images": [r.provenance for r in results],
            "counts": {"images": len(results), "files": files, "objects": sum(len(r.objects) for r in results)},
            "tile": tile,
            "train_with": f"dlcore train {out} --task {spec.task} --name NAME",
        }
        (work / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1, default=str))
        (work / "README.md").write_text(_readme(results, provenance).replace("dlcore train OUT", f"dlcore train {out}"))
        if out.exists():
            out.rmdir()  # empty (checked above)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def labels_from_marker(images: Sequence[str | Path], out: str | Path, *, spec: MarkerSpec,
                       marker_image: str | Path | None = None, region: tuple[int, int, int, int] | None = None,
                       mpp: float | None = None, tile: int | None = None, config=None,
                       progress: Progress | None = None) -> dict:
    """Derive labels for local image files and write the training folder: the call ``dlcore
    annotate-from-marker`` makes.

    Parameters
    ----------
    images : routine image files (anything :func:`dlcore.io.open_slide` opens).
    out : a new (or empty) folder for the training data (:func:`write_dataset`).
    spec : marker, method and options (:class:`MarkerSpec`).
    marker_image : a second image of the same section holding the marker, registered onto the (one)
        routine image.
    region : ``(x, y, w, h)`` in level-0 pixels of every image; None: whole images.
    mpp : pixel size in µm for images that have none.
    tile : write the regions as tiles of this side, each its own split group (see :func:`write_dataset`).
    progress : ``(stage, done, total)`` callback.

    Returns
    -------
    dict with ``folder``, ``results`` (:class:`MarkerLabels` per image) and ``provenance`` (the JSON record).
    """
    from dlcore.io import open_slide
    from dlcore.io.slide import with_mpp

    images = [Path(p) for p in images]
    if not images:
        raise InputError("no image given")
    if tile is not None and not (isinstance(tile, int) and tile >= 32):
        raise ParameterError(f"tile={tile!r} must be a tile side of at least 32 pixels (e.g. 512), or none")
    if marker_image is not None and len(images) != 1:
        raise ParameterError(f"a marker image (image:{marker_image}) belongs to one section: give exactly one routine "
                             f"image, not {len(images)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"output folder {out} exists and is not empty; choose a new folder (nothing is overwritten)")
    results = []
    for index, path in enumerate(images, 1):
        slide = open_slide(path)
        second = open_slide(marker_image) if marker_image is not None else None
        try:
            if mpp is not None and slide.info.mpp is None:
                slide.info = with_mpp(slide.info, mpp)
            results.append(derive_labels(slide, spec=spec, region=region, marker=second, mpp=mpp, config=config,
                                         progress=progress))
        finally:
            slide.close()
            if second is not None:
                second.close()
        if progress:
            progress("images", index, len(images))
    folder = write_dataset(results, out, spec=spec, tile=tile)
    return {"folder": folder, "results": results,
            "provenance": json.loads((folder / PROVENANCE_FILE).read_text())}


__all__ = ["write_dataset", "labels_from_marker"]
