"""Tiling must not change the answer: objects found in tiles match those found on the whole image."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.workflows import RunOptions, analyse_slide
from synthetic import disc_image, write_png


def match_f1(reference: np.ndarray, test: np.ndarray, iou: float = 0.5) -> tuple[float, int, int, int]:
    """F1 of objects matched at IoU >= ``iou``, with (true positives, reference count, test count)."""
    ref_ids = np.unique(reference)[1:]
    test_ids = np.unique(test)[1:]
    overlap = {}
    sel = (reference > 0) & (test > 0)
    pairs, counts = np.unique(np.stack([reference[sel], test[sel]]), axis=1, return_counts=True)
    ref_area = dict(zip(*np.unique(reference, return_counts=True)))
    test_area = dict(zip(*np.unique(test, return_counts=True)))
    matched_test = set()
    tp = 0
    for (r, t), inter in zip(pairs.T, counts):
        union = ref_area[r] + test_area[t] - inter
        if inter / union >= iou and t not in matched_test:
            matched_test.add(t)
            tp += 1
            overlap[r] = t
    f1 = 2 * tp / (len(ref_ids) + len(test_ids)) if len(ref_ids) + len(test_ids) else 1.0
    return f1, tp, len(ref_ids), len(test_ids)


def run(path, out, tile_size, halo):
    task = ClassicalNuclei(channel=0, tile_size=tile_size, halo=halo, min_distance=7)
    slide = open_slide(path)
    try:
        result = analyse_slide(slide, task, LocalFolderSink(out), options=RunOptions(detect_tissue=False))
    finally:
        slide.close()
    labels = tifffile.imread(result.outputs["label image"])
    return result, labels


@pytest.mark.parametrize("tile_size,halo", [(128, 32), (160, 24)])
def test_tiled_objects_match_whole_image(tmp_path, tile_size, halo):
    image = disc_image(512, tile=tile_size)
    path = write_png(tmp_path / "discs.png", image)
    whole, whole_labels = run(path, tmp_path / "whole", 1024, 32)
    tiled, tiled_labels = run(path, tmp_path / "tiled", tile_size, halo)

    assert whole.summary["tiles"] == 1
    assert tiled.summary["tiles"] == (512 // tile_size + (512 % tile_size > 0)) ** 2
    assert whole.summary["objects"] > 200
    # the same threshold was used: calibration does not depend on the grid
    assert whole.provenance["task"]["parameters"]["threshold"] == tiled.provenance["task"]["parameters"]["threshold"]

    f1, tp, n_ref, n_test = match_f1(whole_labels, tiled_labels)
    assert f1 >= 0.99, (f1, tp, n_ref, n_test)
    # no duplicates: ids are unique and slide-wide, and the counts agree
    ids = np.unique(tiled_labels)[1:]
    assert len(ids) == tiled.summary["objects"] == n_test
    assert ids.min() == 1 and ids.max() == len(ids)
    assert abs(n_test - n_ref) <= max(1, n_ref // 100)
    # every object on a tile border is whole: its pixels are one connected label crossing the border
    border = tile_size
    crossing = np.intersect1d(np.unique(tiled_labels[:, border - 1]), np.unique(tiled_labels[:, border]))
    assert len(crossing[crossing > 0]) >= 5
