"""Choosing the device once, and the settings that go with it.

CUDA when present (unless the configuration says ``cpu``); on a GPU, inference runs under autocast
(bfloat16 where supported, else float16) with channels-last tensors copied from pinned memory
without blocking.  On the CPU, torch gets the threads :func:`cpu_threads` gives, forward passes take
:data:`CPU_FORWARD_BATCH` tiles at a time, and malloc keeps freed memory for the next pass
(:mod:`dlcore.models.allocator`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

from dlcore.errors import ConfigError

log = logging.getLogger(__name__)

# Tiles per forward pass on the CPU.  Throughput per tile hardly depends on it there, but the activations
# (and so peak memory) grow with it: measured on the nuclei U-Net with freed memory kept, 2 tiles took
# 0.47-0.53 s per tile and 760-880 MB, 8 tiles (the batch the engine reads) 1.28 GB by default.
CPU_FORWARD_BATCH = 2


@dataclass(frozen=True)
class DeviceChoice:
    """The device inference runs on and how.

    Attributes
    ----------
    name: ``"cpu"`` or ``"cuda:N"``.
    autocast_dtype: ``"bfloat16"``, ``"float16"`` or None (full precision).
    channels_last: use the channels-last memory format.
    pin_memory: copy batches from pinned host memory, without blocking.
    threads: torch intra-op threads (CPU).
    """

    name: str
    autocast_dtype: str | None
    channels_last: bool
    pin_memory: bool
    threads: int

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")

    def torch_device(self):
        import torch

        return torch.device(self.name)


def cpu_threads() -> int:
    """torch's CPU threads: ``$DLCORE_TORCH_THREADS`` when set (the run's share, see :mod:`dlcore.cores`),
    else half the cores this run may use (at least 1)."""
    from dlcore.cores import available_cores

    given = os.environ.get("DLCORE_TORCH_THREADS")
    return max(1, int(given)) if given and given.isdigit() else max(1, available_cores() // 2)


@lru_cache(maxsize=None)
def choose_device(setting: str = "auto") -> DeviceChoice:
    """The device for ``setting`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), chosen once per process.

    Raises :class:`~dlcore.errors.ConfigError` when CUDA is asked for and there is none.
    """
    import torch

    if setting not in ("auto", "cpu", "cuda") and not setting.startswith("cuda:"):
        raise ConfigError(f"device={setting!r} is not one of auto, cpu, cuda, cuda:N")
    cuda = torch.cuda.is_available()
    if setting.startswith("cuda") and not cuda:
        raise ConfigError(f"device={setting!r} but torch sees no CUDA GPU here; set device = \"auto\" or \"cpu\"")
    if setting == "cpu" or (setting == "auto" and not cuda):
        from dlcore.models.allocator import keep_freed_memory

        threads = cpu_threads()
        torch.set_num_threads(threads)
        keep_freed_memory()
        choice = DeviceChoice("cpu", None, False, False, threads)
    else:
        name = "cuda:0" if setting in ("auto", "cuda") else setting
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={setting!r} but there are only {torch.cuda.device_count()} GPU(s)")
        torch.backends.cudnn.benchmark = True
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        choice = DeviceChoice(name, dtype, True, True, torch.get_num_threads())
    log.info("inference device: %s", choice)
    return choice
