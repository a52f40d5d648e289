"""How many CPU cores a run may use, and how it shares them between the model and the workers.

A run uses the cores this process may run on (``sched_getaffinity``), or fewer when the node says so:
``$DLCORE_CORES`` (the OMERO processor extension sets it for a deep-learning job to its GPU slot's share
of the node, see :mod:`dlcore.processor.server`).  Within that budget:

- a task that runs whole in the workers (the classical pipelines) gets one worker per core; the main
  process only reads tiles and stitches, which mostly waits on I/O and numpy;
- a model on the CPU gets ``torch_threads`` (default: half the cores) and the workers the rest (at
  least one), so the watershed and the per-object work of one batch run while the next is inferred;
- a model on a GPU gets one core to feed it and the workers all the others.

``[dlcore] workers`` and ``torch_threads`` in ``dlcore.toml`` (0 = this rule) override either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from dlcore.errors import ConfigError


def available_cores() -> int:
    """Cores this run may use: ``$DLCORE_CORES`` when set (at most the affinity), else the affinity."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    given = os.environ.get("DLCORE_CORES")
    if given:
        try:
            value = int(given)
        except ValueError:
            raise ConfigError(f"DLCORE_CORES={given!r} is not a whole number of cores") from None
        if value < 1:
            raise ConfigError(f"DLCORE_CORES={value} must be at least 1")
        cores = min(cores, value)
    return max(1, cores)


@dataclass(frozen=True)
class CoreShare:
    """How a run divides its cores: worker processes and torch's CPU threads."""

    cores: int
    workers: int
    torch_threads: int


def share_cores(*, whole_in_workers: bool, model_on_gpu: bool, workers: int = 0, torch_threads: int = 0,
                cores: int | None = None) -> CoreShare:
    """The split of :func:`available_cores` (or ``cores``) described in the module docstring;
    ``workers``/``torch_threads`` > 0 are taken as given."""
    cores = cores or available_cores()
    if whole_in_workers:
        return CoreShare(cores, workers or cores, torch_threads or 1)
    threads = torch_threads or (1 if model_on_gpu else max(1, cores // 2))
    return CoreShare(cores, workers or max(1, cores - (1 if model_on_gpu else threads)), threads)
