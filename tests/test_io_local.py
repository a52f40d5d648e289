"""Local slide readers: geometry, pixel values, metadata, and a clear error for each kind of bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlcore.errors import InputError, SlideError
from dlcore.io import open_slide
from dlcore.io.local import OpenSlideSlide, PlainImageSlide, TiffSlide
from dlcore.io.slide import plan_resolution, read_working, with_mpp
from dlcore.tasks.classical import ClassicalNuclei
from synthetic import write_ome_tiff, write_png

DATA = Path(__file__).parent / "data"


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (600, 700, 3), dtype=np.uint8)


def test_ome_tiff_levels_metadata_and_pixels(tmp_path, rgb):
    path = write_ome_tiff(tmp_path / "s.ome.tif", rgb, mpp=0.25, tile=128, levels=3)
    slide = open_slide(path)
    assert isinstance(slide, TiffSlide)
    info = slide.info
    assert (info.width, info.height) == (700, 600)
    assert [lv.width for lv in info.levels] == [700, 350, 175]
    assert info.levels[2].downsample == pytest.approx(4.0)
    assert info.mpp == pytest.approx((0.25, 0.25))
    assert info.tile_size == (128, 128)
    assert info.channels == ("R", "G", "B") and info.dtype == "uint8"
    # a region crossing several native tiles equals the source, on every level
    np.testing.assert_array_equal(slide.read_region(0, 100, 120, 300, 200), rgb[120:320, 100:400])
    np.testing.assert_array_equal(slide.read_region(1, 10, 20, 200, 100), rgb[::2, ::2][20:120, 10:210])
    np.testing.assert_array_equal(slide.read_region(0, 699, 599, 1, 1), rgb[599:600, 699:700])
    # second read comes from the tile cache
    hits = slide.cache.hits
    slide.read_region(0, 100, 120, 300, 200)
    assert slide.cache.hits > hits
    slide.close()


def test_multichannel_16bit_ome_tiff(tmp_path):
    data = np.arange(3 * 300 * 260, dtype=np.uint16).reshape(3, 300, 260)
    path = write_ome_tiff(tmp_path / "fluo.ome.tif", data, axes="CYX", tile=64, levels=2)
    slide = open_slide(path)
    assert slide.info.channels == ("C0", "C1", "C2") and slide.info.dtype == "uint16"
    region = slide.read_region(0, 50, 40, 100, 70)
    assert region.shape == (70, 100, 3)
    np.testing.assert_array_equal(region, np.moveaxis(data[:, 40:110, 50:150], 0, -1))


def test_resolution_plan_picks_level_and_resamples(tmp_path, rgb):
    slide = open_slide(write_ome_tiff(tmp_path / "s.ome.tif", rgb, mpp=0.25, tile=128, levels=3))
    plan = plan_resolution(slide.info, 0.5)  # exactly level 1
    assert (plan.level, plan.scale, plan.factor) == (1, 1.0, 2.0)
    plan = plan_resolution(slide.info, 0.75)  # between levels 1 and 2: read level 1 and shrink
    assert plan.level == 1 and plan.scale == pytest.approx(2 / 3) and plan.factor == pytest.approx(3.0)
    window = read_working(slide, plan, 0, 0, 100, 100)
    assert window.shape == (100, 100, 3) and window.dtype == np.uint8
    assert plan_resolution(slide.info, None).level == 0


def test_openslide_svs():
    slide = open_slide(DATA / "small.svs")
    assert isinstance(slide, OpenSlideSlide)
    assert slide.info.levels[0].width > 0 and slide.info.dtype == "uint8"
    region = slide.read_region(0, 0, 0, 10, 10)
    assert region.shape == (10, 10, 3)


def test_plain_png_is_one_level(tmp_path, rgb):
    slide = open_slide(write_png(tmp_path / "a.png", rgb))
    assert isinstance(slide, PlainImageSlide) and len(slide.info.levels) == 1
    assert slide.info.mpp is None
    np.testing.assert_array_equal(slide.read_region(0, 5, 6, 7, 8), rgb[6:14, 5:12])


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")


def test_unsupported_format(tmp_path):
    path = tmp_path / "slide.czi"
    path.write_bytes(b"ZISRAWFILE")
    with pytest.raises(SlideError, match="unsupported file type '.czi'.*OME-TIFF"):
        open_slide(path)


@pytest.mark.parametrize("name,content", [("bad.tif", b"II*\x00garbage" * 10), ("bad.png", b"\x89PNG\r\n\x1a\nnot really")])
def test_corrupt_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideError, match="corrupt"):
        open_slide(path)


def test_corrupt_svs():
    with pytest.raises(SlideError, match="corrupt|cannot be opened|not a slide format"):
        open_slide(DATA / "unreadable.svs")


def test_truncated_tiff(tmp_path, rgb):
    path = write_ome_tiff(tmp_path / "full.ome.tif", rgb, tile=128, levels=1)
    data = path.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideError, match="truncated"):
        open_slide(cut)


def test_no_pixel_size_needs_mpp(tmp_path, rgb):
    slide = open_slide(write_png(tmp_path / "a.png", rgb))
    with pytest.raises(InputError, match="no physical pixel size.*--mpp"):
        plan_resolution(slide.info, 0.5)
    plan = plan_resolution(with_mpp(slide.info, 0.25), 0.5)
    assert plan.factor == pytest.approx(2.0)
    with pytest.raises(InputError, match="positive pixel size"):
        with_mpp(slide.info, -1)


def test_rgb_task_refuses_16bit_and_single_channel(tmp_path):
    grey16 = open_slide(write_ome_tiff(tmp_path / "g.ome.tif", np.zeros((64, 64), np.uint16), levels=1, tile=64))
    with pytest.raises(SlideError, match="needs 8-bit RGB.*--channel 0"):
        ClassicalNuclei().check(grey16.info)
    ClassicalNuclei(channel=0).check(grey16.info)  # a channel index works
    with pytest.raises(SlideError, match="channel 3 does not exist"):
        ClassicalNuclei(channel=3).check(grey16.info)


def test_region_outside_image(tmp_path, rgb):
    slide = open_slide(write_ome_tiff(tmp_path / "s.ome.tif", rgb, tile=128, levels=2))
    with pytest.raises(InputError, match="outside level 0"):
        slide.read_region(0, 650, 0, 100, 10)
    with pytest.raises(InputError, match="level 5 does not exist"):
        slide.read_region(5, 0, 0, 1, 1)
    with pytest.raises(InputError, match="empty"):
        slide.read_region(0, 0, 0, 0, 10)
