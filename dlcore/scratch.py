"""Scratch folders: where a run keeps what it writes before its results are in place.

Each run gets a private folder in ``work_dir`` (the configuration's, else the system's temporary folder).
A run removes its own when it ends; one killed with SIGKILL cannot, so folders of that name untouched
for :data:`SCRATCH_MAX_AGE_DAYS` are removed by the next run that makes one in the same place.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from dlcore.errors import OutputError

SCRATCH_MAX_AGE_DAYS = 7.0
_SCRATCH_NAME = re.compile(r"dlcore-(omero-)?[A-Za-z0-9_]{8}")  # what mkdtemp names a run's scratch folder


def make_scratch(work_dir: Path | None, *, prefix: str = "dlcore-") -> Path:
    """A new private scratch folder in ``work_dir`` (made if missing; None: the system's temporary folder).
    Scratch folders a killed run left in ``work_dir``, untouched for :data:`SCRATCH_MAX_AGE_DAYS`, are removed."""
    try:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            cutoff = time.time() - SCRATCH_MAX_AGE_DAYS * 86400
            for old in Path(work_dir).iterdir():
                if _SCRATCH_NAME.fullmatch(old.name) and old.is_dir() and old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=work_dir))
    except OSError as exc:
        raise OutputError(f"cannot make a scratch folder in {work_dir or tempfile.gettempdir()}: {exc}; set work_dir "
                          "in dlcore.toml to a writable folder with space for the label image") from exc
