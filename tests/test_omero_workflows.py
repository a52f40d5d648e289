"""Runs on OMERO images against the in-process double: what is written, replaced, refused, cleaned up."""
import io
import json

import numpy as np
import tifffile
import pytest
from omero.model import FileAnnotationI, MapAnnotationI, TagAnnotationI
from omero.rtypes import rstring

from dlcore.config import Config
from dlcore.errors import ModelError, OmeroError
from dlcore.omero import annotations as ann
from dlcore.omero.workflows import run_on_objects
from omero_double import Server, demo_levels

TASK = "nuclei-classical"


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory):
    return demo_levels(tmp_path_factory.mktemp("slide"))


@pytest.fixture
def omero(demo_slide):
    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    project = server.add_project("study", owner=alice, group=group)
    dataset = server.add_dataset("slides", owner=alice, group=group, project=project)
    image = server.add_image(demo_slide, name="demo.ome.tif", owner=alice, group=group, dataset=dataset,
                             channel_names=["R", "G", "B"])
    return server, server.connect(alice, group), {"group": group, "alice": alice, "project": project,
                                                  "dataset": dataset, "image": image}


def _run(conn, data_type="Image", ids=None, *, cap=200, task=TASK, **kwargs):
    return run_on_objects(conn, task, data_type, ids, {}, config=Config(roi_cap=cap), **kwargs)


def _files(server, image_id) -> dict:
    """File name -> (annotation, OriginalFile) of the files attached to the image."""
    out = {}
    for a in server.annotations_of(image_id, FileAnnotationI):
        ofile = server.get("OriginalFile", a.getFile().getId().getValue())
        out[ofile.getName().getValue()] = (a, ofile)
    return out


def _map_values(server, image_id):
    maps = [a for a in server.annotations_of(image_id, MapAnnotationI) if a.getNs().getValue() == ann.namespace(TASK)]
    assert len(maps) == 1
    return {nv.name: nv.value for nv in maps[0].getMapValue()}


def test_a_run_writes_rois_label_image_table_key_values_and_files(omero):
    server, conn, ids = omero
    [report] = _run(conn, "Image", [ids["image"]], cap=200)
    assert report.ok, report.message
    n = report.summary["objects"]
    assert n > 200  # the demo slide has a few hundred nuclei: the cap applies
    image = ids["image"]

    rois = server.rois_of(image)
    assert len(rois) == 200
    shape = rois[0].copyShapes()[0]
    xy = [tuple(map(float, p.split(","))) for p in shape.getPoints().getValue().split()]
    assert 3 <= len(xy) <= 64 and all(0 <= x <= 1536 and 0 <= y <= 1024 for x, y in xy)

    files = _files(server, image)
    tables = [f for a, f in files.values() if f.getMimetype().getValue() == "OMERO.tables"]
    assert len(tables) == 1
    table = server.tables[tables[0].getId().getValue()]
    values = table["values"]
    assert table["columns"][:2] == [("ImageColumn", "Image"), ("RoiColumn", "Roi")]
    assert len(values["id"]) == n and set(values["Image"]) == {image}
    roi_ids = {r.getId().getValue() for r in rois}
    assert {r for r in values["Roi"] if r != -1} == roi_ids and values["Roi"].count(-1) == n - 200
    assert min(values["area_px"]) >= 60  # the seeds' minimum size

    label_id = report.output_id("label image")
    assert label_id in server.images_in(ids["dataset"])
    labels = server.pixels[server.pixels_of(label_id)][0][..., 0]
    assert labels.shape == (1024, 1536) and labels.dtype == np.uint16  # what an OMERO pyramid can hold
    assert len(np.unique(labels)) - 1 == n  # every object is in the label image (fewer than 65,535: exact ids)
    assert server.channel_ranges[(server.pixels_of(label_id), 0)] == (0.0, float(n))  # not displayed black
    assert values["label_value"] == values["id"]
    exact = tifffile.imread(io.BytesIO(server.file_bytes[files["labels.ome.tif"][1].getId().getValue()]))
    assert exact.dtype == np.uint32 and np.array_equal(exact, labels)
    assert report.output_id("exact labels") == files["labels.ome.tif"][0].getId().getValue()
    label_image = server.get("Image", label_id)
    assert server.owner_group(label_image)[1] == ids["group"]
    assert server.get("Pixels", server.pixels_of(label_id)).getPhysicalSizeX().getValue() == pytest.approx(0.5)

    kv = _map_values(server, image)
    assert kv["task"] == TASK and kv["objects"] == str(n) and kv["label image"] == f"Image:{label_id}"
    assert json.loads(kv["parameters"])["sigma"] == 3.0 and kv["dlcore version"]
    assert "cap roi_cap=200" in kv["ROIs"] and float(kv["tissue area mm2"]) > 0

    assert {"objects.geojson", "objects.csv", "overview.png", "provenance.json"} <= set(files)
    csv_rows = server.file_bytes[files["objects.csv"][1].getId().getValue()].decode().splitlines()
    assert len(csv_rows) == n + 1
    assert server.file_bytes[files["overview.png"][1].getId().getValue()][:4] == b"\x89PNG"
    assert {a.getNs().getValue() for a, f in files.values()} == {ann.namespace(TASK)}
    assert "200 ROIs" in report.message and f"Image:{label_id}" in report.message
    assert not server.open_stores


def test_rerun_replaces_its_own_results_and_leaves_everything_else(omero):
    server, conn, ids = omero
    image = ids["image"]
    user_note = MapAnnotationI()
    user_note.setNs(rstring("openmicroscopy.org/omero/client/mapAnnotation"))
    other_model = MapAnnotationI()
    other_model.setNs(rstring(ann.namespace("other-model")))
    saved = conn.getUpdateService().saveAndReturnArray([ann.image_link(image, user_note), ann.image_link(image, other_model)],
                                                       {"omero.group": str(ids["group"])})
    user_note, other_model = (link.getChild() for link in saved)  # the server's copies carry the ids
    from omero.model import ImageI, PolygonI, RoiI
    hand_drawn = RoiI()
    hand_drawn.setImage(ImageI(image, False))
    hand_drawn.addShape(PolygonI())
    hand_drawn = conn.getUpdateService().saveAndReturnObject(hand_drawn, {"omero.group": str(ids["group"])})

    first = _run(conn, "Image", [image])[0]
    counts = (len(server.rois_of(image)), len(server.annotations_of(image)), len(server.images_in(ids["dataset"])))
    second = _run(conn, "Dataset", [ids["dataset"]])  # the dataset now holds the label image too: skipped
    assert len(second) == 1 and second[0].ok
    assert (len(server.rois_of(image)), len(server.annotations_of(image)), len(server.images_in(ids["dataset"]))) == counts
    assert server.get("Image", first.output_id("label image")) is None
    assert server.get("Roi", hand_drawn.getId().getValue()) is not None
    assert server.get("Annotation", user_note.getId().getValue()) is not None
    assert server.get("Annotation", other_model.getId().getValue()) is not None
    assert "replaced" in second[0].outputs


def test_classification_tags_are_shared_and_relinked_without_duplicates(omero, monkeypatch):
    server, conn, ids = omero
    import dlcore.workflows as engine

    real = engine._summary
    monkeypatch.setattr(engine, "_summary", lambda *a: {**real(*a), "tags": ["tumour"]})
    _run(conn, "Image", [ids["image"]])
    _run(conn, "Image", [ids["image"]])
    tags = server.annotations_of(ids["image"], TagAnnotationI)
    assert [t.getTextValue().getValue() for t in tags] == ["tumour"]
    assert len(server.all("Annotation", TagAnnotationI)) == 1


def test_failure_part_way_leaves_nothing(omero, monkeypatch):
    server, conn, ids = omero
    before = {k for k in server.objects}
    import omero_double

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full on the server")
    monkeypatch.setattr(omero_double.RawPixelsStore, "setTile", broken)  # the label image fails after ROIs+table
    [report] = _run(conn, "Image", [ids["image"]])
    assert not report.ok and "disk full" in report.message and "Nothing was written" in report.message
    assert set(server.objects) == before
    assert not server.open_stores


def test_read_only_group_is_refused_before_any_work(omero, demo_slide):
    server, conn, ids = omero
    group = server.add_group("readonly", "rwr---")
    owner = server.add_user("bob", [group])
    server.members[group].add(ids["alice"])
    image = server.add_image(demo_slide, name="bob's", owner=owner, group=group)
    before = set(server.objects)
    [report] = _run(conn, "Image", [image])
    assert not report.ok and "not allowed to add annotations" in report.message
    assert set(server.objects) == before and server.calls["RawPixelsStore.getTile"] == 0


def test_new_objects_go_into_the_image_group_not_the_session_group(omero, demo_slide):
    server, conn, ids = omero
    other = server.add_group("other", "rwra--")
    server.members[other].add(ids["alice"])
    image = server.add_image(demo_slide, name="elsewhere", owner=ids["alice"], group=other)
    [report] = _run(conn, "Image", [image])  # the session's group is "lab"
    assert report.ok, report.message
    assert {server.owner_group(r)[1] for r in server.rois_of(image)} == {other}
    assert {server.owner_group(a)[1] for a in server.annotations_of(image)} == {other}


def test_bad_input_writes_nothing(omero, demo_slide):
    server, conn, ids = omero
    before = set(server.objects)
    with pytest.raises(OmeroError, match="Image 999: not found.*Dataset or Project"):
        _run(conn, "Image", [ids["image"], 999])
    with pytest.raises(OmeroError, match=f"Dataset {ids['image'] + 100}: not found"):
        _run(conn, "Dataset", [ids["image"] + 100])
    with pytest.raises(ModelError, match="model called 'unet-nope'"):
        _run(conn, "Image", [ids["image"]], task="unet-nope")
    private = server.add_group("private", "rw----")
    carol = server.add_user("carol", [private])
    server.members[private].add(ids["alice"])
    hidden = server.add_image(demo_slide, name="carol's", owner=carol, group=private)
    with pytest.raises(OmeroError, match=f"Image {hidden}: not found, or you are not allowed to see it"):
        _run(conn, "Image", [hidden])
    blank = server.add_image([np.full((512, 512, 3), 255, np.uint8)], name="glass", owner=ids["alice"], group=ids["group"])
    before_blank = set(server.objects)
    [report] = _run(conn, "Image", [blank])
    assert not report.ok and "no tissue found" in report.message
    assert set(server.objects) == before_blank
    grey16 = server.add_image([np.zeros((256, 256, 1), np.uint16)], name="fluo", owner=ids["alice"], group=ids["group"])
    [report] = _run(conn, "Image", [grey16])
    assert not report.ok and "needs 8-bit RGB" in report.message
    results = ("Roi", "Shape", "Annotation", "OriginalFile", "ImageAnnotationLink", "DatasetImageLink")
    assert {k for k in server.objects if k[0] in results} == {k for k in before if k[0] in results}


def test_project_expands_to_its_images(omero):
    server, conn, ids = omero
    reports = _run(conn, "Project", [ids["project"]])
    assert [r.image_id for r in reports] == [ids["image"]] and reports[0].ok


def _table_values(server, image_id) -> dict:
    [table] = [f for a, f in _files(server, image_id).values() if f.getMimetype().getValue() == "OMERO.tables"]
    values = server.tables[table.getId().getValue()]["values"]
    return {name: column for name, column in values.items() if name not in ("Image", "Roi")}


def test_a_run_stopped_by_the_session_limit_continues_on_the_next_launch(omero, demo_slide, monkeypatch, tmp_path):
    """The script's session ends during an image: it stops at a tile boundary, writes nothing, says how to
    continue; the script run again continues from the checkpoint and leaves what an uninterrupted run leaves."""
    import time
    import types

    import dlcore.workflows as workflows
    from dlcore.omero.workflows import summary_message

    server, conn, ids = omero
    config = Config(roi_cap=200, work_dir=tmp_path / "scratch", checkpoint_every_s=0)
    params = {"tile_size": 256}  # 1536 x 1024: 24 tiles on tissue
    reference = server.add_image(demo_slide, name="same pixels", owner=ids["alice"], group=ids["group"],
                                 dataset=ids["dataset"], channel_names=["R", "G", "B"])
    [uninterrupted] = run_on_objects(conn, TASK, "Image", [reference], params, config=config)
    assert uninterrupted.ok, uninterrupted.message

    server.session_ttl_ms = 3_600_000  # a script's session: it ends an hour after it started
    looks = {"n": 0}

    def clock() -> float:  # the time the tiles look at: the session's end is passed after three tiles
        looks["n"] += 1
        return time.time() + (7200 if looks["n"] > 3 else 0)

    monkeypatch.setattr(workflows, "time", types.SimpleNamespace(time=clock, perf_counter=time.perf_counter))
    image = ids["image"]
    [stopped] = run_on_objects(server.connect(ids["alice"], ids["group"]), TASK, "Image", [image], params, config=config)
    assert stopped.stopped and not stopped.ok
    assert stopped.message.startswith(f"⏸ Image:{ids['image']} demo.ome.tif: stopped at a tile boundary after 3 of 24 tiles")
    assert "Nothing was written onto the image yet" in stopped.message and "continues from it" in stopped.message
    assert summary_message([stopped]).startswith("0 of 1 image analysed, 1 stopped at the time limit")
    assert server.rois_of(image) == [] and server.annotations_of(image) == []

    monkeypatch.undo()
    [resumed] = run_on_objects(server.connect(ids["alice"], ids["group"]), TASK, "Image", [image], params, config=config)
    assert resumed.ok, resumed.message
    assert resumed.summary["resumed"] == {"tiles_done_before": 3, "tiles": 24}
    assert resumed.summary["objects"] == uninterrupted.summary["objects"]
    assert _table_values(server, image) == _table_values(server, reference)
    assert len(server.rois_of(image)) == 200 and len(server.annotations_of(image)) == len(server.annotations_of(reference))
    outlines = [sorted(r.copyShapes()[0].getPoints().getValue() for r in server.rois_of(i)) for i in (image, reference)]
    assert outlines[0] == outlines[1]
    label, reference_label = (server.pixels[server.pixels_of(r.output_id("label image"))][0] for r in (resumed, uninterrupted))
    np.testing.assert_array_equal(label, reference_label)
    assert not any((tmp_path / "scratch" / "dlcore-checkpoints").iterdir())  # the finished run removed its checkpoint


class _Killed(BaseException):
    """The process dies here: none of dlcore's cleanup runs after it."""


@pytest.mark.parametrize("where", ["tiles", "upload"])
def test_a_killed_run_leaves_nothing_once_the_next_run_is_done(omero, demo_slide, monkeypatch, tmp_path, where):
    """A kill (emulated: the run stops dead, its sink's cleanup never runs, the kernel releases its locks)
    while ROIs stream, or after the label image and the files exist but before anything is linked; the run
    launched again continues and, once linked, deletes what the killed one left: the server then holds
    exactly what two uninterrupted runs (on two images) hold."""
    from collections import Counter

    import dlcore.omero.sink as sink_module

    server, conn, ids = omero
    config = Config(roi_cap=200, work_dir=tmp_path / "scratch", checkpoint_every_s=0)
    params = {"tile_size": 256}
    monkeypatch.setattr(sink_module, "ROI_BATCH", 40)  # ROIs are saved while tiles stream
    reference = server.add_image(demo_slide, name="same pixels", owner=ids["alice"], group=ids["group"],
                                 dataset=ids["dataset"], channel_names=["R", "G", "B"])

    def kinds() -> Counter:
        return Counter(table for table, _ in server.objects)

    before = kinds()
    [uninterrupted] = run_on_objects(conn, TASK, "Image", [reference], params, config=config)
    one_run = kinds() - before

    with monkeypatch.context() as dying:
        dying.setattr(sink_module.OmeroSink, "abort", lambda self: self._journal.release())
        progress = None
        if where == "tiles":
            def at_tile_12(stage, done, total):
                if stage == "tiles" and done == 12:
                    raise _Killed()
            progress = lambda label: at_tile_12  # noqa: E731
        else:
            real_upload = sink_module.OmeroSink._upload

            def upload_then_die(self, files):
                real_upload(self, files)
                raise _Killed()
            dying.setattr(sink_module.OmeroSink, "_upload", upload_then_die)
        with pytest.raises(_Killed):
            run_on_objects(conn, TASK, "Image", [ids["image"]], params, config=config, progress=progress)
    left = kinds() - before - one_run
    assert left["Roi"] > 0  # the killed run's ROIs are on the image
    if where == "upload":
        assert left["Image"] == 1 and left["Annotation"] > 0  # an orphaned label image, unlinked files

    [again] = run_on_objects(conn, TASK, "Image", [ids["image"]], params, config=config)
    assert again.ok, again.message
    assert again.summary["resumed"]["tiles_done_before"] == (12 if where == "tiles" else 24)
    assert kinds() - before == one_run + one_run  # nothing of the killed run is left, nothing is missing
    assert _table_values(server, ids["image"]) == _table_values(server, reference)
    assert not list((tmp_path / "scratch" / "dlcore-omero-journal").glob("*.json"))


def test_a_journal_is_only_ever_taken_up_by_its_own_user(tmp_path):
    """Another user's run on the same image may not delete a dead run's objects, so it must not see (and
    drop) that run's journal either."""
    from dlcore.omero.journal import CreationJournal

    def journal(user: int, run: str) -> CreationJournal:
        return CreationJournal(tmp_path, server="db", user_id=user, image_id=7, run_key=TASK, run_id=run)

    dead = journal(1, "dead").open()
    dead.record({"Roi": [11, 12], "Image": [13]})
    dead.release()  # its process died
    assert journal(2, "other").open().leftovers() == {}
    assert journal(1, "next").open().leftovers() == {dead.path: {"Roi": [11, 12], "Annotation": [], "OriginalFile": [],
                                                                 "Image": [13]}}
