"""dlcore's OMERO processor extension: the policy alone, then omero-py's real ProcessorI.

The server side of OMERO (IScript, the job handle) is replaced by small fakes; everything on the
processor's side is real: ``omero.processor.ProcessorI`` and ``ProcessI``, ``omero.model`` jobs
and files, an Ice communicator and object adapter, a ``ProcessorCallback`` servant that receives
the oneway answers, and a real child process for the script.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dlcore.config import ProcessorConfig
from dlcore.errors import ParameterError
from dlcore.gpus import detect_gpus
from dlcore.processor.policy import RESERVATION_TTL_S, DlJobPolicy, GpuSlots, is_dl_script

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------------
# The policy, without OMERO
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/Deep_Learning/", True),
        ("/Deep_Learning/Segment_Nuclei.py", True),
        ("Deep_Learning/Train/Fine_Tune.py", True),
        ("/omero/util_scripts/Deep_Learning.py", False),  # a file name is not a folder
        ("/omero/analysis_scripts/", False),
        ("/deep_learning/", False),  # OMERO menus are case-sensitive
        ("", False),
    ],
)
def test_is_dl_script_by_folder(path, expected):
    assert is_dl_script(path, ("Deep_Learning",)) is expected


def test_is_dl_script_other_folders():
    assert is_dl_script("/Histology_AI/Run.py", ("Deep_Learning", "Histology_AI"))
    assert not is_dl_script("/Histology_AI/Run.py", ())


def test_slots_fill_least_loaded_gpu_first_then_refuse():
    slots = GpuSlots(("0", "1"), 2)
    assert slots.capacity == 4
    got = [slots.reserve(job) for job in (1, 2, 3, 4)]
    assert got == ["0", "1", "0", "1"]
    assert slots.reserve(5) is None
    assert slots.usage() == {"0": 2, "1": 2}
    assert slots.reserve(2) == "1"  # a job asking again keeps its slot


def test_unused_reservation_expires():
    clock = FakeClock()
    slots = GpuSlots(("0",), 1, reservation_ttl=60, clock=clock)
    assert slots.reserve(1) == "0"
    assert slots.reserve(2) is None
    clock.now += 59
    assert slots.reserve(2) is None
    clock.now += 2  # job 1 went to another processor and never started here
    assert slots.reserve(2) == "0"
    assert slots.reserved_gpu(1) is None


def test_three_nodes_answering_one_job_block_the_losers_slots_for_seconds_only():
    """Blitz asks every processor and gives the job to the first yes: every node reserves, one gets the job.
    The others must be free again within seconds (no status readable), not block a slot each for a minute."""
    assert RESERVATION_TTL_S <= 10  # Blitz waits 5 s for the first yes, then sends the job at once
    clock = FakeClock()
    config = ProcessorConfig(gpu_slots_per_gpu=1, queue_length=0)
    nodes = [DlJobPolicy(config, ("0",), clock=clock) for _ in range(3)]
    verdicts = [node.decide(job_id=1, script_path="/Deep_Learning/Run_Model.py", is_parse=False) for node in nodes]
    assert [v.accept for v in verdicts] == [True, True, True] and all(v.gpu == "0" for v in verdicts)
    nodes[0].slots.reserve(1, claimed=True)  # job 1 arrived on the first node (processJob)
    # within the reservation the two losers are full: job 2 is declined there (their queues have no room)
    second = [node.decide(job_id=2, script_path="/Deep_Learning/Run_Model.py", is_parse=False) for node in nodes]
    assert [v.accept for v in second] == [False, False, False]
    clock.now += RESERVATION_TTL_S + 0.01
    third = [node.decide(job_id=3, script_path="/Deep_Learning/Run_Model.py", is_parse=False) for node in nodes]
    assert [v.accept for v in third] == [False, True, True]  # node 0 runs job 1; the losers took their slot back
    assert [node.slots.in_use() for node in nodes] == [1, 1, 1]
    assert nodes[0].slots.reserved_gpu(1) == "0" and nodes[1].slots.reserved_gpu(1) is None


def test_running_job_holds_its_slot_until_it_ends():
    clock = FakeClock()
    slots = GpuSlots(("7",), 1, reservation_ttl=60, clock=clock)
    assert slots.reserve(10) == "7"
    alive = {"value": True}
    slots.start(10, lambda: alive["value"])
    clock.now += 3600  # running jobs do not expire
    assert slots.reserve(11) is None
    assert slots.in_use() == 1
    alive["value"] = False
    assert slots.in_use() == 0
    assert slots.reserve(11) == "7"


def test_start_without_reservation_and_bad_slots_are_errors():
    slots = GpuSlots(("0",), 1)
    with pytest.raises(ParameterError, match="reserve"):
        slots.start(3, lambda: True)
    with pytest.raises(ParameterError, match="slots_per_gpu=0"):
        GpuSlots(("0",), 0)
    slots.reserve(4)
    slots.release(4)
    assert slots.in_use() == 0


def test_queue_serves_claimed_jobs_in_order_and_unclaimed_places_expire():
    clock = FakeClock()
    slots = GpuSlots(("0",), 1, queue_length=2, clock=clock)
    assert slots.reserve(1) == "0"
    slots.start(1, lambda: not finished.is_set())
    finished = threading.Event()
    assert slots.reserve(2) is None
    assert (slots.enqueue(2), slots.enqueue(3), slots.enqueue(4)) == (1, 2, None)  # the queue holds 2
    assert slots.enqueue(5, claimed=True) == 3  # a job that is here is queued even when the queue is full
    assert slots.unclaimed() == [2, 3]
    clock.now += RESERVATION_TTL_S + 1
    assert slots.queued() == [5]  # unclaimed places expired (another node took jobs 2 and 3)

    slots.enqueue(6, claimed=True)
    got, cancelled = {}, threading.Event()
    waiters = [threading.Thread(target=lambda j=j: got.setdefault(j, slots.wait_for_slot(j, cancelled, poll_s=0.01)))
               for j in (6, 5)]
    for w in waiters:
        w.start()
    time.sleep(0.1)
    assert got == {} and slots.reserve(7) is None  # a new job does not jump the queue
    finished.set()  # job 1 ends: 5 (queued first) gets the slot, 6 waits for 5
    waiters[1].join(5)
    assert got == {5: "0"} and waiters[0].is_alive()
    slots.start(5, lambda: False)  # ... and ends at once
    waiters[0].join(5)
    assert got == {5: "0", 6: "0"}


def test_a_claimed_slot_is_never_swept_or_expired():
    """Once the job is here (processJob), a sweep for jobs running elsewhere must not free its slot: its
    status is Running too (ProcessorI.process sets it right after starting the script)."""
    clock = FakeClock()
    slots = GpuSlots(("0",), 1, clock=clock)
    assert slots.reserve(1) == "0" and slots.unclaimed() == [1]  # willAccept: another node may win it
    assert slots.reserve(1, claimed=True) == "0"  # processJob arrived here
    assert slots.unclaimed() == []
    clock.now += RESERVATION_TTL_S * 10
    assert slots.reserved_gpu(1) == "0"  # not expired, though its process has not started yet
    slots.start(1, lambda: True)
    assert slots.in_use() == 1


def test_cancelled_wait_leaves_the_queue():
    slots = GpuSlots(("0",), 1, queue_length=1)
    slots.reserve(1)
    slots.start(1, lambda: True)
    slots.enqueue(2, claimed=True)
    cancelled = threading.Event()
    cancelled.set()
    assert slots.wait_for_slot(2, cancelled) is None
    assert slots.queued() == []
    with pytest.raises(ParameterError, match="queue_length=-1"):
        GpuSlots(("0",), 1, queue_length=-1)


def test_policy_decisions():
    folders = ProcessorConfig(gpu_slots_per_gpu=1, queue_length=1, gpu_nodes=("gpu1", "gpu2"))
    gpu_node = DlJobPolicy(folders, ("0",))
    cpu_node = DlJobPolicy(folders, ())
    lone_cpu = DlJobPolicy(ProcessorConfig(), ())
    broken = DlJobPolicy(ProcessorConfig(), ("0",), config_error="bad TOML")

    other = gpu_node.decide(job_id=1, script_path="/omero/util_scripts/Move.py", is_parse=False)
    assert other.accept and other.gpu is None
    run = gpu_node.decide(job_id=2, script_path="/Deep_Learning/Seg.py", is_parse=False)
    assert run.accept and run.gpu == "0"
    queued = gpu_node.decide(job_id=3, script_path="/Deep_Learning/Seg.py", is_parse=False)
    assert queued.accept and queued.queued and queued.gpu is None and "queued at position 1" in queued.reason
    busy = gpu_node.decide(job_id=10, script_path="/Deep_Learning/Seg.py", is_parse=False)
    assert not busy.accept and "1 GPU slot(s) busy and the queue of 1 is full" in busy.reason
    parse = gpu_node.decide(job_id=4, script_path="/Deep_Learning/Seg.py", is_parse=True)
    assert parse.accept and parse.gpu is None  # parsing takes no slot, even when all are busy

    declined = cpu_node.decide(job_id=5, script_path="/Deep_Learning/Seg.py", is_parse=False)
    assert not declined.accept and "gpu1" in declined.reason
    assert not cpu_node.decide(job_id=6, script_path="/Deep_Learning/Seg.py", is_parse=True).accept
    assert cpu_node.decide(job_id=7, script_path="/omero/x/Y.py", is_parse=False).accept
    assert lone_cpu.decide(job_id=8, script_path="/Deep_Learning/Seg.py", is_parse=False).accept
    refused = broken.decide(job_id=9, script_path="/Deep_Learning/Seg.py", is_parse=False)
    assert not refused.accept and "bad TOML" in refused.reason


def test_detect_gpus_sources(tmp_path):
    smi = "GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\n"
    assert detect_gpus(environ={"CUDA_VISIBLE_DEVICES": "2,3"}, nvidia_smi=lambda: smi).ids == ("2", "3")
    assert detect_gpus(environ={"CUDA_VISIBLE_DEVICES": ""}, nvidia_smi=lambda: smi).count == 0
    assert detect_gpus(environ={"CUDA_VISIBLE_DEVICES": "-1"}, nvidia_smi=lambda: smi).count == 0
    assert detect_gpus(environ={"CUDA_VISIBLE_DEVICES": "1,-1,2"}).ids == ("1",)
    found = detect_gpus(environ={}, nvidia_smi=lambda: smi)
    assert (found.ids, found.source) == (("0", "1"), "nvidia-smi")
    proc = tmp_path / "gpus"
    for bus in ("0000:17:00.0", "0000:65:00.0", "0000:ca:00.0"):
        (proc / bus).mkdir(parents=True)
    found = detect_gpus(environ={}, nvidia_smi=lambda: None, proc_dir=proc)
    assert (found.count, found.source) == (3, "/proc")
    none = detect_gpus(environ={}, nvidia_smi=lambda: None, proc_dir=tmp_path / "absent")
    assert (none.count, none.source) == (0, "none")


# --------------------------------------------------------------------------------------------
# omero-py's real ProcessorI, with the server side faked
# --------------------------------------------------------------------------------------------

omero = pytest.importorskip("omero", reason="omero-py (and zeroc-ice) are needed for these tests")
Ice = pytest.importorskip("Ice")
import omero.grid  # noqa: E402, F811 (the submodule; importorskip bound the package)
import omero.model  # noqa: E402
import omero.api  # noqa: E402
import omero.rtypes  # noqa: E402
from omero.rtypes import rstring  # noqa: E402
from omero_ext.path import path as omero_path  # noqa: E402

from dlcore.processor.server import CANCELLED_WHILE_QUEUED, DlcoreProcessorI, slot_cores  # noqa: E402


class _Remote:
    """Base of the fakes: what omero.processor's WithGroup wrapper needs from a proxy."""

    def __init__(self, communicator) -> None:
        self._communicator = communicator

    def ice_getCommunicator(self):
        return self._communicator


class JobHandleBackend:
    """omero.api.JobHandle, served over real Ice (so the processor calls only what the Slice declares): the
    job's status lives in ``statuses``, which several nodes' sessions share (one server).  Jobs start
    ``Waiting``, as SharedResourcesI saves them."""

    def __init__(self, log, statuses) -> None:
        self.log, self.statuses = log, statuses
        self.job_id = None

    def _status(self):
        status = omero.model.JobStatusI()
        status.setValue(rstring(self.statuses.get(self.job_id, "Waiting")))
        return status

    def attach(self, jobId, ctx):
        self.log.append(("attach", jobId, ctx.get("omero.group")))
        self.job_id = jobId
        return self._status()

    def jobStatus(self):
        return self._status()

    def jobFinished(self):
        done = self.statuses.get(self.job_id) in ("Finished", "Error", "Cancelled")
        return omero.rtypes.rtime(1) if done else None

    def setStatus(self, status):
        self.log.append(("status", status))
        old = self.statuses.get(self.job_id, "Waiting")
        self.statuses[self.job_id] = status
        return old

    def close(self):
        self.log.append(("close",))


class FakeScriptService(_Remote):
    """IScript: which OriginalFile a job runs, and its text."""

    def __init__(self, communicator) -> None:
        super().__init__(communicator)
        self.job_files: dict[int, omero.model.OriginalFileI | None] = {}
        self.texts: dict[int, str] = {}

    def add_script(self, job_id: int, file_id: int, path: str, name: str, text: str = "") -> None:
        file = omero.model.OriginalFileI(file_id, True)
        file.path, file.name = rstring(path), rstring(name)
        file.hash = rstring(hashlib.sha1(text.encode()).hexdigest())
        self.job_files[job_id] = file
        self.texts[file_id] = text

    def validateScript(self, job, accepts_list, ctx=None):
        return self.job_files.get(job.id.val)

    def getScriptText(self, file_id, ctx=None):
        return self.texts[file_id]


class FakeSessionService(_Remote):
    def getInputs(self, session, ctx=None):
        return {}


class FakeServiceFactory(_Remote):
    """The processor's internal session (``use_session``)."""

    def __init__(self, communicator, statuses: dict | None = None, scripts: FakeScriptService | None = None) -> None:
        super().__init__(communicator)
        self.log: list = []
        self.statuses = {} if statuses is None else statuses
        self.scripts = scripts or FakeScriptService(communicator)
        self.sessions = FakeSessionService(communicator)

    def createJobHandle(self, ctx=None):
        from ice_served import serve

        return serve(omero.api.JobHandle, omero.api.JobHandlePrx, JobHandleBackend(self.log, self.statuses))

    def getScriptService(self, ctx=None):
        return self.scripts

    def getSessionService(self, ctx=None):
        return self.sessions

    def ice_getIdentity(self):
        return Ice.Identity("internal-session", "")

    def keepAlive(self, proxy, ctx=None):
        return True


class FakeClient:
    """The user's omero.client inside ProcessorI.process (only what it calls)."""

    def getProperty(self, key):
        return ""

    def sha1(self, filename):
        return hashlib.sha1(Path(filename).read_bytes()).hexdigest()


class Answers(omero.grid.ProcessorCallback):
    """A real ProcessorCallback servant: collects the oneway isProxyAccepted answers."""

    def __init__(self) -> None:
        self.answers: list[bool] = []
        self.event = threading.Condition()

    def isAccepted(self, accepted, sessionUuid, procConn, current=None):
        raise AssertionError("omero-py answers with isProxyAccepted")

    def isProxyAccepted(self, accepted, sessionUuid, procProxy, current=None):
        with self.event:
            self.answers.append(bool(accepted))
            self.event.notify_all()

    def responseRunning(self, jobIds, current=None):
        pass

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bool]:
        with self.event:
            self.event.wait_for(lambda: len(self.answers) >= count, timeout)
            return list(self.answers)


@pytest.fixture()
def ice():
    data = Ice.InitializationData()
    data.properties = Ice.createProperties()
    data.properties.setProperty("Ice.ImplicitContext", "Shared")
    communicator = Ice.initialize(data)
    adapter = communicator.createObjectAdapterWithEndpoints("DlcoreTest", "tcp -h 127.0.0.1")
    adapter.activate()
    yield communicator, adapter
    communicator.destroy()


@pytest.fixture()
def make_processor(ice, tmp_path):
    communicator, adapter = ice
    made = []

    def make(gpu_ids, *, slots=1, gpu_nodes=(), queue_length=0, statuses=None, scripts=None, clock=time.monotonic):
        sf = FakeServiceFactory(communicator, statuses, scripts)
        (tmp_path / "lib" / "server").mkdir(parents=True, exist_ok=True)
        ctx = omero.util.ServerContext(f"Processor-{len(made)}", communicator, threading.Event())
        config = ProcessorConfig(gpu_slots_per_gpu=slots, gpu_nodes=tuple(gpu_nodes), queue_length=queue_length)
        policy = DlJobPolicy(config, gpu_ids, clock=clock)
        processor = DlcoreProcessorI(ctx, use_session=sf, omero_home=omero_path(str(tmp_path)), policy=policy)
        answers = Answers()
        callback = omero.grid.ProcessorCallbackPrx.uncheckedCast(adapter.addWithUUID(answers))
        made.append(processor)
        return processor, sf, callback, answers

    yield make
    for processor in made:
        processor.cleanup()


def _script_job(job_id: int, parse: bool = False):
    job = (omero.model.ParseJobI if parse else omero.model.ScriptJobI)(job_id, True)
    job.details.group = omero.model.ExperimenterGroupI(3, False)
    return job


def _process_job(processor, adapter, job_id: int):
    """What processJob does after joining the user's session: ProcessorI.process on a run job."""
    params = omero.grid.JobParams()
    params.inputs = {}
    current = Ice.Current()
    current.adapter, current.ctx = adapter, {}
    return processor.process(FakeClient(), "session-uuid", _script_job(job_id), current, params)


def test_is_a_real_processor_servant():
    assert issubclass(DlcoreProcessorI, omero.processor.ProcessorI)
    assert issubclass(DlcoreProcessorI, omero.grid.Processor)


def test_will_accept_gpu_node_counts_slots(make_processor):
    processor, sf, callback, answers = make_processor(("0",), slots=1)
    sf.scripts.add_script(1, 101, "/Deep_Learning/", "Segment_Nuclei.py")
    sf.scripts.add_script(2, 101, "/Deep_Learning/", "Segment_Nuclei.py")
    sf.scripts.add_script(3, 102, "/omero/util_scripts/", "Move_Annotations.py")
    sf.scripts.add_script(4, 101, "/Deep_Learning/", "Segment_Nuclei.py")
    user, group = omero.model.ExperimenterI(5, False), omero.model.ExperimenterGroupI(3, False)

    results = [
        processor.willAccept(user, group, _script_job(1), callback),
        processor.willAccept(user, group, _script_job(2), callback),  # the only slot is reserved
        processor.willAccept(user, group, _script_job(3), callback),  # not deep learning
        processor.willAccept(user, group, _script_job(4, parse=True), callback),  # parse: no slot
    ]
    assert results == [True, False, True, True]
    assert answers.wait_for(4) == [True, False, True, True]
    assert processor.policy.slots.reserved_gpu(1) == "0"
    assert ("attach", 2, "3") in sf.log  # looked up in the job's group, as omero-py does


def test_will_accept_cpu_node_declines_dl_when_gpu_nodes_exist(make_processor):
    processor, sf, callback, answers = make_processor((), gpu_nodes=("gpu1", "gpu2"))
    sf.scripts.add_script(1, 101, "/Deep_Learning/", "Segment_Nuclei.py")
    sf.scripts.add_script(2, 102, "/omero/export_scripts/", "Batch_Image_Export.py")
    assert processor.willAccept(None, None, _script_job(1), callback) is False
    assert processor.willAccept(None, None, _script_job(2), callback) is True
    assert answers.wait_for(2) == [False, True]


def test_will_accept_declines_unofficial_script(make_processor):
    processor, sf, callback, answers = make_processor(("0",))
    sf.scripts.job_files[9] = None  # IScript.validateScript found no acceptable script
    assert processor.willAccept(None, None, _script_job(9), callback) is False
    assert answers.wait_for(1) == [False]
    assert processor.policy.slots.in_use() == 0


def test_dl_run_gets_its_gpu_and_frees_the_slot_when_done(make_processor, ice, tmp_path):
    """A real script process: sees only the reserved GPU; the slot lives as long as it does."""
    _, adapter = ice
    processor, sf, callback, answers = make_processor(("3",), slots=1)
    seen, release = tmp_path / "seen.txt", tmp_path / "release"
    script = textwrap.dedent(
        f"""
        import os, pathlib, time
        pathlib.Path({str(seen)!r}).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        pathlib.Path({str(seen)!r} + ".cores").write_text(os.environ.get("DLCORE_CORES", "<unset>"))
        deadline = time.time() + 30
        while not os.path.exists({str(release)!r}) and time.time() < deadline:
            time.sleep(0.05)
        """
    )
    for job_id in (1, 2, 3):
        sf.scripts.add_script(job_id, 101, "/Deep_Learning/", "Segment_Nuclei.py", script)

    assert processor.willAccept(None, None, _script_job(1), callback) is True
    prx, process = _process_job(processor, adapter, 1)
    assert prx is not None and process.pid
    for _ in range(200):
        if seen.exists() and seen.read_text():
            break
        time.sleep(0.05)
    assert seen.read_text() == "3"
    assert Path(str(seen) + ".cores").read_text() == str(slot_cores(1))  # the slot's share of the node's cores
    assert ("status", "Running") in sf.log
    assert processor.willAccept(None, None, _script_job(2), callback) is False  # slot in use

    release.touch()
    assert process.wait() == 0  # ProcessI reaps it and uploads (here: fails to) its output
    assert processor.willAccept(None, None, _script_job(3), callback) is True  # freed
    assert answers.wait_for(3) == [True, False, True]


def test_non_dl_run_keeps_omero_environment(make_processor, ice, tmp_path):
    _, adapter = ice
    processor, sf, callback, _answers = make_processor(("0",))
    seen = tmp_path / "seen.txt"
    script = f"import os, pathlib; pathlib.Path({str(seen)!r}).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>'))\n"
    sf.scripts.add_script(1, 102, "/omero/util_scripts/", "Move.py", script)
    assert processor.willAccept(None, None, _script_job(1), callback) is True
    _prx, process = _process_job(processor, adapter, 1)
    assert process.wait() == 0  # ProcessI reaps it and uploads (here: fails to) its output
    assert seen.read_text() == "<unset>"
    assert processor.policy.slots.in_use() == 0


def test_unreadable_config_declines_dl(monkeypatch, tmp_path):
    from dlcore.processor.server import default_policy

    bad = tmp_path / "dlcore.toml"
    bad.write_text("[processor]\ngpu_slots = 2\n")  # typo of gpu_slots_per_gpu
    monkeypatch.setenv("DLCORE_CONFIG", str(bad))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    policy = default_policy()
    verdict = policy.decide(job_id=1, script_path="/Deep_Learning/Seg.py", is_parse=False)
    assert not verdict.accept and "gpu_slots" in verdict.reason
    assert policy.decide(job_id=2, script_path="/omero/a/B.py", is_parse=False).accept


@pytest.mark.parametrize(("launcher", "expected"), [
    ("runProcessor.py", "dlcore.processor.server.DlcoreProcessorI"),
    ("other_program.py", "omero.processor.ProcessorI"),
])
def test_hook_replaces_processor_class_only_in_run_processor(tmp_path, launcher, expected):
    config = tmp_path / "dlcore.toml"
    config.write_text('[processor]\ngpu_nodes = ["gpu1"]\n')
    program = tmp_path / launcher
    program.write_text(
        "import dlcore.processor.hook as hook\n"
        "hook.install()\n"
        "import omero\n"
        "from omero.processor import ProcessorI\n"
        "print(ProcessorI.__module__ + '.' + ProcessorI.__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), DLCORE_CONFIG=str(config))
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected


def test_hook_can_be_switched_off(monkeypatch):
    from dlcore.processor import hook

    monkeypatch.setenv("DLCORE_PROCESSOR_EXTENSION", "0")
    assert hook.install(["runProcessor.py"]) is False
    assert hook.is_processor_launch(["/opt/omero/server/venv3/lib/python3.11/site-packages/runProcessor.py"])
    assert not hook.is_processor_launch(["/usr/bin/omero"])


def test_hook_falls_back_to_omero_class_when_dlcore_fails(monkeypatch, caplog):
    import types

    from dlcore.processor import hook

    module = types.ModuleType("omero.processor")
    module.ProcessorI = omero.processor.ProcessorI
    monkeypatch.setitem(sys.modules, "dlcore.processor.server", None)  # import now fails
    assert hook.patch(module) is False
    assert module.ProcessorI is omero.processor.ProcessorI
    assert "OMERO's ProcessorI serves unchanged" in caplog.text


def _server_acquires(processors, job, user=None, group=None):
    """What OMERO.server's ``SharedResourcesI.acquireProcessor`` does: every processor is asked (each
    hears willAccept, and each that says yes reserves), the first yes wins; None when none says yes (the
    user then gets NoProcessorAvailable)."""
    answers = [processor.willAccept(user, group, job, callback) for processor, _sf, callback, _ in processors]
    return next((p for (p, *_), yes in zip(processors, answers) if yes), None)


def _run_script(job_id: int, flag: Path, seen: Path) -> str:
    return textwrap.dedent(
        f"""
        import os, pathlib, time
        pathlib.Path({str(seen)!r}).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        deadline = time.time() + 30
        while not os.path.exists({str(flag)!r}) and time.time() < deadline:
            time.sleep(0.05)
        """
    )


def _wait_for_file(path: Path, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text():
            return True
        time.sleep(0.05)
    return False


def test_several_nodes_release_reservations_of_jobs_that_ran_elsewhere(make_processor, ice, tmp_path):
    """Two GPU nodes answer every job (one server, shared job statuses): the node that lost a job frees its
    slot as soon as it sees the job running elsewhere, before its reservation lapses."""
    _, adapter = ice
    statuses, scripts = {}, None
    gpu1 = make_processor(("0",), slots=1, statuses=statuses)
    scripts = gpu1[1].scripts  # one script repository
    gpu2 = make_processor(("0",), slots=1, statuses=statuses, scripts=scripts)
    flag, seen = tmp_path / "release", tmp_path / "seen.txt"
    for job_id in (1, 2):
        scripts.add_script(job_id, 101, "/Deep_Learning/", "Segment_Nuclei.py", _run_script(job_id, flag, seen))

    # both nodes are asked about job 1 and both reserve; node 1 answered first and runs it
    assert _server_acquires([gpu1, gpu2], _script_job(1)) is gpu1[0]
    assert gpu2[0].policy.slots.in_use() == 1  # reserved for a job it will not get
    _prx, process = _process_job(gpu1[0], adapter, 1)
    assert statuses[1] == "Running"

    # job 2: node 1 is busy, node 2 sees job 1 running elsewhere, frees the slot and takes job 2
    assert _server_acquires([gpu1, gpu2], _script_job(2)) is gpu2[0]
    assert gpu2[0].policy.slots.reserved_gpu(1) is None and gpu2[0].policy.slots.reserved_gpu(2) == "0"
    assert gpu1[0].policy.slots.unclaimed() == []  # node 1's running job 1 is its own: never swept
    flag.touch()
    assert process.wait() == 0


def test_busy_node_queues_the_job_and_starts_it_when_a_slot_frees(make_processor, ice, tmp_path):
    _, adapter = ice
    processor, sf, callback, answers = make_processor(("5",), slots=1, queue_length=1)
    first_done, second_done = tmp_path / "first", tmp_path / "second"
    seen1, seen2 = tmp_path / "seen1", tmp_path / "seen2"
    sf.scripts.add_script(1, 101, "/Deep_Learning/", "Run_Model.py", _run_script(1, first_done, seen1))
    sf.scripts.add_script(2, 102, "/Deep_Learning/", "Run_Model.py", _run_script(2, second_done, seen2))
    sf.scripts.add_script(3, 101, "/Deep_Learning/", "Run_Model.py", _run_script(1, first_done, seen1))

    assert processor.willAccept(None, None, _script_job(1), callback) is True
    _prx1, first = _process_job(processor, adapter, 1)
    assert _wait_for_file(seen1)
    assert processor.willAccept(None, None, _script_job(2), callback) is True  # queued, not refused
    assert processor.willAccept(None, None, _script_job(3), callback) is False  # the queue of 1 is full
    _prx2, second = _process_job(processor, adapter, 2)  # returns at once; the script waits
    time.sleep(0.5)
    assert not seen2.exists() and second.poll() is None
    assert processor.policy.slots.queued() == [2]

    first_done.touch()
    assert first.wait() == 0
    assert _wait_for_file(seen2)
    assert seen2.read_text() == "5"  # it got the GPU the first job freed
    second_done.touch()
    assert second.wait() == 0
    assert processor.policy.slots.in_use() == 0


def test_cancelling_a_queued_job_ends_it_without_running_the_script(make_processor, ice, tmp_path):
    _, adapter = ice
    processor, sf, callback, _answers = make_processor(("0",), slots=1, queue_length=2)
    done, seen1, seen2 = tmp_path / "done", tmp_path / "seen1", tmp_path / "seen2"
    sf.scripts.add_script(1, 101, "/Deep_Learning/", "Run_Model.py", _run_script(1, done, seen1))
    sf.scripts.add_script(2, 102, "/Deep_Learning/", "Run_Model.py", _run_script(2, done, seen2))
    processor.willAccept(None, None, _script_job(1), callback)
    _prx, first = _process_job(processor, adapter, 1)
    assert processor.willAccept(None, None, _script_job(2), callback) is True
    _prx, queued = _process_job(processor, adapter, 2)
    assert queued.poll() is None  # waiting: "not finished", as for a running script
    queued.cancel()
    assert queued.wait() in (0, -15)  # the stand-in script ran; cancel() may have TERMinated it, as omero-py does
    assert queued.command()[-1] == CANCELLED_WHILE_QUEUED and not seen2.exists()  # the real one never ran
    assert queued.final_status == "Cancelled"
    assert processor.policy.slots.queued() == [] and processor.policy.slots.in_use() == 1

    # a job cancelled in OMERO (JobHandle.cancelJob sets its status) stops waiting too
    sf.scripts.add_script(3, 103, "/Deep_Learning/", "Run_Model.py", _run_script(3, done, tmp_path / "seen3"))
    assert processor.willAccept(None, None, _script_job(3), callback) is True
    _prx, in_omero = _process_job(processor, adapter, 3)
    sf.statuses[3] = "Cancelled"
    assert in_omero.wait() == 0 and in_omero.command()[-1] == CANCELLED_WHILE_QUEUED
    assert not (tmp_path / "seen3").exists()
    done.touch()
    assert first.wait() == 0


def test_a_job_whose_reservation_lapsed_still_runs_on_a_gpu(make_processor, ice, tmp_path):
    """OMERO parsed the script first (a ParseJob, slow when it imports torch): processJob came after the
    reservation expired.  The job must still get a GPU slot, not run beside the others without one."""
    _, adapter = ice
    clock = FakeClock()
    processor, sf, callback, _answers = make_processor(("2",), slots=1, clock=clock)
    done, seen = tmp_path / "done", tmp_path / "seen"
    sf.scripts.add_script(1, 101, "/Deep_Learning/", "Run_Model.py", _run_script(1, done, seen))
    assert processor.willAccept(None, None, _script_job(1), callback) is True
    clock.now += RESERVATION_TTL_S + 1
    assert processor.policy.slots.in_use() == 0  # lapsed
    _prx, process = _process_job(processor, adapter, 1)
    assert _wait_for_file(seen) and seen.read_text() == "2"
    assert processor.policy.slots.in_use() == 1
    done.touch()
    assert process.wait() == 0


def test_each_gpu_slot_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("DLCORE_CORES", raising=False)
    assert (slot_cores(1), slot_cores(2), slot_cores(4), slot_cores(32)) == (16, 8, 4, 1)
