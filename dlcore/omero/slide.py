"""Whole-slide images read from OMERO through the RawPixelsStore, on the image's native tile grid.

OMERO numbers resolution levels the other way round from dlcore: OMERO's level
``getResolutionLevels() - 1`` is full resolution, and ``getResolutionDescriptions()`` lists the
levels largest first.  :class:`OmeroSlide` exposes them as dlcore levels (0 = full resolution).
Tiles arrive big-endian, one channel at a time (an RGB slide is three channels); they are decoded to
``(Y, X, C)`` arrays in native byte order and shared through a :class:`~dlcore.io.tiled.TileCache`.
Each reader thread opens its own store (a store has one current resolution level); all are closed by
:meth:`OmeroSlide.close`, which the workflow always calls.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from dlcore.errors import OmeroError, SlideError
from dlcore.io.slide import Level, SlideInfo, check_region
from dlcore.io.tiled import TileCache, assemble_region

log = logging.getLogger(__name__)

#: OMERO pixel type -> big-endian numpy dtype of the bytes ``getTile`` returns.
PIXEL_TYPES = {
    "int8": ">i1", "uint8": ">u1", "int16": ">i2", "uint16": ">u2", "int32": ">i4", "uint32": ">u4",
    "float": ">f4", "double": ">f8",
}
READ_CONTEXT = {"omero.group": "-1"}


def pixel_dtype(pixels_type: str, image_label: str) -> np.dtype:
    """The big-endian dtype of an OMERO pixel type; raise a clear error for unsupported ones."""
    if pixels_type not in PIXEL_TYPES:
        raise SlideError(
            f"{image_label} has pixel type {pixels_type!r}, which dlcore cannot analyse; supported types: "
            f"{', '.join(PIXEL_TYPES)}. Convert the image (e.g. to uint8 or uint16) and import it again"
        )
    return np.dtype(PIXEL_TYPES[pixels_type])


def server_uuid(conn) -> str:
    """The OMERO database's UUID (IConfig.getDatabaseUuid): with it an image id names one image of one
    installation, so a checkpoint made against a test server is never taken for a production image."""
    return str(conn.getConfigService().getDatabaseUuid())


class OmeroSlide:
    """An OMERO image as a :class:`~dlcore.io.slide.Slide` (plane z=0, t=0).

    Parameters
    ----------
    conn
        A connected :class:`omero.gateway.BlitzGateway`.
    image
        The image's wrapper (``conn.getObject("Image", id)``).
    cache_bytes
        Size of the decoded-tile cache.
    """

    def __init__(self, conn, image, *, cache_bytes: int = 256 * 1024 * 1024) -> None:
        self._conn = conn
        self.image_id = int(image.getId())
        label = f"Image:{self.image_id}"
        pixels = image.getPrimaryPixels()
        self.pixels_id = int(pixels.getId())
        self._big_endian = pixel_dtype(image.getPixelsType(), label)
        self._size_c = int(pixels.getSizeC())
        if pixels.getSizeZ() > 1 or pixels.getSizeT() > 1:
            log.warning("%s has %d z-sections and %d timepoints; dlcore analyses z=0, t=0",
                        label, pixels.getSizeZ(), pixels.getSizeT())
        self.cache = TileCache(cache_bytes)
        self._local = threading.local()
        self._stores: list = []
        self._lock = threading.Lock()
        store = self._open_store()
        try:
            levels, self._tile_sizes = self._describe_levels(store, int(pixels.getSizeX()), int(pixels.getSizeY()))
        except BaseException:
            self.close()
            raise
        self.info = SlideInfo(
            name=f"{label} {image.getName()}",
            identity=f"omero://{server_uuid(conn)}/{label}?pixels={self.pixels_id}&z=0&t=0",
            levels=levels,
            mpp=_pixel_size(image),
            channels=_channel_names(image, self._size_c),
            dtype=self._big_endian.newbyteorder("=").name,
            tile_size=self._tile_sizes[0],
        )

    # -- stores ---------------------------------------------------------------------------------
    def _open_store(self):
        """This thread's RawPixelsStore, opened on first use with group context -1."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._conn.c.sf.createRawPixelsStore()
            with self._lock:
                self._stores.append(store)
            open_pixels(store, self.pixels_id, f"Image:{self.image_id}")
            self._local.store = store
            self._local.omero_level = None
        return store

    def _set_level(self, store, level: int) -> None:
        omero_level = self._n_levels - 1 - level
        if self._local.omero_level != omero_level:
            store.setResolutionLevel(omero_level)
            self._local.omero_level = omero_level

    def _describe_levels(self, store, size_x: int, size_y: int):
        self._n_levels = int(store.getResolutionLevels())
        if self._n_levels <= 1:
            tile = store.getTileSize()
            return (Level(size_x, size_y, 1.0),), [(int(tile[0]), int(tile[1]))]
        descriptions = store.getResolutionDescriptions()  # largest first
        levels, tiles = [], []
        for index, desc in enumerate(descriptions):
            w, h = int(desc.sizeX), int(desc.sizeY)
            levels.append(Level(w, h, (size_x / w + size_y / h) / 2))
            self._set_level(store, index)
            tile = store.getTileSize()
            tiles.append((int(tile[0]), int(tile[1])))
        if (levels[0].width, levels[0].height) != (size_x, size_y):
            raise SlideError(
                f"Image:{self.image_id}: the largest resolution level is {levels[0].width}x{levels[0].height} "
                f"but the image is {size_x}x{size_y}; the pyramid is inconsistent (ask your OMERO admin to "
                "regenerate it)"
            )
        return tuple(levels), tiles

    # -- the Slide protocol ---------------------------------------------------------------------
    def _read_tile(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        store = self._open_store()
        self._set_level(store, level)
        planes = []
        for c in range(self._size_c):
            data = store.getTile(0, c, 0, x, y, w, h)
            planes.append(np.frombuffer(data, dtype=self._big_endian, count=w * h).reshape(h, w))
        return np.stack(planes, axis=-1).astype(self._big_endian.newbyteorder("="), copy=False)

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        check_region(self.info, level, x, y, width, height)
        lv = self.info.levels[level]
        return assemble_region(
            level=level, x=x, y=y, width=width, height=height, level_size=(lv.width, lv.height),
            tile_size=self._tile_sizes[level], channels=self._size_c, dtype=np.dtype(self.info.dtype),
            read_tile=self._read_tile, cache=self.cache,
        )

    def close(self) -> None:
        """Close every store this slide opened (errors on close are logged, not raised)."""
        with self._lock:
            stores, self._stores = self._stores, []
        for store in stores:
            try:
                store.close()
            except Exception as exc:  # a dead session must not hide the run's own error
                log.warning("closing a RawPixelsStore of Image:%s failed: %s", self.image_id, exc)
        self._local = threading.local()

    def __enter__(self) -> "OmeroSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pixel_size(image) -> tuple[float, float] | None:
    """Level 0's pixel size in µm, converted from whatever unit OMERO stores."""
    sizes = []
    for getter in (image.getPixelSizeX, image.getPixelSizeY):
        value = getter(units="MICROMETER")
        value = value.getValue() if hasattr(value, "getValue") else value
        sizes.append(float(value) if value else None)
    if sizes[0] is None:
        return None
    return (sizes[0], sizes[1] or sizes[0])


def _channel_names(image, size_c: int) -> tuple[str, ...]:
    names = list(image.getChannelLabels() or [])
    if len(names) != size_c:
        names = ["R", "G", "B"] if size_c == 3 else [f"C{i}" for i in range(size_c)]
    return tuple(str(n) for n in names)


def open_pixels(store, pixels_id: int, what: str) -> None:
    """``store.setPixelsId`` for reading, with the server's "pyramid not built yet" made clear.

    A big image the server has just imported raises ``omero.MissingPyramidException`` until its
    pixels service has built the pyramid (minutes to hours for a whole slide).
    """
    import omero

    try:
        store.setPixelsId(pixels_id, False, READ_CONTEXT)
    except omero.MissingPyramidException as exc:
        raise OmeroError(f"{what}: the server is still building this image's pyramid (it was imported recently); "
                         "try again later") from exc
