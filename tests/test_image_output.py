"""The engine's ``image`` kind: tiles cross-faded without seams, streamed to disk, written as a pyramidal
OME-TIFF in float32, uint16 or uint8 with a recorded scale and offset, resumable without double counting."""
from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass

import numpy as np
import pytest

from dlcore.errors import ParameterError, RunStopped
from dlcore.io.image_canvas import ImageCanvas, blend_weights, parity_weights, quantisation_for
from dlcore.io.local import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.tiling.grid import GridSpec, make_grid
from dlcore.workflows import RunOptions, analyse_slide
from tests.synthetic import real_ihc_field, write_ome_tiff

SIGMA = 1.5  # the smoothing model's receptive field: int(4 sigma + 0.5) = 6 px, within half a halo of 16


@dataclass(frozen=True)
class SmoothingTask:
    """A stand-in prediction model: two channels, the window's smoothed grey value and its smoothed red
    channel, plus ``edge_bias * exp(-d / 4)`` where ``d`` is the distance to the window's edge (what a
    network with zero padding does near its input's border, reaching beyond half the halo)."""

    name: str = "smoothing"
    kind: str = "image"
    mpp: float | None = None
    tile_size: int = 64
    halo: int = 16
    batch_size: int = 1
    class_names: tuple = ()
    output_channels: tuple = ("grey", "red")
    value_range: tuple | None = None
    output_dtype: str = "float32"
    edge_bias: float = 0.0

    def check(self, info) -> None:
        pass

    def prepare(self, samples):
        return self

    def predict(self, windows):
        import cv2

        out = []
        for window in windows:
            planes = [window.astype(np.float32).mean(axis=2) / 255.0, window[..., 0].astype(np.float32) / 255.0]
            smooth = np.stack([cv2.GaussianBlur(p, (0, 0), SIGMA, borderType=cv2.BORDER_REFLECT) for p in planes])
            if self.edge_bias:
                h, w = window.shape[:2]
                d = np.minimum.outer(np.minimum(np.arange(h), np.arange(h)[::-1]),
                                     np.minimum(np.arange(w), np.arange(w)[::-1]))
                smooth = smooth + self.edge_bias * np.exp(-d / 4.0)[None]
            out.append(smooth.astype(np.float32))
        return out

    def provenance(self) -> dict:
        return {"task": self.name, "parameters": {"tile_size": self.tile_size, "halo": self.halo,
                                                  "output_dtype": self.output_dtype, "edge_bias": self.edge_bias}}


@pytest.fixture(scope="module")
def field():
    """A border-heavy image: the real IHC section cropped to sizes no tile grid divides (301 x 219)."""
    return np.ascontiguousarray(real_ihc_field()[:219, :301])


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, field):
    return write_ome_tiff(tmp_path_factory.mktemp("slide") / "ihc.ome.tif", field, mpp=0.5, tile=64)


def _run(slide_path, out, task, **options):
    options = {"detect_tissue": False, "workers": 0, "checkpoint": False, **options}
    slide = open_slide(slide_path)
    try:
        return analyse_slide(slide, task, LocalFolderSink(out), options=RunOptions(**options))
    finally:
        slide.close()


def _prediction(folder):
    import tifffile

    with tifffile.TiffFile(folder / "prediction.ome.tif") as tif:
        return tif.series[0].levels[0].asarray(), tif


def test_blend_weights_sum_to_one_where_tiles_overlap_and_vanish_near_window_edges():
    for tile, halo in ((64, 16), (64, 15), (100, 50), (32, 1)):
        w = blend_weights(tile + 2 * halo, halo)
        assert (w[:halo // 2] == 0).all() and (w[len(w) - halo // 2:] == 0).all()
        assert w[halo:halo + tile].min() > 0
        weights = parity_weights(5 * tile + 7, tile, halo)
        total = weights.sum(axis=0)
        np.testing.assert_allclose(total[halo:-tile - halo], 1.0, atol=1e-6)  # interior: a partition of unity
        assert total.min() > 0  # every pixel, borders included, gets weight


def test_tiled_prediction_equals_the_whole_image_one_when_the_model_sees_less_than_half_the_halo(slide_path, tmp_path):
    tiled = _run(slide_path, tmp_path / "tiled", SmoothingTask(tile_size=64, halo=16))
    whole = _run(slide_path, tmp_path / "whole", SmoothingTask(tile_size=512, halo=16))
    assert tiled.summary["tiles"] == 20 and whole.summary["tiles"] == 1
    a, _ = _prediction(tmp_path / "tiled" / "ihc" / "smoothing")
    b, _ = _prediction(tmp_path / "whole" / "ihc" / "smoothing")
    assert a.shape == b.shape == (2, 219, 301) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_model_with_edge_artefacts_is_cross_faded_without_seams(slide_path, tmp_path):
    """The artefact reaches past half the halo: the tiled image differs from the whole one by at most the
    artefact's size at half a halo from the edge (the stated tolerance), and the difference changes
    smoothly across tile seams (a seam would be a jump of the artefact's full size)."""
    bias = 0.3
    _run(slide_path, tmp_path / "tiled", SmoothingTask(edge_bias=bias))
    _run(slide_path, tmp_path / "whole", SmoothingTask(tile_size=512, edge_bias=bias))
    a, _ = _prediction(tmp_path / "tiled" / "ihc" / "smoothing")
    b, _ = _prediction(tmp_path / "whole" / "ihc" / "smoothing")
    error = a[0] - b[0]
    inside = error[16:-16, 16:-16]  # away from the image's border (there the whole-image window has the bias too)
    tolerance = bias * np.exp(-(16 // 2) / 4.0)
    assert np.abs(inside).max() <= tolerance + 1e-5
    assert np.abs(inside).max() > 0.2 * tolerance  # the artefact is really there (the test can fail)
    jumps = np.abs(np.diff(error, axis=1))
    assert jumps.max() < 0.25 * tolerance  # no seam: neighbouring pixels' errors differ by little
    cut = bias * np.exp(-16 / 4.0)  # what cropping cores would leave at a seam: two tiles' artefacts meet
    assert jumps.max() < cut or cut < 1e-3


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
def test_integer_outputs_record_scale_and_offset_that_give_back_the_values(slide_path, tmp_path, dtype):
    reference = _run(slide_path, tmp_path / "float", SmoothingTask())
    result = _run(slide_path, tmp_path / dtype, SmoothingTask(output_dtype=dtype))
    exact, _ = _prediction(tmp_path / "float" / "ihc" / "smoothing")
    stored, _ = _prediction(tmp_path / dtype / "ihc" / "smoothing")
    assert stored.dtype == np.dtype(dtype)
    image = result.summary["predicted_image"]
    assert image["dtype"] == dtype and image["range_measured"] is True
    scale, offset = np.array(image["scale"])[:, None, None], np.array(image["offset"])[:, None, None]
    np.testing.assert_allclose(offset + scale * stored, exact, atol=scale.max() / 2 + 1e-6)
    for c, name in enumerate(("grey", "red")):  # the range spans the values exactly: both ends are used
        assert image["value_range"][name] == pytest.approx([exact[c].min(), exact[c].max()], abs=1e-5)
        assert stored[c].min() == 0 and stored[c].max() == np.iinfo(dtype).max
    assert reference.summary["predicted_image"]["scale"] == [1.0, 1.0]


def test_a_known_value_range_is_used_and_values_beyond_it_clipped(slide_path, tmp_path):
    result = _run(slide_path, tmp_path / "out", SmoothingTask(output_dtype="uint8", value_range=(0.0, 0.5)))
    stored, _ = _prediction(tmp_path / "out" / "ihc" / "smoothing")
    assert result.summary["predicted_image"]["range_measured"] is False
    assert result.summary["predicted_image"]["scale"] == [pytest.approx(0.5 / 255)] * 2
    assert stored.max() == 255  # grey values above 0.5 are clipped to the top


def test_the_prediction_file_is_a_pyramidal_ome_tiff_with_channel_names_and_pixel_size(slide_path, tmp_path):
    import tifffile

    result = _run(slide_path, tmp_path / "out", SmoothingTask(output_dtype="uint16"))
    folder = tmp_path / "out" / "ihc" / "smoothing"
    assert result.outputs["predicted image"] == str(folder / "prediction.ome.tif")
    assert sorted(p.name for p in folder.iterdir()) == ["overview.png", "prediction.ome.tif", "provenance.json"]
    with tifffile.TiffFile(folder / "prediction.ome.tif") as tif:
        series = tif.series[0]
        assert series.axes == "CYX" and len(series.levels) >= 1
        ome = tif.ome_metadata
    assert 'Name="grey"' in ome and 'Name="red"' in ome and 'PhysicalSizeX="0.5"' in ome
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["summary"]["predicted_image"]["channels"] == ["grey", "red"]


def test_a_big_prediction_has_a_pyramid_of_means(tmp_path):
    canvas = ImageCanvas(tmp_path / "c.zarr", 1100, 600, ("v",), tile_size=256, halo=8)
    ramp = np.tile(np.linspace(0, 1, 1100, dtype=np.float32), (600, 1))
    for tile in make_grid(1100, 600, GridSpec(256, 8)):
        x, y, w, h = tile.window
        window = np.pad(ramp, 8, mode="reflect")[y + 8:y + 8 + h, x + 8:x + 8 + w]
        canvas.add(tile, window[None])
    canvas.finalise(dtype="float32")
    assert [level.shape for level in canvas.levels] == [(1, 600, 1100), (1, 300, 550), (1, 150, 275), (1, 75, 138)]
    np.testing.assert_allclose(canvas.values(0, 0, 0, 1100, 600)[0], ramp, atol=1e-6)
    np.testing.assert_allclose(canvas.values(1, 0, 0, 550, 300)[0], ramp.reshape(300, 2, 550, 2).mean(axis=(1, 3)),
                               atol=1e-6)


def test_a_tile_added_twice_is_not_counted_twice(tmp_path, field):
    """What a run continued from a checkpoint does: tiles after the last commit are done again."""
    task = SmoothingTask()
    grid = make_grid(301, 219, GridSpec(task.tile_size, task.halo))
    padded = np.pad(field, ((task.halo,) * 2, (task.halo,) * 2, (0, 0)), mode="reflect")

    def canvas_with(tiles, name):
        canvas = ImageCanvas(tmp_path / name, 301, 219, task.output_channels, tile_size=64, halo=16)
        for tile in tiles:
            x, y, w, h = tile.window
            canvas.add(tile, task.predict([padded[y + 16:y + 16 + h, x + 16:x + 16 + w]])[0])
        canvas.finalise()
        return canvas.values(0, 0, 0, 301, 219)

    once = canvas_with(grid, "once")
    twice = canvas_with(grid[:11] + grid[7:], "twice")
    np.testing.assert_array_equal(once, twice)


def test_a_stopped_image_run_continues_from_its_checkpoint_with_the_same_result(slide_path, tmp_path, monkeypatch):
    import time

    import dlcore.workflows as workflows

    reference = _run(slide_path, tmp_path / "ref", SmoothingTask(output_dtype="uint16"))
    clock = {"now": 0.0}

    def fake_time() -> float:
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(workflows, "time", types.SimpleNamespace(time=fake_time, perf_counter=time.perf_counter))
    options = dict(checkpoint=True, work_dir=tmp_path / "work", checkpoint_every_s=0.0)
    with pytest.raises(RunStopped, match="after 7 of 20 tiles"):
        _run(slide_path, tmp_path / "out", SmoothingTask(output_dtype="uint16"), deadline=8.0, **options)
    monkeypatch.undo()
    result = _run(slide_path, tmp_path / "out", SmoothingTask(output_dtype="uint16"), **options)
    assert result.summary["resumed"]["tiles_done_before"] == 7
    a, _ = _prediction(tmp_path / "out" / "ihc" / "smoothing")
    b, _ = _prediction(tmp_path / "ref" / "ihc" / "smoothing")
    np.testing.assert_array_equal(a, b)
    assert result.summary["predicted_image"] == reference.summary["predicted_image"]


def test_a_halo_over_half_the_tile_and_an_unknown_type_are_refused(slide_path, tmp_path):
    with pytest.raises(ParameterError, match=r"halo=40 is more than half of tile_size=64.*halo <= 32"):
        _run(slide_path, tmp_path / "a", SmoothingTask(halo=40))
    with pytest.raises(ParameterError, match=r"output_dtype='int8' is not one of float32, uint16, uint8"):
        quantisation_for("int8", [(0, 1)], measured=True)
    assert not (tmp_path / "a" / "ihc" / "smoothing").exists()


def test_the_task_must_return_one_value_per_window_pixel_and_channel(slide_path, tmp_path):
    @dataclass(frozen=True)
    class Cropping(SmoothingTask):
        def predict(self, windows):
            return [p[:, 1:, :] for p in super().predict(windows)]

    from dlcore.errors import InvariantError

    with pytest.raises(InvariantError, match=r"returned \(2, 95, 96\), not \(2, 96, 96\)"):
        _run(slide_path, tmp_path / "a", dataclasses.replace(Cropping()))
    assert not (tmp_path / "a" / "ihc" / "smoothing").exists()


def test_the_prediction_as_ome_zarr_names_its_channels_and_scales(slide_path, tmp_path):
    import zarr

    slide = open_slide(slide_path)
    try:
        analyse_slide(slide, SmoothingTask(output_dtype="uint8"), LocalFolderSink(tmp_path, label_format="ome-zarr"),
                      options=RunOptions(detect_tissue=False, workers=0, checkpoint=False))
    finally:
        slide.close()
    path = tmp_path / "ihc" / "smoothing" / "prediction.ome.zarr"
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["grey", "red"]
    assert attrs["omero"]["channels"][0]["window"] == {"start": 0.0, "end": 255.0}
    scales = [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]
    assert scales[0] == [1.0, 0.5, 0.5]
    assert group["0"].shape == (2, 219, 301) and group["0"].dtype == np.uint8
    assert "planes" not in group  # the blending planes are gone
    assert attrs["dlcore_image"]["rule"] == "value = offset + scale * stored"
