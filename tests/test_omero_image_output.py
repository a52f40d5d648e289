"""Predicted images (``image`` tasks: denoising, image translation) written into OMERO, against the double,
and the server's rules for writing new images that the double enforces (each refusal proven here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import omero
import omero.clients  # noqa: F401  (defines omero.sys.ParametersI)
import pytest
from omero.model import MapAnnotationI
from omero.rtypes import rstring

import omero_double
from dlcore.errors import OutputError, ParameterError
from dlcore.io.image_canvas import ImageCanvas
from dlcore.omero import annotations as ann
from dlcore.omero.image_output import (
    PREDICTED_IMAGE_KEY, channel_windows, create_predicted_image, predicted_description,
)
from dlcore.omero.label_image import Q_PIXELS_TYPE, create_image, pixels_id_of
from omero_double import Server

MODEL = "denoise-unet"
PROVENANCE = {"task": {"task": MODEL, "version": "1.2.0", "parameters": {"output_dtype": "uint16"}},
              "dlcore_version": "test", "created": "2026-12-03T10:00:00"}


@pytest.fixture
def lab():
    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    dataset = server.add_dataset("slides", owner=alice, group=group)
    source = server.add_image([np.zeros((64, 64, 3), np.uint8)], name="slide.svs", owner=alice, group=group,
                              dataset=dataset, channel_names=["R", "G", "B"])
    return server, server.connect(alice, group), {"group": group, "alice": alice, "dataset": dataset,
                                                  "source": source, "context": {"omero.group": str(group)}}


def _canvas(path, values: np.ndarray, channels, dtype: str, value_range=None) -> ImageCanvas:
    """A finished canvas holding ``values`` ``(C, Y, X)`` (one tile, no halo: no blending)."""
    c, h, w = values.shape
    canvas = ImageCanvas(path, w, h, channels, tile_size=max(w, h), halo=0)
    canvas.add(SimpleNamespace(window=(0, 0, w, h), row=0, col=0), values)
    canvas.finalise(dtype=dtype, value_range=value_range)
    return canvas


def _values(shape, seed=0) -> np.ndarray:
    """Smooth predicted values with a little noise, two channels of different ranges."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.sin(xx / 97.0) * np.cos(yy / 61.0)
    out = np.stack([base * (3.0 + i) + 0.5 * i for i in range(c)]) + rng.normal(0, 0.05, shape)
    return out.astype(np.float32)


def _create(conn, canvas, ids, **kwargs):
    kwargs = {"name": f"slide.svs [{MODEL} prediction]", "description": predicted_description(MODEL, ids["source"]),
              "mpp": 0.5, "dataset_ids": [ids["dataset"]], "source_image_id": ids["source"], "provenance": PROVENANCE,
              "context": ids["context"], **kwargs}
    return create_predicted_image(conn, canvas, **kwargs)


def _maps(server, image_id, ns=ann.namespace(MODEL)) -> list[dict]:
    return [{nv.name: nv.value for nv in a.getMapValue()} for a in server.annotations_of(image_id, MapAnnotationI)
            if a.getNs().getValue() == ns]


def _stored(server, image_id) -> np.ndarray:
    """The pixels the server holds, ``(C, Y, X)``."""
    return np.moveaxis(server.pixels[server.pixels_of(image_id)][0], -1, 0)


def test_a_prediction_becomes_an_image_beside_its_source(lab, tmp_path):
    server, conn, ids = lab
    values = _values((2, 1000, 3000))  # below 3192 x 3192: a ROMIO buffer, whole rows (174 per tile)
    canvas = _canvas(tmp_path / "c.zarr", values, ("denoised", "nuclei"), "uint16")
    image_id = _create(conn, canvas, ids)

    image = server.get("Image", image_id)
    assert image_id in server.images_in(ids["dataset"]) and server.owner_group(image)[1] == ids["group"]
    assert image.getName().getValue() == f"slide.svs [{MODEL} prediction]"
    pixels = server.get("Pixels", server.pixels_of(image_id))
    assert pixels.getPixelsType().getValue().getValue() == "uint16"
    assert pixels.getPhysicalSizeX().getValue() == pytest.approx(0.5)
    wrapper = conn.getObject("Image", image_id)
    assert wrapper.getChannelLabels() == ["denoised", "nuclei"]

    stored = _stored(server, image_id)
    assert stored.dtype == np.uint16 and np.array_equal(stored, np.asarray(canvas.levels[0]))
    kv = _maps(server, image_id)[0]  # the predicted image's own key-value pairs
    assert kv["model"] == MODEL and kv["version"] == "1.2.0" and kv["source image"] == f"Image:{ids['source']}"
    assert kv["pixel type"] == "uint16" and kv["rule"] == "value = offset + scale * stored"
    for c, name in enumerate(canvas.channels):
        scale, offset = float(kv[f"channel {c} {name} scale"]), float(kv[f"channel {c} {name} offset"])
        assert (scale, offset) == (canvas.scale[c], canvas.offset[c])
        assert np.abs(offset + scale * stored[c] - values[c]).max() <= scale / 2 + 1e-6  # the values come back
    [source_kv] = _maps(server, ids["source"])
    assert source_kv[PREDICTED_IMAGE_KEY] == f"Image:{image_id}"

    pid = server.pixels_of(image_id)
    for c in range(2):  # StatsInfo set (not displayed black), rendering saved as the owner's default
        assert server.channel_ranges[(pid, c)] == (float(stored[c].min()), float(stored[c].max()))
    rendering = server.rendering[(pid, ids["alice"])]
    assert [ch["window"] for ch in rendering["channels"]] == [canvas.stored_range(c) for c in range(2)]
    assert all(ch["active"] for ch in rendering["channels"])
    assert len({ch["rgba"] for ch in rendering["channels"]}) == 2  # a colour each
    assert not server.open_stores
    assert server.calls["RawPixelsStore.setTile"] == 2 * 6  # whole-row tiles of 174 rows, per channel


def test_a_slide_sized_prediction_is_written_tile_by_tile_as_a_pyramid(lab, tmp_path):
    server, conn, ids = lab
    values = _values((1, 3200, 3300))  # above 3192 x 3192: the server writes a pyramid, uint8/uint16 only
    canvas = _canvas(tmp_path / "c.zarr", values, ("denoised",), "uint8")
    image_id = _create(conn, canvas, ids)
    assert server.get("Pixels", server.pixels_of(image_id)).getPixelsType().getValue().getValue() == "uint8"
    assert np.array_equal(_stored(server, image_id), np.asarray(canvas.levels[0]))
    assert server.calls["RawPixelsStore.setTile"] == 13 * 13  # 256 x 256 tiles on the grid, edges smaller
    assert server.pyramid_writes[server.pixels_of(image_id)]["read_only"]  # saved: the writer is closed
    [channel] = server.rendering[(server.pixels_of(image_id), ids["alice"])]["channels"]
    assert channel["rgba"] == (255, 255, 255, 255) and channel["window"] == canvas.stored_range(0)


def test_a_float32_prediction_is_refused_before_anything_is_created(lab, tmp_path):
    server, conn, ids = lab
    canvas = _canvas(tmp_path / "c.zarr", _values((1, 40, 50)), ("denoised",), "float32")
    images = len(server.all("Image"))
    with pytest.raises(OutputError, match="output_dtype=uint16"):
        _create(conn, canvas, ids)
    assert len(server.all("Image")) == images and not server.calls["IPixels.createImage"]


def test_a_rerun_replaces_the_earlier_predicted_image_and_leaves_other_models_alone(lab, tmp_path):
    server, conn, ids = lab
    first = _create(conn, _canvas(tmp_path / "a.zarr", _values((1, 50, 60)), ("denoised",), "uint16"), ids)
    other = _create(conn, _canvas(tmp_path / "b.zarr", _values((1, 50, 60)), ("virtual stain",), "uint8"), ids,
                    provenance={"task": {"task": "translate"}})
    second = _create(conn, _canvas(tmp_path / "c.zarr", _values((1, 50, 60), seed=1), ("denoised",), "uint16"), ids)

    assert server.get("Image", first) is None and server.get("Image", second) is not None
    assert set(server.images_in(ids["dataset"])) == {ids["source"], other, second}
    assert [kv[PREDICTED_IMAGE_KEY] for kv in _maps(server, ids["source"])] == [f"Image:{second}"]
    assert [kv[PREDICTED_IMAGE_KEY] for kv in _maps(server, ids["source"], ann.namespace("translate"))] == [
        f"Image:{other}"]
    # the earlier image's own key-value pairs went with it (Delete2 deletes an image's orphaned map annotations)
    sources = [a for a in server.all("Annotation", MapAnnotationI)
               if {nv.name: nv.value for nv in a.getMapValue()}.get("source image")]
    assert len(sources) == 2


@pytest.mark.parametrize("where", ["setTile", "saveCurrentSettings", "link"])
def test_a_failure_midway_leaves_nothing_half_written(lab, tmp_path, monkeypatch, where):
    server, conn, ids = lab
    canvas = _canvas(tmp_path / "c.zarr", _values((2, 600, 3000)), ("denoised", "nuclei"), "uint16")
    before = {table: len(server.all(table)) for table in ("Image", "Pixels", "Annotation", "DatasetImageLink",
                                                          "ImageAnnotationLink", "LogicalChannel")}
    if where == "setTile":
        calls = {"n": 0}
        real = omero_double.RawPixelsStore.setTile

        def failing(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:  # channel 1, part way
                raise omero.InternalException(None, None, "disk full")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(omero_double.RawPixelsStore, "setTile", failing)
    elif where == "saveCurrentSettings":
        monkeypatch.setattr(omero_double.RenderingEngine, "saveCurrentSettings",
                            lambda self, ctx=None: (_ for _ in ()).throw(omero.InternalException(None, None, "x")))
    else:  # the dataset may not be linked to: the publishing save fails
        monkeypatch.setattr(omero_double.Server, "can_link", lambda self, user, obj: False)
    with pytest.raises(omero.ServerError):
        _create(conn, canvas, ids)
    after = {table: len(server.all(table)) for table in before}
    assert after == before and not server.open_stores
    assert not server.rendering and not server.cancelled


def test_the_display_window_of_a_flat_channel_is_one_level_wide(tmp_path):
    flat = _canvas(tmp_path / "c.zarr", np.full((1, 20, 30), 2.5, np.float32), ("flat",), "uint8")
    assert flat.stored_range(0) == (0.0, 0.0)  # a window of no width would be replaced by the full range
    [(start, end)] = channel_windows(flat)
    assert end - start == 1.0 and 0 <= start < end <= 255


# -- the server's rules the double enforces --------------------------------------------------------------
def _ptype(conn, value, context):
    params = omero.sys.ParametersI()
    params.add("value", rstring(value))
    return conn.getQueryService().findByQuery(Q_PIXELS_TYPE, params, context)


def _store(conn, server, image_id, context):
    store = conn.c.sf.createRawPixelsStore()
    store.setPixelsId(server.pixels_of(image_id), True, context)
    return store


def test_big_images_of_types_a_pyramid_cannot_hold_are_refused(lab):
    """Above 3192 x 3192 the server writes a BfPyramidPixelBuffer, JPEG-2000: uint8 and uint16 only (omero-romio
    PixelsService.requiresPixelsPyramid, ome-model-documentation omero-pyramid).  Big float/double images get no
    pyramid on the server (max_plane_float_override) and cannot be viewed: the double refuses them too."""
    server, conn, ids = lab
    context = ids["context"]
    for pixels_type in ("uint32", "int16", "float", "double"):
        image_id = create_image(conn, 3300, 3200, 1, pixels_type, name="big", description="", context=context)
        store = conn.c.sf.createRawPixelsStore()
        with pytest.raises(omero.InternalException, match="8- and 16-bit"):
            store.setPixelsId(server.pixels_of(image_id), True, context)
        store.close()
    for pixels_type in ("uint16", "uint8"):
        store = _store(conn, server, create_image(conn, 3300, 3200, 1, pixels_type, name="big", description="",
                                                  context=context), context)
        assert store.getTileSize() == [256, 256]
        store.close()
    small = create_image(conn, 300, 200, 1, "float", name="small", description="", context=context)
    store = _store(conn, server, small, context)  # below the limit any type is a ROMIO buffer
    assert store.getTileSize() == [300, 200]
    store.close()


def test_pixel_types_have_omero_names_and_a_channel_list_is_required(lab):
    server, conn, ids = lab
    context = ids["context"]
    assert _ptype(conn, "float32", context) is None  # OMERO calls it "float": numpy's names find nothing
    assert _ptype(conn, "float", context).getValue().getValue() == "float"
    with pytest.raises(omero.ValidationException, match="Channel list must be filled"):
        conn.getPixelsService().createImage(10, 10, 1, 1, [], _ptype(conn, "uint8", context), "x", "", context)
    with pytest.raises(omero.ValidationException, match="positive"):  # stricter: the server makes a useless image
        conn.getPixelsService().createImage(0, 10, 1, 1, [0], _ptype(conn, "uint8", context), "x", "", context)


def test_only_the_owner_renames_the_channels_of_a_new_image(lab):
    """LogicalChannels are the creator's: in a read-annotate group another member may not rename them."""
    from dlcore.omero.image_output import set_channel_names

    server, conn, ids = lab
    context = ids["context"]
    image_id = create_image(conn, 30, 20, 2, "uint8", name="x", description="", context=context)
    bob = server.add_user("bob", [ids["group"]])
    with pytest.raises(omero.SecurityViolation, match="owner"):
        set_channel_names(server.connect(bob, ids["group"]), image_id, ["a", "b"], context)
    with pytest.raises(omero.SecurityViolation, match="group"):
        set_channel_names(conn, image_id, ["a", "b"], {"omero.group": "-1"})
    set_channel_names(conn, image_id, ["a", "b"], context)
    assert conn.getObject("Image", image_id).getChannelLabels() == ["a", "b"]


def test_set_tile_checks_bounds_byte_count_and_the_romio_rows(lab):
    server, conn, ids = lab
    context = ids["context"]
    image_id = create_image(conn, 300, 200, 2, "uint16", name="small", description="", context=context)
    store = _store(conn, server, image_id, context)
    row = np.arange(300, dtype=">u2")
    with pytest.raises(omero.ApiUsageException, match="bytes"):
        store.setTile(row.tobytes()[:-2], 0, 0, 0, 0, 0, 300, 1, context)  # one pixel short
    with pytest.raises(omero.ApiUsageException, match="outside"):
        store.setTile(row.tobytes(), 0, 2, 0, 0, 0, 300, 1, context)  # channel 2 of 2
    with pytest.raises(omero.ApiUsageException, match="outside"):
        store.setTile(row.tobytes(), 0, 0, 0, 0, 200, 300, 1, context)  # below the last row
    with pytest.raises(omero.InternalException, match="full row"):
        store.setTile(row[:100].tobytes(), 0, 0, 0, 100, 0, 100, 1, context)  # ROMIO: whole rows at x = 0
    store.setTile(row.tobytes(), 0, 1, 0, 0, 7, 300, 1, context)
    store.setTile(row.astype("<u2").tobytes(), 0, 1, 0, 0, 8, 300, 1, context)  # little-endian bytes: wrong values
    store.save(context)
    store.close()
    stored = _stored(server, image_id)[1]
    assert np.array_equal(stored[7], np.arange(300)) and np.array_equal(stored[8], np.arange(300, dtype=np.uint16).byteswap())
    again = _store(conn, server, image_id, context)  # the ROMIO file exists: opened read-only
    with pytest.raises(omero.ApiUsageException, match="read-only"):
        again.setTile(row.tobytes(), 0, 0, 0, 0, 0, 300, 1, context)
    again.close()


def test_a_pyramid_is_written_on_its_grid_in_order_and_only_until_saved(lab):
    server, conn, ids = lab
    context = ids["context"]
    image_id = create_image(conn, 3300, 3200, 1, "uint8", name="big", description="", context=context)
    store = _store(conn, server, image_id, context)
    tile = bytes(256 * 256)
    with pytest.raises(omero.InternalException, match="grid"):
        store.setTile(tile, 0, 0, 0, 128, 0, 256, 256, context)  # off the grid
    with pytest.raises(omero.InternalException, match="grid"):
        store.setTile(bytes(512 * 512), 0, 0, 0, 0, 0, 512, 512, context)  # not the server's tile size
    store.setTile(tile, 0, 0, 0, 256, 0, 256, 256, context)
    with pytest.raises(omero.InternalException, match="sequentially"):
        store.setTile(tile, 0, 0, 0, 0, 0, 256, 256, context)  # before the tile already written
    store.setTile(bytes((3300 - 3072) * 256), 0, 0, 0, 3072, 0, 3300 - 3072, 256, context)  # the edge: narrower
    store.save(context)
    with pytest.raises(omero.ApiUsageException, match="read-only"):
        store.setTile(tile, 0, 0, 0, 0, 256, 256, 256, context)  # save() closed the pyramid's writer
    store.close()
    other = _store(conn, server, create_image(conn, 3300, 3200, 1, "uint8", name="big", description="",
                                              context=context), context)
    other.setTile(tile, 0, 0, 0, 0, 0, 256, 256, context)
    other.getTile(0, 0, 0, 0, 0, 16, 16)  # so does any read
    with pytest.raises(omero.ApiUsageException, match="read-only"):
        other.setTile(tile, 0, 0, 0, 256, 0, 256, 256, context)
    other.close()


def test_rendering_settings_follow_the_servers_rules(lab):
    """RenderingBean: lookupPixels, lookupRenderingDef / resetDefaultSettings, load, then set*; QuantumStrategy:
    a window with start > end becomes the type's full range, ends are clipped."""
    server, conn, ids = lab
    context = ids["context"]
    image_id = create_image(conn, 30, 20, 2, "uint8", name="x", description="", context=context)
    pid = pixels_id_of(conn, image_id, context)
    conn.getPixelsService().setChannelGlobalMinMax(pid, 1, 10.0, 90.0, context)
    with pytest.raises(omero.InternalException, match="IndexOutOfBounds"):
        conn.getPixelsService().setChannelGlobalMinMax(pid, 2, 0.0, 1.0, context)
    engine = conn.c.sf.createRenderingEngine()
    engine.lookupPixels(pid, context)
    assert engine.lookupRenderingDef(pid, context) is False
    with pytest.raises(omero.ApiUsageException, match="not ready"):
        engine.setChannelWindow(0, 1.0, 2.0, context)
    engine.resetDefaultSettings(True, context)
    assert [c["window"] for c in server.rendering[(pid, ids["alice"])]["channels"]] == [(0.0, 255.0), (10.0, 90.0)]
    assert engine.lookupRenderingDef(pid, context) is True
    engine.load(context)
    engine.setChannelWindow(0, 200.0, 20.0, context)  # start > end: the server takes the full range
    engine.setChannelWindow(1, -5.0, 300.0, context)  # clipped to 0-255
    with pytest.raises(omero.InternalException, match="ArrayIndexOutOfBounds"):
        engine.setChannelWindow(2, 0.0, 1.0, context)
    with pytest.raises(omero.ApiUsageException, match="0-255"):
        engine.setRGBA(0, 256, 0, 0, 255, context)
    with pytest.raises(ValueError):  # Ice: setChannelWindow takes doubles, a numpy float32 is not one
        engine.setChannelWindow(0, np.float32(1.0), 2.0, context)
    with pytest.raises(omero.SecurityViolation):
        engine.saveCurrentSettings({"omero.group": "-1"})
    engine.saveCurrentSettings(context)
    engine.close()
    assert [c["window"] for c in server.rendering[(pid, ids["alice"])]["channels"]] == [(0.0, 255.0), (0.0, 255.0)]


# -- Run Model on an image model ----------------------------------------------------------------------
@dataclass(frozen=True)
class SmoothingModel:
    """A stand-in image model: the window's grey value, smoothed, and its red channel."""

    name: str = MODEL
    kind: str = "image"
    mpp: float | None = None
    tile_size: int = 256
    halo: int = 16
    batch_size: int = 4
    class_names: tuple = ()
    output_channels: tuple = ("grey", "red")
    value_range: tuple | None = None
    output_dtype: str = "float32"

    def check(self, info) -> None:
        pass

    def prepare(self, samples):
        return self

    def predict(self, windows):
        import cv2

        out = []
        for window in windows:
            planes = [window.astype(np.float32).mean(axis=2) / 255.0, window[..., 0].astype(np.float32) / 255.0]
            out.append(np.stack([cv2.GaussianBlur(p, (0, 0), 1.5) for p in planes]).astype(np.float32))
        return out

    def provenance(self) -> dict:
        return {"task": self.name, "version": "0.1", "parameters": {"output_dtype": self.output_dtype}}


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory):
    return omero_double.demo_levels(tmp_path_factory.mktemp("slide"), width=768, height=512)


@pytest.fixture
def on_omero(demo_slide, monkeypatch, tmp_path):
    """A source image in a dataset, and ``run(**kwargs)``: Run Model with :class:`SmoothingModel`."""
    import dlcore.tasks
    import dlcore.workflows
    from dlcore.config import Config
    from dlcore.omero.workflows import run_on_objects

    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    dataset = server.add_dataset("slides", owner=alice, group=group)
    image = server.add_image(demo_slide, name="demo.ome.tif", owner=alice, group=group, dataset=dataset,
                             channel_names=["R", "G", "B"])
    conn = server.connect(alice, group)
    resolved = []

    def resolve(name, params=None, *, config=None):
        resolved.append(dict(params or {}))
        return SmoothingModel(**(params or {}))

    monkeypatch.setattr(dlcore.tasks, "resolve_task", resolve)
    options = dlcore.workflows.RunOptions
    monkeypatch.setattr(dlcore.workflows, "RunOptions", lambda **kw: options(**{**kw, "workers": 0, "checkpoint": False}))

    def run(data_type="Image", ids=None, params=None, **kwargs):
        return run_on_objects(conn, MODEL, data_type, ids or [image], params or {},
                              config=Config(work_dir=tmp_path), detect_tissue=False, **kwargs)

    return server, conn, {"image": image, "dataset": dataset, "alice": alice, "resolved": resolved}, run


def test_run_model_writes_the_predicted_image_in_uint16_by_default(on_omero):
    server, conn, ids, run = on_omero
    [report] = run()
    assert report.ok, report.message
    predicted = report.output_id("predicted image")
    assert predicted in server.images_in(ids["dataset"])
    assert set(report.outputs) >= {"predicted image", "key-value pairs", "overview", "provenance"}
    assert "ROIs" not in report.outputs and "table" not in report.outputs and "label image" not in report.outputs
    pixels = server.get("Pixels", server.pixels_of(predicted))
    assert pixels.getPixelsType().getValue().getValue() == "uint16"
    assert (pixels.getSizeX().getValue(), pixels.getSizeY().getValue(), pixels.getSizeC().getValue()) == (768, 512, 2)
    assert conn.getObject("Image", predicted).getChannelLabels() == ["grey", "red"]
    [kv] = _maps(server, ids["image"])
    assert kv[PREDICTED_IMAGE_KEY] == f"Image:{predicted}" and kv["pixel type"] == "uint16"
    own = _maps(server, predicted)[0]
    stored = _stored(server, predicted).astype(np.float64)
    grey = own["channel 0 grey offset"], own["channel 0 grey scale"]
    values = float(grey[0]) + float(grey[1]) * stored[0]
    assert 0.0 <= values.min() and values.max() <= 1.0  # the grey values, scaled back
    assert f"Image:{predicted}" in report.message and "value = offset + scale * stored" in report.message
    files = {server.get("OriginalFile", a.getFile().getId().getValue()).getName().getValue()
             for a in server.annotations_of(ids["image"], omero_double.FileAnnotationI)}
    assert files == {"overview.png", "provenance.json"}  # no table, and the prediction is not attached twice
    assert not server.rois_of(ids["image"]) and not server.open_stores


def test_run_model_rerun_replaces_and_uint8_is_allowed(on_omero):
    server, conn, ids, run = on_omero
    [first] = run()
    [second] = run(output_dtype="uint8")
    assert second.ok, second.message
    old, new = first.output_id("predicted image"), second.output_id("predicted image")
    assert server.get("Image", old) is None
    assert set(server.images_in(ids["dataset"])) == {ids["image"], new}
    assert server.get("Pixels", server.pixels_of(new)).getPixelsType().getValue().getValue() == "uint8"
    assert len(_maps(server, ids["image"])) == 1 and "1 Image" in second.outputs["replaced"]
    # a dataset selected again: the predicted image is not analysed as a slide
    [third] = run("Dataset", [ids["dataset"]], {"output_dtype": "uint8"})
    assert third.image_id == ids["image"]


def test_run_model_refuses_float32_and_unknown_types_before_any_work(on_omero):
    server, conn, ids, run = on_omero
    images = len(server.all("Image"))
    with pytest.raises(ParameterError, match="8- and 16-bit"):
        run(output_dtype="float32")
    with pytest.raises(ParameterError, match="8- and 16-bit"):
        run(params={"output_dtype": "float32"})
    with pytest.raises(ParameterError, match="uint16, uint8"):
        run(output_dtype="uint32")
    with pytest.raises(ParameterError, match="twice"):
        run(params={"output_dtype": "uint8"}, output_dtype="uint16")
    assert len(server.all("Image")) == images and not server.calls["Session.createRawPixelsStore"]


def test_run_model_failure_while_writing_the_predicted_image_leaves_nothing(on_omero, monkeypatch):
    server, conn, ids, run = on_omero
    before = {t: len(server.all(t)) for t in ("Image", "Annotation", "OriginalFile", "ImageAnnotationLink")}
    monkeypatch.setattr(omero_double.RenderingEngine, "load",
                        lambda self, ctx=None: (_ for _ in ()).throw(omero.InternalException(None, None, "no buffer")))
    [report] = run()
    assert not report.ok and "Nothing was written" in report.message
    assert {t: len(server.all(t)) for t in before} == before and not server.open_stores


def test_output_dtype_goes_into_the_tasks_parameters(on_omero):
    from dlcore.omero.workflows import task_for_omero

    server, conn, ids, run = on_omero
    assert task_for_omero(MODEL, {}).output_dtype == "uint16"
    assert task_for_omero(MODEL, {"output_dtype": "uint8"}).output_dtype == "uint8"
    assert dataclasses.replace(SmoothingModel(), output_dtype="uint8") == task_for_omero(MODEL, {}, output_dtype="uint8")
