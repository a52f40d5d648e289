"""Checkpoints: a run that is killed continues where it stopped.

While tiles stream, the run's label canvas, the objects found so far and the stitcher's counters live
in a checkpoint folder, ``<work_dir>/dlcore-checkpoints/<key>/`` (``work_dir`` from the configuration,
else the system's temporary folder).  ``key`` is a digest of the run's identity (:func:`run_identity`):
the input (path, size and modification time, or the OMERO image and pixels), the dlcore version, the
task with its version or weights checksum and every parameter, the resolution plan, the options that
change results, and the tile grid.  A checkpoint is reused only by a run whose identity is equal, field
for field; any other run gets its own folder.

Every ``every_s`` seconds (and when a run is stopped at a tile boundary) the run *commits*: the objects
file is flushed, the canvas's changed chunks are stored (each chunk file is replaced atomically by zarr)
and ``state.json`` (tiles done, byte length of the objects file, the stitcher's counters) is replaced
atomically.  Whatever a kill interrupts, the folder holds the last commit plus, possibly, labels of later
tiles: every such label is an object id at or above the committed next id, written only where the canvas
was background, so a resumed run clears them (:meth:`~dlcore.io.labels.LabelCanvas.clear_ids_from`) in
the windows it is about to redo, truncates the objects file to its committed length, replays the
committed objects into the new sink, and runs the remaining tiles.  The results are the uninterrupted
run's: the same ids, the same CSV and GeoJSON bytes, the same label pixels.

A lock (``flock``) on the folder's ``lock`` file keeps two processes from using one checkpoint; the
kernel releases it when its holder dies, however it dies.  A finished run deletes its checkpoint; a
failed or stopped one keeps it, and the error says so.  Checkpoints nobody has touched for
:data:`MAX_AGE_DAYS` days are deleted by the next run that opens one in the same place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from dlcore.errors import OutputError
from dlcore.locks import try_lock

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
OBJECTS_FILE = "objects.pickle"
ARRAYS_PREFIX = "stitcher-"  # + commit number + ".npz": the state names the one it goes with
LOCK_FILE = "lock"
CANVAS = "labels.zarr"
FORMAT = 1  # bumped when the folder's layout changes: an older checkpoint is then never reused
MAX_AGE_DAYS = 7.0
DEFAULT_EVERY_S = 20.0


def checkpoint_root(work_dir: Path | None) -> Path:
    """The folder holding every run's checkpoint folder."""
    import tempfile

    return Path(work_dir or tempfile.gettempdir()) / "dlcore-checkpoints"


def run_identity(*, info, task_provenance: dict, plan, options: dict, tissue_method: str | None,
                 tiles: Sequence) -> dict:
    """What must be equal for a checkpoint to be reused (JSON-serialisable).

    ``options`` holds only the run options that change results (e.g. the pixel size override, tissue
    detection and calibration); thread and worker counts are left out."""
    import dlcore

    digest = hashlib.sha256()
    for tile in tiles:
        digest.update(f"{tile.x},{tile.y},{tile.width},{tile.height},{tile.halo};".encode())
    identity = {
        "format": FORMAT,
        "dlcore_version": dlcore.__version__,
        "input": {"identity": info.identity, "width": info.width, "height": info.height, "mpp": info.mpp,
                  "channels": list(info.channels), "dtype": info.dtype},
        "task": task_provenance,
        "resolution": {"level": plan.level, "scale": plan.scale, "working_mpp": plan.working_mpp,
                       "factor": plan.factor},
        "options": options,
        "tissue_detection": tissue_method,
        "tiles": {"count": len(tiles), "sha256": digest.hexdigest()},
    }
    return json.loads(json.dumps(identity, default=str))  # the form it has once read back from state.json


def identity_key(identity: dict) -> str:
    """The checkpoint folder's name for ``identity``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


class CorruptCheckpoint(OutputError):
    """A checkpoint's files cannot be read back (e.g. a power cut before the disk had them): the run
    that finds it deletes it, so the next run starts over instead of failing the same way."""


class Checkpoint:
    """One run's checkpoint folder, locked by this process while it is open (see the module docstring).

    After :meth:`open`, ``tiles_done`` is the number of tiles (in grid order) a previous run committed
    (0 for a new checkpoint) and ``stitcher_state`` its stitcher's state (None for a new one).
    """

    def __init__(self, folder: Path, identity: dict, lock_fd: int, *, every_s: float) -> None:
        self.folder = folder
        self.identity = identity
        self.every_s = every_s
        self._lock_fd = lock_fd
        self.tiles_done = 0
        self.n_objects = 0
        self.stitcher_state: dict | None = None
        self._objects_bytes = 0
        self._objects = None
        self._commits = 0
        self._last_commit = time.monotonic()

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, identity: dict, *, every_s: float = DEFAULT_EVERY_S, fresh: bool = False) -> "Checkpoint":
        """The checkpoint for ``identity`` under ``root``, created or, unless ``fresh``, reused.

        Raises :class:`OutputError` when the folder cannot be made, or another live process holds it
        (the same job started twice)."""
        folder = root / identity_key(identity)
        try:
            root.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            lock_fd = try_lock(folder / LOCK_FILE)
        except OSError as exc:
            raise OutputError(f"cannot create the run's checkpoint folder {folder}: {exc}; set work_dir in "
                              "dlcore.toml to a writable folder with space for the label image") from exc
        if lock_fd is None:
            raise OutputError(f"the same run (same input, task and parameters) is already running: its "
                              f"checkpoint {folder} is held by {_holder(folder)}; wait for it to finish, or "
                              "stop it first")
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, json.dumps({"pid": os.getpid(), "host": os.uname().nodename}).encode())
        checkpoint = cls(folder, identity, lock_fd, every_s=every_s)
        state = None if fresh else checkpoint._read_state()
        if state is None:
            checkpoint.reset()
        else:
            try:
                checkpoint.stitcher_state = checkpoint._read_stitcher(state["stitcher"], state.get("arrays"))
                checkpoint.tiles_done = int(state["tiles_done"])
                checkpoint.n_objects = int(state["n_objects"])
                checkpoint._objects_bytes = int(state["objects_bytes"])
                checkpoint._commits = int(state.get("commit", 0))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("checkpoint %s cannot be read back (%s); starting from the first tile", folder, exc)
                checkpoint.reset()
        prune_stale(root, keep=folder)
        return checkpoint

    def _read_state(self) -> dict | None:
        """The committed state when it belongs to this identity, else None (and why, in the log)."""
        path = self.folder / STATE_FILE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("checkpoint %s is unreadable (%s); starting from the first tile", self.folder, exc)
            return None
        if state.get("identity") != self.identity:
            log.warning("checkpoint %s belongs to another run; starting from the first tile", self.folder)
            return None
        if not (self.folder / CANVAS).is_dir():
            log.warning("checkpoint %s has no label canvas; starting from the first tile", self.folder)
            return None
        return state

    def _read_stitcher(self, scalars: dict, arrays_name: str | None) -> dict:
        state = dict(scalars)
        if arrays_name:
            arrays = self.folder / arrays_name
            import numpy as np

            with np.load(arrays, allow_pickle=False) as data:
                state.update({name: data[name] for name in data.files})
        return state

    def reset(self) -> None:
        """Empty the folder (all but the lock) for a run from the first tile; the state goes first, so a
        kill meanwhile leaves a folder no run resumes from."""
        self._empty(strict=True)
        self.tiles_done = self.n_objects = self._objects_bytes = 0
        self.stitcher_state = None

    def _empty(self, *, strict: bool) -> None:
        """Delete everything in the folder but the lock, the state first (a kill meanwhile leaves nothing
        to resume from); ``strict``: raise when something cannot be deleted."""
        (self.folder / STATE_FILE).unlink(missing_ok=True)
        for path in self.folder.iterdir():
            if path.name == LOCK_FILE:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=not strict)
            else:
                path.unlink(missing_ok=not strict)

    @property
    def resumed(self) -> bool:
        """Whether a previous run committed tiles this run will not redo."""
        return self.stitcher_state is not None

    @property
    def canvas_path(self) -> Path:
        return self.folder / CANVAS

    # -- objects ----------------------------------------------------------------------------------
    def committed_objects(self) -> Iterator[list]:
        """The object batches the previous run committed, in the order they were found."""
        path = self.folder / OBJECTS_FILE
        if self._objects_bytes == 0:
            return
        try:
            with open(path, "rb") as stream:
                while stream.tell() < self._objects_bytes:
                    yield pickle.load(stream)  # noqa: S301 - written by dlcore into its own 0700 folder
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError) as exc:
            raise CorruptCheckpoint(f"the checkpoint {self.folder} cannot be read back ({exc}); it is deleted, and "
                                    "the same run started again starts from the first tile") from exc

    def add_objects(self, records: list) -> None:
        """Append a batch of objects (kept once the next commit lands)."""
        if self._objects is None:
            self._objects = open(self.folder / OBJECTS_FILE, "r+b" if self._objects_bytes else "wb")
            self._objects.truncate(self._objects_bytes)  # drop what a killed run appended after its commit
            self._objects.seek(self._objects_bytes)
        pickle.dump(records, self._objects, protocol=pickle.HIGHEST_PROTOCOL)

    # -- committing -------------------------------------------------------------------------------
    def due(self) -> bool:
        """Whether ``every_s`` has passed since the last commit."""
        return time.monotonic() - self._last_commit >= self.every_s

    def commit(self, *, tiles_done: int, n_objects: int, canvas, stitcher_state: dict) -> None:
        """Make the first ``tiles_done`` tiles durable: objects, canvas chunks, then the state file."""
        import numpy as np

        if self._objects is not None:
            self._objects.flush()
            self._objects_bytes = self._objects.tell()
        canvas.flush()
        arrays = {k: v for k, v in stitcher_state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in stitcher_state.items() if k not in arrays}
        commit = self._commits + 1
        arrays_name = f"{ARRAYS_PREFIX}{commit}.npz" if arrays else None
        if arrays:  # a new file each commit: the state in place always names arrays of its own commit
            with open(self.folder / arrays_name, "wb") as stream:
                np.savez(stream, **arrays)
        state = {"identity": self.identity, "tiles_done": tiles_done, "n_objects": n_objects, "commit": commit,
                 "objects_bytes": self._objects_bytes, "stitcher": scalars, "arrays": arrays_name,
                 "committed": time.time()}
        partial = self.folder / (STATE_FILE + ".partial")
        partial.write_text(json.dumps(state))
        os.replace(partial, self.folder / STATE_FILE)
        self._commits = commit
        for old in self.folder.glob(f"{ARRAYS_PREFIX}*.npz"):
            if old.name != arrays_name:
                old.unlink(missing_ok=True)
        self.tiles_done, self.n_objects = tiles_done, n_objects
        self._last_commit = time.monotonic()

    # -- closing ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the lock and keep the folder (for a later run to continue)."""
        if self._objects is not None:
            self._objects.close()
            self._objects = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def discard(self) -> None:
        """Delete the folder (the run finished): release the lock last, so nobody reuses it meanwhile."""
        if self._objects is not None:
            self._objects.close()
            self._objects = None
        self._empty(strict=False)
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        self.close()
        try:
            self.folder.rmdir()
        except OSError:
            pass


def _holder(folder: Path) -> str:
    try:
        record = json.loads((folder / LOCK_FILE).read_text())
        return f"process {record['pid']} on {record['host']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def prune_stale(root: Path, *, keep: Path, max_age_days: float = MAX_AGE_DAYS) -> list[Path]:
    """Delete checkpoint folders under ``root`` untouched for ``max_age_days`` that no process holds."""
    removed = []
    cutoff = time.time() - max_age_days * 86400
    for folder in root.iterdir():
        if folder == keep or not folder.is_dir():
            continue
        state = folder / STATE_FILE
        try:
            touched = (state if state.exists() else folder).stat().st_mtime
        except OSError:
            continue
        if touched >= cutoff:
            continue
        try:
            fd = try_lock(folder / LOCK_FILE)
        except OSError:
            continue
        if fd is None:  # a run holds it
            continue
        (folder / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed.append(folder)
        log.info("removed the checkpoint %s, untouched for over %.0f days", folder, max_age_days)
    return removed
