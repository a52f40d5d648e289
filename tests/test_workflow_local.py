"""A whole run on a local slide: the outputs agree with each other, re-runs replace, failures leave nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import dlcore
from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
from dlcore.errors import InputError
from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.workflows import RunOptions, analyse_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "ihc.ome.tif",
                                 SyntheticSlideSpec(width=1536, height=1024, seed=5))


def run(slide_path, out, task=None, **options):
    slide = open_slide(slide_path)
    try:
        return analyse_slide(slide, task or ClassicalNuclei(tile_size=512), LocalFolderSink(out), options=RunOptions(**options))
    finally:
        slide.close()


def test_outputs_are_complete_and_consistent(slide_path, tmp_path):
    result = run(slide_path, tmp_path)
    folder = tmp_path / "ihc" / "nuclei-classical"
    assert sorted(p.name for p in folder.iterdir()) == [
        "labels.ome.tif", "objects.csv", "objects.geojson", "overview.png", "provenance.json"]
    n = result.summary["objects"]
    assert n > 100

    # label image: pyramidal OME-TIFF at the working resolution with its pixel size, ids 1..n
    with tifffile.TiffFile(folder / "labels.ome.tif") as tif:
        series = tif.series[0]
        assert series.shape == (1024, 1536) and len(series.levels) >= 2
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        labels = series.asarray()
    ids = np.unique(labels)[1:]
    assert len(ids) == n and ids.max() == n

    # CSV: one row per object, areas and centroids agree with the label image
    rows = list(csv.DictReader(open(folder / "objects.csv")))
    assert len(rows) == n
    row = rows[len(rows) // 2]
    obj = labels == int(row["id"])
    assert int(row["area_px"]) == obj.sum()
    ys, xs = np.nonzero(obj)
    assert float(row["centroid_x"]) == pytest.approx(xs.mean() + 0.5, abs=0.01)
    assert float(row["centroid_y"]) == pytest.approx(ys.mean() + 0.5, abs=0.01)
    assert float(row["area_um2"]) == pytest.approx(obj.sum() * 0.25, rel=1e-3)
    assert {"mean_R", "mean_G", "mean_B", "bbox_x0", "perimeter_px"} <= set(row)

    # GeoJSON: QuPath detections, one closed polygon per object
    geo = json.loads((folder / "objects.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == n
    feature = geo["features"][0]
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and 4 <= len(ring) <= 65
    assert feature["properties"]["objectType"] == "detection"

    # overview and provenance
    assert Image.open(folder / "overview.png").size[0] > 100
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["dlcore_version"] == dlcore.__version__
    assert prov["task"]["parameters"]["sigma"] == 3.0 and prov["task"]["parameters"]["threshold"] > 0
    assert prov["input"]["identity"].startswith("file://") and prov["summary"]["objects"] == n
    assert {"tissue_s", "task_s", "read_s", "analysis_s"} <= set(prov["timings"])


def test_rerun_replaces_previous_results(slide_path, tmp_path):
    run(slide_path, tmp_path)
    second = run(slide_path, tmp_path)
    slide_dir = tmp_path / "ihc"
    assert [p.name for p in slide_dir.iterdir()] == ["nuclei-classical"]  # no partial or old folders left
    rows = list(csv.DictReader(open(slide_dir / "nuclei-classical" / "objects.csv")))
    assert len(rows) == second.summary["objects"]


class ExplodingTask(ClassicalNuclei):
    """Fails on the third batch, after results have started to stream out."""

    def predict(self, windows):
        self.__dict__.setdefault("_calls", [0])
        object.__getattribute__(self, "_calls")[0] += 1
        if object.__getattribute__(self, "_calls")[0] == 3:
            raise RuntimeError("boom")
        return super().predict(windows)


def test_failure_leaves_nothing_behind(slide_path, tmp_path):
    first = run(slide_path, tmp_path)
    before = (tmp_path / "ihc" / "nuclei-classical" / "objects.csv").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        run(slide_path, tmp_path, task=ExplodingTask(tile_size=256))
    # the earlier complete results are untouched and nothing partial remains
    assert [p.name for p in (tmp_path / "ihc").iterdir()] == ["nuclei-classical"]
    assert (tmp_path / "ihc" / "nuclei-classical" / "objects.csv").read_bytes() == before
    assert first.summary["objects"] > 0


def test_blank_image_has_no_tissue(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(blank)
    with pytest.raises(InputError, match="no tissue found.*--no-tissue-detection"):
        run(blank, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.csv"))


def test_peak_memory_does_not_hold_the_slide(slide_path, tmp_path):
    """The label canvas lives on disk: a run keeps only chunks, never a slide-sized array."""
    from dlcore.io.labels import LabelCanvas

    canvas = LabelCanvas(tmp_path / "c.zarr", 100_000, 100_000)  # 40 GB if it were in memory
    canvas.merge(50_000, 50_000, np.ones((10, 10), np.uint32))
    assert canvas.read(50_000, 50_000, 10, 10).sum() == 100
    stored = sum(f.stat().st_size for f in Path(tmp_path / "c.zarr").rglob("*") if f.is_file())
    assert stored < 100_000


def test_ome_zarr_label_output(slide_path, tmp_path):
    import zarr

    slide = open_slide(slide_path)
    try:
        result = analyse_slide(slide, ClassicalNuclei(tile_size=512), LocalFolderSink(tmp_path, label_format="ome-zarr"))
    finally:
        slide.close()
    path = Path(result.outputs["label image"])
    assert path.name == "labels.ome.zarr"
    attrs = json.loads((path / ".zattrs").read_text())["multiscales"][0]
    assert attrs["version"] == "0.4" and attrs["axes"][0]["unit"] == "micrometer"
    assert attrs["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    level0 = zarr.open_array(str(path / "0"), mode="r")
    assert level0.shape == (1024, 1536)
    assert len(np.unique(level0[:])) - 1 == result.summary["objects"]
