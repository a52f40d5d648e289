"""OmeroSlide against the in-process OMERO double: levels, tiles, pixel types, pixel size, stores."""
import numpy as np
import pytest
from omero.model.enums import UnitsLength

from dlcore.errors import SlideError
from dlcore.omero.slide import OmeroSlide
from omero_double import Server


def _server():
    server = Server()
    group = server.add_group("lab", "rwra--")
    user = server.add_user("alice", [group])
    return server, server.connect(user, group), user, group


def _pyramid(base: np.ndarray) -> list[np.ndarray]:
    levels = [base]
    while max(levels[-1].shape[:2]) > 64:
        levels.append(levels[-1][::2, ::2].copy())
    return levels


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "float32", "float64"])
def test_every_pixel_type_reads_back_exactly(dtype):
    server, conn, user, group = _server()
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    base = (rng.integers(info.min, info.max, (300, 420, 2), endpoint=True) if info else rng.normal(0, 1e3, (300, 420, 2))).astype(dtype)
    iid = server.add_image(_pyramid(base), name="x", owner=user, group=group, tile=(128, 96))
    slide = OmeroSlide(conn, conn.getObject("Image", iid))
    try:
        assert slide.info.dtype == np.dtype(dtype).name
        region = slide.read_region(0, 37, 50, 300, 200)  # spans several native tiles
        assert region.dtype == np.dtype(dtype) and region.dtype.isnative
        np.testing.assert_array_equal(region, base[50:250, 37:337])
    finally:
        slide.close()


def test_levels_are_full_resolution_first_and_read_from_the_right_omero_level():
    server, conn, user, group = _server()
    base = np.zeros((512, 768, 3), np.uint8)
    levels = _pyramid(base)
    for index, level in enumerate(levels):
        level[...] = index * 40 + 10  # each level has its own value
    iid = server.add_image(levels, name="rgb", owner=user, group=group, channel_names=["R", "G", "B"])
    slide = OmeroSlide(conn, conn.getObject("Image", iid))
    try:
        assert [(lv.width, lv.height) for lv in slide.info.levels] == [(768, 512), (384, 256), (192, 128), (96, 64), (48, 32)]
        assert [lv.downsample for lv in slide.info.levels] == [1.0, 2.0, 4.0, 8.0, 16.0]
        for index, level in enumerate(slide.info.levels):
            assert slide.read_region(index, 0, 0, level.width, level.height).max() == index * 40 + 10
        assert slide.info.is_rgb and slide.info.channels == ("R", "G", "B")
        assert slide.info.tile_size == (256, 256)
    finally:
        slide.close()


def test_pixel_size_is_converted_to_micrometres():
    server, conn, user, group = _server()
    iid = server.add_image([np.zeros((64, 64, 1), np.uint16)], name="nm", owner=user, group=group, mpp=250.0,
                           mpp_unit=UnitsLength.NANOMETER)
    no_size = server.add_image([np.zeros((64, 64, 1), np.uint16)], name="none", owner=user, group=group, mpp=None)
    with OmeroSlide(conn, conn.getObject("Image", iid)) as slide:
        assert slide.info.mpp == pytest.approx((0.25, 0.25))
    with OmeroSlide(conn, conn.getObject("Image", no_size)) as slide:
        assert slide.info.mpp is None


def test_unsupported_pixel_type_is_refused_clearly_and_stores_are_closed():
    server, conn, user, group = _server()
    iid = server.add_image([np.zeros((64, 64, 1), np.uint8)], name="bits", owner=user, group=group, pixels_type="bit")
    with pytest.raises(SlideError, match="pixel type 'bit'.*Convert"):
        OmeroSlide(conn, conn.getObject("Image", iid))
    assert not server.open_stores


def test_one_store_per_reader_thread_and_all_closed():
    from concurrent.futures import ThreadPoolExecutor

    server, conn, user, group = _server()
    base = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512, 1)
    iid = server.add_image(_pyramid(base), name="t", owner=user, group=group, tile=(64, 64))
    slide = OmeroSlide(conn, conn.getObject("Image", iid))
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda y: slide.read_region(0, 0, y, 512, 64), range(0, 512, 64)))
    np.testing.assert_array_equal(np.concatenate(parts), base)
    assert 2 <= server.calls["Session.createRawPixelsStore"] <= 4  # the describing thread + up to 3 readers
    assert all(s.pixels_id for s in server.open_stores)
    slide.close()
    assert not server.open_stores
    reads = server.calls["RawPixelsStore.getTile"]
    slide2 = OmeroSlide(conn, conn.getObject("Image", iid))
    slide2.read_region(0, 10, 10, 20, 20)
    slide2.read_region(0, 12, 12, 20, 20)  # same native tile: served from the cache
    assert server.calls["RawPixelsStore.getTile"] == reads + 1
    slide2.close()
