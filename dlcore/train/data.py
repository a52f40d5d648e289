"""Annotated datasets for training: the shared in-memory form, folder loaders and the archive export.

An :class:`AnnotatedDataset` is a tuple of :class:`Sample` s (an image, optionally a label mask or an
image-level class) plus the task and the class names.  It is what every source produces: a local
folder (:func:`load_folder`), an archive written by :func:`export_dataset` (:func:`load_exported`),
or OMERO ROIs and tags (the OMERO adapter converts them).

The archive layout written by :func:`export_dataset` is::

    OUT/
      dataset.json        task, classes, per-sample metadata (source, group, class, mpp, files)
      samples.csv         the same per-sample table, for spreadsheets
      README.md           what the archive holds and how to read it
      images/<id>.ome.tif one OME-TIFF per sample (RGB as YXS, other channels as CYX)
      labels/<id>.ome.tif the label mask (YX, uint16/uint32) for semantic and instance tasks

With ``--format ome-zarr`` each sample is instead ``images/<id>.ome.zarr`` (NGFF 0.4), its mask the
image-label ``labels/<task>`` inside it (:mod:`dlcore.train.ome_zarr_export`).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError, ParameterError

TASKS = ("semantic", "instances", "classification")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = (*IMAGE_SUFFIXES, ".xml")
FORMAT_VERSION = 1
EXPORT_FORMATS = ("ome-tiff", "ome-zarr")


@dataclass(frozen=True)
class Sample:
    """One annotated image.

    Attributes
    ----------
    image : ``(Y, X, C)`` pixels.
    mask : ``(Y, X)`` integer labels (semantic class ids, 0 = background/unlabelled, or instance ids), or None.
    label : image-level class name for classification, or None.
    source : identity of the image, e.g. ``"Image:12"`` or a file path.
    group : split unit; samples with the same group never straddle train/validation/test.
    mpp : pixel size in µm, or None when unknown.
    channel_names : one name per channel as the source names them, or None.
    stain : the stain of the source, e.g. ``"H&E"``, or None when unknown.
    magnification : the nominal objective magnification of the source (e.g. 40), or None.
    annotation_ids : the annotations the sample's labels come from (``"ROI:12"`` in OMERO), for provenance.
    """

    image: np.ndarray
    mask: np.ndarray | None
    label: str | None
    source: str
    group: str
    mpp: float | None = None
    channel_names: tuple[str, ...] | None = None
    stain: str | None = None
    magnification: float | None = None
    annotation_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnnotatedDataset:
    """Samples for one task (``"semantic"``, ``"instances"`` or ``"classification"``) and its classes.

    For ``semantic`` the classes name the mask values 1..n (0 is background/unlabelled); for
    ``instances`` they name the object class(es); for ``classification`` they are the image labels.
    """

    samples: tuple[Sample, ...]
    task: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        validate_dataset(self)

    @property
    def groups(self) -> list[str]:
        """The group of every sample, in order."""
        return [s.group for s in self.samples]

    def subset(self, indices) -> "AnnotatedDataset":
        """The dataset restricted to the samples at ``indices``."""
        return AnnotatedDataset(tuple(self.samples[i] for i in indices), self.task, self.classes)


def validate_dataset(dataset: AnnotatedDataset) -> None:
    """Raise :class:`~dlcore.errors.InputError` when a sample or the classes are inconsistent.

    An empty dataset is valid (an empty split part); :func:`dlcore.train.train_model` refuses to train on one.
    """
    if dataset.task not in TASKS:
        raise ParameterError(f"task={dataset.task!r} must be one of {TASKS}")
    if not dataset.classes:
        raise InputError("the dataset names no classes")
    for s in dataset.samples:
        if s.image.ndim != 3:
            raise InputError(f"{s.source}: image has shape {s.image.shape}; expected (Y, X, C)")
        if dataset.task == "classification":
            if s.label not in dataset.classes:
                raise InputError(f"{s.source}: class {s.label!r} is not one of {dataset.classes}")
            continue
        if s.mask is None:
            raise InputError(f"{s.source}: a {dataset.task} sample needs a label mask")
        if s.mask.shape != s.image.shape[:2]:
            raise InputError(f"{s.source}: mask shape {s.mask.shape} differs from image shape {s.image.shape[:2]}")
        if not np.issubdtype(s.mask.dtype, np.integer):
            raise InputError(f"{s.source}: mask dtype {s.mask.dtype} must be integer")
        if dataset.task == "semantic" and s.mask.size and int(s.mask.max()) > len(dataset.classes):
            raise InputError(f"{s.source}: mask value {int(s.mask.max())} has no class; classes are "
                             f"1..{len(dataset.classes)} = {dataset.classes}")


def describe(dataset: AnnotatedDataset) -> dict:
    """A small JSON-able summary (counts per class, groups, sizes) for cards and reports."""
    info = {"task": dataset.task, "classes": list(dataset.classes), "samples": len(dataset.samples),
            "groups": len(set(dataset.groups)),
            "pixels": int(sum(s.image.shape[0] * s.image.shape[1] for s in dataset.samples))}
    if dataset.task == "classification":
        info["per_class"] = {c: sum(s.label == c for s in dataset.samples) for c in dataset.classes}
    elif dataset.task == "semantic":
        counts = np.zeros(len(dataset.classes) + 1, np.int64)
        for s in dataset.samples:
            counts += np.bincount(s.mask.ravel().astype(np.int64), minlength=counts.size)[:counts.size]
        info["pixels_per_class"] = {"unlabelled/background": int(counts[0]),
                                    **{c: int(n) for c, n in zip(dataset.classes, counts[1:])}}
    else:
        info["objects"] = int(sum(len(np.unique(s.mask)) - (s.mask == 0).any() for s in dataset.samples))
    return info


# -- reading images ---------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``(Y, X, C)`` (a grey image gets C = 1)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
        array = _to_yxc(array, axes)
    else:
        from skimage.io import imread

        array = imread(path)
        if array.ndim == 2:
            array = array[..., None]
    return array


def _to_yxc(array: np.ndarray, axes: str) -> np.ndarray:
    axes = axes.upper()
    keep = [a for a in axes if a in "YXCS"]
    for axis, name in reversed(list(enumerate(axes))):  # drop singleton T, Z, ...
        if name not in "YXCS":
            if array.shape[axis] != 1:
                raise InputError(f"image axes {axes!r} with {name} of size {array.shape[axis]}: give 2-D images")
            array = np.take(array, 0, axis=axis)
    axes = "".join(keep).replace("S", "C")
    if "C" not in axes:
        return array[..., None]
    return np.moveaxis(array, axes.index("C"), -1)


def read_mask(path: Path) -> np.ndarray:
    """Read a label mask as ``(Y, X)`` integers."""
    mask = read_image(path)
    if mask.shape[-1] != 1:
        raise InputError(f"label mask {path} has {mask.shape[-1]} channels; save it as a single-channel integer image")
    mask = mask[..., 0]
    if not np.issubdtype(mask.dtype, np.integer):
        if not np.all(mask == np.round(mask)):
            raise InputError(f"label mask {path} holds non-integer values")
        mask = mask.astype(np.int32)
    return mask


def read_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The ``(Y, X)`` label mask of an image of ``shape``: a mask image, or Aperio XML outlines rasterised.

    Raises :class:`InputError` when the mask's size differs from the image's.
    """
    if path.suffix.lower() == ".xml":
        from dlcore.io.aperio_xml import instance_mask, read_aperio_xml

        return instance_mask(read_aperio_xml(path), shape)
    mask = read_mask(path)
    if mask.shape != tuple(shape):
        raise InputError(f"label mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return mask


def image_label_pairs(root: Path) -> list[tuple[Path, Path]]:
    """``(image, label)`` file pairs of an ``images/`` + ``labels/`` folder, matched by file stem, sorted.

    A label is a mask image (PNG/TIFF, 0 = background) or an Aperio ImageScope ``.xml`` of outlines.
    Raises :class:`InputError` for an image without a label or an empty ``images/``.
    """
    labels = {image_stem(p): p for p in _image_files(root / "labels", LABEL_SUFFIXES)}
    pairs = []
    for path in _image_files(root / "images"):
        stem = image_stem(path)
        if stem not in labels:
            raise InputError(f"{path} has no label mask labels/{stem}.png|tif|xml")
        pairs.append((path, labels[stem]))
    if not pairs:
        raise InputError(f"{root / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return pairs


def _image_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def image_stem(path: Path) -> str:
    """A file's name without its image suffix (``.ome.tif`` and ``.ome.tiff`` count as one suffix)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_groups(root: Path) -> dict[str, str]:
    path = root / "groups.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["image"]: row["group"] for row in csv.DictReader(fh)}


def load_folder(root: str | Path, *, task: str | None = None, classes: tuple[str, ...] | None = None,
                mpp: float | None = None, stain: str | None = None, magnification: float | None = None,
                explain: Callable[[str], None] | None = None) -> AnnotatedDataset:
    """Load an annotated dataset from a local folder.

    Parameters
    ----------
    root : one of three layouts:
        an archive written by :func:`export_dataset` (it has ``dataset.json``);
        ``images/`` + ``labels/`` with label masks (or Aperio XML outlines) of the same file stem
        (semantic or instances);
        class folders ``root/<class>/*.png`` (classification).
        An optional ``groups.csv`` (columns ``image``, ``group``; image = file stem) sets split groups;
        by default each image is its own group.  An optional class table (``classes.txt``, one name per
        line, or ``classes.csv`` / ``classes.json``) names the classes.
    task : ``"semantic"`` or ``"instances"``; by default inferred from the masks and the class table
        (:func:`dlcore.train.task_inference.infer_task`: many one-blob ids are instances, a class table
        makes it semantic, an ambiguous folder raises :class:`InputError` asking for the task).
        Classification is implied by class folders.
    classes : class names; default from the class table, else ``class_1..class_n`` (semantic, at most
        16) or ``("nucleus",)`` (instances).
    mpp, stain, magnification : pixel size in µm, stain and objective magnification of every image; each
        one not given is read from the image file's metadata where it records it (OME-TIFF pixel size,
        channel names, objective and a ``stain`` key-value; an SVS description; TIFF/PNG resolution;
        :func:`dlcore.io.acquisition.read_acquisition`).
    explain : called with one line saying which task was chosen and why (masks folders only).

    Returns
    -------
    AnnotatedDataset
    """
    from dlcore.train.task_inference import infer_task

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    for name, value, example in (("mpp", mpp, "0.25"), ("magnification", magnification, "40")):
        if value is not None and not value > 0:
            raise ParameterError(f"{name}={value} must be a positive number, e.g. {example}")
    if (root / "dataset.json").is_file():
        return load_exported(root)
    groups = _read_groups(root)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        if task not in (None, "semantic", "instances"):
            raise ParameterError(f"task={task!r}: a folder with images/ and labels/ is for 'semantic' or 'instances'")
        samples = []
        for path, label in image_label_pairs(root):
            image = read_image(path)
            samples.append(Sample(image, read_label(label, image.shape[:2]), None, str(path),
                                  groups.get(image_stem(path), image_stem(path)),
                                  **_acquired(path, image, mpp=mpp, stain=stain, magnification=magnification)))
        choice = infer_task(root, [s.mask for s in samples], task=task, classes=classes)
        if explain:
            explain(choice.reason)
        return AnnotatedDataset(tuple(samples), choice.task, choice.classes)
    if classes is None and (root / "classes.txt").is_file():
        classes = tuple(line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip())
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _image_files(p))
    if not folders:
        raise InputError(f"{root} has neither dataset.json, nor images/ + labels/, nor class folders with images")
    if task not in (None, "classification"):
        raise ParameterError(f"task={task!r}: {root} holds class folders, which make a 'classification' dataset")
    samples = []
    for folder in folders:
        for p in _image_files(folder):
            image = read_image(p)
            samples.append(Sample(image, None, folder.name, str(p), groups.get(image_stem(p), image_stem(p)),
                                  **_acquired(p, image, mpp=mpp, stain=stain, magnification=magnification)))
    return AnnotatedDataset(tuple(samples), "classification", tuple(classes or (f.name for f in folders)))


def _acquired(path: Path, image: np.ndarray, *, mpp: float | None, stain: str | None,
              magnification: float | None) -> dict:
    """A sample's acquisition fields: the values given, else what ``path``'s metadata records."""
    from dlcore.io.acquisition import read_acquisition

    found = read_acquisition(path)
    names = found.channel_names if found.channel_names and len(found.channel_names) == image.shape[-1] else None
    return {"mpp": mpp if mpp is not None else found.mpp, "channel_names": names,
            "stain": stain or found.stain,
            "magnification": magnification if magnification is not None else found.magnification}


# -- the archive layout ------------------------------------------------------------------------
def _write_ome(path: Path, array: np.ndarray, *, mpp: float | None, name: str,
               channel_names: tuple[str, ...] | None = None, stain: str | None = None,
               magnification: float | None = None) -> str:
    """Write an OME-TIFF; returns the axes written.

    The pixel size, the channel names (for images stored as channels, not RGB samples), the objective
    magnification and the stain go into its OME-XML (:mod:`dlcore.io.acquisition`).
    """
    import tifffile

    from dlcore.io.acquisition import add_to_ome_xml, stain_annotation

    metadata: dict = {"Name": name, **stain_annotation(stain)}
    if mpp:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    if array.ndim == 2:
        axes, data, extra = "YX", array, {}
    elif array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        axes, data, extra = "YXS", array, {"photometric": "rgb"}
    else:
        axes, data, extra = "CYX", np.moveaxis(array, -1, 0), {"photometric": "minisblack"}
        if channel_names and len(channel_names) == array.shape[-1]:
            metadata["Channel"] = {"Name": list(channel_names)}
    metadata["axes"] = axes
    tifffile.imwrite(path, data, ome=True, metadata=metadata, compression="zlib", **extra)
    if magnification is not None:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
        tifffile.tiffcomment(path, add_to_ome_xml(xml, magnification=magnification).encode("utf-8"))
    return axes


def _safe_id(index: int, source: str) -> str:
    tail = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(source).name.split(".")[0])[:40]
    return f"{index:05d}_{tail}" if tail else f"{index:05d}"


def export_dataset(dataset: AnnotatedDataset, out_dir: str | Path, *, description: str = "",
                   progress: Callable[[str, int, int], None] | None = None, archive=None,
                   image_format: str = "ome-tiff", annotation_provenance: dict | None = None) -> Path:
    """Write the dataset in the archive layout (see the module docstring); returns ``out_dir``.

    ``archive``: the facility's :class:`~dlcore.train.archive_metadata.ArchiveMetadata` (None: none yet);
    mifa.json, rembi.json and file_list.tsv are written either way, saying whether it is submission-ready.
    ``annotation_provenance``: who annotated each sample, when and how (keyed by a sample's source or group;
    see :func:`~dlcore.train.archive_metadata.write_archive_metadata`), or None.

    Images and labels are OME-TIFF (readable by Fiji/Bio-Formats, QuPath, napari, OMERO), or with
    ``image_format="ome-zarr"`` one NGFF image per sample, its mask an image-label inside it
    (:mod:`dlcore.train.ome_zarr_export`); the metadata is JSON plus a CSV table and a README.
    Refuses to write into a non-empty folder.
    """
    if image_format not in EXPORT_FORMATS:
        raise ParameterError(f"image_format={image_format!r} must be one of {EXPORT_FORMATS}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"export folder {out} is not empty; choose a new folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    if dataset.task != "classification" and image_format == "ome-tiff":
        (out / "labels").mkdir(exist_ok=True)
    rows = []
    for index, s in enumerate(dataset.samples):
        sid = _safe_id(index, s.source)
        if image_format == "ome-zarr":
            from dlcore.train.ome_zarr_export import write_ome_zarr

            image_file = f"images/{sid}.ome.zarr"
            label_file = None if s.mask is None else f"{image_file}/labels/{dataset.task}"
            axes = write_ome_zarr(out / image_file, s.image, mask=s.mask, mpp=s.mpp, name=s.source,
                                  task=dataset.task, classes=dataset.classes, channel_names=s.channel_names,
                                  stain=s.stain, magnification=s.magnification)
        else:
            image_file = f"images/{sid}.ome.tif"
            axes = _write_ome(out / image_file, s.image, mpp=s.mpp, name=s.source, channel_names=s.channel_names,
                              stain=s.stain, magnification=s.magnification)
            label_file = None
            if s.mask is not None:
                label_file = f"labels/{sid}.ome.tif"
                mask = s.mask.astype(np.uint16 if s.mask.size == 0 or (s.mask.min() >= 0 and s.mask.max() < 65536)
                                     else s.mask.dtype)
                _write_ome(out / label_file, mask, mpp=s.mpp, name=f"{s.source} labels")
        rows.append({"id": sid, "image": image_file, "image_axes": axes, "labels": label_file,
                     "class": s.label, "source": s.source, "group": s.group, "mpp": s.mpp,
                     "channel_names": list(s.channel_names) if s.channel_names else None, "stain": s.stain,
                     "magnification": s.magnification, "annotation_ids": list(s.annotation_ids),
                     "dtype": str(s.image.dtype), "mask_dtype": None if s.mask is None else str(s.mask.dtype)})
        if progress:
            progress("export", index + 1, len(dataset.samples))
    meta = {"format": "dlcore-annotated-dataset", "format_version": FORMAT_VERSION, "image_format": image_format,
            "task": dataset.task,
            "classes": list(dataset.classes), "description": description,
            "label_values": ("0 = background/unlabelled, i = classes[i-1]" if dataset.task == "semantic"
                             else "0 = background, 1..n = object ids" if dataset.task == "instances" else None),
            "samples": rows}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    with (out / "samples.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    (out / "README.md").write_text(_readme(dataset, description, image_format=image_format))
    from dlcore.train.archive_metadata import write_archive_metadata

    write_archive_metadata(out, dataset, rows, archive, annotation_provenance=annotation_provenance)
    return out


def count_objects(dataset: AnnotatedDataset) -> int | None:
    """The number of objects (non-zero ids per mask, summed) of an ``instances`` dataset, else None."""
    if dataset.task != "instances":
        return None
    return sum(int(np.count_nonzero(np.unique(s.mask))) for s in dataset.samples if s.mask is not None)


def _readme(dataset: AnnotatedDataset, description: str, *, image_format: str = "ome-tiff") -> str:
    from dlcore.train.task_inference import summarize_classes

    summary = describe(dataset)
    if image_format == "ome-zarr":
        files = ("- `images/*.ome.zarr`: the images (OME-Zarr, NGFF 0.4: axes c, y, x, a 2x downsampled pyramid, "
                 "scale in micrometres, omero channel names)\n"
                 + (f"- `images/*.ome.zarr/labels/{dataset.task}`: label masks as NGFF image-labels (y, x integers; "
                    "class names or object ids in `image-label` properties; see `label_values` in dataset.json)\n"
                    if dataset.task != "classification" else "- image classes: column `class` of samples.csv\n"))
    else:
        files = ("- `images/*.ome.tif`: the images (OME-TIFF; RGB stored as YXS, other channels as CYX)\n"
                 + ("- `labels/*.ome.tif`: label masks (YX integers; see `label_values` in dataset.json)\n"
                    if dataset.task != "classification" else "- image classes: column `class` of samples.csv\n"))
    return (f"# Annotated dataset ({dataset.task})\n\n{description}\n\n"
            f"- samples: {summary['samples']}, split groups: {summary['groups']}\n"
            f"- classes: {summarize_classes(dataset.task, dataset.classes, ids=count_objects(dataset))}\n"
            + files
            + "- `dataset.json`: task, classes and per-sample metadata (source, split group, pixel size)\n"
            "- `samples.csv`: the same table for spreadsheets\n\n"
            "Samples with the same `group` come from the same specimen/image and must stay on one side of a "
            "train/test split.  Load it with `dlcore.train.data.load_exported(path)` or any "
            f"{'OME-Zarr (e.g. ome-zarr-py, napari)' if image_format == 'ome-zarr' else 'OME-TIFF'} reader.\n")


def load_exported(root: str | Path) -> AnnotatedDataset:
    """Load an archive written by :func:`export_dataset` (arrays identical to those exported; pixel size,
    channel names, stain and magnification as exported)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{root} has no dataset.json; is it a folder written by `dlcore export-dataset`?")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "dlcore-annotated-dataset":
        raise InputError(f"{meta_path} is not a dlcore dataset (format={meta.get('format')!r})")
    samples = []
    for row in meta["samples"]:
        mpp = row["mpp"]
        if row["image"].endswith(".zarr"):
            from dlcore.train.ome_zarr_export import read_ome_zarr

            stored = read_ome_zarr(root / row["image"])
            image, mask, mpp = stored.image, stored.mask if row["labels"] else None, stored.mpp or mpp
        else:
            image = read_image(root / row["image"])
            mask = read_mask(root / row["labels"]) if row["labels"] else None
        image = image.astype(row["dtype"], copy=False)
        if mask is not None:
            mask = mask.astype(row["mask_dtype"], copy=False)
        names = row.get("channel_names")
        samples.append(Sample(image, mask, row["class"], row["source"], row["group"], mpp,
                              channel_names=tuple(names) if names else None, stain=row.get("stain"),
                              magnification=row.get("magnification"),
                              annotation_ids=tuple(row.get("annotation_ids") or ())))
    return AnnotatedDataset(tuple(samples), meta["task"], tuple(meta["classes"]))
