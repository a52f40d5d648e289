"""What a run has created in OMERO, kept on the node while it runs, so that a killed run's leftovers go.

:class:`~dlcore.omero.sink.OmeroSink` creates its results before it links them (ROIs while tiles
stream, the table, the label image, the attached files) and deletes them itself when the run fails.  A
process that is killed (``kill -9``, a node restart, the processor ending the job) cannot: the ROIs stay
on the image and the rest stays unlinked (an orphaned label image in OMERO.web).  So the sink writes the
ids it creates into a journal on the node, ``<work_dir>/dlcore-omero-journal/<server>-User<id>-Image<id>-
<run key>-<run id>.json``, beside a lock file its process holds (``flock``; the kernel releases it however the
process dies).  A later run of the same task on the same image, once its own results are linked, finds
the journals nobody holds and deletes what they list that still exists and belongs to the caller; a
run that links its results removes its own journal, since its objects are results from then on.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

from dlcore.locks import is_unheld, try_lock

log = logging.getLogger(__name__)

GRAPHS = ("Roi", "Annotation", "OriginalFile", "Image")
# the ids of a graph's objects that still exist and belong to the caller (HQL; ``{graph}`` from GRAPHS)
Q_OWNED_IDS = "select o.id from {graph} o where o.id in (:ids) and o.details.owner.id = :uid"


def journal_folder(work_dir: Path | None) -> Path:
    """Where a node keeps its runs' journals."""
    return Path(work_dir or tempfile.gettempdir()) / "dlcore-omero-journal"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class CreationJournal:
    """One run's journal (see the module docstring), locked by this process while it is open."""

    def __init__(self, folder: Path, *, server: str, user_id: int, image_id: int, run_key: str, run_id: str) -> None:
        self.folder = Path(folder)
        # one user's runs only: another user may not delete them, and must not drop their journal
        self.prefix = f"{_safe(server)}-User{int(user_id)}-Image{int(image_id)}-{_safe(run_key)}-"
        self.path = self.folder / f"{self.prefix}{run_id}.json"
        self._lock_fd = -1

    def open(self) -> "CreationJournal":
        """Create the journal and take its lock."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = try_lock(_lock_of(self.path))  # the run id is new: nobody else holds it
        self.record({graph: [] for graph in GRAPHS})
        return self

    def record(self, created: dict[str, list[int]]) -> None:
        """Replace the journal's list of created ids (graph -> ids) with ``created``, atomically."""
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({graph: [int(i) for i in created.get(graph, ()) if i is not None]
                                       for graph in GRAPHS}))
        os.replace(partial, self.path)

    def leftovers(self) -> dict[Path, dict[str, list[int]]]:
        """The other journals of this image and run key whose process is gone: path -> created ids."""
        found = {}
        for path in sorted(self.folder.glob(f"{self.prefix}*.json")):
            if path == self.path or not is_unheld(_lock_of(path)):
                continue
            try:
                found[path] = {graph: [int(i) for i in ids] for graph, ids in json.loads(path.read_text()).items()}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("the journal %s is unreadable (%s): what its run created must be deleted by hand", path, exc)
        return found

    def close(self) -> None:
        """Remove this run's journal and release its lock (the run is over: linked, or cleaned up)."""
        self.path.unlink(missing_ok=True)
        if self._lock_fd >= 0:
            _lock_of(self.path).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def release(self) -> None:
        """Release the lock and keep the journal (what the kernel does when the process dies)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def forget(path: Path) -> None:
    """Remove a dead run's journal once its leftovers are deleted."""
    path.unlink(missing_ok=True)
    _lock_of(path).unlink(missing_ok=True)


def _lock_of(path: Path) -> Path:
    return path.with_suffix(".lock")


def owned_existing(conn, created: dict[str, list[int]], *, context: dict) -> dict[str, list[int]]:
    """Of ``created``, the ids that still exist and belong to the caller (a Delete2 of anything else
    fails whole)."""
    from omero.rtypes import rlist, rlong
    from omero.sys import ParametersI

    query = conn.getQueryService()
    out = {}
    for graph in GRAPHS:
        ids = created.get(graph) or []
        if not ids:
            continue
        params = ParametersI()
        params.add("ids", rlist([rlong(i) for i in ids]))
        params.add("uid", rlong(int(conn.getUserId())))
        rows = query.projection(Q_OWNED_IDS.format(graph=graph), params, context)
        kept = [int(row[0].getValue()) for row in rows]
        if kept:
            out[graph] = kept
    return out


def delete_leftovers(conn, journal: CreationJournal, *, context: dict, label: str) -> str:
    """Delete what killed runs of ``journal``'s image and run key created and never linked (the journals
    nobody holds, :meth:`CreationJournal.leftovers`): only what still exists and belongs to the caller, one
    Delete2 per dead run, waited on.  A dead run's journal is removed once its objects are gone, and kept
    for the next run when deleting fails.  Returns a note for the Message ('' when there was nothing).
    ``label`` names the image in the log."""
    from dlcore.omero.deleting import delete_objects

    notes = []
    for path, created in journal.leftovers().items():
        try:
            targets = owned_existing(conn, created, context=context)
            delete_objects(conn, targets, context=context)
        except Exception as exc:  # the new results are complete; the journal stays for the next run
            log.warning("%s: deleting what a killed run left (%s) failed: %s", label, path.name, exc)
            notes.append(f"what a killed run left is NOT deleted ({getattr(exc, 'message', '') or exc})")
            continue
        forget(path)
        if targets:
            notes.append("left by a killed run: " + ", ".join(f"{len(ids)} {graph}" for graph, ids in targets.items()))
    return "; ".join(notes)
