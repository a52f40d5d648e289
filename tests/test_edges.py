"""Windows at and beyond the image's edge: real H&E and IHC fields smaller than a tile, tissue that
touches every edge, and the invariant that no result lies outside the image."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage.segmentation import clear_border, relabel_sequential

from dlcore.errors import InvariantError
from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.io.sink import check_objects_inside
from dlcore.io.slide import Level, SlideInfo, read_padded, reflect_index
from dlcore.objects import ObjectRecord
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.tiling.grid import Tile
from dlcore.tiling.stitch import InstanceStitcher
from dlcore.workflows import RunOptions, analyse_slide, check_object_area
from synthetic import real_he_field, real_ihc_field, write_ome_tiff, write_png
from test_tiling_invariance import match_f1

FIELDS = {"ihc": real_ihc_field, "he": real_he_field}


def analyse(path, out, task, *, mpp=0.5):
    slide = open_slide(path)
    try:
        result = analyse_slide(slide, task, LocalFolderSink(out), options=RunOptions(mpp=mpp, detect_tissue=False))
    finally:
        slide.close()
    return result, tifffile.imread(result.outputs["label image"], level=0)


def test_reflect_index_mirrors_at_both_edges_with_any_reach():
    coords = np.arange(-7, 12)
    mapped = reflect_index(coords, 5)
    assert mapped.tolist() == [3, 4, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1]
    assert reflect_index(np.array([-3, 0, 2]), 1).tolist() == [0, 0, 0]


def test_windows_outside_the_image_are_mirrored_not_black(tmp_path):
    image = real_ihc_field()[:100, :120]
    slide = open_slide(write_png(tmp_path / "field.png", image))
    window = read_padded(slide, 0, -30, -20, 200, 150)
    assert window.shape == (150, 200, 3)
    np.testing.assert_array_equal(window[20:120, 30:150], image)  # the image itself, in place
    np.testing.assert_array_equal(window[19::-1, 30:150], image[:20])  # above: the top rows mirrored
    np.testing.assert_array_equal(window[20:120, 29::-1], image[:, :30])  # left: the first columns mirrored
    np.testing.assert_array_equal(window[20:120, 150:], image[:, :-51:-1])  # right: the last columns mirrored
    assert window.min(axis=2).max() > 100 and (window.max(axis=2) < 40).mean() < 0.01  # no black fill anywhere


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_field_smaller_than_a_tile_gives_nuclei_inside_the_image(tmp_path, field):
    image = FIELDS[field]()
    height, width = image.shape[:2]
    result, labels = analyse(write_png(tmp_path / f"{field}.png", image), tmp_path / "out", ClassicalNuclei())
    s = result.summary
    assert s["tiles"] == 1 and s["objects"] > 150, s  # hundreds of nuclei, not one object covering the window
    assert 0.1 < s["object_area_fraction_of_tissue"] < 0.6
    assert labels.shape == (height, width)
    task = result.provenance["task"]
    areas = np.bincount(labels.ravel())[1:]
    assert areas.max() <= task["max_object_pixels"]  # nothing the size of a gland is reported as a nucleus
    rows = _csv_rows(result.outputs["measurements"])
    assert len(rows) == s["objects"]
    for row in rows:
        assert 0 <= float(row["bbox_x0"]) <= float(row["bbox_x1"]) <= width
        assert 0 <= float(row["bbox_y0"]) <= float(row["bbox_y1"]) <= height
    features = json.loads(open(result.outputs["outlines"]).read())["features"]
    points = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in features])
    assert points[:, 0].min() >= 0 and points[:, 0].max() <= width
    assert points[:, 1].min() >= 0 and points[:, 1].max() <= height
    # nuclei cut by the image's edge are kept, on every edge the tissue touches
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        assert edge.any()


def _csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_crop_matches_the_same_field_seen_with_real_context(tmp_path, field):
    """Objects found in the central quarter analysed alone (windows mirrored at its edges) match those
    found there when the whole field, with real tissue around, is analysed: the same stains and the same
    threshold are used, so only the context differs.  Black padding fails this (edge F1 about 0.2-0.3)."""
    image = FIELDS[field]()
    height, width = image.shape[:2]
    whole, whole_labels = analyse(write_png(tmp_path / "whole.png", image), tmp_path / "whole", ClassicalNuclei())
    params = whole.provenance["task"]["parameters"]
    fixed = ClassicalNuclei(stain_matrix=tuple(map(tuple, params["stain_matrix"])), threshold=params["threshold"])
    y0, x0, h, w = height // 4, width // 4, height // 2, width // 2
    crop, crop_labels = analyse(write_png(tmp_path / "crop.png", image[y0:y0 + h, x0:x0 + w]), tmp_path / "crop", fixed)
    assert crop.provenance["task"]["parameters"]["threshold"] == params["threshold"]

    reference = relabel_sequential(whole_labels[y0:y0 + h, x0:x0 + w])[0]
    inner_ref, inner_crop = clear_border(reference), clear_border(crop_labels)
    edge_ref = np.where(inner_ref > 0, 0, reference)
    edge_crop = np.where(inner_crop > 0, 0, crop_labels)
    assert len(np.unique(edge_ref)) > 15  # the crop cuts through many nuclei
    assert match_f1(inner_ref, inner_crop)[0] >= 0.9
    assert match_f1(edge_ref, edge_crop)[0] >= 0.7  # objects at the edge included
    assert match_f1(reference, crop_labels)[0] >= 0.85


def test_tissue_touching_all_four_edges_tiled_equals_whole(tmp_path):
    """A multi-tile slide whose tissue reaches every edge: the edge tiles' windows are mostly outside
    the slide, and tiling still changes nothing."""
    image = real_he_field()
    path = write_ome_tiff(tmp_path / "he.ome.tif", image, mpp=0.5, tile=128, levels=2)
    whole, whole_labels = analyse(path, tmp_path / "whole", ClassicalNuclei(tile_size=1024), mpp=None)
    tiled, tiled_labels = analyse(path, tmp_path / "tiled", ClassicalNuclei(tile_size=128), mpp=None)
    assert whole.summary["tiles"] == 1 and tiled.summary["tiles"] == 4 * 3
    # the halo holds a nucleus' radius (sqrt(400 µm² / pi) = 23 px), 4 sigma and the opening's 2 x 16 px
    assert tiled.provenance["task"]["parameters"]["halo"] == 72
    f1, tp, n_whole, n_tiled = match_f1(whole_labels, tiled_labels)
    assert n_whole > 150 and f1 >= 0.98, (f1, n_whole, n_tiled)
    for edge in (tiled_labels[0], tiled_labels[-1], tiled_labels[:, 0], tiled_labels[:, -1]):
        assert edge.any()


def test_stitcher_clears_labels_outside_the_image(tmp_path):
    from dlcore.io.labels import LabelCanvas

    canvas = LabelCanvas(tmp_path / "labels.zarr", 40, 30)
    stitcher = InstanceStitcher(canvas, factor=1.0, mpp=None, bounds=(40, 30))
    tile = Tile(row=0, col=0, x=0, y=0, width=40, height=30, halo=10)
    labels = np.zeros((50, 60), np.int32)
    labels[:, :] = 0
    labels[0:25, 0:25] = 1  # straddles the top-left corner: 15 x 15 pixels of it are inside
    labels[40:50, 52:60] = 2  # entirely outside (below-right)
    window = np.full((50, 60, 1), 100, np.uint8)
    records = stitcher.add(tile, window, labels)
    assert [r.area_px for r in records] == [15 * 15]
    record = records[0]
    assert record.bbox == (0.0, 0.0, 15.0, 15.0) and 0 <= min(record.centroid) and max(record.centroid) <= 15
    stored = canvas.read(0, 0, 40, 30)
    assert (stored == 1).sum() == 225 and stored.max() == 1


def _record(bbox, polygon):
    return ObjectRecord(id=7, centroid=(5.0, 5.0), bbox=bbox, area_px=10, area_um2=None, perimeter_px=4.0,
                        mean_intensity=(1.0,), polygon=polygon)


def test_sinks_refuse_objects_outside_the_image(tmp_path):
    info = SlideInfo(name="s", identity="s", levels=(Level(100, 50, 1.0),), mpp=None, channels=("C0",),
                     dtype="uint8", tile_size=(100, 50))
    inside = _record((0.0, 0.0, 100.0, 50.0), ((0.0, 0.0), (100.0, 0.0), (100.0, 50.0)))
    check_objects_inside([inside], info)
    with pytest.raises(InvariantError, match="object 7 of s .* outside the 100x50 image"):
        check_objects_inside([_record((-64.0, 0.0, 10.0, 10.0), ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)))], info)
    with pytest.raises(InvariantError):
        check_objects_inside([_record((0.0, 0.0, 10.0, 10.0), ((0.0, 0.0), (100.5, 0.0), (1.0, 1.0)))], info)


def test_object_area_beyond_the_image_fails_and_beyond_the_tissue_warns():
    info = SlideInfo(name="s", identity="s", levels=(Level(100, 100, 1.0),), mpp=None, channels=("C0",),
                     dtype="uint8", tile_size=(100, 100))
    assert check_object_area(info, 900, 10_000, 1_000.0) == []
    (warning,) = check_object_area(info, 2250, 10_000, 1_000.0)
    assert "2.25 times the detected tissue area" in warning
    with pytest.raises(InvariantError, match="more than the image"):
        check_object_area(info, 10_001, 10_000, 20_000.0)


def test_edge_objects_of_a_tiny_field_keep_their_true_extent(tmp_path):
    """A 40 x 40 field (smaller than the halo, so mirrored many times over): the nucleus its left edge cuts
    is found once, inside, with about the extent it has when the field is seen with its real left half."""
    from skimage.draw import disk

    big = np.full((40, 80, 3), 235, np.uint8)
    rr, cc = disk((20, 42), 9, shape=big.shape[:2])  # a dark nucleus that x = 40 cuts
    big[rr, cc] = (60, 40, 140)
    task = ClassicalNuclei(min_size=20, threshold=0.2)
    _, with_context = analyse(write_png(tmp_path / "big.png", big), tmp_path / "big", task)
    result, labels = analyse(write_png(tmp_path / "tiny.png", big[:, 40:]), tmp_path / "tiny", task)
    assert result.summary["objects"] == 1
    reference = with_context[:, 40:] > 0
    found = labels > 0
    assert (found & reference).sum() / (found | reference).sum() >= 0.8
