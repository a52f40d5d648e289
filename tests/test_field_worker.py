"""The field-models worker protocol, without the field-models environment: the wire format, the worker's
replies and typed errors, and a worker that dies, using dlcore's own Python as the worker's."""
from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest

from dlcore.errors import ConfigError, ModelError
from dlcore.fieldmodels import worker as worker_module
from dlcore.fieldmodels.external import Worker, WorkerNetwork, close_workers, field_python
from dlcore.fieldmodels.wire import read_message, write_message
from dlcore.tiling.tile_objects import TypedLabels


def test_messages_round_trip_arrays_of_any_dtype_without_pickle():
    stream = io.BytesIO()
    arrays = [np.arange(12, dtype=np.uint16).reshape(3, 4), np.zeros((2, 2, 3), np.uint8), np.array([1.5, -2])]
    write_message(stream, {"op": "predict", "extra": [1, "a"]}, arrays)
    write_message(stream, {"op": "close"})
    stream.seek(0)
    header, got = read_message(stream)
    assert header == {"op": "predict", "extra": [1, "a"], "arrays": 3}
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, got))
    assert read_message(stream)[0]["op"] == "close"
    with pytest.raises(EOFError):
        read_message(stream)
    cut = io.BytesIO()
    write_message(cut, {"op": "fit"}, [np.ones((64, 64))])
    with pytest.raises(EOFError, match="cut short"):
        read_message(io.BytesIO(cut.getvalue()[:-100]))


class _Runtime:
    """A stand-in runtime module: labels = pixels above the fitted mean; class by parity of the label."""

    @staticmethod
    def inspect(path):
        if path.endswith(".bad"):
            from dlcore.errors import ModelError

            raise ModelError(f"{path} is not a model of this kind")
        return {"kind": "stub", "path": path}

    class _Net:
        def __init__(self, threshold=0.0):
            self.threshold = threshold

        def fit(self, samples):
            return _Runtime._Net(float(np.mean([s.mean() for s in samples])))

        def with_parameters(self, params):
            from dlcore.errors import ParameterError

            raise ParameterError(f"no parameters: {sorted(params)}")

        def predict(self, windows):
            out = []
            for w in windows:
                labels = (w[..., 0] > self.threshold).astype(np.int32)
                out.append((labels, np.array([0, 1]), ("background", "bright")) if labels.any() else labels)
            return out

        def describe(self):
            return {"threshold": self.threshold}

    @staticmethod
    def load(folder, cfg, device):
        return _Runtime._Net()


def test_the_worker_answers_each_request_and_types_its_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlcore.fieldmodels.stub_runtime", types.SimpleNamespace(
        inspect=_Runtime.inspect, load=_Runtime.load))
    monkeypatch.setitem(worker_module.RUNTIMES, "stub", "dlcore.fieldmodels.stub_runtime")
    state: dict = {}
    assert worker_module.handle(state, {"op": "inspect", "kind": "stub", "path": "/m"}, [])[0]["inspected"] == {
        "kind": "stub", "path": "/m"}
    with pytest.raises(ValueError, match="'predict' before 'load'"):
        worker_module.handle(state, {"op": "predict"}, [])
    worker_module.handle(state, {"op": "load", "kind": "stub", "folder": "/f", "cfg": {}}, [])
    worker_module.handle(state, {"op": "fit"}, [np.full((4, 4, 1), 10.0), np.full((4, 4, 1), 30.0)])
    bright = np.full((4, 4, 1), 50.0)
    reply, arrays = worker_module.handle(state, {"op": "predict"}, [bright, np.zeros((4, 4, 1))])
    assert reply["results"] == [{"classes": ["background", "bright"]}, {"classes": None}]
    assert len(arrays) == 3 and arrays[0].dtype == np.int32 and arrays[0].all() and not arrays[2].any()
    assert worker_module.handle(state, {"op": "describe"}, [])[0]["describe"] == {"threshold": 20.0}


def test_a_real_worker_process_replies_with_typed_errors_and_its_death_is_reported(tmp_path):
    """dlcore's own Python stands in for the field environment's: the worker starts, refuses a kind it
    does not run (ModelError), and a request after it is killed names the worker and the operation."""
    worker = Worker(sys.executable)
    try:
        with pytest.raises(ModelError, match="the worker runs tiatoolbox, cellpose, not 'bogus'"):
            worker.request({"op": "inspect", "kind": "bogus", "path": str(tmp_path)})
        with pytest.raises(ModelError, match="'fit' before 'load'"):
            worker.request({"op": "fit"}, [np.zeros((2, 2, 3))])
        worker.process.kill()
        worker.process.wait()
        with pytest.raises(ModelError, match="the field-models worker .* stopped during 'describe'"):
            worker.request({"op": "describe"})
    finally:
        worker.close()


def test_workers_still_running_at_exit_are_stopped_and_waited_for():
    """A loaded model kept until dlcore exits: the exit handler stops its worker and reaps it (no process
    left behind, and its CPU time is the run's), and closing again is harmless."""
    kept = [Worker(sys.executable), Worker(sys.executable)]
    network = WorkerNetwork(kept[1])
    assert all(w.process.poll() is None for w in kept)
    close_workers()
    assert [w.process.returncode for w in kept] == [0, 0]
    network.close()
    kept[0].close()


def test_worker_network_turns_replies_into_labels_and_typed_labels():
    class _FakeWorker:
        def request(self, header, arrays=()):
            labels = np.array([[0, 1], [2, 2]], np.int32)
            return ({"ok": True, "results": [{"classes": ["bg", "a", "b"]}, {"classes": None}]},
                    [labels, np.array([0, 1, 2]), labels])

    typed, plain = WorkerNetwork(_FakeWorker()).predict([np.zeros((2, 2, 3)), np.zeros((2, 2, 3))])
    assert isinstance(typed, TypedLabels) and typed.class_of(2) == "b" and typed.class_of(1) == "a"
    assert isinstance(plain, np.ndarray) and plain.dtype == np.int32


def test_a_missing_field_environment_is_a_configuration_error_saying_how_to_install_it(monkeypatch, tmp_path):
    from dlcore.config import Config

    monkeypatch.delenv("DLCORE_FIELD_PYTHON", raising=False)
    with pytest.raises(ConfigError, match="is not configured: install it with tools/install_field_env.sh"):
        field_python(Config(models_dir=tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        field_python(Config(models_dir=tmp_path, field_python=tmp_path / "none" / "python"))
    monkeypatch.setenv("DLCORE_FIELD_PYTHON", sys.executable)
    assert field_python(Config(models_dir=tmp_path)) == sys.executable


def test_the_worker_loop_sends_a_runtimes_parameter_error_back_as_one(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlcore.fieldmodels.stub_runtime", types.SimpleNamespace(
        inspect=_Runtime.inspect, load=_Runtime.load))
    monkeypatch.setitem(worker_module.RUNTIMES, "stub", "dlcore.fieldmodels.stub_runtime")
    requests = io.BytesIO()
    write_message(requests, {"op": "load", "kind": "stub", "folder": "/f", "cfg": {}})
    write_message(requests, {"op": "parameters", "params": {"sigma": 2}})
    write_message(requests, {"op": "inspect", "kind": "stub", "path": "/m.bad"})
    write_message(requests, {"op": "close"})
    requests.seek(0)
    replies = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=requests))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=replies))
    assert worker_module.main() == 0
    replies.seek(0)
    loaded, refused, bad = (read_message(replies)[0] for _ in range(3))
    assert loaded["ok"] and refused == {"ok": False, "error": "no parameters: ['sigma']", "type": "ParameterError",
                                        "arrays": 0}
    assert bad["type"] == "ModelError" and "/m.bad is not a model of this kind" in bad["error"]
