"""Slide QC in OMERO against the in-process double: QC_Slides and Run_Model's QC parameter.

The slide is a crop of the painted demo (tests/painted_artefacts.py: real IHC tissue at 0.5 µm/px with
a blurred region, a pale region and a pen stroke in the crop), beside the same crop unpainted.
"""
import io
import json

import numpy as np
import pytest
import tifffile
from omero.model import FileAnnotationI, MapAnnotationI, TagAnnotationI
from omero.rtypes import rstring

import dlcore
from dlcore.config import Config
from dlcore.omero import annotations as ann
from dlcore.omero.qc import qc_on_objects, qc_options
from dlcore.qc.run import QC_NAMESPACE, QCOptions
from omero_double import Server
from painted_artefacts import painted_demo
from test_omero_scripts import _exec_script

CROP = (slice(0, 2048), slice(0, 3072))  # holds the blur, the pale region and the first pen stroke
FLAGGED = {"pale", "blur", "pen"}
CLEAN_CHECKS = {"fold", "bubble", "coverslip_edge"}


def _pyramid(level0: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """Level 0 and its 2x means, as a scanner's pyramid."""
    out = [np.ascontiguousarray(level0)]
    for _ in range(levels - 1):
        a = out[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        out.append(a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def slides():
    clean, painted, _ = painted_demo()
    return {"painted": _pyramid(painted[CROP]), "clean": _pyramid(clean[CROP])}


@pytest.fixture
def omero(slides, tmp_path):
    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    dataset = server.add_dataset("slides", owner=alice, group=group)
    painted = server.add_image(slides["painted"], name="painted.svs", owner=alice, group=group, dataset=dataset)
    clean = server.add_image(slides["clean"], name="clean.svs", owner=alice, group=group, dataset=dataset)
    ids = {"group": group, "alice": alice, "dataset": dataset, "painted": painted, "clean": clean}
    return server, server.connect(alice, group), ids, Config(work_dir=tmp_path / "scratch")


def _qc(server, image_id) -> dict:
    """The QC annotations on an image: the key-values (one map only), files by name, tag texts."""
    anns = [a for a in server.annotations_of(image_id)
            if a.getNs() is not None and a.getNs().getValue() == QC_NAMESPACE]
    maps = [a for a in anns if isinstance(a, MapAnnotationI)]
    files = {}
    for a in anns:
        if isinstance(a, FileAnnotationI):
            ofile = server.get("OriginalFile", a.getFile().getId().getValue())
            files[ofile.getName().getValue()] = (a, ofile, server.file_bytes[ofile.getId().getValue()])
    tags = [a.getTextValue().getValue() for a in anns if isinstance(a, TagAnnotationI)]
    return {"maps": maps, "kv": {nv.name: nv.value for nv in maps[0].getMapValue()} if maps else {},
            "files": files, "file_annotations": [a for a in anns if isinstance(a, FileAnnotationI)], "tags": tags}


def _dataset_tables(server, dataset_id) -> list[dict]:
    """The QC tables on a dataset: annotation, OriginalFile and the table's record."""
    out = []
    for a in server.dataset_annotations(dataset_id, FileAnnotationI):
        if a.getNs().getValue() == QC_NAMESPACE:
            ofile = server.get("OriginalFile", a.getFile().getId().getValue())
            out.append({"annotation": a, "file": ofile, "table": server.tables[ofile.getId().getValue()]})
    return out


def _percent(value: str) -> float:
    """``"warn: 9.16 % of tissue, 0.067 mm²"`` -> 9.16."""
    return float(value.split(": ", 1)[1].split(" %")[0])


def test_qc_slides_writes_verdicts_key_values_tags_files_and_the_dataset_table(omero, monkeypatch, capsys):
    server, conn, ids, config = omero
    monkeypatch.setattr("dlcore.config.load_config", lambda *a, **k: config)
    fake = _exec_script("QC_Slides.py", {"Data_Type": "Dataset", "IDs": [ids["dataset"]]}, conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    painted = _qc(server, ids["painted"])
    report = json.loads(painted["files"]["qc.json"][2])  # the engine's figures, for comparison
    verdict, flags = report["verdict"], report["flags"]
    assert verdict in ("warn", "fail") and all(flags[name] != "pass" for name in FLAGGED), flags
    assert all(flags[name] == "pass" for name in CLEAN_CHECKS), flags
    assert message.startswith(f"2 of 2 images checked: 1 pass, {int(verdict == 'warn')} warn, "
                              f"{int(verdict == 'fail')} fail"), message

    kv = painted["kv"]
    assert len(painted["maps"]) == 1 and kv["verdict"] == verdict
    for name in FLAGGED | CLEAN_CHECKS:
        assert kv[name].startswith(f"{flags[name]}: "), (name, kv[name])
        assert _percent(kv[name]) == pytest.approx(100 * report["fractions_of_tissue"][name], abs=0.006)
    assert all(_percent(kv[name]) > 1 for name in FLAGGED)
    assert kv["stain"].startswith("pass: in range (median tissue OD")
    assert float(kv["median sharpness"]) == pytest.approx(report["focus"]["median_sharpness"], rel=1e-3)
    assert kv["dlcore version"] == dlcore.__version__ and kv[ann.RUN_ID_KEY]
    assert json.loads(kv["options"]) == QCOptions().as_dict()
    assert f"Image:{ids['painted']}" in kv["input"]
    assert sorted(painted["tags"]) == sorted([f"QC {verdict}", *(f"QC: {n}" for n, f in flags.items() if f != "pass")])
    assert {f"QC: {name}" for name in FLAGGED} <= set(painted["tags"])

    files = painted["files"]
    assert {name: f.getMimetype().getValue() for name, (_, f, _) in files.items()} == {
        "qc.json": "application/json", "qc_mask.ome.tif": "image/tiff", "qc_overview.png": "image/png"}
    assert files["qc_overview.png"][2][:4] == b"\x89PNG"
    mask = tifffile.imread(io.BytesIO(files["qc_mask.ome.tif"][2]))
    assert mask.dtype == np.uint8 and list(mask.shape) == report["mask"]["shape"]
    assert {2, 3, 7} <= set(np.unique(mask).tolist()) <= set(range(8))  # pale, blur, pen
    assert {server.owner_group(a)[1] for a in server.annotations_of(ids["painted"])} == {ids["group"]}

    clean = _qc(server, ids["clean"])
    assert clean["kv"]["verdict"] == "pass" and clean["tags"] == ["QC pass"] and len(clean["files"]) == 3
    assert all(clean["kv"][name].startswith("pass: ") for name in FLAGGED | CLEAN_CHECKS)

    [table] = _dataset_tables(server, ids["dataset"])
    assert table["file"].getName().getValue() == "dlcore QC.h5"
    assert table["file"].getMimetype().getValue() == "OMERO.tables"
    columns, values = table["table"]["columns"], table["table"]["values"]
    assert columns[:3] == [("ImageColumn", "Image"), ("StringColumn", "slide"), ("StringColumn", "verdict")]
    assert ("DoubleColumn", "pen_fraction") in columns and ("StringColumn", "pen_flag") in columns
    assert values["Image"] == [ids["painted"], ids["clean"]]
    assert values["slide"] == ["painted.svs", "clean.svs"] and values["verdict"] == [verdict, "pass"]
    for name in FLAGGED | CLEAN_CHECKS:
        assert values[f"{name}_fraction"][0] == pytest.approx(report["fractions_of_tissue"][name])
        assert values[f"{name}_flag"] == [flags[name], "pass"]
    assert values["median_sharpness"][0] == pytest.approx(report["focus"]["median_sharpness"])
    assert values["tissue_mm2"][0] == pytest.approx(report["areas_mm2"]["tissue_total"])

    lines = message.splitlines()
    painted_line = next(line for line in lines
                        if line.startswith(f"✓ Image:{ids['painted']} painted.svs: QC {verdict}: "))
    for name in FLAGGED:  # the problems, named with their share of the tissue
        assert f"{name} {100 * report['fractions_of_tissue'][name]:.1f} % of tissue ({flags[name]})" in painted_line
    assert f"✓ Image:{ids['clean']} clean.svs: QC pass: no artefact found" in lines
    table_id = table["annotation"].getId().getValue()
    assert f"Dataset:{ids['dataset']} slides: table FileAnnotation:{table_id}, 2 rows" in message
    assert fake.outputs["Overview"].getValue().getId().getValue() == files["qc_overview.png"][0].getId().getValue()
    out = capsys.readouterr().out
    assert f"[1/2] Image:{ids['painted']} focus: " in out and f"[2/2] Image:{ids['clean']} focus: " in out  # progress
    assert message in out and not fake.session_open and not server.open_stores


def test_a_second_qc_replaces_the_first_and_leaves_everything_else(omero):
    server, conn, ids, config = omero
    first = qc_on_objects(conn, "Dataset", [ids["dataset"]], config=config)
    assert [r.ok for r in first.reports] == [True, True]
    before = _qc(server, ids["painted"])
    user_note = MapAnnotationI()
    user_note.setNs(rstring("openmicroscopy.org/omero/client/mapAnnotation"))
    [saved] = conn.getUpdateService().saveAndReturnArray([ann.image_link(ids["painted"], user_note)],
                                                         {"omero.group": str(ids["group"])})
    [first_table] = _dataset_tables(server, ids["dataset"])

    second = qc_on_objects(conn, "Dataset", [ids["dataset"]], config=config)
    assert [r.ok for r in second.reports] == [True, True]
    after = _qc(server, ids["painted"])
    assert len(after["maps"]) == 1 and len(after["file_annotations"]) == 3 and len(after["files"]) == 3
    assert sorted(after["tags"]) == sorted(before["tags"])  # each tag linked once
    assert len(server.all("Annotation", TagAnnotationI)) == len(before["tags"]) + 1  # and "QC pass": shared
    gone = [before["maps"][0], *before["file_annotations"]]
    assert all(server.get("Annotation", a.getId().getValue()) is None for a in gone)
    assert all(server.get("OriginalFile", f.getId().getValue()) is None for _, f, _ in before["files"].values())
    assert server.get("Annotation", saved.getChild().getId().getValue()) is not None  # the user's own
    assert "replaced the earlier QC: 4 Annotation" in second.reports[0].message
    assert len(_qc(server, ids["clean"])["maps"]) == 1 and len(_qc(server, ids["clean"])["files"]) == 3

    [table] = _dataset_tables(server, ids["dataset"])
    assert server.get("OriginalFile", first_table["file"].getId().getValue()) is None
    assert len([f for f in server.all("OriginalFile") if f.getName().getValue() == "dlcore QC.h5"]) == 1
    assert table["table"]["values"]["Image"] == [ids["painted"], ids["clean"]]

    clean_row = {k: v[1] for k, v in table["table"]["values"].items()}
    third = qc_on_objects(conn, "Image", [ids["painted"]], config=config)  # one image of the dataset
    assert third.reports[0].ok
    [table] = _dataset_tables(server, ids["dataset"])
    values = table["table"]["values"]
    assert values["Image"] == [ids["clean"], ids["painted"]]  # the other image's row is kept, none twice
    assert {k: v[0] for k, v in values.items()} == clean_row
    assert values["verdict"] == ["pass", before["kv"]["verdict"]]
    assert "2 rows (one per image) (replaces the earlier one)" in third.message()
    assert not list((config.work_dir / "dlcore-omero-journal").glob("*.json"))


def test_an_image_the_user_may_not_annotate_is_refused_with_nothing_written(omero, slides):
    server, conn, ids, config = omero
    group = server.add_group("readonly", "rwr---")
    bob = server.add_user("bob", [group])
    server.members[group].add(ids["alice"])
    dataset = server.add_dataset("bob's", owner=bob, group=group)
    image = server.add_image(slides["painted"], name="bob's slide", owner=bob, group=group, dataset=dataset)
    before = set(server.objects)
    batch = qc_on_objects(conn, "Dataset", [dataset], config=config)
    [report] = batch.reports
    assert not report.ok and f"Image:{image}" in report.message
    assert "not allowed to add annotations" in report.message and "Nothing was written" in report.message
    assert batch.message().startswith("0 of 1 image checked: 0 pass, 0 warn, 0 fail; 1 could not be checked")
    assert set(server.objects) == before and server.calls["RawPixelsStore.getTile"] == 0


def test_a_failure_before_the_link_leaves_nothing_and_the_others_go_on(omero, monkeypatch):
    import omero_double

    server, conn, ids, config = omero
    before = set(server.objects)
    real = omero_double.UpdateService.saveAndReturnArray
    calls = {"n": 0}

    def fails_first(self, objs, ctx=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database is down")
        return real(self, objs, ctx)
    monkeypatch.setattr(omero_double.UpdateService, "saveAndReturnArray", fails_first)
    batch = qc_on_objects(conn, "Image", [ids["painted"], ids["clean"]], config=config)
    failed, done = batch.reports
    assert not failed.ok and "database is down" in failed.message and "Nothing was written" in failed.message
    assert done.ok and not server.annotations_of(ids["painted"]) and len(_qc(server, ids["clean"])["files"]) == 3
    assert {key for key in before if key[0] == "Annotation"} < {key for key in server.objects if key[0] == "Annotation"}
    assert [a for a in server.all("Annotation", FileAnnotationI)  # no unlinked file is left
            if all(link.getChild().getId().getValue() != a.getId().getValue()
                   for table in ("ImageAnnotationLink", "DatasetAnnotationLink") for link in server.all(table))] == []
    [table] = _dataset_tables(server, ids["dataset"])
    assert table["table"]["values"]["Image"] == [ids["clean"]]


def test_a_table_that_cannot_be_written_is_deleted_and_the_images_keep_their_qc(omero, monkeypatch):
    import omero_double

    server, conn, ids, config = omero

    def broken(self, cols):
        raise RuntimeError("tables service out of disk")
    monkeypatch.setattr(omero_double.Table, "addData", broken)
    batch = qc_on_objects(conn, "Dataset", [ids["dataset"]], config=config)
    assert all(r.ok for r in batch.reports)
    assert f"✗ Dataset:{ids['dataset']} slides: the QC table could not be written" in batch.message()
    assert _dataset_tables(server, ids["dataset"]) == [] and server.tables == {}
    assert [f.getName().getValue() for f in server.all("OriginalFile")
            if f.getName().getValue() == "dlcore QC.h5"] == []
    assert len(_qc(server, ids["painted"])["files"]) == 3


def test_qc_options_come_from_the_script_inputs_and_bad_ones_write_nothing(omero, monkeypatch):
    assert qc_options({}) == QCOptions()
    assert qc_options({"Focus_Pixel_Size_um": 0.25, "Blur_Threshold": 0.03}, threads=4) == QCOptions(
        focus_mpp=0.25, blur_threshold=0.03, threads=4)
    server, conn, ids, config = omero
    before = set(server.objects)
    fake = _exec_script("QC_Slides.py", {"Data_Type": "Image", "IDs": [ids["painted"]], "Blur_Threshold": 12.0},
                        conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("Nothing was written: blur_threshold=12.0")
    fake = _exec_script("QC_Slides.py", {"Data_Type": "Image", "IDs": [424242]}, conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("Nothing was written: Image 424242: not found")
    assert set(server.objects) == before


def test_run_model_with_qc_exclude_records_the_qc_block_tags_and_files(omero, monkeypatch):
    server, conn, ids, config = omero
    monkeypatch.setattr("dlcore.config.load_config", lambda *a, **k: config)
    fake = _exec_script("Run_Model.py", {"Data_Type": "Image", "IDs": [ids["painted"]], "Model": "nuclei-classical",
                                         "QC": "exclude", "Max_ROIs": 20}, conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("1 of 1 image analysed"), message
    assert "QC (exclude): " in message and "left out" in message

    run_ns = ann.namespace("nuclei-classical")
    anns = server.annotations_of(ids["painted"])
    [run_map] = [a for a in anns if isinstance(a, MapAnnotationI) and a.getNs().getValue() == run_ns]
    kv = {nv.name: nv.value for nv in run_map.getMapValue()}
    [qc_json] = [a for a in anns if isinstance(a, FileAnnotationI)
                 and server.get("OriginalFile", a.getFile().getId().getValue()).getName().getValue() == "qc.json"]
    report = json.loads(server.file_bytes[qc_json.getFile().getId().getValue()])
    verdict, flags = report["verdict"], report["flags"]
    assert verdict in ("warn", "fail") and kv["QC verdict"] == verdict and kv["QC mode"].startswith("exclude")
    assert f"QC (exclude): {verdict}: " in message
    for name in FLAGGED | CLEAN_CHECKS:
        assert kv[f"QC {name}"].startswith(f"{flags[name]}: ")
        assert _percent(kv[f"QC {name}"]) == pytest.approx(100 * report["fractions_of_tissue"][name], abs=0.006)
    assert all(flags[name] != "pass" for name in FLAGGED) and all(flags[name] == "pass" for name in CLEAN_CHECKS)
    excluded = float(kv["QC excluded from the analysis"].split(" %")[0])
    assert excluded == pytest.approx(sum(_percent(kv[f"QC {n}"]) for n in FLAGGED), abs=0.02) and excluded > 10

    files = {}
    for a in anns:
        if isinstance(a, FileAnnotationI) and a.getNs().getValue() == run_ns:
            ofile = server.get("OriginalFile", a.getFile().getId().getValue())
            files[ofile.getName().getValue()] = ofile.getMimetype().getValue()
    assert {name: files.get(name) for name in ("qc.json", "qc_mask.ome.tif", "qc_overview.png")} == {
        "qc.json": "application/json", "qc_mask.ome.tif": "image/tiff", "qc_overview.png": "image/png"}
    tags = sorted(a.getTextValue().getValue() for a in anns if isinstance(a, TagAnnotationI))
    assert tags == sorted([f"QC {verdict}", *(f"QC: {n}" for n, f in flags.items() if f != "pass")])
    assert all(a.getNs().getValue() == run_ns for a in anns)  # nothing in QC_Slides' namespace


def test_an_earlier_table_that_cannot_be_read_is_kept(omero, monkeypatch):
    """Its rows would be lost: the new table holds the images checked now and the earlier one stays."""
    server, conn, ids, config = omero
    assert all(r.ok for r in qc_on_objects(conn, "Dataset", [ids["dataset"]], config=config).reports)
    [first] = _dataset_tables(server, ids["dataset"])

    def unreadable(*args, **kwargs):
        raise RuntimeError("the table's file is damaged")

    monkeypatch.setattr("dlcore.omero.qc_table.read_rows", unreadable)
    again = qc_on_objects(conn, "Image", [ids["painted"]], config=config)
    assert again.reports[0].ok
    tables = _dataset_tables(server, ids["dataset"])
    assert len(tables) == 2 and server.get("OriginalFile", first["file"].getId().getValue()) is not None
    newest = max(tables, key=lambda t: t["annotation"].getId().getValue())
    assert newest["table"]["values"]["Image"] == [ids["painted"]]
    assert "could not be read, so it is kept" in again.message()
    monkeypatch.undo()
    third = qc_on_objects(conn, "Image", [ids["clean"]], config=config)  # readable again: merged into one
    [table] = _dataset_tables(server, ids["dataset"])
    assert sorted(table["table"]["values"]["Image"]) == sorted([ids["painted"], ids["clean"]])
    assert third.reports[0].ok
