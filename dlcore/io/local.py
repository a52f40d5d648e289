"""Slides from local files: pyramidal OME-TIFF/TIFF, vendor formats via OpenSlide, plain images.

:func:`open_slide` picks the reader from the file; every reader returns ``(Y, X, C)`` regions and
fails with a :class:`~dlcore.errors.SlideError` that names the file, the problem and the fix.
"""
from __future__ import annotations

import logging
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from dlcore.errors import SlideError
from dlcore.io.acquisition import dpi_pixel_size
from dlcore.io.slide import Level, Slide, SlideInfo, check_region
from dlcore.io.tiled import TileCache, assemble_region

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".btf", ".ome.btf")
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide", ".tiff", ".tif")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


def _identity(path: Path) -> str:
    stat = path.stat()
    return f"file://{path.resolve()}?size={stat.st_size}&mtime={int(stat.st_mtime)}"


def is_slide_file(path: Path) -> bool:
    """True when ``path``'s name ends in a suffix some reader of :func:`open_slide` takes."""
    return path.name.lower().endswith(TIFF_SUFFIXES + OPENSLIDE_SUFFIXES + PLAIN_SUFFIXES)


def expand_slide_paths(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Slide files from files and folders, and what was skipped with the reason.

    A file is kept as given (a wrong one fails later with the reader's message).  A folder stands for
    the slide files directly inside it, sorted by name (like WSInfer's ``--wsi-dir`` or a QuPath
    project's image list): other files are skipped and reported, hidden files and sub-folders (an
    MRXS slide's data folder) are ignored.  Duplicates are kept once, in first-seen order.
    """
    slides: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            slides.append(path)
            continue
        entries = sorted(p for p in path.iterdir() if not p.name.startswith(".") and not p.is_dir())
        found = [p for p in entries if is_slide_file(p)]
        skipped += [(p, f"unsupported file type {p.suffix or '(no suffix)'!r}") for p in entries if not is_slide_file(p)]
        if not found:
            skipped.append((path, "the folder holds no slide files (OME-TIFF, TIFF, SVS, NDPI, MRXS, SCN, BIF, PNG, JPEG)"))
        slides += found
    return list(dict.fromkeys(slides)), skipped


def open_slide(path: str | os.PathLike, *, cache_bytes: int | None = None) -> Slide:
    """Open a local slide file with the reader its format needs.

    Parameters
    ----------
    path
        An OME-TIFF or TIFF (pyramidal or not), a vendor slide OpenSlide reads (SVS, NDPI, MRXS, ...),
        or a PNG/JPEG/BMP image (read as a one-level slide).
    cache_bytes
        Size of the decoded-tile cache for tiled formats.

    Raises
    ------
    SlideError
        The file is missing, of an unsupported format, corrupt or truncated.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise SlideError(f"{path} is a link to {os.readlink(path)}, which does not exist (moved, deleted or an "
                         "unmounted share); fix the link or give the slide's real path")
    if not path.exists():
        raise SlideError(f"no such file: {path}; check the path (relative paths start at {Path.cwd()})")
    if not path.is_dir() and not os.access(path, os.R_OK):
        raise SlideError(f"{path} cannot be read: permission denied; ask its owner for read access, or copy it")
    if path.is_dir():
        raise SlideError(f"{path} is a folder, not a slide file; for MRXS slides give the .mrxs file")
    name = path.name.lower()
    kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    if name.endswith(PLAIN_SUFFIXES):
        return PlainImageSlide(path)
    if name.endswith(TIFF_SUFFIXES):
        vendor = _tiff_vendor(path)
        if vendor is None:
            return TiffSlide(path, **kwargs)
        log.debug("%s is a %s file: reading it with OpenSlide", path, vendor)
    if name.endswith(OPENSLIDE_SUFFIXES):
        return OpenSlideSlide(path)
    raise SlideError(
        f"{path.name}: unsupported file type {path.suffix!r}; dlcore reads OME-TIFF/TIFF, "
        "SVS, NDPI, MRXS, SCN, BIF (OpenSlide) and PNG/JPEG. Convert other formats to OME-TIFF "
        "(e.g. with bfconvert or QuPath's OME-TIFF export)"
    )


def _tiff_vendor(path: Path) -> str | None:
    """'svs', 'ndpi', ... when the TIFF is a vendor format OpenSlide reads better, else None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for flag in ("svs", "ndpi", "scn", "bif"):
                if getattr(tif, f"is_{flag}", False):
                    return flag
    except Exception:  # the TIFF reader reports corrupt files with the proper message
        return None
    return None


class TiffSlide:
    """A TIFF or OME-TIFF slide, read on the file's own tile grid (tifffile + zarr).

    Each reader thread gets its own file handle; decoded tiles are shared through a
    :class:`~dlcore.io.tiled.TileCache`.
    """

    def __init__(self, path: Path, *, cache_bytes: int = 256 * 1024 * 1024) -> None:
        import tifffile

        self.path = path
        self._local = threading.local()
        self._handles: list = []
        self._handles_lock = threading.Lock()
        self.cache = TileCache(cache_bytes)
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise SlideError(f"{path.name} is not a readable TIFF ({exc}); the file is corrupt or not a TIFF") from exc
        try:
            self.info, self._axes = self._describe(tif)
            _check_not_truncated(tif, path)
        finally:
            tif.close()
        last = len(self.info.levels) - 1
        lv = self.info.levels[last]
        self.read_region(last, 0, 0, min(lv.width, 64), min(lv.height, 64))  # fail early if the data is corrupt

    def _describe(self, tif) -> tuple[SlideInfo, str]:
        if not tif.series:
            raise SlideError(f"{self.path.name} contains no image; the file is corrupt or not a TIFF")
        series = tif.series[0]
        axes = series.axes
        if "Y" not in axes or "X" not in axes:
            raise SlideError(f"{self.path.name}: image axes {axes!r} have no Y and X")
        levels = []
        base_w = base_h = None
        for lv in series.levels:
            shape = dict(zip(lv.axes, lv.shape))
            w, h = shape["X"], shape["Y"]
            if base_w is None:
                base_w, base_h = w, h
            levels.append(Level(width=w, height=h, downsample=(base_w / w + base_h / h) / 2))
        shape0 = dict(zip(axes, series.shape))
        n_channels = shape0.get("S", 1) * shape0.get("C", 1)
        key = series.levels[0].keyframe
        tile = (key.tilewidth or base_w, key.tilelength or min(base_h, 1024))
        channels = _ome_channel_names(tif, n_channels, rgb=shape0.get("S", 1) == 3)
        info = SlideInfo(
            name=self.path.name,
            identity=_identity(self.path),
            levels=tuple(levels),
            mpp=tiff_pixel_size(tif),
            channels=channels,
            dtype=np.dtype(series.dtype).name,
            tile_size=(int(tile[0]), int(tile[1])),
        )
        return info, axes

    def _level_array(self, level: int):
        """This thread's zarr view of ``level``."""
        import tifffile
        import zarr

        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            tif = tifffile.TiffFile(self.path)
            with self._handles_lock:
                self._handles.append(tif)
            self._local.tif = tif
            arrays = self._local.arrays = {}
        if level not in arrays:
            arrays[level] = zarr.open(self._local.tif.aszarr(series=0, level=level), mode="r")
        return arrays[level]

    def _read_tile(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        array = self._level_array(level)
        index = []
        for ax in self._axes:
            index.append(slice(y, y + h) if ax == "Y" else slice(x, x + w) if ax == "X" else slice(None) if ax in "CS" else 0)
        try:
            data = np.asarray(array[tuple(index)])
        except Exception as exc:
            raise SlideError(f"{self.path.name}: tile at x={x} y={y} of level {level} cannot be decoded ({exc}); the file is corrupt") from exc
        kept = [ax for ax in self._axes if ax in "YXCS"]
        order = [kept.index("Y"), kept.index("X")] + [i for i, ax in enumerate(kept) if ax in "CS"]
        data = np.transpose(data, order)
        return data.reshape(data.shape[0], data.shape[1], -1)

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        check_region(self.info, level, x, y, width, height)
        lv = self.info.levels[level]
        tile = self.info.tile_size if level == 0 else self._tile_size(level)
        return assemble_region(
            level=level, x=x, y=y, width=width, height=height, level_size=(lv.width, lv.height),
            tile_size=tile, channels=len(self.info.channels), dtype=np.dtype(self.info.dtype),
            read_tile=self._read_tile, cache=self.cache,
        )

    def _tile_size(self, level: int) -> tuple[int, int]:
        dims = dict(zip(self._axes, self._level_array(level).chunks))
        return (int(dims["X"]), int(dims["Y"]))

    def close(self) -> None:
        with self._handles_lock:
            for tif in self._handles:
                tif.close()
            self._handles.clear()


def _check_not_truncated(tif, path: Path) -> None:
    """Raise when a level's tiles are missing or point past the end of the file (a truncated copy)."""
    size = path.stat().st_size
    for level, lv in enumerate(tif.series[0].levels):
        for page in lv.pages:
            if page is None or not hasattr(page, "dataoffsets"):
                continue
            missing = sum(1 for o, c in zip(page.dataoffsets, page.databytecounts) if not c or not o)
            if missing:
                raise SlideError(
                    f"{path.name}: {missing} of the {len(page.databytecounts)} tiles of level {level} have no "
                    "data in the file (an interrupted or broken conversion); convert or export the slide again"
                )
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
            if ends and max(ends) > size:
                raise SlideError(
                    f"{path.name} is truncated: its image data reaches byte {max(ends)} but the file has "
                    f"{size} bytes; copy or export the file again"
                )


def _ome_channel_names(tif, n: int, *, rgb: bool) -> tuple[str, ...]:
    names: list[str] = []
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            for ch in root.iter():
                if ch.tag.endswith("}Channel") and ch.get("Name"):
                    names.append(ch.get("Name"))
        except ET.ParseError:
            names = []
    if len(names) == n:
        return tuple(names)
    if rgb:
        return ("R", "G", "B")
    return tuple(f"C{i}" for i in range(n))


def tiff_pixel_size(tif) -> tuple[float, float] | None:
    """Level 0's pixel size in µm from OME-XML, an SVS description, or the resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            for px in root.iter():
                if px.tag.endswith("}Pixels") and px.get("PhysicalSizeX"):
                    unit_x = _UM_PER_UNIT.get(px.get("PhysicalSizeXUnit", "µm"), 1.0)
                    unit_y = _UM_PER_UNIT.get(px.get("PhysicalSizeYUnit", "µm"), 1.0)
                    sx = float(px.get("PhysicalSizeX")) * unit_x
                    sy = float(px.get("PhysicalSizeY", px.get("PhysicalSizeX"))) * unit_y
                    return (sx, sy)
        except (ET.ParseError, ValueError):
            pass
    page = tif.pages[0]
    try:
        unit = page.tags["ResolutionUnit"].value
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
    except KeyError:
        return None
    per = {2: 25400.0, 3: 10000.0}.get(int(unit))
    if per is None or not xres[0] or not yres[0]:
        return None
    sx, sy = per * xres[1] / xres[0], per * yres[1] / yres[0]
    if sx > 100:  # 72 dpi defaults from image editors are not a microscope pixel size
        return None
    return (sx, sy)


class OpenSlideSlide:
    """A vendor-format slide (SVS, NDPI, MRXS, ...) read through OpenSlide."""

    def __init__(self, path: Path) -> None:
        try:
            import openslide
        except ImportError as exc:  # pragma: no cover - openslide-bin is a dependency
            raise SlideError(f"reading {path.name} needs openslide-python and openslide-bin: pip install openslide-bin") from exc
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{path.name} cannot be opened by OpenSlide ({exc}); the file is corrupt or incomplete") from exc
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(
                f"{path.name} is not a slide format OpenSlide knows; convert it to OME-TIFF"
            ) from exc
        props = self._osr.properties
        w0, h0 = self._osr.dimensions
        levels = tuple(
            Level(width=w, height=h, downsample=float(ds))
            for (w, h), ds in zip(self._osr.level_dimensions, self._osr.level_downsamples)
        )
        mpp = None
        if props.get("openslide.mpp-x") and props.get("openslide.mpp-y"):
            mpp = (float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"]))
        tile = (int(props.get("openslide.level[0].tile-width", 256)), int(props.get("openslide.level[0].tile-height", 256)))
        self.info = SlideInfo(
            name=path.name, identity=_identity(path), levels=levels, mpp=mpp,
            channels=("R", "G", "B"), dtype="uint8", tile_size=tile,
        )
        last = len(levels) - 1
        self.read_region(last, 0, 0, min(levels[last].width, 64), min(levels[last].height, 64))  # fail early if corrupt

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        check_region(self.info, level, x, y, width, height)
        import openslide

        ds = self.info.levels[level].downsample
        try:
            rgba = np.asarray(self._osr.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height)))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.info.name}: region x={x} y={y} of level {level} cannot be decoded ({exc}); the file is corrupt") from exc
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255  # transparent = no scan data = white background
        return rgb

    def close(self) -> None:
        self._osr.close()


class PlainImageSlide:
    """A PNG/JPEG/BMP image held in memory as a one-level slide."""

    MAX_PIXELS = 200_000_000

    def __init__(self, path: Path) -> None:
        from PIL import Image

        try:
            with Image.open(path) as img:
                if img.width * img.height > self.MAX_PIXELS:
                    raise SlideError(
                        f"{path.name} is {img.width}x{img.height}: too big for a plain image; "
                        "convert it to a pyramidal OME-TIFF (e.g. bfconvert -pyramid-resolutions 4)"
                    )
                if img.mode in ("RGBA", "P", "CMYK", "LA"):
                    img = img.convert("RGB")
                array = np.asarray(img)
                dpi = img.info.get("dpi")
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"{path.name} cannot be read as an image ({exc}); the file is corrupt or truncated") from exc
        if array.ndim == 2:
            array = array[..., None]
        self._array = array
        mpp = None
        if dpi_pixel_size(dpi):  # only resolutions a microscope could have
            mpp = (dpi_pixel_size(dpi), dpi_pixel_size(dpi[1:]) or dpi_pixel_size(dpi))
        channels = ("R", "G", "B") if array.shape[2] == 3 else tuple(f"C{i}" for i in range(array.shape[2]))
        self.info = SlideInfo(
            name=path.name, identity=_identity(path),
            levels=(Level(width=array.shape[1], height=array.shape[0], downsample=1.0),),
            mpp=mpp, channels=channels, dtype=array.dtype.name,
            tile_size=(min(array.shape[1], 512), min(array.shape[0], 512)),
        )

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        check_region(self.info, level, x, y, width, height)
        return self._array[y:y + height, x:x + width].copy()

    def close(self) -> None:
        self._array = np.empty((0, 0, 0))
