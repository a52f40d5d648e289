"""Advisory file locks (``flock``) that die with their process.

A run holds a lock on a file beside what it writes (its checkpoint, its journal of created OMERO
objects) for as long as it lives; the kernel releases it when the process ends, however it ends, so a
lock nobody holds proves its owner gone, with no pid or host to trust.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """A file descriptor holding an exclusive lock on ``path`` (created if missing), or None when
    another open file holds it.  Close the descriptor to release the lock.  Raises ``OSError`` when the
    file cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def is_unheld(path: Path) -> bool:
    """True when no process holds a lock on ``path`` (checked by taking it for an instant)."""
    try:
        fd = try_lock(path)
    except OSError:
        return False
    if fd is None:
        return False
    os.close(fd)
    return True
