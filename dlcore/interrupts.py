"""SIGTERM as an interrupt: a job that is asked to stop stops like Ctrl-C, cleaning up on its way.

OMERO's processor cancels a script by sending it SIGTERM and kills it about 25 s later (omero-py
``processor.py``: ``ProcessI.cancel`` → ``os.kill(pid, SIGTERM)``; ``shutdown`` → ``kill()``); systemd
and ``kill`` send SIGTERM too.  Python's default for SIGTERM ends the process at once, with no cleanup.
Raised as :class:`KeyboardInterrupt` in the main thread instead, it lets a run commit its checkpoint
(:mod:`dlcore.tiling.checkpoint`) and delete what it half-wrote, well within that time.
"""
from __future__ import annotations

import signal
import threading


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`KeyboardInterrupt` in this process's main thread (a no-op when called
    from another thread, where Python cannot install handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
