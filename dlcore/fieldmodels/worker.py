"""The field-models worker: ``python -m dlcore.fieldmodels.worker`` in the field-models environment.

Reads requests from stdin and answers on stdout (:mod:`dlcore.fieldmodels.external` describes them);
imports only the kind's runtime module (``dlcore.fieldmodels.<kind>_runtime``), NumPy and the standard
library, so that it runs beside TIAToolbox's or Cellpose's pinned libraries.  Anything the runtime prints
goes to stderr, which the parent keeps for its error messages.
"""
from __future__ import annotations

import importlib
import sys
import traceback

import numpy as np

from dlcore.fieldmodels.wire import read_message, write_message

RUNTIMES = {"tiatoolbox": "dlcore.fieldmodels.tiatoolbox_runtime", "cellpose": "dlcore.fieldmodels.cellpose_runtime"}


def _runtime(kind: str):
    if kind not in RUNTIMES:
        raise ValueError(f"the worker runs {', '.join(RUNTIMES)}, not {kind!r}")
    return importlib.import_module(RUNTIMES[kind])


def handle(state: dict, header: dict, arrays: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
    """One request's reply (``state`` holds the loaded network between requests)."""
    op = header.get("op")
    if op == "inspect":
        return {"ok": True, "inspected": _runtime(header["kind"]).inspect(header["path"])}, []
    if op == "load":
        state["network"] = _runtime(header["kind"]).load(header["folder"], header["cfg"], header.get("device", "cpu"))
        return {"ok": True, "describe": state["network"].describe()}, []
    network = state.get("network")
    if network is None:
        raise ValueError(f"{op!r} before 'load'")
    if op == "fit":
        state["network"] = network.fit(arrays)
        return {"ok": True}, []
    if op == "parameters":
        state["network"] = network.with_parameters(header.get("params") or {})
        return {"ok": True}, []
    if op == "describe":
        return {"ok": True, "describe": network.describe()}, []
    if op == "classify":
        return {"ok": True}, [np.asarray(network.classify(arrays), np.float32)]
    if op == "predict":
        results, out = [], []
        for result in network.predict(arrays):
            if isinstance(result, tuple):
                labels, class_of_label, names = result
                results.append({"classes": list(names)})
                out += [np.asarray(labels, np.int32), np.asarray(class_of_label, np.int64)]
            else:
                results.append({"classes": None})
                out.append(np.asarray(result, np.int32))
        return {"ok": True, "results": results}, out
    raise ValueError(f"unknown request {op!r}")


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a runtime's prints must not corrupt the replies
    state: dict = {}
    while True:
        try:
            header, arrays = read_message(stdin)
        except EOFError:
            return 0
        if header.get("op") == "close":
            return 0
        try:
            reply, out = handle(state, header, arrays)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, typed
            traceback.print_exc(file=sys.stderr)
            kind = type(exc).__name__
            reply, out = {"ok": False, "error": str(exc), "type": kind if kind in ("ModelError", "ParameterError")
                          else "ModelError"}, []
        write_message(stdout, reply, out)


if __name__ == "__main__":
    sys.exit(main())
