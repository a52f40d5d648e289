"""The predicted image of an ``image`` task (denoising, image translation) as a new OMERO image.

The image goes *beside* its source: a new image named ``<source name> [<model> prediction]`` in the
source's group and datasets, one channel per predicted channel (``LogicalChannel`` names from the
canvas), written tile by tile from level 0 of the finished :class:`~dlcore.io.image_canvas.ImageCanvas`
through a ``RawPixelsStore`` (:func:`~dlcore.omero.label_image.write_tiles`, shared with the label image),
so a slide-sized prediction never passes through memory whole.  :func:`write_new_image` (create, tiles,
channel ranges and names, pixel size, rendering, deleted on failure) is shared with the haematoxylin-only
training image of Labels From Marker (:mod:`dlcore.omero.marker_labels`).

Pixel types: uint8 or uint16 only.  OMERO.server stores an image it creates above
``omero.pixeldata.max_plane_width x height`` (3192 x 3192 by default) as a pyramid
(``BfPyramidPixelBuffer``, omero-romio ``PixelsService``), a JPEG-2000 tiled TIFF that holds 8- and
16-bit unsigned pixels only (ome-model-documentation ``omero-pyramid/index.rst``).  Float pixels are
exempt from the pyramid (``omero.pixeldata.max_plane_float_override``, on by default) and stored as one
uncompressed plane without a pyramid, which OMERO.web cannot show at slide size.  So a float32 canvas is
refused: the run quantises first (the task's ``output_dtype``, uint16 by default in OMERO), and the
per-channel ``scale`` and ``offset`` that turn stored values back into predicted ones
(``value = offset + scale * stored``) are key-value pairs on the new image.

Display: the server computes no statistics for an image made this way, so each channel's range is set
(``setChannelGlobalMinMax``) and rendering settings are saved as the image's defaults through the
``RenderingEngine`` (as omero-py's ``ImageWrapper._prepareRE`` / ``set_active_channels`` /
``saveDefaults`` do): every channel active, its window the stored range of the predicted values
(:meth:`ImageCanvas.stored_range`), grey for one channel, a colour each for several.

Replacing and cleaning up: the source image's key-value pairs of the run (namespace ``dlcore/<model>``)
name the predicted image (``predicted image`` = ``Image:<id>``); a re-run of the same model on the same
image deletes the predicted image the earlier run's pairs name.  A failure after the image was created
deletes it: nothing half-written stays.  :func:`create_predicted_image` does all of it;
:class:`~dlcore.omero.sink.OmeroSink` uses the pieces (:func:`write_predicted_image`,
:func:`predicted_image_links`, :func:`earlier_predicted_images`) so that the predicted image is linked
with the run's other results in one call.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from dlcore.errors import OmeroError, OutputError

log = logging.getLogger(__name__)

PREDICTED_DESCRIPTION = "dlcore predicted image"  # how predicted images are recognised (and skipped as input)
PREDICTED_IMAGE_KEY = "predicted image"  # the key, on the source image, naming the predicted image
SOURCE_IMAGE_KEY = "source image"  # the key, on the predicted image, naming its source
PIXELS_TYPES = ("uint8", "uint16")  # what an OMERO pyramid holds
#: a colour per channel when there are several (one channel is shown grey)
CHANNEL_COLORS = ((0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (0, 0, 255),
                  (255, 255, 255))
GREY = (255, 255, 255)
Q_PIXELS_CHANNELS = ("select p from Pixels p join fetch p.channels c join fetch c.logicalChannel "
                     "where p.image.id = :iid")


def is_predicted_image(description: str | None) -> bool:
    """True for a predicted image a dlcore run wrote (not analysed again when a dataset is selected)."""
    return bool(description) and description.startswith(PREDICTED_DESCRIPTION)


def predicted_description(run_key: str, source_image_id: int) -> str:
    """The description of the predicted image of ``run_key`` on the source image."""
    return f"{PREDICTED_DESCRIPTION}: {run_key} on Image:{int(source_image_id)} (value = offset + scale * stored, " \
           "per channel: see its key-value pairs)"


def check_canvas(canvas) -> str:
    """The OMERO pixel type of ``canvas`` (uint8 or uint16); :class:`OutputError` for any other stored type."""
    dtype = np.dtype(canvas.dtype).name
    if dtype not in PIXELS_TYPES:
        raise OutputError(
            f"the predicted image is stored as {dtype}, which OMERO cannot hold for a slide: OMERO keeps an image "
            "it creates above 3192 x 3192 pixels as a pyramid of 8- or 16-bit pixels. Quantise it first: run the "
            "model with output_dtype=uint16 (the default in OMERO; 65,536 levels over each channel's predicted "
            "range, with the scale and offset that give the values back) or uint8. For float32 values, run "
            "`dlcore run` on the slide file (prediction.ome.tif)")
    if len(canvas.channels) != canvas.levels[0].shape[0]:
        raise OutputError(f"the predicted image has {canvas.levels[0].shape[0]} channels but "
                          f"{len(canvas.channels)} channel names")
    return dtype


def channel_windows(canvas) -> list[tuple[float, float]]:
    """Each channel's display window: its stored range, widened to one level when it is a single value."""
    top = float(np.iinfo(canvas.dtype).max)
    windows = []
    for c in range(len(canvas.channels)):
        lo, hi = (min(max(float(v), 0.0), top) for v in canvas.stored_range(c))
        if hi <= lo:
            lo, hi = (lo, lo + 1.0) if lo < top else (top - 1.0, top)
        windows.append((lo, hi))
    return windows


def channel_colors(n: int) -> list[tuple[int, int, int]]:
    """Grey for one channel, else a colour each (repeating after :data:`CHANNEL_COLORS`)."""
    return [GREY] if n == 1 else [CHANNEL_COLORS[i % len(CHANNEL_COLORS)] for i in range(n)]


def write_predicted_image(conn, canvas, *, name: str, description: str, mpp: float | None, context: dict,
                          on_created: Callable[[int], None] | None = None,
                          on_deleted: Callable[[int], None] | None = None) -> int:
    """Create the predicted image from ``canvas`` level 0, unlinked, and return its id.

    Its pixels, channel names, channel ranges, pixel size and default rendering settings are all set
    here (:func:`write_new_image`).  ``on_created(image_id)`` is called as soon as the image exists (a
    journal can then delete it if the process dies); if anything fails afterwards the image is deleted,
    ``on_deleted(image_id)`` is called, and the error raised (when deleting fails too, the image is left to
    the caller's journal and the deletion's error is logged).
    """
    pixels_type = check_canvas(canvas)
    n, height, width = canvas.levels[0].shape
    return write_new_image(conn, lambda c, x, y, w, h: canvas.read(0, c, x, y, w, h), width=width, height=height,
                           channels=canvas.channels, pixels_type=pixels_type, windows=channel_windows(canvas),
                           colors=channel_colors(n), name=name, description=description, mpp=mpp, context=context,
                           on_created=on_created, on_deleted=on_deleted)


def write_new_image(conn, read: Callable[[int, int, int, int, int], np.ndarray], *, width: int, height: int,
                    channels: Sequence[str], pixels_type: str, windows: Sequence[tuple[float, float]],
                    colors: Sequence[tuple[int, int, int]], name: str, description: str, mpp: float | None,
                    context: dict, on_created: Callable[[int], None] | None = None,
                    on_deleted: Callable[[int], None] | None = None) -> int:
    """A new single-plane image, unlinked, written tile by tile; its id.

    ``read(c, x, y, w, h)`` gives channel ``c``'s ``(h, w)`` block (asked for bands of tiles on the
    server's grid, :func:`~dlcore.omero.label_image.write_tiles`); ``channels`` names the channels.  Each
    channel's range (``setChannelGlobalMinMax``, the stored values'), the channel names, the pixel size
    (when ``mpp``) and the default rendering settings (``windows`` and ``colors``, one per channel) are
    set.  ``on_created(image_id)`` is called as soon as the image exists; a failure afterwards deletes
    the image, calls ``on_deleted(image_id)`` and raises (when deleting fails too, the image is left to
    the caller's journal and the deletion's error is logged).  ``pixels_type`` is ``uint8`` or ``uint16``
    (what an OMERO pyramid holds).
    """
    from dlcore.omero.deleting import delete_objects
    from dlcore.omero.label_image import create_image, pixels_id_of, set_pixel_size, write_tiles

    if pixels_type not in PIXELS_TYPES:
        raise OutputError(f"a new OMERO image is written as {' or '.join(PIXELS_TYPES)}, not {pixels_type}")
    n = len(channels)
    image_id = create_image(conn, width, height, n, pixels_type, name=name, description=description, context=context)
    if on_created is not None:
        on_created(image_id)
    try:
        pixels_id = pixels_id_of(conn, image_id, context)
        ranges = write_tiles(conn, pixels_id, read, channels=n, width=width, height=height, pixels_type=pixels_type,
                             context=context)
        pixels_service = conn.getPixelsService()
        for c, (low, high) in enumerate(ranges):
            pixels_service.setChannelGlobalMinMax(pixels_id, c, float(low), float(high), context)
        set_channel_names(conn, image_id, channels, context)
        if mpp:
            set_pixel_size(conn, image_id, mpp, context)
        set_rendering(conn, pixels_id, windows, colors, context)
    except BaseException:
        try:
            delete_objects(conn, {"Image": [image_id]}, context=context)
        except Exception as exc:  # the run's error is the one to report; the journal keeps the id
            log.error("Image:%s: deleting the half-written image failed: %s", image_id, exc)
        else:
            if on_deleted is not None:
                on_deleted(image_id)
        raise
    return image_id


def set_channel_names(conn, image_id: int, names: Sequence[str], context: dict) -> None:
    """Name the image's channels (their ``LogicalChannel``), as omero-py's ``setChannelNames`` does."""
    from omero.rtypes import rlong, rstring
    from omero.sys import ParametersI

    params = ParametersI()
    params.add("iid", rlong(int(image_id)))
    pixels = conn.getQueryService().findByQuery(Q_PIXELS_CHANNELS, params, context)
    channels = pixels.copyChannels()
    if len(channels) != len(names):
        raise OmeroError(f"Image:{image_id} has {len(channels)} channels, not {len(names)}")
    logical = []
    for channel, name in zip(channels, names):
        lc = channel.getLogicalChannel()
        lc.setName(rstring(str(name)))
        logical.append(lc)
    conn.getUpdateService().saveArray(logical, context)


def set_rendering(conn, pixels_id: int, windows: Sequence[tuple[float, float]],
                  colors: Sequence[tuple[int, int, int]], context: dict) -> None:
    """Save the image's default rendering settings: every channel active, with its window and colour.

    The engine is prepared as omero-py's ``ImageWrapper._prepareRE`` does: ``lookupPixels``, then the
    user's settings (``lookupRenderingDef``), created when there are none (``resetDefaultSettings(True)``,
    which takes each channel's range from ``setChannelGlobalMinMax``), then ``load``.  A window of
    ``start > end`` or wider than the pixel type would be replaced by the server with the type's full
    range (omero-renderer ``QuantumStrategy.setWindow``), so windows come from
    :func:`channel_windows`."""
    engine = conn.c.sf.createRenderingEngine()
    try:
        engine.lookupPixels(int(pixels_id), context)
        if not engine.lookupRenderingDef(int(pixels_id), context):
            engine.resetDefaultSettings(True, context)
            engine.lookupRenderingDef(int(pixels_id), context)
        engine.load(context)
        for c, ((start, end), (red, green, blue)) in enumerate(zip(windows, colors)):
            engine.setActive(c, True, context)
            engine.setChannelWindow(c, float(start), float(end), context)
            engine.setRGBA(c, int(red), int(green), int(blue), 255, context)
        engine.saveCurrentSettings(context)
    finally:
        engine.close()


def key_values(canvas, *, provenance: dict, source_image_id: int, run_id: str) -> list[tuple[str, str]]:
    """The key-value pairs of the predicted image: what made it, from what, and how to read its values."""
    task = provenance.get("task", {})
    pairs = [
        ("model", str(task.get("task", ""))),
        ("version", str(task.get("version", ""))),
        (SOURCE_IMAGE_KEY, f"Image:{int(source_image_id)}"),
        ("pixel type", np.dtype(canvas.dtype).name),
        ("rule", "value = offset + scale * stored"),
    ]
    quantisation = getattr(canvas, "quantisation", None)
    for c, name in enumerate(canvas.channels):
        pairs.append((f"channel {c} {name} scale", repr(float(canvas.scale[c]))))
        pairs.append((f"channel {c} {name} offset", repr(float(canvas.offset[c]))))
        if quantisation is not None:
            low, high = quantisation.value_range[c]
            pairs.append((f"channel {c} {name} value range",
                          f"{low:.6g} to {high:.6g} ({'measured' if quantisation.measured else 'the model’s'})"))
    if task.get("checksum") or task.get("sha256"):
        pairs.append(("checksum", str(task.get("checksum") or task.get("sha256"))))
    pairs += [
        ("parameters", json.dumps(task.get("parameters", {}), sort_keys=True, default=str)),
        ("run id", run_id),
        ("dlcore version", str(provenance.get("dlcore_version", ""))),
        ("created", str(provenance.get("created", ""))),
    ]
    return pairs


def predicted_image_links(image_id: int, canvas, *, run_key: str, run_id: str, provenance: dict,
                          source_image_id: int, dataset_ids: Sequence[int]) -> list:
    """Unsaved links that publish the predicted image: into each dataset, and its key-value pairs
    (namespace ``dlcore/<run key>``) onto it."""
    from dlcore.omero import annotations as ann
    from dlcore.omero.label_image import dataset_links

    pairs = key_values(canvas, provenance=provenance, source_image_id=source_image_id, run_id=run_id)
    return [*dataset_links(image_id, list(dataset_ids)), ann.image_link(image_id, ann.map_annotation(run_key, pairs))]


def earlier_predicted_images(conn, source_image_id: int, run_key: str, *, keep_run_id: str, context: dict) -> list[int]:
    """The predicted images earlier runs of ``run_key`` made from the source image (named by the caller's
    key-value pairs in the run's namespace on it, other than run ``keep_run_id``'s) that still exist and
    belong to the caller."""
    from dlcore.omero.journal import owned_existing

    found = [image for _, image in _earlier_pointers(conn, source_image_id, run_key, keep_run_id=keep_run_id,
                                                     context=context)]
    if not found:
        return []
    return owned_existing(conn, {"Image": list(dict.fromkeys(found))}, context=context).get("Image", [])


def _earlier_pointers(conn, source_image_id: int, run_key: str, *, keep_run_id: str,
                      context: dict) -> list[tuple[int, int]]:
    """(annotation id, image id) of the caller's key-value pairs in the run's namespace on the source image
    that name a predicted image, except run ``keep_run_id``'s."""
    from omero.model import MapAnnotationI

    from dlcore.omero import annotations as ann

    params = ann.query_params(iid=int(source_image_id), ns=ann.namespace(run_key), uid=int(conn.getUserId()))
    out = []
    for link in conn.getQueryService().findAllByQuery(ann.Q_RUN_LINKS, params, context):
        child = link.getChild()
        if not isinstance(child, MapAnnotationI):
            continue
        values = {nv.name: nv.value for nv in (child.getMapValue() or [])}
        named = values.get(PREDICTED_IMAGE_KEY, "")
        if values.get(ann.RUN_ID_KEY) != keep_run_id and named.startswith("Image:"):
            out.append((int(child.getId().getValue()), int(named.split(":")[1].split()[0])))
    return out


def create_predicted_image(conn, canvas, *, name: str, description: str, mpp: float | None,
                           dataset_ids: Sequence[int], source_image_id: int, provenance: dict, context: dict,
                           run_key: str | None = None, run_id: str | None = None) -> int:
    """Write ``canvas`` as a new image beside the source image and publish it; return its id.

    The new image (see :func:`write_predicted_image`) gets its key-value pairs (model, version, source
    image, pixel type, each channel's scale and offset) and goes into ``dataset_ids``; the source image
    gets key-value pairs naming it (``predicted image`` = ``Image:<id>``), all in one save.  Then the
    predicted image of an earlier run of the same model on the source image, and the source's pairs
    naming it, are deleted.  ``run_key`` (default: the provenance's task name) is the model;
    ``run_id`` tells this run's pairs from earlier ones (default: a new one).  Nothing half-made stays: a
    failure before the save deletes the new image.
    """
    from dlcore.omero import annotations as ann
    from dlcore.omero.deleting import delete_objects

    run_key = run_key or str(provenance.get("task", {}).get("task", "")) or "prediction"
    run_id = run_id or uuid.uuid4().hex[:12]
    image_id = write_predicted_image(conn, canvas, name=name, description=description, mpp=mpp, context=context)
    try:
        earlier = earlier_predicted_images(conn, source_image_id, run_key, keep_run_id=run_id, context=context)
        earlier_pairs = [a for a, _ in _earlier_pointers(conn, source_image_id, run_key, keep_run_id=run_id,
                                                          context=context)]
        source_pairs = [(PREDICTED_IMAGE_KEY, f"Image:{image_id}"), ("model", run_key), (ann.RUN_ID_KEY, run_id),
                        ("pixel type", np.dtype(canvas.dtype).name)]
        links = predicted_image_links(image_id, canvas, run_key=run_key, run_id=run_id, provenance=provenance,
                                      source_image_id=source_image_id, dataset_ids=dataset_ids)
        links.append(ann.image_link(source_image_id, ann.map_annotation(run_key, source_pairs)))
        conn.getUpdateService().saveAndReturnArray(links, context)
    except BaseException:
        try:
            delete_objects(conn, {"Image": [image_id]}, context=context)
        except Exception as exc:
            log.error("Image:%s: deleting the unpublished predicted image failed: %s", image_id, exc)
        raise
    targets = {"Image": earlier, "Annotation": earlier_pairs}
    if any(targets.values()):
        try:
            delete_objects(conn, targets, context=context)
        except Exception as exc:  # the new image is complete and published: report what is left over
            log.warning("Image:%s: deleting the earlier predicted image %s failed: %s", source_image_id, earlier, exc)
    return image_id
