"""What a real OMERO 5.6 server refuses, enforced by the double, and what the adapter does about it.

Each rule names the source it follows (omero-blitz Slice files, omero-py, omero-romio, ome-model).
"""
from __future__ import annotations

import numpy as np
import omero
import omero.clients  # noqa: F401  (defines omero.sys.ParametersI)
import pytest
from omero.rtypes import rint, rstring
from omero.sys import ParametersI

from dlcore.io.labels import LabelCanvas
from dlcore.omero.label_image import Q_PIXELS_TYPE, create_label_image, label_value
from dlcore.omero.tables import TableWriter, column_names, fit_utf8
from omero_double import Server


@pytest.fixture()
def lab():
    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    return server, server.connect(alice, group), {"omero.group": str(group)}


def _pixels_type(conn, value, context):
    params = ParametersI()
    params.add("value", rstring(value))
    return conn.getQueryService().findByQuery(Q_PIXELS_TYPE, params, context)


def test_create_image_takes_plain_ints_as_channel_list(lab):
    """IPixels.createImage's channelList is omero::sys::IntList (sequence<int>, omero-blitz IPixels.ice):
    Ice refuses rint before sending anything.  The double serves IPixels over real Ice, so this is Ice's
    own check, not a copy of it."""
    server, conn, context = lab
    pixels_service = conn.getPixelsService()
    assert isinstance(pixels_service, omero.api.IPixelsPrx)  # omero-py's proxy, real Ice marshalling
    with pytest.raises(ValueError, match="argument 2 in operation `setChannelGlobalMinMax'"):
        pixels_service.setChannelGlobalMinMax(1, 0.5, 0.0, 1.0, context)  # channelIndex is an int
    pixels_type = _pixels_type(conn, "uint16", context)
    with pytest.raises(ValueError, match="element 0 of sequence<int>"):
        conn.getPixelsService().createImage(64, 64, 1, 1, [rint(0)], pixels_type, "x", "", context)
    assert conn.getPixelsService().createImage(64, 64, 1, 1, [0], pixels_type, "x", "", context).getValue() > 0


def test_a_slide_sized_uint32_image_cannot_be_written_but_the_label_image_can(lab, tmp_path):
    """Above 3192 x 3192 the server writes a BfPyramidPixelBuffer, which holds 8- and 16-bit pixels only."""
    server, conn, context = lab
    pixels_type = _pixels_type(conn, "uint32", context)
    image_id = conn.getPixelsService().createImage(4000, 3300, 1, 1, [0], pixels_type, "big", "", context).getValue()
    store = conn.c.sf.createRawPixelsStore()
    with pytest.raises(omero.InternalException, match="8- and 16-bit"):
        store.setPixelsId(server.pixels_of(image_id), True, context)
    store.close()

    canvas = LabelCanvas(tmp_path / "labels.zarr", 4000, 3300)
    labels = np.zeros((3300, 4000), np.uint32)
    labels[100:110, 100:110] = 1
    labels[2000:2010, 3900:3910] = 70_000  # beyond uint16: wraps, stays distinct from background
    canvas.write(0, 0, labels)
    label_id = create_label_image(conn, canvas, name="big labels", description="dlcore label image", mpp=0.5,
                                  context=context)
    stored = server.pixels[server.pixels_of(label_id)][0][..., 0]
    assert stored.dtype == np.uint16 and stored[105, 105] == 1 and stored[2005, 3905] == 70_000 - 65_535
    assert server.channel_ranges[(server.pixels_of(label_id), 0)] == (0.0, float(70_000 - 65_535))
    assert not server.open_stores


def test_label_values_wrap_above_65535_and_keep_background():
    assert label_value([0, 1, 65_535, 65_536, 70_000, 131_071]).tolist() == [0, 1, 65_535, 1, 4_465, 1]


def test_table_strings_are_cut_by_utf8_bytes_and_column_names_are_pytables_safe(lab):
    """StringColumnI limits bytes, not characters, and raises ValidationException (omero-py
    tables/columns.py); PyTables refuses '/' in column names."""
    server, conn, context = lab
    assert fit_utf8("é" * 40, 64) == "é" * 32 and fit_utf8("ab€", 4) == "ab"
    assert column_names(["mean_CD3/CD8", "mean_CD3 CD8", "1st", "_v_x", "ok"]) == [
        "mean_CD3_CD8", "mean_CD3_CD8_2", "c1st", "c_v_x", "ok"]

    from omero.grid import StringColumn

    table = conn.c.sf.sharedResources().newTable(1, "t.h5", context)
    table.initialize([StringColumn("class", "", 8, [])])
    with pytest.raises(omero.ValidationException, match="byte"):
        table.addData([StringColumn("class", "", 8, ["éééééé"])])  # 6 characters, 12 bytes
    bad = conn.c.sf.sharedResources().newTable(1, "u.h5", context)
    with pytest.raises(omero.InternalException, match="PyTables"):
        bad.initialize([StringColumn("mean_CD3/CD8", "", 8, [])])

    from dlcore.objects import ObjectRecord

    writer = TableWriter(conn, "objects.h5", ["CD3/CD8", "DAPI"], context)
    record = ObjectRecord(id=1, centroid=(1.0, 1.0), bbox=(0, 0, 2, 2), area_px=4, area_um2=None, perimeter_px=8.0,
                          mean_intensity=(10.0, 20.0), polygon=((0, 0), (2, 0), (2, 2)), class_name="Zellkern-ä" * 10)
    writer.add(7, [record], [-1])
    file_id = writer.close()
    stored = server.tables[file_id]
    names = [name for _, name in stored["columns"]]
    assert "mean_CD3_CD8" in names and "label_value" in names
    assert len(stored["values"]["class"][0].encode()) <= 64


def test_like_wildcards_in_run_keys_match_literally():
    """An ``_`` in a model name is a LIKE wildcard: unescaped, a re-run of ``tiny_nuclei`` would delete
    the ROIs of ``tinyXnuclei``.  The double evaluates LIKE as PostgreSQL does, escape included."""
    from dlcore.omero.annotations import like_prefix
    from omero_double import like_regex

    assert like_regex("ab_d%").fullmatch("abXdef") and not like_regex("ab!_d%", escape="!").fullmatch("abXdef")
    pattern = like_regex(like_prefix("dlcore:tiny_nuclei:50%!"), escape="!")
    assert pattern.fullmatch("dlcore:tiny_nuclei:50%!run-1")
    assert not pattern.fullmatch("dlcore:tinyXnuclei:50%!run-1") and not pattern.fullmatch("dlcore:tiny_nuclei:500!x")


def test_rerun_deletes_only_its_own_model_rois_even_with_underscores(lab, tmp_path):
    from omero.model import ImageI, PolygonI, RoiI

    from dlcore.omero.annotations import find_earlier_run
    from dlcore.omero.rois import roi_marker

    server, conn, context = lab
    group = int(context["omero.group"])
    alice = next(iter(server.members[group]))
    image = server.add_image([np.zeros((64, 64, 3), np.uint8)], name="s", owner=alice, group=group)
    rois = []
    for key in ("tiny_nuclei", "tinyXnuclei"):
        roi = RoiI()
        roi.setImage(ImageI(image, False))
        roi.setDescription(rstring(roi_marker(key, "run-1")))
        roi.addShape(PolygonI())
        rois.append(roi)
    saved = conn.getUpdateService().saveAndReturnArray(rois, context)
    earlier = find_earlier_run(conn, image, "tiny_nuclei", keep_run_id="run-2", context=context)
    assert earlier.roi_ids == [saved[0].getId().getValue()]


def test_unclassified_rois_carry_no_text_label():
    from dlcore.objects import ObjectRecord
    from dlcore.omero.rois import object_roi

    plain = ObjectRecord(id=12, centroid=(1, 1), bbox=(0, 0, 2, 2), area_px=4, area_um2=None, perimeter_px=8.0,
                         mean_intensity=(1.0,), polygon=((0, 0), (2, 0), (2, 2)))
    assert object_roi(plain, 1, marker="m").copyShapes()[0].getTextValue() is None
    import dataclasses

    classified = dataclasses.replace(plain, class_name="tumour")
    assert object_roi(classified, 1, marker="m").copyShapes()[0].getTextValue().getValue() == "tumour"


def test_a_recent_import_without_its_pyramid_says_so(lab):
    from dlcore.errors import OmeroError
    from dlcore.omero.slide import OmeroSlide

    server, conn, context = lab
    group = int(context["omero.group"])
    alice = next(iter(server.members[group]))
    image = server.add_image([np.zeros((64, 64, 3), np.uint8)], name="fresh", owner=alice, group=group)
    server.pyramids_pending.add(server.pixels_of(image))
    with pytest.raises(OmeroError, match="still building this image's pyramid .*; try again later"):
        OmeroSlide(conn, conn.getObject("Image", image))


def _roi(conn, image, context, description="x"):
    from omero.model import ImageI, PolygonI, RoiI

    roi = RoiI()
    roi.setImage(ImageI(image, False))
    roi.setDescription(rstring(description))
    roi.addShape(PolygonI())
    return conn.getUpdateService().saveAndReturnObject(roi, context).getId().getValue()


def test_delete_waits_for_the_server_and_fails_loudly_on_timeout_or_error(lab):
    """Delete2 is asynchronous; closing its handle before it finished cancels it (omero-blitz HandleI)."""
    from dlcore.errors import OmeroError
    from dlcore.omero.deleting import delete_objects

    server, conn, context = lab
    group = int(context["omero.group"])
    alice = next(iter(server.members[group]))
    image = server.add_image([np.zeros((64, 64, 3), np.uint8)], name="s", owner=alice, group=group)
    first, second = _roi(conn, image, context), _roi(conn, image, context)

    server.delete_seconds = 0.3  # slower than one poll: the caller must wait
    delete_objects(conn, {"Roi": [first]}, context=context, poll_s=0.02)
    assert server.deleted == [{"Roi": [first]}] and server.get("Roi", first) is None

    server.delete_seconds = 5.0
    with pytest.raises(OmeroError, match="did not finish within 0 s, so it was cancelled and nothing was deleted"):
        delete_objects(conn, {"Roi": [second]}, context=context, timeout_s=0.2, poll_s=0.02)
    assert server.cancelled == [{"Roi": [second]}] and server.get("Roi", second) is not None
    assert not server.open_handles

    bob = server.add_user("bob", [group])
    theirs = _roi(server.connect(bob, group), image, context)
    server.delete_seconds = 0.0
    with pytest.raises(OmeroError, match="failed, nothing was deleted: graph-fail .*owned by another user"):
        delete_objects(conn, {"Roi": [second, theirs]}, context=context)
    assert server.get("Roi", second) is not None and server.get("Roi", theirs) is not None

    with pytest.raises(NotImplementedError, match="cancels an unfinished Delete2"):
        conn.deleteObjects("Roi", [second], wait=True)


def test_a_rerun_replaces_only_the_callers_own_results(lab, tmp_path):
    from dlcore.config import Config
    from dlcore.omero.workflows import run_on_objects
    from omero_double import demo_levels

    server, alice_conn, context = lab
    group = int(context["omero.group"])
    alice = next(iter(server.members[group]))
    bob = server.add_user("bob", [group])
    image = server.add_image(demo_levels(tmp_path, 512, 512), name="shared", owner=alice, group=group)
    bob_conn = server.connect(bob, group)
    config = Config(roi_cap=20)
    [first] = run_on_objects(alice_conn, "nuclei-classical", "Image", [image], {}, config=config)
    assert first.ok, first.message
    alice_rois = {r.getId().getValue() for r in server.rois_of(image)}
    [bobs] = run_on_objects(bob_conn, "nuclei-classical", "Image", [image], {}, config=config)
    assert bobs.ok, bobs.message
    assert alice_rois <= {r.getId().getValue() for r in server.rois_of(image)}  # alice's results stay
    [again] = run_on_objects(bob_conn, "nuclei-classical", "Image", [image], {}, config=config)
    assert again.ok and "NOT deleted" not in again.message
    owners = {server.owner_group(r)[0] for r in server.rois_of(image)}
    assert owners == {alice, bob} and len(server.rois_of(image)) == 2 * len(alice_rois)


def test_images_that_cannot_finish_before_the_session_ends_are_not_started(lab, tmp_path):
    """A script's session lives omero.scripts.timeout (InteractiveProcessorI); past it every call fails.
    The run measures its pace on the first image and does not start one it cannot finish."""
    from dlcore.config import Config
    from dlcore.omero.workflows import run_on_objects, summary_message
    from omero_double import demo_levels

    server, _, context = lab
    group = int(context["omero.group"])
    alice = next(iter(server.members[group]))
    dataset = server.add_dataset("d", owner=alice, group=group)
    small = server.add_image(demo_levels(tmp_path / "a", 512, 512), name="small", owner=alice, group=group,
                             dataset=dataset)
    big = server.add_image(demo_levels(tmp_path / "b", 5120, 5120), name="big", owner=alice, group=group,
                           dataset=dataset)
    server.session_ttl_ms = 3_600_000
    conn = server.connect(alice, group)
    conn.session_started_ms -= 3_600_000 - 92_000  # 92 s left: enough to start (90 s), not for 100x the pixels
    reports = run_on_objects(conn, "nuclei-classical", "Dataset", [dataset], {}, config=Config(roi_cap=10))
    assert reports[0].ok and reports[0].image_id == small
    assert reports[1].not_started == 1 and f"Image:{big}" in reports[1].message
    message = summary_message(reports)
    assert message.startswith("1 of 2 images analysed, 1 not started (time limit")
    assert "run the script again on: Image:%d" % big in message and "omero.scripts.timeout" in message
    assert server.rois_of(big) == []  # nothing was written for it

    conn.session_started_ms -= 92_000  # the session's time is up: the server refuses every call
    with pytest.raises(omero.SessionTimeoutException):
        conn.getUpdateService().saveObject(omero.model.TagAnnotationI(), context)


def test_the_double_is_served_over_real_ice_like_a_server(lab):
    """IQuery, IUpdate, the ServiceFactory and its stateful services go through omero-py's proxies and Ice:
    results are copies, closed services are gone, and a closed session's services fail."""
    import Ice
    from omero.model import TagAnnotationI

    server, conn, context = lab
    assert isinstance(conn.getUpdateService(), omero.api.IUpdatePrx)
    assert isinstance(conn.getQueryService(), omero.api.IQueryPrx)
    assert isinstance(conn.c.sf, omero.api.ServiceFactoryPrx)
    tag = TagAnnotationI()
    tag.setTextValue(rstring("t"))
    saved = conn.getUpdateService().saveAndReturnObject(tag, context)
    assert tag.getId() is None and saved.getId().getValue() > 0  # the server's copy has the id, not ours
    saved.setTextValue(rstring("changed here"))
    assert server.get("Annotation", saved.getId().getValue()).getTextValue().getValue() == "t"

    store = conn.c.sf.createRawPixelsStore()
    assert isinstance(store, omero.api.RawPixelsStorePrx)
    with pytest.raises(omero.ApiUsageException, match="setPixelsId"):
        store.getResolutionLevels()
    store.close()
    with pytest.raises(Ice.ObjectNotExistException):  # a closed stateful service no longer exists
        store.getResolutionLevels()
    with pytest.raises(ValueError):  # Slice says long: Ice refuses a string before sending
        conn.c.sf.createRawPixelsStore().setPixelsId("1", False)

    conn.close()
    with pytest.raises(Ice.ObjectNotExistException):
        conn.getQueryService().findByQuery(Q_PIXELS_TYPE, ParametersI().add("value", rstring("uint8")), context)


def test_a_table_reads_back_what_was_written_and_only_tables_open_as_tables(lab, tmp_path):
    """``SharedResources.openTable`` opens an existing OMERO.tables file the caller may read (omero-py
    ``tables.py`` TablesI.getTable); ``Table.read(cols, start, stop)`` returns those rows (0, 0: all; a
    column past the last: ApiUsageException, ``hdfstorageV2.py`` __sizecheck; rows past the end: refused by
    the double, clipped by the server); headers carry the columns' types, names and string sizes."""
    from omero.grid import DoubleColumn, ImageColumn, StringColumn
    from omero.model import OriginalFileI

    from dlcore.omero.tables import new_table, read_rows

    server, conn, context = lab
    table = new_table(conn, "qc.h5", context)
    file_id = table.getOriginalFile().getId().getValue()
    table.initialize([ImageColumn("Image", "", []), StringColumn("verdict", "", 4, []), DoubleColumn("x", "", [])])
    table.addData([ImageColumn("Image", "", [3, 4]), StringColumn("verdict", "", 4, ["pass", "warn"]),
                   DoubleColumn("x", "", [0.5, float("nan")])])
    table.close()
    rows = read_rows(conn, file_id, context)
    assert [r["Image"] for r in rows] == [3, 4] and [r["verdict"] for r in rows] == ["pass", "warn"]
    assert rows[0]["x"] == 0.5 and np.isnan(rows[1]["x"])
    opened = conn.c.sf.sharedResources().openTable(OriginalFileI(file_id, False), context)
    headers = opened.getHeaders()
    assert [(type(c).__name__, c.name) for c in headers] == [("ImageColumn", "Image"), ("StringColumn", "verdict"),
                                                             ("DoubleColumn", "x")]
    assert headers[1].size == 4 and opened.getNumberOfRows() == 2
    assert opened.read([1], 1, 2).columns[0].values == ["warn"]
    with pytest.raises(omero.ApiUsageException, match="Column overflow"):
        opened.read([3], 0, 2)
    with pytest.raises(omero.ApiUsageException, match="out of range"):
        opened.read([0], 0, 3)
    opened.close()
    (tmp_path / "notes.txt").write_text("not a table")
    plain = conn.createFileAnnfromLocalFile(str(tmp_path / "notes.txt"), mimetype="text/plain")
    plain_file = server.get("Annotation", plain.getId()).getFile().getId().getValue()
    with pytest.raises(omero.ApiUsageException, match="not an OMERO.tables file"):
        conn.c.sf.sharedResources().openTable(OriginalFileI(plain_file, False), context)
    private = server.add_group("private", "rw----")
    carol = server.add_user("carol", [private])
    theirs = new_table(server.connect(carol, private), "theirs.h5", {"omero.group": str(private)})
    with pytest.raises(omero.SecurityViolation, match="not readable"):
        conn.c.sf.sharedResources().openTable(theirs.getOriginalFile(), context)
