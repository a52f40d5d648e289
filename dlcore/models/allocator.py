"""Keeping freed memory in the process for CPU inference (glibc's malloc).

A CPU forward pass of a U-Net allocates activation buffers of tens to hundreds of MB and frees them
at the end.  glibc serves blocks over its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and
returns them on free, so every pass takes one page fault per 4 KB touched and zeroes every page
again: measured here, 181,000 minor faults per 576² tile and 42 % of the CPU time in the kernel.
:func:`keep_freed_memory` tells malloc to serve large blocks from its heap and to keep up to
``trim_threshold_mb`` of freed memory at the heap's top, so the next pass reuses the same pages.
Used with small forward batches on the CPU (:data:`dlcore.models.device.CPU_FORWARD_BATCH`), which keep
the heap small: together 2x faster with less peak memory than the default (BENCHMARKS.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4

_applied: int | None = None


def keep_freed_memory(trim_threshold_mb: int = 512) -> bool:
    """Serve large blocks from the heap and keep up to ``trim_threshold_mb`` MB of freed memory; True
    when glibc took the settings (once per process; not glibc, or ``DLCORE_MALLOC=system``: False)."""
    global _applied
    if _applied is not None:
        return _applied == trim_threshold_mb
    if os.environ.get("DLCORE_MALLOC", "").lower() == "system":
        _applied = 0
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no glibc tunables
        _applied = 0
        return False
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20) == 1
    _applied = trim_threshold_mb if ok else 0
    if ok:
        log.debug("malloc: large blocks from the heap, %d MB of freed memory kept", trim_threshold_mb)
    return ok
