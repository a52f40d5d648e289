"""Tile-grid geometry and tissue detection."""
from __future__ import annotations

import numpy as np
import pytest

from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
from dlcore.errors import ParameterError
from dlcore.io import open_slide
from dlcore.tiling.grid import GridSpec, Tile, make_grid
from dlcore.tiling.tissue import detect_tissue


def test_grid_cores_cover_the_image_exactly_once():
    tiles = make_grid(1000, 700, GridSpec(tile_size=256, halo=16))
    cover = np.zeros((700, 1000), int)
    for t in tiles:
        cover[t.y:t.y + t.height, t.x:t.x + t.width] += 1
    assert (cover == 1).all()
    assert len(tiles) == 4 * 3
    last = tiles[-1]
    assert (last.x, last.y, last.width, last.height) == (768, 512, 232, 188)
    assert last.window == (752, 496, 264, 220)


def test_ownership_is_half_open():
    t = Tile(row=0, col=0, x=0, y=0, width=100, height=100, halo=10)
    assert t.owns(0, 0) and t.owns(99.9, 50) and not t.owns(100, 50) and not t.owns(-0.1, 5)


def test_grid_skips_tiles_without_tissue():
    mask = np.zeros((10, 10), bool)
    mask[0:1, 0:1] = True  # tissue only in the top-left corner
    tiles = make_grid(1000, 1000, GridSpec(tile_size=250, halo=10), mask=mask)
    assert {(t.row, t.col) for t in tiles} == {(0, 0)}


@pytest.mark.parametrize("kwargs", [dict(tile_size=16), dict(tile_size=256, halo=-1), dict(tile_size=64, halo=64)])
def test_grid_spec_validation(kwargs):
    with pytest.raises(ParameterError):
        GridSpec(**kwargs)


@pytest.mark.parametrize("background", ["white", "black"])
def test_tissue_detection_on_white_and_black_glass(tmp_path, background):
    spec = SyntheticSlideSpec(width=2048, height=1536, background=background, tissue_fraction=0.5, seed=3)
    path = write_synthetic_slide(tmp_path / f"{background}.ome.tif", spec)
    slide = open_slide(path)
    tissue = detect_tissue(slide, max_side=512)
    # ground truth: the generator's own tissue field at the mask's resolution
    from dlcore.demo import SyntheticSlide

    synth = SyntheticSlide(spec)
    truth = synth.region(4, 0, 0, 512, 384).astype(int)
    truth_mask = (np.abs(truth - (255 if background == "white" else 8)).max(axis=2) > 12)
    h, w = tissue.mask.shape
    from skimage.transform import resize

    truth_mask = resize(truth_mask, (h, w), order=0) > 0
    agreement = (tissue.mask == truth_mask).mean()
    assert agreement > 0.95, agreement
    assert 0.35 < tissue.tissue_fraction() < 0.65
