"""Export_Annotated_Dataset's archive export against the OMERO double: MIFA/REMBI/file list with who drew the
ROIs and when, OME-Zarr, the facility YAML from a FileAnnotation, the export folder, automatic provenance."""
import csv
import io
import json
import zipfile

import numpy as np
import pytest
import yaml
from omero.model import FileAnnotationI, MapAnnotationI, NamedValue
from omero.rtypes import rstring

from dlcore.omero.annotations import image_link, map_annotation
from test_archive_metadata import COMPLETE
from test_omero_annotated import Omero, polygon, rect
from test_omero_scripts import _exec_script

BASE = {"Data_Type": "Dataset", "Task": "semantic segmentation", "Class_Source": "ROI name",
        "Classes": "stroma, tumour", "Region_Margin": 0}


def _tissue(seed):
    rng = np.random.default_rng(seed)
    image = np.full((96, 96, 3), (230, 160, 190), np.uint8)
    image[20:60, 30:70] = (120, 60, 150)
    return np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def om():
    om = Omero()
    alice = om.server.get("Experimenter", om.user)
    alice.setFirstName(rstring("Alice"))
    alice.setLastName(rstring("Smith"))
    om.images = []
    for i in range(2):
        image = om.image(f"slide {i}", levels=[_tissue(i)])
        om.roi(image, rect(30, 20, 40, 40), name="tumour")
        om.roi(image, polygon([(0, 50), (96, 50), (96, 96), (0, 96)]), name="stroma")
        om.roi(image, rect(0, 0, 5, 5), name="nucleus 1", description="dlcore:nuclei-classical:run")  # a result
        om.images.append(image)
    tag = om.tag("H&E")
    om.tag_image(om.images[0], tag)
    kv = MapAnnotationI()
    kv.setNs(rstring("openmicroscopy.org/omero/client/mapAnnotation"))
    kv.setMapValue([NamedValue("patient", "P-17"), NamedValue("block", "A2")])
    om.conn.getUpdateService().saveAndReturnObject(image_link(om.images[0], kv), om.ctx)
    return om


def _zip(om):
    [ann] = om.server.dataset_annotations(om.dataset, FileAnnotationI)
    assert ann.getNs().getValue() == "dlcore/export"
    ofile = om.server.get("OriginalFile", ann.getFile().getId().getValue())
    return zipfile.ZipFile(io.BytesIO(om.server.file_bytes[ofile.getId().getValue()]))


def _rows(text):
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def _yaml_annotation(om, tmp_path, text, name="archive.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return int(om.conn.createFileAnnfromLocalFile(str(path), mimetype="text/yaml").getId())


def test_zip_holds_mifa_rembi_and_file_list_with_roi_authors_and_times(om, monkeypatch):
    bob = om.server.add_user("bob", [om.group])  # a second annotator, in the same read-annotate group
    bob_conn = om.server.connect(bob, om.group)
    from omero.model import ImageI, RoiI

    roi = RoiI()
    roi.setImage(ImageI(om.images[1], False))
    roi.setName(rstring("tumour"))
    roi.addShape(rect(40, 30, 8, 8))
    bob_conn.getUpdateService().saveAndReturnObject(roi, om.ctx)
    fake = _exec_script("Export_Annotated_Dataset.py", {**BASE, "IDs": [om.dataset]}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Exported 2 samples of 2 images") and "as OME-TIFF" in message, message
    assert "NOT submission-ready" in message and "study.title" in message
    assert fake.outputs["File_Annotation"].getValue().getId().getValue() > 0
    with _zip(om) as archive:
        names = set(archive.namelist())
        assert {"mifa.json", "rembi.json", "file_list.tsv", "archive.example.yaml"} <= names
        mifa = json.loads(archive.read("mifa.json"))
        rows = _rows(archive.read("file_list.tsv").decode())
    assert mifa["submission_ready"] is False
    [annotation] = mifa["annotations"]
    assert annotation["method_type"] == "manual"
    assert "alice (Alice Smith)" in annotation["annotation_method"] and "bob" in annotation["annotation_method"]
    assert [a["author_last_name"] for a in annotation["authors"]] == ["Smith", "bob"]
    first, second = annotation["file_metadata"]
    prov = first["dlcore_provenance"]
    assert prov["annotators"] == ["alice (Alice Smith)"] and prov["method_type"] == "manual"
    assert len(prov["rois"]) == 2  # the dlcore result ROI is no annotation
    assert first["annotation_creation_time"] == prov["created"] and prov["created"].endswith("+00:00")
    assert prov["attributes"] == {"tags": ["H&E"], "key_values": {
        "openmicroscopy.org/omero/client/mapAnnotation": {"patient": "P-17", "block": "A2"}}}
    assert second["dlcore_provenance"]["annotators"] == ["alice (Alice Smith)", "bob"]
    labels = [r for r in rows if r["type"] == "label"]
    assert len(labels) == 2 and labels[0]["annotated_by"] == "alice (Alice Smith)"
    assert labels[0]["annotation_created"].startswith(prov["created"][:10])
    assert labels[0]["sample_attributes"] == "tag:H&E; patient=P-17; block=A2"
    assert labels[1]["annotated_by"] == "alice (Alice Smith); bob" and labels[1]["annotation_source"] == "manual"


def test_ome_zarr_format_and_a_facility_yaml_from_a_file_annotation_make_it_submission_ready(om, monkeypatch,
                                                                                              tmp_path):
    yaml_id = _yaml_annotation(om, tmp_path, yaml.safe_dump(COMPLETE, allow_unicode=True))
    inputs = {**BASE, "IDs": [om.dataset], "Format": "OME-Zarr", "Archive_Metadata": yaml_id}
    fake = _exec_script("Export_Annotated_Dataset.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert "as OME-Zarr" in message and "BioImage Archive: submission-ready" in message, message
    with _zip(om) as archive:
        names = set(archive.namelist())
        mifa = json.loads(archive.read("mifa.json"))
        rembi = json.loads(archive.read("rembi.json"))
        rows = _rows(archive.read("file_list.tsv").decode())
    assert any(n.startswith("images/00000_Image_") and ".ome.zarr/" in n for n in names)
    assert not any(n.startswith("labels/") for n in names) and "archive.example.yaml" not in names
    assert mifa["submission_ready"] is True and mifa["missing"] == []
    assert mifa["metadata_source"] == f"OMERO FileAnnotation:{yaml_id} archive.yaml"
    assert mifa["title"] == COMPLETE["study"]["title"] and rembi["submission_ready"] is True
    # the facility's own words win; the per-image provenance is still there
    assert mifa["annotations"][0]["annotation_method"] == COMPLETE["annotation"]["annotation_method"]
    assert mifa["annotations"][0]["file_metadata"][0]["dlcore_provenance"]["annotators"] == ["alice (Alice Smith)"]
    zarrs = [r for r in rows if r["Files"].endswith(".ome.zarr")]
    assert len(zarrs) == 2 and all(r["annotated_by"] == "alice (Alice Smith)" for r in zarrs)


def test_a_missing_or_invalid_yaml_annotation_is_refused_before_any_work(om, monkeypatch, tmp_path):
    text_id = _yaml_annotation(om, tmp_path, "study: {}\n", name="notes.txt")
    typo_id = _yaml_annotation(om, tmp_path, "study:\n  titel: x\n", name="typo.yaml")
    broken_id = _yaml_annotation(om, tmp_path, "study: [unclosed\n", name="broken.yml")
    licence_id = _yaml_annotation(om, tmp_path, "study:\n  license: MIT\n", name="licence.yaml")
    tag_id = int(om.tag("not a file").getId().getValue())
    before = dict(om.server.objects)
    cases = [(999, "Archive_Metadata=FileAnnotation:999: not found"),
             (tag_id, f"FileAnnotation:{tag_id}: not found"),
             (text_id, "'notes.txt', not a YAML file"),
             (typo_id, f"FileAnnotation:{typo_id} (typo.yaml): unknown key 'study.titel'; did you mean 'title'?"),
             (broken_id, "(broken.yml) is not valid YAML"),
             (licence_id, "study.license='MIT'")]
    for ann_id, expected in cases:
        fake = _exec_script("Export_Annotated_Dataset.py", {**BASE, "IDs": [om.dataset], "Archive_Metadata": ann_id},
                            om.conn, monkeypatch)
        message = fake.outputs["Message"].getValue()
        assert message.startswith("Nothing was written: ") and expected in message, (ann_id, message)
        assert str(tmp_path) not in message  # the scratch copy's path means nothing to the user
        assert "File_Annotation" not in fake.outputs
    assert om.server.calls["RawPixelsStore.getTile"] == 0
    assert om.server.objects == before


def test_export_folder_destination_writes_the_folder_and_attaches_nothing(om, monkeypatch, tmp_path):
    exports = tmp_path / "exports"
    config = tmp_path / "dlcore.toml"
    config.write_text(f'[dlcore]\nexport_dir = "{exports}"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(config))
    inputs = {**BASE, "IDs": [om.dataset], "Destination": "export folder"}
    before = dict(om.server.objects)
    fake = _exec_script("Export_Annotated_Dataset.py", inputs, om.conn, monkeypatch)  # no folder yet: refused
    message = fake.outputs["Message"].getValue()
    assert message.startswith("Nothing was written: ") and f"export folder {exports}" in message, message
    exports.mkdir()
    fake = _exec_script("Export_Annotated_Dataset.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    [folder] = list(exports.iterdir())
    assert message.startswith("✓ Exported 2 samples") and f"into the export folder {folder}" in message, message
    assert folder.name.startswith("annotated-semantic-annotated-") and not folder.name.startswith(".")
    assert {"mifa.json", "rembi.json", "file_list.tsv", "dataset.json"} <= {p.name for p in folder.iterdir()}
    assert "File_Annotation" not in fake.outputs and om.server.objects == before
    config.write_text("[dlcore]\n")  # not configured: refused before reading anything
    tiles = om.server.calls["RawPixelsStore.getTile"]
    fake = _exec_script("Export_Annotated_Dataset.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("Nothing was written: ") and "no export folder is configured" in message
    assert om.server.calls["RawPixelsStore.getTile"] == tiles


def test_a_marker_labels_roi_is_recorded_as_automatic_with_its_run(monkeypatch):
    om = Omero()
    image = om.image("rendering", levels=[_tissue(3)])
    om.roi(image, rect(30, 20, 40, 40), name="positive", description="dlcore-marker-labels:run-42")
    om.roi(image, polygon([(0, 50), (96, 50), (96, 96), (0, 96)]), name="negative",
           description="dlcore-marker-labels:run-42")
    pairs = [("method", "threshold"), ("marker", "dab of Image:7"), ("threshold", "0.12 (otsu)"),
             ("parameters", '{"min_size": 30}'), ("dlcore version", "0.9.0"), ("created", "2026-11-30T10:00:00+00:00"),
             ("run id", "run-42")]
    om.conn.getUpdateService().saveAndReturnObject(image_link(image, map_annotation("marker-labels", pairs)), om.ctx)
    inputs = {**BASE, "IDs": [om.dataset], "Classes": "negative, positive"}
    fake = _exec_script("Export_Annotated_Dataset.py", inputs, om.conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("✓ Exported 1 samples"), fake.outputs["Message"].getValue()
    with _zip(om) as archive:
        mifa = json.loads(archive.read("mifa.json"))
        rows = _rows(archive.read("file_list.tsv").decode())
    [annotation] = mifa["annotations"]
    assert annotation["method_type"] == "automatic"
    assert "automatic annotations by dlcore Labels From Marker 0.9.0 (threshold)" in annotation["annotation_method"]
    prov = annotation["file_metadata"][0]["dlcore_provenance"]
    assert prov["method_type"] == "automatic" and prov["annotators"] == []  # no ROI drawn by hand
    [auto] = prov["automatic"]
    assert auto == {"software": "dlcore Labels From Marker", "version": "0.9.0", "method": "threshold",
                    "marker": "dab of Image:7", "threshold": "0.12 (otsu)", "run_id": "run-42",
                    "created": "2026-11-30T10:00:00+00:00", "parameters": '{"min_size": 30}', "launched_by": "alice"}
    assert all(r["automatic"] and r["run_id"] == "run-42" for r in prov["rois"])
    assert "dlcore/marker-labels" not in json.dumps(prov["attributes"])  # dlcore's own pairs are no attributes
    [label] = [r for r in rows if r["type"] == "label"]
    assert label["annotation_source"] == "automatic; dlcore Labels From Marker 0.9.0 threshold dab of Image:7 run-42"


def test_objective_stain_channels_and_per_region_authors_come_from_omero(monkeypatch, tmp_path):
    """A scan imported with its objective (40x) and a `Stain` key-value: each exported image carries them
    (OME-XML read back by ome-types), rembi.json and the file list name them; two regions of one image
    drawn by different people are each credited to their own annotator."""
    from ome_types import from_tiff
    from omero.model import ImageI, RoiI

    from dlcore.omero.annotations import map_annotation

    om = Omero()
    canvas = np.full((200, 200, 3), (230, 160, 190), np.uint8)
    image = om.image("scan", levels=[canvas], objective_magnification=40.0, channel_names=["R", "G", "B"])
    kv = MapAnnotationI()
    kv.setNs(rstring("openmicroscopy.org/omero/client/mapAnnotation"))
    kv.setMapValue([NamedValue("Stain", "H&E"), NamedValue("block", "B1")])
    om.conn.getUpdateService().saveAndReturnObject(  # dlcore's own pairs never name the stain
        image_link(image, map_annotation("marker-labels", [("stain", "not this")])), om.ctx)
    om.conn.getUpdateService().saveAndReturnObject(image_link(image, kv), om.ctx)
    alice_roi = om.roi(image, rect(10, 10, 30, 30), name="tumour")
    bob = om.server.add_user("bob", [om.group])
    roi = RoiI()
    roi.setImage(ImageI(image, False))
    roi.setName(rstring("stroma"))
    roi.addShape(rect(140, 140, 40, 40))
    bob_roi = om.server.connect(bob, om.group).getUpdateService().saveAndReturnObject(roi, om.ctx).getId().getValue()
    fake = _exec_script("Export_Annotated_Dataset.py", {**BASE, "IDs": [om.dataset]}, om.conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("✓ Exported 2 samples of 1 images"), fake.outputs["Message"]
    with _zip(om) as archive:
        rembi = json.loads(archive.read("rembi.json"))
        mifa = json.loads(archive.read("mifa.json"))
        dataset = json.loads(archive.read("dataset.json"))
        rows = _rows(archive.read("file_list.tsv").decode())
        first = dataset["samples"][0]
        tiff = archive.read(first["image"])
    assert [s["annotation_ids"] for s in dataset["samples"]] == [[f"ROI:{alice_roi}"], [f"ROI:{bob_roi}"]]
    assert {(s["stain"], s["magnification"]) for s in dataset["samples"]} == {("H&E", 40.0)}
    assert first["channel_names"] == ["R", "G", "B"]
    assert rembi["image_acquisition"]["objective_magnification"] == 40.0 and rembi["image_data"]["stains"] == ["H&E"]
    path = tmp_path / "first.ome.tif"
    path.write_bytes(tiff)
    ome = from_tiff(str(path), validate=True)
    assert ome.instruments[0].objectives[0].nominal_magnification == 40.0
    assert ome.images[0].pixels.physical_size_x == pytest.approx(0.5)
    assert {m.k: m.value for a in ome.structured_annotations.map_annotations for m in a.value.ms} == {"stain": "H&E"}
    by_region = [e["dlcore_provenance"] for e in mifa["annotations"][0]["file_metadata"]]
    assert [p["annotators"] for p in by_region] == [["alice"], ["bob"]]
    assert [[r["id"] for r in p["rois"]] for p in by_region] == [[alice_roi], [bob_roi]]
    labels = [r for r in rows if r["type"] == "label"]
    assert [r["annotated_by"] for r in labels] == ["alice", "bob"]
    images = [r for r in rows if r["type"] == "image"]
    assert {(r["stain"], r["objective_magnification"], r["channel_names"]) for r in images} == {("H&E", "40", "R;G;B")}
