"""The worker pool: the same objects, ids and files whatever the number of workers; bounded queues."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
import tifffile

from dlcore.cores import available_cores, share_cores
from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.tiling.engine import run_tiles
from dlcore.tiling.grid import GridSpec, make_grid
from dlcore.tiling.pool import TileWork, WorkerPool
from dlcore.workflows import RunOptions, analyse_slide

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "ihc.ome.tif",
                                 SyntheticSlideSpec(width=2048, height=1536, seed=11))


def _outputs(slide_path, out: Path, task, workers: int) -> dict[str, str]:
    slide = open_slide(slide_path)
    try:
        result = analyse_slide(slide, task, LocalFolderSink(out), options=RunOptions(workers=workers))
    finally:
        slide.close()
    assert result.provenance["timings"]["workers"] == workers
    folder = out / "ihc" / task.name
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
               for name in ("objects.csv", "objects.geojson")}
    with tifffile.TiffFile(folder / "labels.ome.tif") as tif:
        digests["labels"] = hashlib.sha256(tif.series[0].asarray().tobytes()).hexdigest()
    digests["objects"] = result.summary["objects"]
    return digests


def test_classical_results_are_identical_for_0_1_2_and_3_workers(slide_path, tmp_path):
    task = ClassicalNuclei(tile_size=384)  # small tiles: many objects cross tile borders
    runs = {w: _outputs(slide_path, tmp_path / f"w{w}", task, w) for w in (0, 1, 2, 3)}
    assert runs[0]["objects"] > 300
    assert runs[1] == runs[0] and runs[2] == runs[0] and runs[3] == runs[0]


def test_model_instances_are_identical_inline_and_in_workers(slide_path, tmp_path):
    """The shipped instance model: the network in the main process, the watershed and the objects in
    the workers."""
    from dlcore.config import Config
    from dlcore.models.registry import load_task

    task = load_task("nuclei-ihc-unet", {"device": "cpu"}, config=Config(models_dir=ROOT / "models"))
    inline = _outputs(slide_path, tmp_path / "w0", task, 0)
    assert inline["objects"] > 100
    assert _outputs(slide_path, tmp_path / "w2", task, 2) == inline


def test_queues_hold_a_few_tiles_per_worker_never_the_slide(slide_path):
    """The writer consumes slowly: the tiles read but not yet consumed stay bounded, whatever the slide."""
    slide = open_slide(slide_path)
    try:
        from dlcore.io.slide import plan_resolution

        plan = plan_resolution(slide.info, None)
        tiles = make_grid(slide.info.width, slide.info.height, GridSpec(128, 8))
        assert len(tiles) > 150
        state = {"read": 0, "consumed": 0, "peak": 0}
        lock = threading.Lock()

        def infer(windows):
            with lock:
                state["read"] += len(windows)
                state["peak"] = max(state["peak"], state["read"] - state["consumed"])
            return [w[..., 0] for w in windows]

        def consume(tile, window, result):
            time.sleep(0.002)
            with lock:
                state["consumed"] += 1

        with WorkerPool(TileWork(), 2) as pool:
            times = run_tiles(slide, plan, tiles, infer=infer, pool=pool, consume=consume, batch_size=4)
        assert state["consumed"] == len(tiles) == times.tiles
        assert state["peak"] <= 4 * 4  # a few batches of 4, not the slide's 190 tiles
    finally:
        slide.close()


@pytest.mark.parametrize("failing", ["consume", "progress"])
def test_an_error_in_the_writer_stops_the_run_and_is_raised(slide_path, failing):
    """A consumer or a progress callback that raises (in the writer thread) ends the run with its error,
    never a hang: the producer stops at the next batch and the queues drain."""
    from dlcore.io.slide import plan_resolution

    slide = open_slide(slide_path)
    try:
        plan = plan_resolution(slide.info, None)
        tiles = make_grid(slide.info.width, slide.info.height, GridSpec(128, 8))
        consumed = []

        def consume(tile, window, result):
            consumed.append(tile)
            if failing == "consume" and len(consumed) == 5:
                raise RuntimeError("consume failed")

        def progress(stage, done, total):
            if failing == "progress" and done == 5:
                raise RuntimeError("progress failed")

        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("error", _raised(
            lambda: run_tiles(slide, plan, tiles, infer=lambda ws: [w[..., 0] for w in ws], pool=pool,
                              consume=consume, progress=progress))))
        with WorkerPool(TileWork(), 0) as pool:
            thread.start()
            thread.join(60)
        assert not thread.is_alive(), "the run hung"
        assert str(result["error"]) == f"{failing} failed"
        assert len(consumed) < len(tiles)
    finally:
        slide.close()


def _raised(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return None


def test_core_share(monkeypatch):
    assert share_cores(whole_in_workers=True, model_on_gpu=False, cores=16).workers == 16
    cpu_model = share_cores(whole_in_workers=False, model_on_gpu=False, cores=16)
    assert (cpu_model.workers, cpu_model.torch_threads) == (8, 8)
    gpu_model = share_cores(whole_in_workers=False, model_on_gpu=True, cores=16)
    assert (gpu_model.workers, gpu_model.torch_threads) == (15, 1)
    assert share_cores(whole_in_workers=False, model_on_gpu=False, cores=2).workers == 1
    given = share_cores(whole_in_workers=False, model_on_gpu=False, workers=3, torch_threads=2, cores=16)
    assert (given.workers, given.torch_threads) == (3, 2)
    monkeypatch.setenv("DLCORE_CORES", "1")
    assert available_cores() == 1
    monkeypatch.setenv("DLCORE_CORES", "zero")
    from dlcore.errors import ConfigError

    with pytest.raises(ConfigError, match="DLCORE_CORES"):
        available_cores()


def test_slides_at_once_give_what_one_after_the_other_gives(tmp_path):
    """Two slides side by side, each in its own process with half the cores: the same files as one after
    the other; a slide that fails is reported and the others still finish."""
    from dlcore.batch import SlideJob, analyse_slides, cores_per_slide

    paths = [write_synthetic_slide(tmp_path / f"s{i}.ome.tif", SyntheticSlideSpec(width=1024, height=768, seed=i))
             for i in (1, 2)]
    broken = tmp_path / "broken.ome.tif"
    broken.write_bytes(b"not a tiff")
    digests = {}
    for at_once in (1, 2):
        job = SlideJob(task="nuclei-classical", params={"tile_size": 384}, out=tmp_path / f"out{at_once}",
                       label_format="ome-tiff", options=RunOptions())
        outcomes = {o.path.name: o for o in analyse_slides(job, [*paths, broken], at_once=at_once)}
        assert set(outcomes) == {"s1.ome.tif", "s2.ome.tif", "broken.ome.tif"}
        assert outcomes["broken.ome.tif"].error and "broken.ome.tif" in outcomes["broken.ome.tif"].error
        assert all(outcomes[p.name].summary["objects"] > 20 for p in paths)
        digests[at_once] = {(p.stem, name): hashlib.sha256((job.out / p.name.split(".")[0] / "nuclei-classical" / name)
                                                           .read_bytes()).hexdigest()
                            for p in paths for name in ("objects.csv", "objects.geojson")}
    assert digests[2] == digests[1]
    assert cores_per_slide(2) == max(1, available_cores() // 2)
    bad = SlideJob(task="nuclei-classical", params={"sigma": -2}, out=tmp_path / "bad", label_format="ome-tiff",
                   options=RunOptions())  # each slide's process resolves the task: each reports the bad parameter
    assert all("sigma=-2" in o.error for o in analyse_slides(bad, paths, at_once=2))


def test_semantic_model_maps_are_identical_inline_and_in_workers(slide_path, tmp_path):
    """The shipped tissue model: the network in the main process, the class map in the workers."""
    from dlcore.config import Config
    from dlcore.models.registry import load_task

    task = load_task("tissue-ihc-unet", {"device": "cpu"}, config=Config(models_dir=ROOT / "models"))
    digests = {}
    for workers in (0, 2):
        slide = open_slide(slide_path)
        try:
            result = analyse_slide(slide, task, LocalFolderSink(tmp_path / f"w{workers}"),
                                   options=RunOptions(workers=workers))
        finally:
            slide.close()
        assert result.provenance["timings"]["workers"] == workers
        folder = tmp_path / f"w{workers}" / "ihc" / task.name
        with tifffile.TiffFile(folder / "labels.ome.tif") as tif:
            labels = tif.series[0].asarray()
        assert labels.max() >= 1 and (labels > 0).mean() > 0.05  # tissue found
        digests[workers] = (hashlib.sha256(labels.tobytes()).hexdigest(),
                            hashlib.sha256((folder / "class_outlines.geojson").read_bytes()).hexdigest(),
                            result.summary.get("class_pixels"))
    assert digests[2] == digests[0]
