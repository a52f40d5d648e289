"""One annotated sample as an OME-Zarr image (NGFF 0.4, zarr format 2) with its mask as an image-label.

Owns the ``--format ome-zarr`` form of :func:`dlcore.train.data.export_dataset` and its reader.  Layout
of one ``<id>.ome.zarr``::

    .zattrs            multiscales (axes c, y, x; scale in micrometres from the pixel size) + omero channels
                       (+ ``acquisition``: stain and objective magnification, which NGFF 0.4 has no field for)
    0/ 1/ 2/           the image pyramid, (C, Y, X), each level half the previous one (2x2 mean)
    labels/.zattrs     {"labels": ["<task>"]}
    labels/<task>/     the mask pyramid, (Y, X) integers (nearest), with ``image-label`` metadata:
                       colours and class names per value (semantic) or the object ids (instances)

Readable by ome-zarr-py, napari-ome-zarr, QuPath, Fiji (MoBIE / n5-viewer) and OMERO (omero-zarr).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError

NGFF_VERSION = "0.4"
LEVELS = 3
MIN_LEVEL_SIDE = 16
CHUNK = 512
RGB_CHANNELS = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"), ("alpha", "FFFFFF"))
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))


@dataclass(frozen=True)
class OmeZarrSample:
    """What :func:`read_ome_zarr` returns: ``(Y, X, C)`` image, ``(Y, X)`` mask or None, µm per pixel or None,
    channel names, and the stain and objective magnification when recorded."""

    image: np.ndarray
    mask: np.ndarray | None
    mpp: float | None
    channel_names: tuple[str, ...]
    stain: str | None = None
    magnification: float | None = None


def default_channel_names(image: np.ndarray) -> tuple[str, ...]:
    """``red, green, blue[, alpha]`` for 8-bit RGB(A), else ``channel_0 .. channel_n``."""
    if image.shape[-1] in (3, 4) and image.dtype == np.uint8:
        return tuple(name for name, _ in RGB_CHANNELS[: image.shape[-1]])
    return tuple(f"channel_{i}" for i in range(image.shape[-1]))


def write_ome_zarr(path: str | Path, image: np.ndarray, *, mask: np.ndarray | None = None,
                   mpp: float | None = None, name: str = "", task: str = "semantic",
                   classes: tuple[str, ...] = (), channel_names: tuple[str, ...] | None = None,
                   stain: str | None = None, magnification: float | None = None) -> str:
    """Write ``image`` (``(Y, X, C)``) and optionally ``mask`` (``(Y, X)``) as one OME-Zarr; returns ``"CYX"``.

    Parameters
    ----------
    path : the new ``.ome.zarr`` folder (must not exist).
    image : ``(Y, X, C)`` pixels, stored channel-first.
    mask : ``(Y, X)`` integer labels stored under ``labels/<task>``, or None.
    mpp : pixel size in µm (the scale of level 0); None writes unit-less scale 1.
    name : the image's name (multiscales and omero ``name``).
    task : ``"semantic"`` (values are classes 1..n) or ``"instances"`` (values are object ids).
    classes : class names (semantic: value i is ``classes[i-1]``; instances: the object class).
    channel_names : one name per channel; default :func:`default_channel_names`.
    stain, magnification : the source's stain and nominal objective magnification, kept in the image's
        ``acquisition`` attributes (``stain``, ``objective_magnification``) when given.
    """
    import zarr

    path = Path(path)
    if path.exists():
        raise InputError(f"{path} already exists; OME-Zarr export writes a new folder")
    if image.ndim != 3:
        raise InputError(f"image shape {image.shape} must be (Y, X, C)")
    names = tuple(channel_names) if channel_names else default_channel_names(image)
    if len(names) != image.shape[-1]:
        raise InputError(f"channel_names={names} name {len(names)} channels; the image has {image.shape[-1]}")
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = _pyramid(np.moveaxis(image, -1, 0), _mean2)
    _write_levels(root, levels, chunks=(image.shape[-1], CHUNK, CHUNK))
    root.attrs.update({"multiscales": [_multiscales(name, levels, mpp, channel=True)],
                       "omero": _omero(name, image, names)})
    acquisition = {k: v for k, v in (("stain", stain), ("objective_magnification", magnification)) if v is not None}
    if acquisition:
        root.attrs["acquisition"] = acquisition
    if mask is not None:
        if mask.shape != image.shape[:2] or not np.issubdtype(mask.dtype, np.integer):
            raise InputError(f"mask {mask.shape} {mask.dtype} must be integers of the image's shape {image.shape[:2]}")
        labels = root.create_group("labels")
        labels.attrs["labels"] = [task]
        group = labels.create_group(task)
        mask_levels = _pyramid(mask, lambda a: a[::2, ::2])
        _write_levels(group, mask_levels, chunks=(CHUNK, CHUNK))
        group.attrs.update({"multiscales": [_multiscales(f"{name} {task}", mask_levels, mpp, channel=False)],
                            "image-label": _image_label(mask, task, classes)})
    return "CYX"


def read_ome_zarr(path: str | Path) -> OmeZarrSample:
    """Read level 0 of an image written by :func:`write_ome_zarr` (and its first label image, if any)."""
    import zarr

    path = Path(path)
    if not (path / ".zattrs").is_file():
        raise InputError(f"{path} is not an OME-Zarr image (no .zattrs)")
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    attrs = root.attrs.asdict()
    try:
        multiscale = attrs["multiscales"][0]
        axes = [a["name"] for a in multiscale["axes"]]
        level0 = multiscale["datasets"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: no NGFF multiscales metadata ({exc})") from exc
    if axes != ["c", "y", "x"]:
        raise InputError(f"{path}: axes {axes}; dlcore reads c, y, x images")
    image = np.moveaxis(np.asarray(root[level0["path"]][...]), 0, -1)
    mpp = None
    x_axis = multiscale["axes"][-1]
    for transform in level0.get("coordinateTransformations", []):
        if transform.get("type") == "scale" and x_axis.get("unit") == "micrometer":
            mpp = float(transform["scale"][-1])
    channels = attrs.get("omero", {}).get("channels", [])
    names = tuple(c.get("label", f"channel_{i}") for i, c in enumerate(channels)) or default_channel_names(image)
    mask = None
    label_names = root["labels"].attrs.get("labels", []) if "labels" in root else []
    if label_names:
        group = root["labels"][label_names[0]]
        mask = np.asarray(group[group.attrs["multiscales"][0]["datasets"][0]["path"]][...])
    acquisition = attrs.get("acquisition") or {}
    return OmeZarrSample(image, mask, mpp, names, stain=acquisition.get("stain"),
                         magnification=acquisition.get("objective_magnification"))


def _mean2(array: np.ndarray) -> np.ndarray:
    """Halve the last two axes by a 2x2 mean (edges replicated), keeping the dtype."""
    pad = [(0, 0)] * (array.ndim - 2) + [(0, array.shape[-2] % 2), (0, array.shape[-1] % 2)]
    a = np.pad(array, pad, mode="edge").astype(np.float64)
    a = (a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2]) / 4
    if np.issubdtype(array.dtype, np.integer):
        a = np.round(a)
    return a.astype(array.dtype)


def _pyramid(array: np.ndarray, down) -> list[np.ndarray]:
    levels = [array]
    while len(levels) < LEVELS and min(levels[-1].shape[-2:]) // 2 >= MIN_LEVEL_SIDE:
        levels.append(down(levels[-1]))
    return levels


def _write_levels(group, levels: list[np.ndarray], *, chunks: tuple[int, ...]) -> None:
    for index, level in enumerate(levels):
        shape_chunks = tuple(min(c, s) for c, s in zip(chunks, level.shape)) if level.size else None
        array = group.create_array(str(index), shape=level.shape, dtype=level.dtype, chunks=shape_chunks,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
        array[...] = level


def _multiscales(name: str, levels: list[np.ndarray], mpp: float | None, *, channel: bool) -> dict:
    space = {"type": "space", "unit": "micrometer"} if mpp else {"type": "space"}
    axes = ([{"name": "c", "type": "channel"}] if channel else []) + [{"name": n, **space} for n in "yx"]
    size = float(mpp) if mpp else 1.0
    datasets = []
    for index in range(len(levels)):  # level i's pixel covers 2**i x 2**i pixels of level 0
        scale = ([1.0] if channel else []) + [size * 2 ** index] * 2
        datasets.append({"path": str(index), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return {"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
            "type": "2x2 mean" if channel else "nearest"}


def _omero(name: str, image: np.ndarray, names: tuple[str, ...]) -> dict:
    rgb = image.shape[-1] in (3, 4) and image.dtype == np.uint8
    channels = []
    for index, label in enumerate(names):
        plane = image[..., index]
        low, high = (0, 255) if rgb else ((float(plane.min()), float(plane.max())) if plane.size else (0, 1))
        limits = np.iinfo(image.dtype) if np.issubdtype(image.dtype, np.integer) else None
        channels.append({
            "label": label, "active": True, "coefficient": 1, "family": "linear", "inverted": False,
            "color": RGB_CHANNELS[index][1] if rgb else "FFFFFF",
            "window": {"start": low, "end": high,
                       "min": float(limits.min) if limits else low, "max": float(limits.max) if limits else high}})
    return {"name": name, "version": NGFF_VERSION, "channels": channels,
            "rdefs": {"model": "color" if rgb or len(names) > 1 else "greyscale", "defaultZ": 0, "defaultT": 0}}


def _image_label(mask: np.ndarray, task: str, classes: tuple[str, ...]) -> dict:
    label: dict = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    if task == "semantic":
        values = range(len(classes) + 1)
        label["colors"] = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [
            {"label-value": v, "rgba": [*_PALETTE[(v - 1) % len(_PALETTE)], 255]} for v in values[1:]]
        label["properties"] = [{"label-value": 0, "class": "background/unlabelled"}] + [
            {"label-value": v, "class": classes[v - 1]} for v in values[1:]]
    else:
        kind = classes[0] if len(classes) == 1 else "object"
        label["properties"] = [{"label-value": int(v), "class": kind} for v in np.unique(mask) if v != 0]
    return label


__all__ = ["OmeZarrSample", "write_ome_zarr", "read_ome_zarr", "default_channel_names"]
