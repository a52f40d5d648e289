"""Which deep-learning jobs an OMERO processor takes: the decision, free of OMERO.

OMERO gives a job to the first processor that answers ``willAccept`` with yes.  This module owns
the answer dlcore's processor (:mod:`dlcore.processor.server`) gives for deep-learning scripts;
it imports neither ``omero`` nor ``torch``, so it is tested alone.

A script is a *deep-learning script* when one folder of its path in OMERO's script repository
is named in ``[processor] dl_script_folders`` (default ``Deep_Learning``).  An official script
installed as ``lib/scripts/Deep_Learning/Segment_Nuclei.py`` has the OriginalFile path
``/Deep_Learning/``, so it matches.  The folder is known before the script runs, unlike the
``namespaces`` a script declares (which OMERO only learns by parsing the script), so the folder
is what decides.

The rules, for a deep-learning script:

* node with GPUs, parse job (a ``ParseJob``: OMERO reading the parameters, which it then caches):
  accept; it needs no GPU;
* node with GPUs, run job: accept while a GPU slot is free (``gpus x gpu_slots_per_gpu``); the
  slot is reserved at ``willAccept`` (another processor may win the job, so an unused reservation
  is released once the job runs elsewhere, or expires), held while the script's process lives, and
  freed when it exits.  When every slot is busy, accept while this node's queue
  (``queue_length``) has room: the job then waits on the node for a slot, in order; decline only
  when the queue is full too (OMERO then tells the user "No processor available");
* node without GPU: decline when ``[processor] gpu_nodes`` names GPU nodes (they take the job);
  accept when none is configured (a single-machine install runs on the CPU).

Any other script is left to OMERO's usual rules.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dlcore.config import ProcessorConfig
from dlcore.errors import ParameterError

logger = logging.getLogger(__name__)

RESERVATION_TTL_S = 10.0
"""How long a slot stays reserved for a job this processor accepted but has not received.

Every processor hears ``willAccept`` and each that says yes reserves a slot, but Blitz gives the job
to the first yes (omero-blitz ``ProcessorCallbackI``/``ResultHolder``) and sends it to that processor
at once; it waits at most 5 s for that first yes (``ScriptI.runScript``; 10 s for a parse).  So the
winner's job arrives well inside 10 s, and a node that lost the job gets its slot back 10 s later:
with N nodes a job blocks N slots for seconds, not a minute.  A job that arrives after its
reservation lapsed still gets a slot (it is queued on arrival, never run without one)."""


def is_dl_script(script_path: str, folders: Iterable[str]) -> bool:
    """Whether a script's folder in OMERO's script repository marks it as deep learning.

    Parameters
    ----------
    script_path : str
        The script's OriginalFile path (``/Deep_Learning/``) or path and name
        (``/Deep_Learning/Segment.py``).
    folders : iterable of str
        Folder names that mark deep-learning scripts (``[processor] dl_script_folders``).

    Returns
    -------
    bool
        True when any folder of the path is one of ``folders`` (case-sensitive, as OMERO's menus).
    """
    wanted = set(folders)
    parts = [part for part in script_path.replace("\\", "/").split("/") if part]
    if parts and parts[-1].endswith(".py"):
        parts = parts[:-1]
    return any(part in wanted for part in parts)


@dataclass(frozen=True)
class Verdict:
    """The answer to one ``willAccept`` question.

    Attributes
    ----------
    accept : bool
        Whether this processor takes the job.
    reason : str
        Why, in words for the processor's log.
    gpu : str or None
        The GPU id reserved for the job (run jobs of deep-learning scripts on GPU nodes only).
    queued : bool
        True when the job was accepted to wait in this node's queue for a slot.
    """

    accept: bool
    reason: str
    gpu: str | None = None
    queued: bool = False


@dataclass
class _Slot:
    gpu: str
    deadline: float | None  # expiry of a reservation made at willAccept; None once the job is here (claimed)
    alive: Callable[[], bool] | None = None  # set when the job's process started


@dataclass
class _Queued:
    deadline: float | None  # expiry of a place taken at willAccept; None once the job is here (claimed)


class GpuSlots:
    """Thread-safe count of deep-learning jobs per GPU on one node, with a queue for busy times.

    A job holds a *slot* (reserved at ``willAccept``, running once its process starts) or a *place in
    the queue*.  A slot or place taken at ``willAccept`` is *unclaimed* until the job arrives here
    (``claimed=True`` in :meth:`reserve` or :meth:`enqueue`); an unclaimed one expires after
    ``reservation_ttl`` (another processor may have won the job) unless released earlier
    (:meth:`release`, once the processor has seen the job running elsewhere).  A claimed slot never
    expires and is never listed by :meth:`unclaimed`: it is freed when its process ends or by
    :meth:`release`.  Claimed jobs get free slots in the order they were queued, and a new job does not
    take a slot while a claimed job waits.

    Parameters
    ----------
    gpu_ids : iterable of str
        The node's GPU ids (as ``CUDA_VISIBLE_DEVICES`` takes them).
    slots_per_gpu : int
        Concurrent deep-learning jobs each GPU takes.
    queue_length : int, optional
        Jobs this node accepts to wait for a slot when all are busy (0: none; busy means decline).
    reservation_ttl : float, optional
        Seconds an accepted but not yet started job keeps its slot or place.
    clock : callable, optional
        Monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        gpu_ids: Iterable[str],
        slots_per_gpu: int,
        *,
        queue_length: int = 0,
        reservation_ttl: float = RESERVATION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gpu_ids = tuple(gpu_ids)
        if slots_per_gpu < 1:
            raise ParameterError(f"slots_per_gpu={slots_per_gpu} must be at least 1")
        if queue_length < 0:
            raise ParameterError(f"queue_length={queue_length} must be 0 or more")
        self.slots_per_gpu = slots_per_gpu
        self.queue_length = queue_length
        self.reservation_ttl = reservation_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[int, _Slot] = {}
        self._queue: dict[int, _Queued] = {}  # insertion order is queue order

    @property
    def capacity(self) -> int:
        """Total slots on the node."""
        return len(self.gpu_ids) * self.slots_per_gpu

    def _prune(self) -> None:
        now = self._clock()
        for job_id, slot in list(self._jobs.items()):
            if slot.deadline is not None and now >= slot.deadline:
                logger.info("job %s: reservation on GPU %s expired (another processor ran it)", job_id, slot.gpu)
                del self._jobs[job_id]
            elif slot.alive is not None and not slot.alive():  # a claimed slot without process waits for one
                logger.info("job %s: finished, GPU %s slot freed", job_id, slot.gpu)
                del self._jobs[job_id]
        for job_id, place in list(self._queue.items()):
            if place.deadline is not None and now >= place.deadline:
                logger.info("job %s: queue place expired (another processor ran it)", job_id)
                del self._queue[job_id]

    def _load(self) -> dict[str, int]:
        load = dict.fromkeys(self.gpu_ids, 0)
        for slot in self._jobs.values():
            load[slot.gpu] = load.get(slot.gpu, 0) + 1
        return load

    def _free_gpu(self) -> str | None:
        load = self._load()
        free = [gpu for gpu in self.gpu_ids if load[gpu] < self.slots_per_gpu]
        return min(free, key=lambda g: (load[g], self.gpu_ids.index(g))) if free else None

    def _claimed_waiting(self) -> list[int]:
        return [job_id for job_id, place in self._queue.items() if place.deadline is None]

    def usage(self) -> dict[str, int]:
        """Jobs reserved or running per GPU id."""
        with self._lock:
            self._prune()
            return self._load()

    def in_use(self) -> int:
        """Slots reserved or running on the node."""
        return sum(self.usage().values())

    def queued(self) -> list[int]:
        """Job ids waiting for a slot, in queue order."""
        with self._lock:
            self._prune()
            return list(self._queue)

    def reserve(self, job_id: int, *, claimed: bool = False) -> str | None:
        """Reserve a slot for a job; the least loaded GPU, or None when every slot is taken or a claimed
        job is waiting for one.  ``claimed=True``: the job is here (its slot does not expire).

        Reserving again for a job that holds a slot returns the same GPU (and claims it if asked).
        """
        with self._lock:
            self._prune()
            held = self._jobs.get(job_id)
            if held is not None:
                if claimed:
                    held.deadline = None
                return held.gpu
            gpu = self._free_gpu()
            if gpu is None or self._claimed_waiting():
                return None
            self._queue.pop(job_id, None)
            self._jobs[job_id] = _Slot(gpu, None if claimed else self._clock() + self.reservation_ttl)
            return gpu

    def enqueue(self, job_id: int, *, claimed: bool = False) -> int | None:
        """Give a job a place in the queue; its position (1 = next), or None when the queue is full.

        ``claimed=True`` is for a job that has arrived here: it is queued even when the queue is full
        (the node has the job and must run it) and its place does not expire.
        """
        with self._lock:
            self._prune()
            if job_id not in self._queue:
                if not claimed and len(self._queue) >= self.queue_length:
                    return None
                self._queue[job_id] = _Queued(None if claimed else self._clock() + self.reservation_ttl)
            elif claimed:
                self._queue[job_id].deadline = None
            return list(self._queue).index(job_id) + 1

    def unclaimed(self) -> list[int]:
        """Jobs holding a reservation or a place that have not arrived here (another node may run them)."""
        with self._lock:
            self._prune()
            reserved = [job_id for job_id, slot in self._jobs.items() if slot.deadline is not None]
            return reserved + [job_id for job_id, place in self._queue.items() if place.deadline is not None]

    def wait_for_slot(
        self,
        job_id: int,
        cancelled: threading.Event,
        *,
        sweep: Callable[[], None] | None = None,
        poll_s: float = 0.5,
    ) -> str | None:
        """Block until queued job ``job_id`` (claimed) gets a slot; the GPU reserved for it.

        Claimed jobs are served in queue order.  Returns None when ``cancelled`` is set or the job has
        left the queue.  ``sweep`` (called between polls, outside the lock) lets the processor release
        reservations of jobs that went to other nodes.
        """
        while not cancelled.is_set():
            with self._lock:
                self._prune()
                if job_id not in self._queue:
                    return None
                waiting = self._claimed_waiting()
                gpu = self._free_gpu()
                if gpu is not None and waiting and waiting[0] == job_id:
                    del self._queue[job_id]
                    self._jobs[job_id] = _Slot(gpu, None)  # claimed: the job is here
                    self._changed.notify_all()
                    return gpu
                self._changed.wait(poll_s)
            if sweep is not None:
                sweep()
        with self._lock:
            self._queue.pop(job_id, None)
            self._changed.notify_all()
        return None

    def reserved_gpu(self, job_id: int) -> str | None:
        """The GPU reserved for (or running) a job, None when it holds no slot."""
        with self._lock:
            self._prune()
            slot = self._jobs.get(job_id)
            return slot.gpu if slot else None

    def start(self, job_id: int, alive: Callable[[], bool]) -> None:
        """Turn a job's reservation into a running slot, held while ``alive()`` is true.

        ``alive`` is called under the slots' lock: it must not block (read the process's state, do not
        take its locks)."""
        with self._lock:
            slot = self._jobs.get(job_id)
            if slot is None:
                raise ParameterError(f"job {job_id} holds no GPU slot; reserve() it first")
            slot.deadline = None
            slot.alive = alive

    def release(self, job_id: int) -> None:
        """Free a job's slot or queue place now (its start failed, or it runs on another node)."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._queue.pop(job_id, None)
            self._changed.notify_all()


class DlJobPolicy:
    """dlcore's ``willAccept`` rule for one processor node (see the module docstring).

    Parameters
    ----------
    config : ProcessorConfig
        The ``[processor]`` section of dlcore's configuration.
    gpu_ids : iterable of str
        This node's GPUs (see :func:`dlcore.gpus.detect_gpus`).
    config_error : str, optional
        When dlcore's configuration could not be read: every deep-learning job is declined with
        this message, so a broken node does not take them.
    clock : callable, optional
        Monotonic clock for the slot reservations (tests).
    """

    def __init__(
        self,
        config: ProcessorConfig,
        gpu_ids: Iterable[str],
        *,
        config_error: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.config_error = config_error
        self.slots = GpuSlots(gpu_ids, config.gpu_slots_per_gpu, queue_length=config.queue_length, clock=clock)

    def describe(self) -> str:
        """One line for the processor log: folders, GPUs and slots."""
        return (
            f"deep-learning folders {list(self.config.dl_script_folders)}, GPUs {list(self.slots.gpu_ids)}, "
            f"{self.slots.capacity} slot(s), queue of {self.slots.queue_length}, "
            f"GPU nodes configured: {list(self.config.gpu_nodes) or 'none'}"
        )

    def decide(self, *, job_id: int, script_path: str, is_parse: bool) -> Verdict:
        """Whether this node takes a job, reserving a GPU slot for accepted run jobs.

        Parameters
        ----------
        job_id : int
            The OMERO job's id (the same in ``willAccept`` and ``processJob``).
        script_path : str
            The script's OriginalFile path, with or without its name.
        is_parse : bool
            True for a ParseJob (OMERO reading the script's parameters).

        Returns
        -------
        Verdict
        """
        if not is_dl_script(script_path, self.config.dl_script_folders):
            return Verdict(True, "not a deep-learning script")
        if self.config_error:
            return Verdict(False, f"dlcore configuration unusable: {self.config_error}")
        if not self.slots.gpu_ids:
            if self.config.gpu_nodes:
                return Verdict(False, f"no GPU on this node; GPU nodes {list(self.config.gpu_nodes)} take it")
            return Verdict(True, "no GPU nodes configured; runs on this node's CPU")
        if is_parse:
            return Verdict(True, "parse job; needs no GPU slot")
        gpu = self.slots.reserve(job_id)
        if gpu is not None:
            return Verdict(True, f"GPU {gpu} slot reserved", gpu=gpu)
        position = self.slots.enqueue(job_id)
        if position is None:
            return Verdict(False, f"all {self.slots.capacity} GPU slot(s) busy and the queue of "
                                  f"{self.slots.queue_length} is full")
        return Verdict(True, f"all {self.slots.capacity} GPU slot(s) busy; queued at position {position}",
                       queued=True)
