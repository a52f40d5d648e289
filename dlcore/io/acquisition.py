"""How an image was acquired, as its file says: pixel size, channel names, objective magnification, stain.

Read from an image file (:func:`read_acquisition`: OME-TIFF's OME-XML, an Aperio SVS description, TIFF
resolution tags, a PNG's resolution) and written into the OME-XML of an OME-TIFF (:func:`add_to_ome_xml`),
so that what a facility's scanner recorded survives an export and comes back when the export is read.

OME-XML carries the magnification as the image's objective (``Instrument/Objective@NominalMagnification``
referenced by ``Image/ObjectiveSettings``).  It has no field for a stain, so the stain is a key-value pair
``stain`` in a ``MapAnnotation`` referenced by the image (the form OMERO shows as key-values).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

STAIN_KEYS = ("stain", "staining", "stains")
MAP_NAMESPACE = "openmicroscopy.org/omero/client/mapAnnotation"
_SVS_MAG = re.compile(r"\|\s*AppMag\s*=\s*([0-9.]+)")


@dataclass(frozen=True)
class Acquisition:
    """What is known of how an image was acquired (None: not recorded).

    Attributes
    ----------
    mpp : full-resolution pixel size in µm (x).
    channel_names : one name per channel, as the file names them (None when it names none).
    magnification : nominal objective magnification, e.g. 40.0.
    stain : e.g. ``"H&E"``, ``"IHC CD3 (DAB)"``.
    """

    mpp: float | None = None
    channel_names: tuple[str, ...] | None = None
    magnification: float | None = None
    stain: str | None = None


def read_acquisition(path: str | Path) -> Acquisition:
    """What ``path``'s metadata records, without reading its pixels; an unreadable or plain file gives
    what it can (often nothing: a PNG or JPEG has at most a resolution)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff", ".btf", ".svs"):
        return _tiff_acquisition(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        from PIL import Image

        try:
            with Image.open(path) as img:
                return Acquisition(mpp=dpi_pixel_size(img.info.get("dpi")))
        except Exception:  # the pixel reader reports unreadable files with the proper message
            return Acquisition()
    return Acquisition()


def dpi_pixel_size(dpi) -> float | None:
    """µm per pixel from a (x, y) dots-per-inch resolution, or None when it is not a microscope's
    (image editors write 72 or 96 dpi)."""
    if not dpi or not dpi[0] or dpi[0] <= 1000:
        return None
    return 25400.0 / float(dpi[0])


def _tiff_acquisition(path: Path) -> Acquisition:
    import tifffile

    from dlcore.io.local import tiff_pixel_size

    try:
        with tifffile.TiffFile(path) as tif:
            mpp = tiff_pixel_size(tif)
            root = _ome_root(tif.ome_metadata if tif.is_ome else None)
            description = tif.pages[0].description if tif.pages else ""
    except Exception:
        return Acquisition()
    names = magnification = stain = None
    if root is not None:
        names = tuple(ch.get("Name") for ch in _first_image_channels(root)) or None
        if names and not all(names):
            names = None
        magnification, stain = ome_magnification(root), ome_stain(root)
    elif description and "Aperio" in description:
        match = _SVS_MAG.search(description)
        magnification = float(match.group(1)) if match else None
    return Acquisition(mpp=mpp[0] if mpp else None, channel_names=names, magnification=magnification, stain=stain)


def _ome_root(xml: str | None):
    if not xml:
        return None
    try:
        return ET.fromstring(xml)
    except ET.ParseError:
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element, name: str):
    return [c for c in element if _local(c.tag) == name]


def _first_image(root):
    return next((e for e in root if _local(e.tag) == "Image"), None)


def _first_image_channels(root) -> list:
    image = _first_image(root)
    pixels = _children(image, "Pixels") if image is not None else []
    return _children(pixels[0], "Channel") if pixels else []


def ome_magnification(root) -> float | None:
    """The nominal magnification of the first image's objective (its ``ObjectiveSettings``, or the only
    objective of the file), or None."""
    objectives = {o.get("ID"): o for o in root.iter() if _local(o.tag) == "Objective"}
    image = _first_image(root)
    settings = _children(image, "ObjectiveSettings") if image is not None else []
    objective = objectives.get(settings[0].get("ID")) if settings else None
    if objective is None and len(objectives) == 1:
        objective = next(iter(objectives.values()))
    try:
        return float(objective.get("NominalMagnification")) if objective is not None else None
    except (TypeError, ValueError):
        return None


def ome_stain(root) -> str | None:
    """The value of a ``stain`` (or ``staining``) key in a MapAnnotation of the file, or None."""
    for annotation in root.iter():
        if _local(annotation.tag) != "MapAnnotation":
            continue
        for pair in annotation.iter():
            if _local(pair.tag) == "M" and (pair.get("K") or "").strip().lower() in STAIN_KEYS and pair.text:
                return pair.text.strip()
    return None


def add_to_ome_xml(xml: str, *, magnification: float | None = None) -> str:
    """``xml`` (one image, as tifffile writes it) with the image's objective: an ``Instrument`` holding an
    ``Objective`` of that nominal magnification, referenced by the image's ``InstrumentRef`` and
    ``ObjectiveSettings`` (in the order the OME schema requires).  Unchanged when ``magnification`` is None."""
    if magnification is None:
        return xml
    image_at = xml.find("<Image ")
    pixels_at = xml.find("<Pixels ", image_at)
    if image_at < 0 or pixels_at < 0:
        raise ValueError("OME-XML without an Image and its Pixels")
    instrument = (f'<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" '
                  f'NominalMagnification={quoteattr(repr(float(magnification)))}/></Instrument>')
    refs = '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings ID="Objective:0:0"/>'
    return xml[:image_at] + instrument + xml[image_at:pixels_at] + refs + xml[pixels_at:]


def stain_annotation(stain: str | None) -> dict:
    """tifffile's ``metadata`` entry that records ``stain`` as an OME MapAnnotation (empty for None)."""
    if not stain:
        return {}
    return {"MapAnnotation": {"Namespace": MAP_NAMESPACE, "Value": {"stain": stain}}}


__all__ = ["Acquisition", "read_acquisition", "dpi_pixel_size", "ome_magnification", "ome_stain",
           "add_to_ome_xml", "stain_annotation", "STAIN_KEYS"]
