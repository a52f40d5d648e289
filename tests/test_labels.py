"""The on-disk label canvas: merging, the pyramid and the OME-TIFF export, also for sparse slides."""
from __future__ import annotations

import numpy as np
import pytest
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


@pytest.mark.parametrize("cache_chunks", [1, 3, 1024])
def test_canvas_cache_gives_what_was_written_whatever_its_size(tmp_path, cache_chunks):
    """Writes and merges at odd places, through a cache that evicts all the time (1, 3) or never (1024):
    the stored arrays, the reads and the exports hold exactly what a plain array would."""
    from dlcore.io.labels import LabelCanvas

    rng = np.random.default_rng(cache_chunks)
    canvas = LabelCanvas(tmp_path / "c.zarr", 700, 500, chunk=64, cache_chunks=cache_chunks)
    expected = np.zeros((500, 700), np.uint32)
    for step in range(40):
        x, y = int(rng.integers(-50, 690)), int(rng.integers(-50, 490))
        h, w = int(rng.integers(1, 150)), int(rng.integers(1, 150))
        patch = rng.integers(0, 5, (h, w)).astype(np.uint32) * (step + 1)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, 700), min(y + h, 500)
        if x1 <= x0 or y1 <= y0:
            continue
        region = patch[y0 - y:y1 - y, x0 - x:x1 - x]
        if step % 3:
            canvas.write(x, y, patch)
            expected[y0:y1, x0:x1] = region
        else:
            canvas.merge(x, y, patch)
            view = expected[y0:y1, x0:x1]
            view[(view == 0) & (region != 0)] = region[(view == 0) & (region != 0)]
        assert np.array_equal(canvas.read_padded(x, y, w, h)[y0 - y:y1 - y, x0 - x:x1 - x], expected[y0:y1, x0:x1])
    assert np.array_equal(np.asarray(canvas.levels[0][:]), expected)
    canvas.build_pyramid(min_side=64)
    assert np.array_equal(np.asarray(canvas.levels[1][:]), expected[::2, ::2])
    canvas.close()


@pytest.mark.parametrize("tiles_per_read", [1, 3, 16])
def test_export_tiles_are_the_canvas_whatever_the_read_span(tmp_path, tiles_per_read):
    canvas = LabelCanvas(tmp_path / "c.zarr", 3000, 700, chunk=128)
    rng = np.random.default_rng(tiles_per_read)
    for _ in range(5):  # sparse: some reads are skipped, some tiles of a read are empty
        canvas.merge(int(rng.integers(-50, 2900)), int(rng.integers(-50, 600)),
                     rng.integers(0, 9, (150, 260)).astype(np.uint32))
    full = canvas.levels[0][:]
    tiles = list(canvas.iter_tiles(0, 128, tiles_per_read=tiles_per_read))
    rows, cols = -(-700 // 128), -(-3000 // 128)
    assert len(tiles) == rows * cols and all(t.shape == (128, 128) for t in tiles)
    mosaic = np.block([[tiles[r * cols + c] for c in range(cols)] for r in range(rows)])
    np.testing.assert_array_equal(mosaic[:700, :3000], full)
    assert not mosaic[700:].any() and not mosaic[:, 3000:].any()
