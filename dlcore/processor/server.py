"""dlcore's OMERO processor: omero-py's ``ProcessorI`` with GPU-aware ``willAccept``.

This module imports ``omero`` and is only loaded on processor nodes (by
:mod:`dlcore.processor.hook` or ``python -m dlcore.processor``).  The decision itself lives in
:mod:`dlcore.processor.policy`; this class connects it to OMERO:

* ``willAccept`` looks up the job's script (as omero-py does, through ``IScript.validateScript``),
  asks the policy, and answers the server's callback;
* ``process`` starts a deep-learning run on the GPU reserved for it: the script's process gets
  ``CUDA_VISIBLE_DEVICES`` set to that GPU (OMERO's environment whitelist would otherwise drop
  it), and the slot stays taken while the process lives.
"""
from __future__ import annotations

import logging
import threading

import omero
import omero.grid
import omero.model
from omero.processor import ProcessorI
from omero.util.decorators import remoted

from dlcore.config import ProcessorConfig, load_config
from dlcore.errors import DlcoreError
from dlcore.gpus import detect_gpus
from dlcore.processor.policy import DlJobPolicy

logger = logging.getLogger(__name__)


def _process_alive(process) -> bool:
    """Whether a ProcessI's script is still running (reaps it without disturbing ProcessI)."""
    popen = process.popen
    if popen is None:
        return process.wasActivated() and process.rcode is None and process.stopped is None
    return popen.poll() is None


def _with_gpu(process_class: type, gpu: str) -> type:
    """A subclass of ``process_class`` whose script sees only GPU ``gpu``."""

    class GpuProcess(process_class):
        def make_env(self) -> None:
            super().make_env()
            self.env.set("CUDA_VISIBLE_DEVICES", gpu)

    GpuProcess.__name__ = f"{process_class.__name__}OnGpu{gpu}"
    return GpuProcess


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
            verdict = self.policy.decide(
                job_id=job_id,
                script_path=path.rstrip("/") + "/" + name,
                is_parse=isinstance(scriptContext, omero.model.ParseJob),
            )
            valid = verdict.accept
            self.logger.info("willAccept job %s (%s%s): %s, %s", job_id, path, name, valid, verdict.reason)
        self._answer(cb, valid)
        return valid

    def process(self, client, session, job, current, params, properties=None, iskill=True):
        """Start the job's script; a deep-learning run goes to its reserved GPU and holds the slot."""
        job_id = job.id.val if job is not None and job.id is not None else None
        gpu = self.policy.slots.reserved_gpu(job_id) if (job_id is not None and params is not None) else None
        if gpu is None:
            return ProcessorI.process(self, client, session, job, current, params, properties, iskill)
        self._launch.gpu = gpu
        try:
            prx, process = ProcessorI.process(self, client, session, job, current, params, properties, iskill)
        except BaseException:
            self.policy.slots.release(job_id)
            raise
        finally:
            self._launch.gpu = None
        self.policy.slots.start(job_id, lambda: _process_alive(process))
        self.logger.info("job %s running on GPU %s (pid %s)", job_id, gpu, process.pid)
        return prx, process

    def find_launcher(self, current):
        """omero-py's launcher and process class; the class pins the reserved GPU, if any."""
        launcher, process_class = ProcessorI.find_launcher(self, current)
        gpu = getattr(self._launch, "gpu", None)
        if gpu is not None:
            process_class = _with_gpu(process_class, gpu)
        return launcher, process_class


def main(argv: list[str] | None = None) -> int:
    """Run the processor server, as omero-py's ``runProcessor.py`` does, with dlcore's class."""
    import sys

    import Ice
    import omero.util

    app = omero.util.Server(DlcoreProcessorI, "ProcessorAdapter", Ice.Identity("Processor", ""))
    return app.main(sys.argv if argv is None else argv)
