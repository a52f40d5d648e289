"""The label image of a run as a new OMERO image, written tile by tile.

The image is created with ``pixelsService.createImage`` (one channel, one plane) in the source image's
group and filled with ``RawPixelsStore.setTile`` from level 0 of the run's
:class:`~dlcore.io.labels.LabelCanvas`, so slide-sized label images never pass through memory whole.

Why uint16 with wrapped ids: an image above ``omero.pixeldata.max_plane_width x height`` (3192 x 3192
by default) made this way is stored by OMERO.server 5.6 as a pyramid (``BfPyramidPixelBuffer``,
omero-romio ``PixelsService``), and OMERO pyramids hold only 8- and 16-bit pixels (ome-model
``omero-pyramid``): a uint32 label image of a slide cannot be written.  So the OMERO label image is
uint16 and object ``n`` has the value ``(n - 1) % 65535 + 1`` (:func:`label_value`): identical to ``n``
up to 65,535 objects, and beyond that neighbouring objects still differ, so OMERO.iviewer shows every
outline.  The exact ids (any count) are in the ``labels.ome.tif`` attached to the source image
(pyramidal, uint32), and the measurement table's ``label_value`` column links each row to its value.
The channel's rendering range is set (``setChannelGlobalMinMax``), as omero-py does for images it
creates: a server-made image has no statistics and would otherwise display black.

It is linked into the source image's datasets only when the run has finished (:func:`dataset_links`);
until then it is an orphan the run deletes on failure.
"""
from __future__ import annotations

import contextlib

import numpy as np

from dlcore.errors import OmeroError

LABEL_PIXELS_TYPE = "uint16"
MAX_LABEL_VALUE = 65535
Q_PIXELS_TYPE = "from PixelsType as p where p.value = :value"
Q_IMAGE_PIXELS = "select p from Pixels p where p.image.id = :iid"
LABEL_DESCRIPTION = "dlcore label image"  # how label images are recognised (and skipped as input)


def is_label_image(description: str | None) -> bool:
    """True for a label image a dlcore run wrote (never analysed again when a dataset is selected)."""
    return bool(description) and description.startswith(LABEL_DESCRIPTION)


def label_value(ids):
    """The uint16 value object id(s) ``ids`` take in the OMERO label image (0 stays background)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids > 0, (ids - 1) % MAX_LABEL_VALUE + 1, 0).astype(np.uint16)


def create_label_image(conn, canvas, *, name: str, description: str, mpp: float | None, context: dict,
                       on_created=None) -> int:
    """Create the label image from ``canvas`` level 0 and return its id.

    ``on_created(image_id)`` is called as soon as the image exists, so the caller can delete it if a
    later tile fails.
    """
    height, width = canvas.levels[0].shape
    image_id = create_image(conn, width, height, 1, LABEL_PIXELS_TYPE, name=name, description=description,
                            context=context)
    if on_created is not None:
        on_created(image_id)
    pixels_id = pixels_id_of(conn, image_id, context)
    level0 = canvas.levels[0]
    [(_, top)] = write_tiles(conn, pixels_id, lambda c, x, y, w, h: label_value(np.asarray(level0[y:y + h, x:x + w])),
                             channels=1, width=width, height=height, pixels_type=LABEL_PIXELS_TYPE, context=context)
    conn.getPixelsService().setChannelGlobalMinMax(pixels_id, 0, 0.0, float(max(top, 1)), context)
    if mpp:
        set_pixel_size(conn, image_id, mpp, context)
    return int(image_id)


#: numpy's big-endian type of each OMERO pixel type dlcore writes (RawPixelsStore tiles are big-endian)
BIG_ENDIAN = {"uint8": ">u1", "uint16": ">u2"}
BAND_PIXELS = 4096  # a band of tiles read from the canvas at once is at most this wide


def create_image(conn, width: int, height: int, channels: int, pixels_type: str, *, name: str, description: str,
                 context: dict) -> int:
    """A new, empty single-plane image of ``channels`` channels (``IPixels.createImage``) in the group of
    ``context``; its id.  Not in any dataset."""
    from omero.rtypes import rstring
    from omero.sys import ParametersI

    params = ParametersI()
    params.add("value", rstring(pixels_type))
    ptype = conn.getQueryService().findByQuery(Q_PIXELS_TYPE, params, context)
    if ptype is None:
        raise OmeroError(f"the OMERO server has no pixel type {pixels_type!r}")
    return int(conn.getPixelsService().createImage(
        int(width), int(height), 1, 1, list(range(int(channels))), ptype, name, description, context,
    ).getValue())  # channelList is an omero::sys::IntList (sequence<int>): plain ints


def write_tiles(conn, pixels_id: int, read, *, channels: int, width: int, height: int, pixels_type: str,
                context: dict) -> list[tuple[int, int]]:
    """Fill the new image ``pixels_id`` through a RawPixelsStore on the server's tile grid, channel after
    channel, row after row, then save it; return each channel's (min, max) stored value.

    ``read(c, x, y, w, h)`` gives channel ``c``'s ``(h, w)`` block at ``x, y``; it is asked for bands of
    tiles (at most :data:`BAND_PIXELS` wide), never for a whole plane.  The server decides the tiles
    (``getTileSize``): 256 x 256 for an image it stores as a pyramid (above 3192 x 3192), whole rows for
    a smaller one (a ROMIO buffer takes only tiles at x = 0 of the full width).
    """
    store = conn.c.sf.createRawPixelsStore()
    order = BIG_ENDIAN[pixels_type]
    ranges = []
    try:
        store.setPixelsId(int(pixels_id), True, context)
        tw, th = (int(v) for v in store.getTileSize())
        span = tw * max(1, BAND_PIXELS // tw)
        for c in range(channels):
            low, high = None, None
            for y in range(0, height, th):
                h = min(th, height - y)
                for bx in range(0, width, span):
                    band = np.asarray(read(c, bx, y, min(span, width - bx), h))
                    if band.size:
                        low = int(band.min()) if low is None else min(low, int(band.min()))
                        high = int(band.max()) if high is None else max(high, int(band.max()))
                    for x in range(0, band.shape[1], tw):
                        block = band[:, x:x + tw]
                        data = np.ascontiguousarray(block, dtype=order).tobytes()
                        store.setTile(data, 0, c, 0, bx + x, y, block.shape[1], block.shape[0], context)
            ranges.append((low or 0, high or 0))
        store.save(context)
    except BaseException:
        with contextlib.suppress(Exception):  # close() saves on the server: the first error is the one to see
            store.close()
        raise
    store.close()
    return ranges


def _pixels(conn, image_id: int, context: dict):
    from omero.rtypes import rlong
    from omero.sys import ParametersI

    params = ParametersI()
    params.add("iid", rlong(int(image_id)))
    return conn.getQueryService().findByQuery(Q_IMAGE_PIXELS, params, context)


def pixels_id_of(conn, image_id: int, context: dict) -> int:
    """The id of an image's Pixels."""
    return int(_pixels(conn, image_id, context).getId().getValue())


def set_pixel_size(conn, image_id: int, mpp: float, context: dict) -> None:
    """Set an image's pixel size (X and Y, µm)."""
    from omero.model import LengthI
    from omero.model.enums import UnitsLength

    pixels = _pixels(conn, image_id, context)  # re-read: the store's save() changed it
    pixels.setPhysicalSizeX(LengthI(float(mpp), UnitsLength.MICROMETER))
    pixels.setPhysicalSizeY(LengthI(float(mpp), UnitsLength.MICROMETER))
    conn.getUpdateService().saveObject(pixels, context)


def dataset_links(image_id: int, dataset_ids: list[int]) -> list:
    """Unsaved links putting the label image into each dataset."""
    from omero.model import DatasetI, DatasetImageLinkI, ImageI

    links = []
    for dataset_id in dataset_ids:
        link = DatasetImageLinkI()
        link.setParent(DatasetI(dataset_id, False))
        link.setChild(ImageI(image_id, False))
        links.append(link)
    return links
