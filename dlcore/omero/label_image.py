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

import numpy as np

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
    from omero.rtypes import rstring
    from omero.sys import ParametersI

    params = ParametersI()
    params.add("value", rstring(LABEL_PIXELS_TYPE))
    pixels_type = conn.getQueryService().findByQuery(Q_PIXELS_TYPE, params, context)
    height, width = canvas.levels[0].shape
    image_id = conn.getPixelsService().createImage(
        width, height, 1, 1, [0], pixels_type, name, description, context,  # channelList: sequence<int>
    ).getValue()
    if on_created is not None:
        on_created(int(image_id))
    pixels_id = _pixels_id(conn, image_id, context)
    store = conn.c.sf.createRawPixelsStore()
    try:
        store.setPixelsId(pixels_id, True, context)
        tw, th = (int(v) for v in store.getTileSize())
        level0 = canvas.levels[0]
        top = 0
        for y in range(0, height, th):
            for x in range(0, width, tw):
                block = label_value(np.asarray(level0[y:y + th, x:x + tw]))
                top = max(top, int(block.max()))
                data = np.ascontiguousarray(block, dtype=">u2").tobytes()
                store.setTile(data, 0, 0, 0, x, y, block.shape[1], block.shape[0], context)
        store.save(context)
    finally:
        store.close()
    conn.getPixelsService().setChannelGlobalMinMax(pixels_id, 0, 0.0, float(max(top, 1)), context)
    if mpp:
        _set_pixel_size(conn, image_id, mpp, context)
    return int(image_id)


def _pixels(conn, image_id: int, context: dict):
    from omero.rtypes import rlong
    from omero.sys import ParametersI

    params = ParametersI()
    params.add("iid", rlong(int(image_id)))
    return conn.getQueryService().findByQuery(Q_IMAGE_PIXELS, params, context)


def _pixels_id(conn, image_id: int, context: dict) -> int:
    return int(_pixels(conn, image_id, context).getId().getValue())


def _set_pixel_size(conn, image_id: int, mpp: float, context: dict) -> None:
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
