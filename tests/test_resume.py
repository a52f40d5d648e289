"""A run killed at any point continues from its checkpoint, and its results equal an uninterrupted run's.

Each kill is a real ``SIGKILL`` of a forked process running :func:`analyse_slide` (no cleanup code of
dlcore runs); the resumed run is compared byte for byte (CSV, GeoJSON) and pixel for pixel (the label
image) with a run that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
from dlcore.errors import OutputError, RunStopped
from dlcore.io import open_slide
from dlcore.io.labels import LabelCanvas
from dlcore.io.local_sink import LocalFolderSink
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.tiling import checkpoint as checkpoint_module
from dlcore.tiling.checkpoint import Checkpoint, checkpoint_root
from dlcore.workflows import RunOptions, analyse_slide

TASK = ClassicalNuclei(tile_size=256)  # 1536 x 1024 at 0.5 µm/px: 21 tiles on tissue
RESULT_FILES = ("objects.csv", "objects.geojson", "overview.png")


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "ihc.ome.tif",
                                 SyntheticSlideSpec(width=1536, height=1024, seed=5))


@pytest.fixture(scope="module")
def reference(slide_path, tmp_path_factory):
    """The uninterrupted run's result folder."""
    out = tmp_path_factory.mktemp("reference")
    _run(slide_path, out, RunOptions(work_dir=out / "scratch", checkpoint=False))
    return out / "ihc" / TASK.name


def _run(slide_path, out, options, *, sink=None, progress=None, task=TASK):
    slide = open_slide(slide_path)
    try:
        return analyse_slide(slide, task, sink or LocalFolderSink(out), options=options, progress=progress)
    finally:
        slide.close()


_WORKERS_FILE = {"path": None}  # where a dying run writes its worker processes' pids


def _die() -> None:
    if _WORKERS_FILE["path"] is not None:
        _WORKERS_FILE["path"].write_text(" ".join(str(p.pid) for p in multiprocessing.active_children()))
    os.kill(os.getpid(), signal.SIGKILL)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped by its new parent


class _DyingSink(LocalFolderSink):
    """A local sink whose process is killed at one point of its work."""

    def __init__(self, out, when: str) -> None:
        super().__init__(out)
        self.when = when

    def begin(self, context) -> None:
        super().begin(context)
        if self.when == "begin":
            _die()

    def _replace(self, final, partial) -> None:  # the export is written, the folder not yet in place
        if self.when == "export":
            _die()
        super()._replace(final, partial)


def _killed_run(slide_path, out, options, *, when: str, small_cache: bool = False, commit_every: int = 1,
                task=TASK) -> None:
    """Run in a forked process that is SIGKILLed at ``when`` ("begin", "tile:N", "export")."""

    def child() -> None:
        if small_cache:  # evictions store chunks of tiles after the last commit, as on a big slide
            import dlcore.workflows as workflows

            real = workflows.LabelCanvas
            workflows.LabelCanvas = lambda *a, **k: real(*a, **{**k, "cache_chunks": 2})
        if commit_every > 1:  # commit every n tiles instead of every `every_s` seconds
            calls = {"n": 0}

            def due(self) -> bool:
                calls["n"] += 1
                return calls["n"] % commit_every == 0

            checkpoint_module.Checkpoint.due = due
        if when.startswith("commit:"):  # right after the first commit of at least that many tiles
            real_commit, at = checkpoint_module.Checkpoint.commit, int(when.split(":")[1])

            def commit_then_die(self, *, tiles_done, **kwargs):
                real_commit(self, tiles_done=tiles_done, **kwargs)
                if tiles_done >= at:
                    _die()
            checkpoint_module.Checkpoint.commit = commit_then_die
        progress = None
        if when.startswith("tile:"):
            at = int(when.split(":")[1])

            def progress(stage, done, total):
                if stage == "tiles" and done >= at:
                    _die()
        _run(slide_path, out, options, sink=_DyingSink(out, when), progress=progress, task=task)
        os._exit(0)

    workers_file = Path(out).parent / f"workers-{os.getpid()}.txt"
    workers_file.unlink(missing_ok=True)
    _WORKERS_FILE["path"] = workers_file
    try:
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(120)
    finally:
        _WORKERS_FILE["path"] = None
    assert process.exitcode == -signal.SIGKILL, f"the run was not killed at {when} (exit code {process.exitcode})"
    workers = [int(p) for p in workers_file.read_text().split()] if workers_file.exists() else []
    deadline = time.time() + 10
    while time.time() < deadline and not all(_gone(p) for p in workers):
        time.sleep(0.1)
    assert all(_gone(p) for p in workers), f"the killed run's workers {workers} outlived it"


def _assert_same_results(folder: Path, reference: Path) -> None:
    for name in RESULT_FILES:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs"
    np.testing.assert_array_equal(tifffile.imread(folder / "labels.ome.tif"), tifffile.imread(reference / "labels.ome.tif"))


def _options(tmp_path, **changes) -> RunOptions:
    return RunOptions(work_dir=tmp_path / "scratch", checkpoint_every_s=0.0, **changes)


def _checkpoints(tmp_path) -> list[Path]:
    root = checkpoint_root(tmp_path / "scratch")
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


@pytest.mark.parametrize("when, resumed_from", [
    ("begin", None),       # before the first tile: nothing to continue, the run starts over
    ("tile:1", 1),
    ("tile:13", 13),
    ("export", 21),        # every tile done, killed while the results were being put in place
])
def test_a_killed_run_continues_and_equals_the_uninterrupted_run(slide_path, reference, tmp_path, when, resumed_from):
    out = tmp_path / "out"
    _killed_run(slide_path, out, _options(tmp_path), when=when)
    assert not (out / "ihc" / TASK.name).exists()  # nothing half-written in place
    result = _run(slide_path, out, _options(tmp_path))
    folder = out / "ihc" / TASK.name
    _assert_same_results(folder, reference)
    assert result.summary["tiles"] == 21
    assert result.summary.get("resumed", {}).get("tiles_done_before") == resumed_from
    assert result.summary["objects"] == json.loads((reference / "provenance.json").read_text())["summary"]["objects"]
    assert [p.name for p in (out / "ihc").iterdir()] == [TASK.name]  # the killed run's partial folder is gone
    assert _checkpoints(tmp_path) == []  # a finished run deletes its checkpoint


def test_labels_written_after_the_last_commit_are_redone(slide_path, reference, tmp_path):
    """Commits every 4 tiles and a tiny chunk cache: the killed run stored labels of uncommitted tiles."""
    out = tmp_path / "out"
    _killed_run(slide_path, out, _options(tmp_path), when="tile:10", small_cache=True, commit_every=4)
    folder = _checkpoints(tmp_path)[0]
    state = json.loads((folder / "state.json").read_text())
    assert state["tiles_done"] == 8
    on_disk = zarr.open_array(str(folder / "labels.zarr" / "0"), mode="r")[:]
    assert on_disk.max() >= state["stitcher"]["next_id"]  # labels of uncommitted tiles were stored
    result = _run(slide_path, out, _options(tmp_path))
    assert result.summary["resumed"]["tiles_done_before"] == 8
    _assert_same_results(out / "ihc" / TASK.name, reference)


def test_a_checkpoint_is_never_reused_for_other_parameters_or_another_input(slide_path, tmp_path):
    out = tmp_path / "out"
    _killed_run(slide_path, out, _options(tmp_path), when="tile:6")
    kept = _checkpoints(tmp_path)
    assert len(kept) == 1
    other_task = dataclasses.replace(TASK, min_size=TASK.min_size + 5)
    assert "resumed" not in _run(slide_path, out, _options(tmp_path), task=other_task).summary
    assert "resumed" not in _run(slide_path, out, _options(tmp_path, calibration_samples=4)).summary
    copy = tmp_path / "copy" / slide_path.name  # the same pixels elsewhere: another input
    copy.parent.mkdir()
    copy.write_bytes(slide_path.read_bytes())
    assert "resumed" not in _run(copy, tmp_path / "out2", _options(tmp_path)).summary
    assert _checkpoints(tmp_path) == kept  # the killed run's own checkpoint is still there, untouched
    assert _run(slide_path, out, _options(tmp_path)).summary["resumed"]["tiles_done_before"] == 6
    assert _checkpoints(tmp_path) == []


def test_fresh_starts_over(slide_path, reference, tmp_path):
    out = tmp_path / "out"
    _killed_run(slide_path, out, _options(tmp_path), when="tile:6")
    result = _run(slide_path, out, _options(tmp_path, fresh=True))
    assert "resumed" not in result.summary
    _assert_same_results(out / "ihc" / TASK.name, reference)


def test_a_deadline_stops_at_a_tile_boundary_and_the_next_run_continues(slide_path, reference, tmp_path, monkeypatch):
    import dlcore.workflows as workflows

    clock = {"now": 0.0}

    def fake_time() -> float:  # each look at the clock before a batch advances it by one second
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(workflows, "time", types.SimpleNamespace(time=fake_time, perf_counter=time.perf_counter))
    out = tmp_path / "out"
    with pytest.raises(RunStopped, match=r"stopped at a tile boundary after 9 of 21 tiles.*run the same again"):
        _run(slide_path, out, _options(tmp_path, deadline=10.0))
    assert not (out / "ihc" / TASK.name).exists()
    assert json.loads((_checkpoints(tmp_path)[0] / "state.json").read_text())["tiles_done"] == 9
    monkeypatch.undo()
    result = _run(slide_path, out, _options(tmp_path))
    assert result.summary["resumed"]["tiles_done_before"] == 9
    _assert_same_results(out / "ihc" / TASK.name, reference)


def test_the_same_run_twice_at_once_is_refused(tmp_path):
    identity = {"run": "one"}
    first = Checkpoint.open(tmp_path, identity)
    try:
        with pytest.raises(OutputError, match=rf"already running: its checkpoint .* is held by process {os.getpid()}"):
            Checkpoint.open(tmp_path, identity)
    finally:
        first.close()
    Checkpoint.open(tmp_path, identity).discard()  # released: usable again


def test_a_resumed_canvas_clears_only_ids_from_the_last_commit(tmp_path):
    canvas = LabelCanvas(tmp_path / "c.zarr", 600, 500, chunk=128)
    canvas.write(0, 0, np.full((300, 300), 7, np.uint32))
    canvas.merge(250, 250, np.where(np.eye(200, dtype=bool), 12, 0).astype(np.uint32))  # where it is 0
    canvas.flush()
    again = LabelCanvas(tmp_path / "c.zarr", 600, 500, chunk=128, reopen=True)
    assert again.clear_ids_from(10, [(200, 200, 400, 300)]) > 0
    labels = again.read(0, 0, 600, 500)
    assert (labels[:300, :300] == 7).all() and labels.max() == 7 and (labels == 7).sum() == 300 * 300
    with pytest.raises(Exception, match="not \\(400, 600\\)"):
        LabelCanvas(tmp_path / "c.zarr", 600, 400, chunk=128, reopen=True)


def test_old_checkpoints_nobody_holds_are_pruned(tmp_path):
    stale = Checkpoint.open(tmp_path, {"run": "old"})
    stale.close()
    held = Checkpoint.open(tmp_path, {"run": "held"})
    for folder in (stale.folder, held.folder):
        old = time.time() - 8 * 86400
        os.utime(folder, (old, old))
    current = Checkpoint.open(tmp_path, {"run": "new"})
    assert not stale.folder.exists() and held.folder.exists()  # a held one is never touched
    held.close()
    current.discard()


def test_the_command_line_continues_after_kill_9(slide_path, reference, tmp_path):
    config = tmp_path / "dlcore.toml"
    config.write_text(f'[dlcore]\nwork_dir = "{tmp_path / "scratch"}"\ncheckpoint_every_s = 0\n')
    env = {**os.environ, "DLCORE_CONFIG": str(config)}
    command = [sys.executable, "-m", "dlcore.cli", "run", "nuclei-classical", str(slide_path), "-o", str(tmp_path / "out"),
               "--tile-size", "256"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = None
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        states = list(checkpoint_root(tmp_path / "scratch").glob("*/state.json"))
        if states:
            try:
                state = json.loads(states[0].read_text())
            except (OSError, ValueError):
                state = None
            if state and state["tiles_done"] >= 3:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait(60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    folder = tmp_path / "out" / "ihc" / "nuclei-classical"
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["summary"]["resumed"]["tiles_done_before"] >= 3
    _assert_same_results(folder, reference)


def test_sigterm_stops_the_command_line_cleanly_and_the_next_run_continues(slide_path, reference, tmp_path):
    """SIGTERM (OMERO's cancel, systemd, kill) ends the run like Ctrl-C: exit 130, the partial results
    removed by the run itself, the finished tiles kept for the next run."""
    config = tmp_path / "dlcore.toml"
    config.write_text(f'[dlcore]\nwork_dir = "{tmp_path / "scratch"}"\ncheckpoint_every_s = 3600\n')
    env = {**os.environ, "DLCORE_CONFIG": str(config)}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dlcore.cli", "run", "nuclei-classical", str(slide_path), "-o", str(out),
               "--tile-size", "256"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # the objects file grows once tiles are done
        files = list(checkpoint_root(tmp_path / "scratch").glob("*/objects.pickle"))
        if files and files[0].stat().st_size > 0:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not list((out / "ihc").glob(".partial-*"))  # the run removed its own partial folder
    state = json.loads((_checkpoints(tmp_path)[0] / "state.json").read_text())
    assert state["tiles_done"] >= 1  # committed on the way out, though no periodic commit was due
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    provenance = json.loads((out / "ihc" / "nuclei-classical" / "provenance.json").read_text())
    assert provenance["summary"]["resumed"]["tiles_done_before"] == state["tiles_done"]
    _assert_same_results(out / "ihc" / "nuclei-classical", reference)


class _Killed(BaseException):
    pass


def test_a_kill_while_a_checkpoint_is_deleted_leaves_nothing_to_resume_from(tmp_path, monkeypatch):
    """The state goes first: a finished run killed while deleting its checkpoint leaves no state beside a
    half-deleted canvas (which a later run would take for finished tiles)."""
    checkpoint = Checkpoint.open(tmp_path, {"run": "one"})
    canvas = LabelCanvas(checkpoint.canvas_path, 300, 300, chunk=128)
    canvas.write(0, 0, np.ones((300, 300), np.uint32))
    checkpoint.commit(tiles_done=4, n_objects=1, canvas=canvas, stitcher_state={"next_id": 2})
    assert (checkpoint.folder / "state.json").exists()

    def killed(*args, **kwargs):
        raise _Killed()
    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed)
    with pytest.raises(_Killed):
        checkpoint.discard()
    assert not (checkpoint.folder / "state.json").exists()
    monkeypatch.undo()
    checkpoint.close()
    again = Checkpoint.open(tmp_path, {"run": "one"})
    assert not again.resumed and again.tiles_done == 0
    again.discard()


def test_the_state_always_names_the_arrays_of_its_own_commit(tmp_path, monkeypatch):
    """A kill between writing a commit's arrays and its state keeps the previous commit whole."""
    checkpoint = Checkpoint.open(tmp_path, {"run": "arrays"})
    canvas = LabelCanvas(checkpoint.canvas_path, 64, 64, chunk=64)
    checkpoint.commit(tiles_done=2, n_objects=0, canvas=canvas, stitcher_state={"class_pixels": np.array([5, 1])})
    real_replace = os.replace

    def killed_at_the_state(src, dst):
        if str(dst).endswith("state.json"):
            raise _Killed()
        real_replace(src, dst)
    monkeypatch.setattr(checkpoint_module.os, "replace", killed_at_the_state)
    with pytest.raises(_Killed):
        checkpoint.commit(tiles_done=4, n_objects=0, canvas=canvas, stitcher_state={"class_pixels": np.array([9, 3])})
    monkeypatch.undo()
    checkpoint.close()
    again = Checkpoint.open(tmp_path, {"run": "arrays"})
    assert again.tiles_done == 2 and again.stitcher_state["class_pixels"].tolist() == [5, 1]
    again.discard()


def test_an_unreadable_objects_file_is_deleted_and_says_to_run_again(slide_path, tmp_path):
    out = tmp_path / "out"
    _killed_run(slide_path, out, _options(tmp_path), when="tile:6")
    [folder] = _checkpoints(tmp_path)
    objects = folder / "objects.pickle"
    objects.write_bytes(objects.read_bytes()[: objects.stat().st_size // 2])  # a power cut before the disk had it
    with pytest.raises(checkpoint_module.CorruptCheckpoint, match="cannot be read back.*starts from the first tile"):
        _run(slide_path, out, _options(tmp_path))
    assert _checkpoints(tmp_path) == [] and not (out / "ihc" / TASK.name).exists()
    assert "resumed" not in _run(slide_path, out, _options(tmp_path)).summary


def test_a_deadline_without_checkpoints_says_nothing_was_kept(slide_path, tmp_path):
    with pytest.raises(RunStopped, match="No tile was kept \\(no checkpoint\\): the next run starts over"):
        _run(slide_path, tmp_path / "out", _options(tmp_path, checkpoint=False, deadline=0.0))


def test_a_model_run_resumed_mid_batch_equals_the_uninterrupted_run(tmp_path):
    """A semantic model with batches of 2 and edge tiles narrower than the others: the resumed run's batches
    are the uninterrupted run's (commits land on batch boundaries), so are its maps and class areas."""
    pytest.importorskip("torch")
    from dlcore.config import Config
    from dlcore.tasks import resolve_task
    from model_packages import tiny_semantic_package

    tiny_semantic_package(tmp_path / "models" / "tiny")
    config = Config(models_dir=tmp_path / "models", device="cpu")
    task = resolve_task("tiny", {"tile_size": 96, "halo": 16, "batch_size": 2}, config=config)
    path = write_synthetic_slide(tmp_path / "slide.ome.tif", SyntheticSlideSpec(width=1000, height=700, seed=2))
    reference = _run(path, tmp_path / "ref", RunOptions(work_dir=tmp_path / "s0", checkpoint=False,
                                                        detect_tissue=False), task=task)
    _killed_run(path, tmp_path / "out", _options(tmp_path, detect_tissue=False), when="commit:5", task=task)
    result = _run(path, tmp_path / "out", _options(tmp_path, detect_tissue=False), task=task)
    assert result.summary["resumed"]["tiles_done_before"] == 6  # no commit after tile 5: it waited for the batch
    assert result.summary["class_pixels"] == reference.summary["class_pixels"]
    folder, ref_folder = (tmp_path / d / "slide" / task.name for d in ("out", "ref"))
    np.testing.assert_array_equal(tifffile.imread(folder / "labels.ome.tif"), tifffile.imread(ref_folder / "labels.ome.tif"))


def test_weights_without_a_stated_sha256_are_identified_by_their_own_digest(tmp_path):
    """A model whose rdf.yaml states no sha256 still gives its run an identity that changes with its weights."""
    import hashlib
    import os

    from dlcore.models.package import weights_digest

    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"first weights")
    assert weights_digest({"path": weights, "sha256": "abc"}) == "abc"  # the rdf's own is taken as it is
    first = weights_digest({"path": weights, "sha256": None})
    assert first == hashlib.sha256(b"first weights").hexdigest()
    weights.write_bytes(b"other weights")  # replaced in place, same size
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert weights_digest({"path": weights, "sha256": None}) == hashlib.sha256(b"other weights").hexdigest() != first
