"""The field-models worker's wire format (see :mod:`dlcore.fieldmodels.external`): a JSON header line,
then arrays in NumPy's ``.npy`` format (no pickle).  Standard library and NumPy only: the worker's
environment imports it too."""
from __future__ import annotations

import io
import json

import numpy as np


def write_message(stream, header: dict, arrays=()) -> None:
    """Write one message: ``header`` as a JSON line, then each array in ``.npy`` format."""
    arrays = list(arrays)
    stream.write((json.dumps({**header, "arrays": len(arrays)}) + "\n").encode())
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        stream.write(len(data).to_bytes(8, "little"))
        stream.write(data)
    stream.flush()


def read_message(stream) -> tuple[dict, list[np.ndarray]]:
    """Read one message written by :func:`write_message`; EOFError when the other side is gone."""
    line = stream.readline()
    if not line:
        raise EOFError("the worker closed its output")
    header = json.loads(line)
    arrays = []
    for _ in range(int(header.get("arrays", 0))):
        size = int.from_bytes(_read_exactly(stream, 8), "little")
        arrays.append(np.load(io.BytesIO(_read_exactly(stream, size)), allow_pickle=False))
    return header, arrays


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the worker's message was cut short")
    return data
