"""Archive metadata of an export: MIFA/REMBI JSON, the BioImage Archive file list, readiness and YAML errors."""
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from dlcore.errors import ParameterError
from dlcore.train.archive_metadata import TEMPLATE, load_archive_metadata
from dlcore.train.cli import cmd_export_dataset
from dlcore.train.data import AnnotatedDataset, Sample, export_dataset

COMPLETE = {
    "study": {"title": "Nuclei in colon H&E", "description": "Nuclei outlined on colon resections, for segmentation",
              "license": "CC_BY", "funding_statement": "Funded by the facility", "keywords": ["nuclei", "H&E"],
              "authors": [{"author_first_name": "Ada", "author_last_name": "Lovelace",
                           "orcid_id": "0000-0002-1825-0097", "email": "ada@example.org",
                           "organisation": [{"organisation_name": "Histology core", "ror_id": "https://ror.org/0abc"}]}],
              "grants": [{"grant_id": 12345, "funder": "Research council"}],
              "ai_models_trained": [{"name": "nuclei-he", "version": "3", "url": "https://example.org/nuclei-he"}]},
    "biosample": {"organism_classification": [{"scientific_name": "Homo sapiens", "ncbi_id": "NCBI:txid9606"}],
                  "biological_entity_description": "colon adenocarcinoma resection"},
    "specimen": {"protocol_description": "FFPE, 4 µm sections, H&E"},
    "image_acquisition": {"imaging_instrument_description": "Slide scanner X", "imaging_method_name": ["bright-field microscopy"],
                          "protocol_description": "40x objective, extended focus", "objective_magnification": 40},
    "annotation": {"annotation_method": "drawn by hand in QuPath by one pathologist", "method_type": "manual",
                   "annotation_criteria": "every nucleus in focus"},
}


def _dataset(mpp=0.25):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        mask = np.zeros((16, 20), np.int32)
        mask[2:6, 3:8], mask[9:13, 10:15] = 1, 2
        samples.append(Sample(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8), mask, None, f"/data/img{i}.tif",
                              f"slide-{i}", mpp))
    return AnnotatedDataset(tuple(samples), "instances", ("nucleus",))


def _yaml(tmp_path, data, name="archive.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _file_list(out):
    with (out / "file_list.tsv").open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_complete_metadata_is_submission_ready(tmp_path):
    meta = load_archive_metadata(_yaml(tmp_path, COMPLETE))
    # before the export, only what dlcore fills itself is open
    assert [m.key for m in meta.validate()] == ["annotation.annotation_overview", "annotation.annotation_type"]
    out = export_dataset(_dataset(), tmp_path / "out", archive=meta)
    mifa = json.loads((out / "mifa.json").read_text())
    rembi = json.loads((out / "rembi.json").read_text())
    assert mifa["submission_ready"] is True and mifa["missing"] == []
    assert rembi["submission_ready"] is True
    assert mifa["title"] == "Nuclei in colon H&E" and mifa["license"] == "CC_BY"
    assert mifa["authors"][0]["organisation"][0]["organisation_name"] == "Histology core"
    assert mifa["grants"][0]["grant_id"] == "12345"  # a number in YAML is kept as text
    assert mifa["ai_models_trained"] == ["https://example.org/nuclei-he"]
    ann = mifa["annotations"][0]
    assert ann["annotation_type"] == ["segmentation_mask"] and ann["method_type"] == "manual"
    assert "nucleus" in ann["annotation_overview"] and "2 of 2 exported images" in ann["annotation_coverage"]
    assert len(ann["file_metadata"]) == 2 and ann["file_metadata"][0]["source_image_id"].startswith("images/")
    assert mifa["dlcore"]["task"] == "instances" and mifa["dlcore"]["classes"] == ["nucleus"]
    assert mifa["dlcore"]["objects"] == 4
    assert rembi["biosample"]["organism_classification"][0]["scientific_name"] == "Homo sapiens"
    assert rembi["image_acquisition"]["objective_magnification"] == 40.0
    assert rembi["image_data"]["pixel_size_um"] == 0.25 and rembi["image_data"]["channels"] == [3]
    assert "Submission-ready" in (out / "README.md").read_text()
    assert not (out / "archive.example.yaml").exists()


def test_without_metadata_lists_missing_keys_and_is_not_ready(tmp_path, capsys):
    export_dataset(_dataset(), tmp_path / "first")  # an export folder is a loadable source
    rc = cmd_export_dataset(SimpleNamespace(dataset=tmp_path / "first", out=tmp_path / "out", task=None, mpp=None,
                                            description="", metadata=None))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "NOT submission-ready" in printed and "study.title" in printed and "archive.example.yaml" in printed
    out = tmp_path / "out"
    mifa = json.loads((out / "mifa.json").read_text())
    assert mifa["submission_ready"] is False
    for key in ("study.title", "study.license", "study.funding_statement", "study.authors",
                "biosample.organism_classification", "specimen.protocol_description",
                "image_acquisition.imaging_instrument_description", "annotation.annotation_method"):
        assert key in mifa["missing"]
        assert key in (out / "README.md").read_text()
    # what dlcore knows is never asked for
    assert "annotation.annotation_type" not in mifa["missing"] and "--mpp" not in mifa["missing"]
    assert json.loads((out / "rembi.json").read_text())["submission_ready"] is False
    # the template lists every key and loads as it is (empty values are no values)
    assert (out / "archive.example.yaml").read_text() == TEMPLATE
    assert load_archive_metadata(out / "archive.example.yaml").study.title is None


def test_unknown_pixel_size_is_missing(tmp_path):
    out = export_dataset(_dataset(mpp=None), tmp_path / "out", archive=load_archive_metadata(_yaml(tmp_path, COMPLETE)))
    assert json.loads((out / "mifa.json").read_text())["missing"] == ["--mpp"]


def test_file_list_one_row_per_file_written(tmp_path):
    out = export_dataset(_dataset(), tmp_path / "out", archive=load_archive_metadata(_yaml(tmp_path, COMPLETE)))
    rows = _file_list(out)
    assert list(rows[0])[0] == "Files"
    listed = [r["Files"] for r in rows]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "file_list.tsv")
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)
    assert all((out / f).is_file() and "\\" not in f for f in listed)
    by = {r["Files"]: r for r in rows}
    image = next(r for r in rows if r["type"] == "image")
    label = next(r for r in rows if r["type"] == "label")
    assert image["mpp_um"] == "0.25" and image["channels"] == "3" and image["task"] == "instances"
    assert label["source_image"] == image["Files"] and label["annotation_type"] == "segmentation_mask"
    assert (label["channels"], label["axes"], image["axes"]) == ("1", "YX", "YXS")
    assert label["annotation_method"].startswith("manual")
    assert by["mifa.json"]["type"] == by["rembi.json"]["type"] == by["dataset.json"]["type"] == "metadata"
    assert sum(r["type"] == "image" for r in rows) == sum(r["type"] == "label" for r in rows) == 2


@pytest.mark.parametrize("data, key", [
    ({"study": {"titel": "x"}}, "study.titel"),
    ({"studies": {}}, "studies"),
    ({"study": {"keywords": "nuclei"}}, "study.keywords"),
    ({"study": {"authors": [{"organisation": "Histology core"}]}}, "study.authors[0].organisation"),
    ({"image_acquisition": {"objective_magnification": "forty"}}, "image_acquisition.objective_magnification"),
    ({"study": {"license": "MIT"}}, "study.license"),
    ({"annotation": {"annotation_type": ["masks"]}}, "annotation.annotation_type"),
    ({"study": {"authors": [{"orcid_id": "12"}]}}, "orcid_id"),
])
def test_malformed_yaml_names_the_key(tmp_path, data, key):
    with pytest.raises(ParameterError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_archive_metadata(_yaml(tmp_path, data))


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ParameterError, match="did you mean 'title'"):
        load_archive_metadata(_yaml(tmp_path, {"study": {"titel": "x"}}))


def test_automatic_label_provenance_lands_in_annotation(tmp_path):
    from skimage.io import imsave

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    ds = _dataset()
    for i, s in enumerate(ds.samples):
        imsave(src / "images" / f"r{i}.png", s.image, check_contrast=False)
        imsave(src / "labels" / f"r{i}.png", s.mask.astype(np.uint16), check_contrast=False)
    (src / "labels_provenance.json").write_text(json.dumps({
        "format": "dlcore-marker-labels", "method": "instances", "task": "instances", "classes": ["nucleus"],
        "parameters": {"marker": "dab", "threshold": None, "sigma": 1.0}, "dlcore_version": "0.1.0",
        "created": "2024-05-01T10:00:00+00:00"}))
    facility = {k: v for k, v in COMPLETE.items() if k != "annotation"}
    rc = cmd_export_dataset(SimpleNamespace(dataset=src, out=tmp_path / "out", task="instances", mpp=0.5,
                                            description="", metadata=_yaml(tmp_path, facility)))
    assert rc == 0
    mifa = json.loads((tmp_path / "out" / "mifa.json").read_text())
    ann = mifa["annotations"][0]
    assert mifa["submission_ready"] is True  # the provenance answers annotation_method
    assert ann["method_type"] == "automatic" and ann["software"] == "dlcore annotate-from-marker"
    assert ann["software_version"] == "0.1.0" and ann["created"] == "2024-05-01T10:00:00+00:00"
    assert ann["parameters"]["marker"] == "dab"
    assert "automatic" in ann["annotation_method"] and "dab" in ann["annotation_method"]
    assert mifa["dlcore"]["label_provenance"]["method"] == "instances"
    label = next(r for r in _file_list(tmp_path / "out") if r["type"] == "label")
    assert "automatic" in label["annotation_method"] and "dlcore annotate-from-marker" in label["annotation_method"]
