"""Which CUDA GPUs this machine has, found without importing torch.

The OMERO processor extension (:mod:`dlcore.processor`) counts GPU slots when it starts, and
``dlcore doctor`` reports what it sees; neither should pay for importing torch or initialising
CUDA.  The answer comes from, in order:

1. ``$CUDA_VISIBLE_DEVICES`` when it is set: the ids it lists (an empty value or ``-1`` means
   no GPU, the way CUDA reads it);
2. ``nvidia-smi -L`` (one ``GPU n: ...`` line per device);
3. ``/proc/driver/nvidia/gpus/`` (one folder per device, present while the driver is loaded).

Each source is injectable so tests can describe any machine.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROC_GPUS = Path("/proc/driver/nvidia/gpus")
_SMI_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs a process on this machine may use.

    Attributes
    ----------
    ids : tuple of str
        Device ids as CUDA numbers them for this process (what ``CUDA_VISIBLE_DEVICES`` takes).
    source : str
        Where the answer came from: ``"CUDA_VISIBLE_DEVICES"``, ``"nvidia-smi"``, ``"/proc"`` or
        ``"none"``.
    """

    ids: tuple[str, ...]
    source: str

    @property
    def count(self) -> int:
        """Number of GPUs."""
        return len(self.ids)


def _run_nvidia_smi() -> str | None:
    """The output of ``nvidia-smi -L``, or None when the tool is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("nvidia-smi -L failed: %s", exc)
        return None
    if done.returncode != 0:
        logger.warning("nvidia-smi -L exited with %s: %s", done.returncode, done.stderr.strip())
        return None
    return done.stdout


def detect_gpus(
    *,
    environ: Mapping[str, str] | None = None,
    nvidia_smi: Callable[[], str | None] = _run_nvidia_smi,
    proc_dir: Path = PROC_GPUS,
) -> GpuInventory:
    """Find the CUDA GPUs visible to this process, without importing torch.

    Parameters
    ----------
    environ : mapping, optional
        Environment to read ``CUDA_VISIBLE_DEVICES`` from (default ``os.environ``).
    nvidia_smi : callable, optional
        Returns the text of ``nvidia-smi -L`` or None when unavailable.
    proc_dir : Path, optional
        The driver's per-GPU folder (default ``/proc/driver/nvidia/gpus``).

    Returns
    -------
    GpuInventory
        The visible device ids and where they were found.
    """
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(part.strip() for part in visible.split(",") if part.strip())
        if not ids or ids[0] == "-1":
            return GpuInventory((), "CUDA_VISIBLE_DEVICES")
        # CUDA stops at the first invalid entry; "-1" in the middle hides the rest.
        if "-1" in ids:
            ids = ids[: ids.index("-1")]
        return GpuInventory(ids, "CUDA_VISIBLE_DEVICES")
    text = nvidia_smi()
    if text is not None:
        return GpuInventory(tuple(_SMI_LINE.findall(text)), "nvidia-smi")
    if proc_dir.is_dir():
        found = sorted(p for p in proc_dir.iterdir() if p.is_dir())
        if found:
            return GpuInventory(tuple(str(i) for i in range(len(found))), "/proc")
    return GpuInventory((), "none")
