"""Field models whose software needs its own environment (TIAToolbox, Cellpose), run in a worker process.

TIAToolbox pins torch < 2.13 and exact versions of its many dependencies, and Cellpose 3 pins numpy < 2.1:
neither fits beside dlcore's own environment.  A sysadmin installs them in a second virtual environment
(``tools/install_field_env.sh``; dlcore is installed into it too, without its dependencies) and names its
Python in ``dlcore.toml`` (``field_python``).  dlcore then runs these kinds through a worker process
started with that Python (``python -m dlcore.fieldmodels.worker``), which imports the kind's *runtime*
module (``dlcore.fieldmodels.<kind>_runtime``) and answers requests on its stdin/stdout.

The main environment never imports TIAToolbox or Cellpose: :class:`ExternalKind` implements
:class:`~dlcore.fieldmodels.base.Kind` by asking a worker to ``inspect`` and ``load``, and
:class:`WorkerNetwork` implements :class:`~dlcore.fieldmodels.base.FieldNetwork` by sending windows to it.

Wire format (both directions, :mod:`dlcore.fieldmodels.wire`): one message is a header line of JSON (``{"op": ..., ..., "arrays": n}``)
followed by ``n`` arrays in NumPy's ``.npy`` format (stable across the two environments' NumPy
versions; no pickle).  Requests and replies:

- ``{"op": "inspect", "kind", "path"}`` -> ``{"ok": true, "inspected": {Inspected's fields as JSON}}``
- ``{"op": "load", "kind", "folder", "cfg", "device"}`` -> ``{"ok": true, "describe": {...}}``
- ``{"op": "fit"}`` + sample windows -> ``{"ok": true}``
- ``{"op": "parameters", "params"}`` -> ``{"ok": true}``
- ``{"op": "predict"}`` + windows -> ``{"ok": true, "results": [{"classes": [names] | null}, ...]}`` + per
  window its labels, then (when classes are given) its class-of-label array
- ``{"op": "classify"}`` + patches -> ``{"ok": true}`` + one ``(N, K)`` float32 array of class probabilities
  (a patch classifier's network)
- ``{"op": "describe"}`` -> ``{"ok": true, "describe": {...}}``
- any failure -> ``{"ok": false, "error": message, "type": "ModelError" | "ParameterError" | ...}``

A runtime module provides ``inspect(path) -> dict`` (the :class:`~dlcore.fieldmodels.base.Inspected`
fields, paths as strings) and ``load(folder, cfg, device)`` returning an object with ``fit(samples)``,
``with_parameters(params)``, ``predict(windows) -> list[labels | (labels, class_of_label, class_names)]``
(a patch classifier: ``classify(patches) -> (N, K)`` instead) and ``describe()``.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ConfigError, ModelError, ParameterError
from dlcore.fieldmodels.base import Inspected, Publisher
from dlcore.fieldmodels.wire import read_message, write_message

ERRORS = {"ModelError": ModelError, "ParameterError": ParameterError, "ConfigError": ConfigError}
_LIVE_WORKERS: "weakref.WeakSet[Worker]" = weakref.WeakSet()


@atexit.register
def close_workers() -> None:
    """Close every worker still running (a loaded model kept until the end): each is asked to stop and
    waited for, so dlcore never exits leaving a worker process behind."""
    for worker in list(_LIVE_WORKERS):
        worker.close()


# -- the main environment's side -----------------------------------------------------------------
def field_python(config=None) -> str:
    """The extra environment's Python: ``DLCORE_FIELD_PYTHON``, else ``field_python`` of the configuration;
    ConfigError saying how to install it when there is none."""
    path = os.environ.get("DLCORE_FIELD_PYTHON")
    if not path:
        if config is None:
            from dlcore.config import load_config

            config = load_config()
        path = getattr(config, "field_python", None) or ""
    if not path or not Path(path).is_file():
        raise ConfigError(("the field-models environment's Python " + (f"{path} does not exist" if path else
                           "is not configured")) + ": install it with tools/install_field_env.sh and set "
                          "field_python in dlcore.toml (or DLCORE_FIELD_PYTHON) to its bin/python")
    return str(path)


class Worker:
    """A worker process in the field-models environment, and the request/reply exchange with it."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or field_python()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen([self.python, "-m", "dlcore.fieldmodels.worker"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise ConfigError(f"cannot start the field-models worker with {self.python}: {exc}") from exc
        self._lock = threading.Lock()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()
        _LIVE_WORKERS.add(self)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)
            del self._stderr[:-40]

    def request(self, header: dict, arrays=()) -> tuple[dict, list[np.ndarray]]:
        """Send one request and return the reply; the worker's own error is raised as the same error type."""
        with self._lock:
            try:
                write_message(self.process.stdin, header, arrays)
                reply, out = read_message(self.process.stdout)
            except (EOFError, BrokenPipeError, OSError) as exc:
                tail = b"".join(self._stderr[-15:]).decode(errors="replace").strip()
                raise ModelError(f"the field-models worker ({self.python}) stopped during {header.get('op')!r}: "
                                 f"{exc}" + (f"\n{tail}" if tail else "")) from exc
        if not reply.get("ok"):
            raise ERRORS.get(reply.get("type"), ModelError)(reply.get("error") or "the worker failed")
        return reply, out

    def close(self) -> None:
        """Ask the worker to stop and wait for it (killed after 10 s); closing twice is harmless."""
        _LIVE_WORKERS.discard(self)
        if self.process.poll() is None:
            try:
                write_message(self.process.stdin, {"op": "close"})
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.process.kill()

    def __del__(self) -> None:  # a network dropped without close(): do not leave the process behind
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


@dataclass
class WorkerNetwork:
    """A :class:`~dlcore.fieldmodels.base.FieldNetwork` whose model lives in a worker process."""

    worker: Worker = field(repr=False)
    info: dict = field(default_factory=dict)

    def fit(self, samples: list[np.ndarray]) -> "WorkerNetwork":
        if samples:
            self.worker.request({"op": "fit"}, samples)
        return self

    def with_parameters(self, params: dict) -> "WorkerNetwork":
        self.worker.request({"op": "parameters", "params": params})
        return self

    def predict(self, windows: list[np.ndarray]) -> list:
        from dlcore.tiling.tile_objects import TypedLabels

        reply, arrays = self.worker.request({"op": "predict"}, windows)
        out, position = [], 0
        for result in reply["results"]:
            labels = arrays[position].astype(np.int32, copy=False)
            position += 1
            if result.get("classes") is not None:
                out.append(TypedLabels(labels, arrays[position].astype(np.int64), tuple(result["classes"])))
                position += 1
            else:
                out.append(labels)
        return out

    def classify(self, patches: list[np.ndarray]) -> np.ndarray:
        """``(N, K)`` class probabilities of a patch classifier for ``(P, P, C)`` patches."""
        return self.worker.request({"op": "classify"}, patches)[1][0]

    def describe(self) -> dict:
        return self.worker.request({"op": "describe"})[0].get("describe", {})

    def close(self) -> None:
        """Stop the worker process (its model is gone; the network cannot be used after this)."""
        self.worker.close()


class ExternalKind:
    """A kind whose code runs in the field-models environment (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def inspect(self, path: Path) -> Inspected:
        worker = Worker()
        try:
            reply, _ = worker.request({"op": "inspect", "kind": self.name, "path": str(Path(path).resolve())})
        finally:
            worker.close()
        fields = dict(reply["inspected"])
        fields["files"] = {k: Path(v) for k, v in fields["files"].items()}
        fields["classes"] = tuple(fields["classes"])
        if fields.get("publisher"):
            publisher = dict(fields["publisher"])
            publisher["authors"] = tuple(publisher.get("authors") or ())
            fields["publisher"] = Publisher(**publisher)
        fields["scratch"] = Path(fields["scratch"]) if fields.get("scratch") else None
        return Inspected(**fields)

    def load(self, folder: Path, cfg: dict, device: str = "cpu") -> WorkerNetwork:
        worker = Worker()
        reply, _ = worker.request({"op": "load", "kind": self.name, "folder": str(Path(folder).resolve()),
                                   "cfg": cfg, "device": device})
        return WorkerNetwork(worker, reply.get("describe") or {})
