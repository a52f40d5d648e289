"""The on-disk label canvas: merging, the pyramid and the OME-TIFF export, also for sparse slides."""
from __future__ import annotations

import numpy as np
import tifffile

from dlcore.io.labels import LabelCanvas


def test_sparse_canvas_pyramid_and_export_match_the_full_array(tmp_path):
    canvas = LabelCanvas(tmp_path / "c.zarr", 3000, 2100, chunk=256)
    rng = np.random.default_rng(0)
    for _ in range(6):
        x, y = int(rng.integers(-100, 2900)), int(rng.integers(-100, 2000))
        canvas.merge(x, y, rng.integers(0, 5, (200, 300)).astype(np.uint32))
    full = canvas.levels[0][:]
    assert len(canvas.stored_chunks(0)) < (3000 // 256 + 1) * (2100 // 256 + 1)  # empty chunks are not stored
    canvas.build_pyramid(min_side=256)
    assert [lv.shape for lv in canvas.levels] == [(2100, 3000), (1050, 1500), (525, 750), (263, 375), (132, 188)]
    for index, level in enumerate(canvas.levels):
        np.testing.assert_array_equal(level[:], full[:: 2**index, :: 2**index])
    canvas.write_ome_tiff(tmp_path / "l.ome.tif", mpp=0.5)
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tif:
        levels = tif.series[0].levels
        assert len(levels) == len(canvas.levels)
        for index, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), full[:: 2**index, :: 2**index])


def test_merge_keeps_labels_already_written(tmp_path):
    canvas = LabelCanvas(tmp_path / "c.zarr", 100, 100)
    canvas.merge(0, 0, np.full((10, 10), 7, np.uint32))
    canvas.merge(5, 5, np.full((10, 10), 9, np.uint32))
    out = canvas.read(0, 0, 20, 20)
    assert out[0, 0] == 7 and out[6, 6] == 7 and out[12, 12] == 9 and out[19, 19] == 0
