"""dlcore's OMERO processor: omero-py's ``ProcessorI`` with GPU-aware ``willAccept``.

This module imports ``omero`` and is only loaded on processor nodes (by
:mod:`dlcore.processor.hook` or ``python -m dlcore.processor``).  The decision itself lives in
:mod:`dlcore.processor.policy`; this class connects it to OMERO:

* ``willAccept`` looks up the job's script (as omero-py does, through ``IScript.validateScript``),
  asks the policy, and answers the server's callback;
* ``process`` starts a deep-learning run on the GPU reserved for it: the script's process gets
  ``CUDA_VISIBLE_DEVICES`` set to that GPU (OMERO's environment whitelist would otherwise drop
  it), and the slot stays taken while the process lives.  A job that arrives without a slot (it
  was queued at ``willAccept``, or its reservation lapsed while OMERO parsed the script) never
  runs without one: its process waits on the node for a slot, in queue order, and starts then;
  cancelling it while it waits ends it at once;
* reservations and queue places of jobs another processor won are released as soon as the job is
  seen running elsewhere (its status, read through the processor's internal session), instead of
  holding a slot until the reservation expires.
"""
from __future__ import annotations

import logging
import threading

import omero
import omero.constants
import omero.grid
import omero.model
import omero.rtypes
from omero.processor import ProcessorI, WithGroup
from omero.util.decorators import remoted

from dlcore.config import ProcessorConfig, load_config
from dlcore.errors import DlcoreError
from dlcore.gpus import detect_gpus
from dlcore.processor.policy import DlJobPolicy, is_dl_script

logger = logging.getLogger(__name__)


def _process_alive(process) -> bool:
    """Whether a ProcessI's script is still running (reaps it without disturbing ProcessI).

    Reads the process's fields without its lock: ``ProcessI.deactivate`` holds that lock while it
    uploads the output, and the slots call this under their own lock."""
    popen = process.popen
    return popen is not None and popen.poll() is None


def slot_cores(slots: int) -> int:
    """The cores one GPU slot's job may use: this node's cores shared equally between its slots."""
    from dlcore.cores import available_cores

    return max(1, available_cores() // max(1, slots))


def _with_gpu(process_class: type, gpu: str, cores: int) -> type:
    """A subclass of ``process_class`` whose script sees only GPU ``gpu`` and uses ``cores`` cores
    (``DLCORE_CORES``, read by :mod:`dlcore.cores`)."""

    class GpuProcess(process_class):
        def make_env(self) -> None:
            super().make_env()
            self.env.set("CUDA_VISIBLE_DEVICES", gpu)
            self.env.set("DLCORE_CORES", str(cores))

    GpuProcess.__name__ = f"{process_class.__name__}OnGpu{gpu}"
    return GpuProcess


#: job statuses that mean a processor has taken the job (OMERO's omero.constants.jobs)
TAKEN_STATUSES = frozenset({
    omero.constants.jobs.RUNNING, omero.constants.jobs.FINISHED, omero.constants.jobs.ERRORX,
    omero.constants.jobs.CANCELLED,
})

CANCELLED_WHILE_QUEUED = "print('dlcore: the job was cancelled while it waited for a GPU slot')"


def _queued(process_class: type, processor: "DlcoreProcessorI", job_id: int, group_id: int | None) -> type:
    """A subclass of ``process_class`` that starts its script only once job ``job_id`` has a GPU slot.

    ``activate`` (called by ``ProcessorI.process``) returns at once; a thread waits for the slot
    (:meth:`GpuSlots.wait_for_slot`), sets ``CUDA_VISIBLE_DEVICES`` and starts the script, then holds
    the slot while it runs.  While it waits, ``poll`` answers "not finished" as for a running script
    (``alreadyDone`` is False; omero-py's own check of activation is not relied on); ``wait`` waits for
    the start and then for the script.  ``cancel``/``kill``, the processor's ``cleanup``, or the job
    being cancelled in OMERO (its status, checked while waiting) stop the wait and run a one-line script
    in its place, so omero-py's usual end follows (job status Cancelled, stdout uploaded).  A start that
    fails likewise ends with a one-line script that prints why (job status Error).
    """
    slots = processor.policy.slots

    class QueuedProcess(process_class):
        def activate(self) -> None:
            self._dl_started = threading.Event()
            self._dl_cancelled = threading.Event()
            self._dl_command = None
            self.status("Queued for a GPU slot")
            threading.Thread(target=self._start_when_slot_free, name=f"dlcore-queue-{job_id}", daemon=True).start()

        def _sweep(self) -> None:
            processor.release_jobs_taken_elsewhere()
            if processor.job_status(job_id, group_id) in (omero.constants.jobs.CANCELLED, omero.constants.jobs.ERRORX):
                self.final_status = "Cancelled"
                self._dl_cancelled.set()

        def _start_when_slot_free(self) -> None:
            gpu = slots.wait_for_slot(job_id, self._dl_cancelled, sweep=self._sweep)
            try:
                if gpu is None:
                    self._dl_command = [self.interpreter, "-c", CANCELLED_WHILE_QUEUED]
                else:
                    self.env.set("CUDA_VISIBLE_DEVICES", gpu)
                    self.env.set("DLCORE_CORES", str(slot_cores(slots.capacity)))
                process_class.activate(self)
                if gpu is not None:
                    slots.start(job_id, lambda: _process_alive(self))
                    self.logger.info("job %s left the queue: running on GPU %s (pid %s)", job_id, gpu, self.pid)
            except Exception as exc:
                self.logger.exception("job %s: could not start after waiting for a GPU slot", job_id)
                slots.release(job_id)
                self._fail(f"dlcore: the job could not start after waiting for a GPU slot: {exc}")
            finally:
                self._dl_started.set()

        def _fail(self, message: str) -> None:
            """End the job through omero-py's usual path with a script that prints ``message``."""
            self.final_status = "Error"
            self._dl_command = [self.interpreter, "-c", f"import sys; sys.exit({message!r})"]
            try:
                if self.popen is None:
                    process_class.activate(self)
            except Exception:  # nothing can run: mark it finished so nothing waits for it
                self.logger.exception("job %s: the replacement script did not start either", job_id)
                self.rcode = 1

        def command(self):
            return self._dl_command or process_class.command(self)

        def alreadyDone(self):
            if not self._dl_started.is_set():
                return False
            return process_class.alreadyDone(self)

        def _stop_waiting(self) -> None:
            if not self._dl_started.is_set():
                self.final_status = "Cancelled"
                self._dl_cancelled.set()
                self._dl_started.wait(30)

        def wait(self, current=None):
            self._dl_started.wait()
            return process_class.wait(self, current)

        def cancel(self, current=None):
            self._stop_waiting()
            return process_class.cancel(self, current)

        def kill(self, current=None):
            self._stop_waiting()
            return process_class.kill(self, current)

        def cleanup(self):
            self._stop_waiting()
            return process_class.cleanup(self)

    QueuedProcess.__name__ = f"{process_class.__name__}QueuedForGpu"
    return QueuedProcess


def default_policy() -> DlJobPolicy:
    """The policy for this node: its dlcore configuration and the GPUs it sees.

    An unreadable configuration does not stop the processor (other scripts keep running); the
    policy then declines every deep-learning job and says why in the log.
    """
    gpus = detect_gpus()
    try:
        config = load_config().processor
        error = None
    except DlcoreError as exc:
        config, error = ProcessorConfig(), str(exc)
        logger.error("dlcore processor: %s; declining deep-learning jobs until it is fixed", exc)
    return DlJobPolicy(config, gpus.ids, config_error=error)


class DlcoreProcessorI(ProcessorI):
    """omero-py's grid processor, placing deep-learning jobs by GPU slot.

    Parameters
    ----------
    ctx : omero.util.ServerContext
        As for ``omero.processor.ProcessorI``.
    *args, **kwargs
        Passed to ``ProcessorI``.
    policy : DlJobPolicy, optional
        The decision rule (default: :func:`default_policy`, from this node's configuration).
    """

    def __init__(self, ctx, *args, policy: DlJobPolicy | None = None, **kwargs) -> None:
        super().__init__(ctx, *args, **kwargs)
        self.policy = policy if policy is not None else default_policy()
        self._launch = threading.local()
        self._job_groups: dict[int, int] = {}  # job id -> group id, for the jobs this processor accepted
        self.logger.info("dlcore processor extension: %s", self.policy.describe())

    def _answer(self, cb, valid: bool) -> None:
        """Tell the server's ProcessorCallback whether this processor takes the job."""
        try:
            session_id = self.internal_session().ice_getIdentity().name
            callback = omero.grid.ProcessorCallbackPrx.uncheckedCast(cb.ice_oneway())
            callback.isProxyAccepted(valid, session_id, omero.grid.ProcessorPrx.uncheckedCast(self.prx))
        except Exception as exc:  # as omero-py: a lost callback must not fail the call
            self.logger.warning("callback failed on willAccept: %s Exception:%s", cb, exc)

    @remoted
    def willAccept(self, userContext, groupContext, scriptContext, cb, current=None):
        """Accept a job as omero-py does, then apply dlcore's GPU rule to deep-learning scripts."""
        if scriptContext is None or scriptContext.id is None:
            # No script: a user-mode processor's user/group question; omero-py answers it.
            return ProcessorI.willAccept(self, userContext, groupContext, scriptContext, cb, current)
        job_id = scriptContext.id.val
        if scriptContext.details is not None and scriptContext.details.group is not None:
            self._job_groups[job_id] = scriptContext.details.group.id.val
        try:
            file, handle = self.lookup(scriptContext)
            handle.close()
        except Exception:
            self.logger.error("File lookup failed: script job=%s", job_id, exc_info=True)
            return None  # as omero-py: no answer, the server counts a non-responder
        valid = file is not None
        if valid:
            path = file.path.val if file.path is not None else ""
            name = file.name.val if file.name is not None else ""
            self.release_jobs_taken_elsewhere()
            verdict = self.policy.decide(
                job_id=job_id,
                script_path=path.rstrip("/") + "/" + name,
                is_parse=isinstance(scriptContext, omero.model.ParseJob),
            )
            valid = verdict.accept
            self.logger.info("willAccept job %s (%s%s): %s, %s", job_id, path, name, valid, verdict.reason)
        self._answer(cb, valid)
        return valid

    def job_status(self, job_id: int, group_id: int | None = None) -> str | None:
        """A job's status (``Waiting``, ``Running``, ...) read through the internal session in the
        job's group (as omero-py's ``lookup`` reads the job: ``JobHandle.attach`` returns the
        ``JobStatus``); None when it cannot be read."""
        group = group_id if group_id is not None else self._job_groups.get(job_id)
        if group is None:
            return None
        try:
            handle = WithGroup(self.internal_session().createJobHandle(), group)
            try:
                status = handle.attach(job_id)
                return omero.rtypes.unwrap(status.getValue()) if status is not None else None
            finally:
                handle.close()
        except Exception as exc:  # a job we cannot read keeps its reservation until it expires
            self.logger.debug("status of job %s unreadable: %s", job_id, exc)
            return None

    def release_jobs_taken_elsewhere(self) -> list[int]:
        """Release the slots and queue places of accepted jobs that another processor is running (or
        that ended); the ids released."""
        released = []
        for job_id in self.policy.slots.unclaimed():
            status = self.job_status(job_id)
            if status in TAKEN_STATUSES:
                self.policy.slots.release(job_id)
                self._job_groups.pop(job_id, None)
                released.append(job_id)
                self.logger.info("job %s is %s elsewhere: its reservation here is released", job_id, status)
        return released

    def _is_dl_job(self, job) -> bool:
        file, handle = self.lookup(job)
        handle.close()
        if file is None:
            return False
        path = (file.path.val if file.path is not None else "").rstrip("/") + "/"
        return is_dl_script(path + (file.name.val if file.name is not None else ""),
                            self.policy.config.dl_script_folders)

    def process(self, client, session, job, current, params, properties=None, iskill=True):
        """Start the job's script; a deep-learning run goes to its reserved GPU and holds the slot,
        or waits on this node for one (it never runs without a slot)."""
        job_id = job.id.val if job is not None and job.id is not None else None
        slots = self.policy.slots
        is_run = job_id is not None and params is not None
        if not is_run or not slots.gpu_ids or not self._is_dl_job(job):
            return ProcessorI.process(self, client, session, job, current, params, properties, iskill)
        group_id = self._job_groups.pop(job_id, None)
        if group_id is None and job.details is not None and job.details.group is not None:
            group_id = job.details.group.id.val
        gpu = slots.reserve(job_id, claimed=True)  # the job is here: its slot no longer expires
        if gpu is None:
            position = slots.enqueue(job_id, claimed=True)
            self.logger.info("job %s: all GPU slots busy, waiting at queue position %s", job_id, position)
            self._launch.queued = (job_id, group_id)
        self._launch.gpu = gpu
        try:
            prx, process = ProcessorI.process(self, client, session, job, current, params, properties, iskill)
        except BaseException:
            slots.release(job_id)
            raise
        finally:
            self._launch.gpu = None
            self._launch.queued = None
        if gpu is not None:
            slots.start(job_id, lambda: _process_alive(process))
            self.logger.info("job %s running on GPU %s (pid %s)", job_id, gpu, process.pid)
        return prx, process

    def find_launcher(self, current):
        """omero-py's launcher and process class; the class pins the reserved GPU, if any, or waits for
        one (a queued job)."""
        launcher, process_class = ProcessorI.find_launcher(self, current)
        gpu = getattr(self._launch, "gpu", None)
        queued = getattr(self._launch, "queued", None)
        if gpu is not None:
            process_class = _with_gpu(process_class, gpu, slot_cores(self.policy.slots.capacity))
        elif queued is not None:
            process_class = _queued(process_class, self, *queued)
        return launcher, process_class


def main(argv: list[str] | None = None) -> int:
    """Run the processor server, as omero-py's ``runProcessor.py`` does, with dlcore's class."""
    import sys

    import Ice
    import omero.util

    app = omero.util.Server(DlcoreProcessorI, "ProcessorAdapter", Ice.Identity("Processor", ""))
    return app.main(sys.argv if argv is None else argv)
