"""Deleting OMERO objects and knowing that it happened.

``BlitzGateway.deleteObjects(..., wait=True)`` waits at most 5 s (``_waitOnCmd(loops=10, ms=500,
failontimeout=False)``, omero-py ``clients.py``) and then closes the command's handle, and closing the
handle of an unfinished ``Delete2`` cancels it (omero-blitz ``cmd/HandleI.java``): replacing 5,000
ROIs or a label image could be cancelled while the caller believed it done.  :func:`delete_objects`
submits one ``Delete2`` and waits on its handle for as long as it takes (up to ``timeout_s``), then
raises :class:`~dlcore.errors.OmeroError` if the server reported an error or the time ran out, and only
then closes the handle.  ``Delete2`` is one transaction: on an error or a cancel nothing is deleted.
"""
from __future__ import annotations

import time

from dlcore.errors import OmeroError

DELETE_TIMEOUT_S = 600.0
POLL_S = 0.25


def _describe(targets: dict[str, list[int]]) -> str:
    return ", ".join(f"{len(ids)} {graph}" for graph, ids in targets.items())


def delete_objects(conn, targets: dict[str, list[int]], *, context: dict, timeout_s: float = DELETE_TIMEOUT_S,
                   poll_s: float = POLL_S) -> None:
    """Delete ``targets`` (graph name -> ids, e.g. ``{"Roi": [1, 2]}``) in one ``Delete2`` and wait for it.

    Raises :class:`OmeroError` naming what was to be deleted when the server answers with an error (for
    instance objects the user does not own) or when it has not finished after ``timeout_s`` (it is then
    cancelled: nothing is deleted).
    """
    from omero.cmd import ERR, Delete2

    targets = {graph: [int(i) for i in ids] for graph, ids in targets.items() if ids}
    if not targets:
        return
    handle = conn.c.sf.submit(Delete2(targetObjects=targets), context)
    try:
        deadline = time.monotonic() + timeout_s
        while (response := handle.getResponse()) is None:
            if time.monotonic() >= deadline:
                raise OmeroError(
                    f"deleting {_describe(targets)} did not finish within {timeout_s:.0f} s, so it was cancelled and "
                    "nothing was deleted; the server is busy: try again later")
            time.sleep(poll_s)
    finally:
        handle.close()
    if isinstance(response, ERR):
        details = ", ".join(f"{k}: {v}" for k, v in (response.parameters or {}).items())
        raise OmeroError(f"deleting {_describe(targets)} failed, nothing was deleted: {response.name}"
                         + (f" ({details})" if details else ""))
