"""The per-object measurement table as an OMERO.table, written in batches while tiles stream.

Columns: ``Image`` (ImageColumn), ``Roi`` (RoiColumn, -1 for objects beyond the ROI cap), then the
columns of :func:`dlcore.io.sink.object_columns` (the same as the local ``objects.csv``) with
``label_value`` (the object's value in the OMERO label image, see
:func:`dlcore.omero.label_image.label_value`) after ``id``: integers as LongColumn, the class as a
StringColumn, the rest as DoubleColumn (NaN where unknown).

What the server refuses, and how the writer avoids it:

- ``StringColumnI`` limits each value to ``size`` *bytes* of UTF-8 and raises
  ``omero.ValidationException`` beyond (omero-py ``tables/columns.py``): strings are cut to the byte
  limit at a character boundary (:func:`fit_utf8`).
- Column names become PyTables column names, which refuse ``/`` (and names starting with ``_i_``,
  ``_v_``, ``_f_``, ``_g_``, ``_c_``); channel names such as ``CD3/CD8`` appear in ``mean_<channel>``:
  every character outside ``[A-Za-z0-9_]`` becomes ``_`` and a duplicate gets a numbered suffix
  (:func:`column_names`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

from dlcore.errors import OmeroError
from dlcore.io.sink import object_columns, object_row
from dlcore.objects import ObjectRecord

LONG_COLUMNS = {"id", "label_value", "area_px"}
STRING_COLUMNS = {"class": 64}  # bytes of UTF-8


def fit_utf8(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` bytes of UTF-8, never inside a character."""
    return text.encode("utf-8")[:size].decode("utf-8", "ignore")


def column_names(names: Sequence[str]) -> list[str]:
    """Names PyTables (and so OMERO.tables) accepts, one per name, unique, in order."""
    out: list[str] = []
    for name in names:
        safe = re.sub(r"[^A-Za-z0-9_]", "_", name) or "column"
        if safe[0].isdigit() or re.match(r"_[ivfgc]_", safe):
            safe = "c" + safe
        candidate, n = safe, 2
        while candidate in out:
            candidate, n = f"{safe}_{n}", n + 1
        out.append(candidate)
    return out


def new_table(conn, name: str, context: dict):
    """A new, empty OMERO.table called ``name`` in the group of ``context`` (its proxy; close it after use).

    Raises :class:`~dlcore.errors.OmeroError` when the server has no Tables service."""
    resources = conn.c.sf.sharedResources()
    repo_id = resources.repositories().descriptions[0].getId().getValue()
    table = resources.newTable(repo_id, name, context)
    if table is None:
        raise OmeroError("OMERO.tables is not available on this server; ask your OMERO admin to enable the Tables service")
    return table


def read_rows(conn, file_id: int, context: dict) -> list[dict]:
    """Every row of the OMERO.table in OriginalFile ``file_id``, as ``{column name: value}``.

    Raises :class:`~dlcore.errors.OmeroError` when the table cannot be opened."""
    from omero.model import OriginalFileI

    table = conn.c.sf.sharedResources().openTable(OriginalFileI(int(file_id), False), context)
    if table is None:
        raise OmeroError(f"the OMERO.table in OriginalFile:{file_id} cannot be opened (is OMERO.tables running?)")
    try:
        headers = table.getHeaders()
        rows = table.getNumberOfRows()
        if not rows or not headers:
            return []
        data = table.read(list(range(len(headers))), 0, rows)
    finally:
        table.close()
    return [dict(zip((c.name for c in data.columns), values)) for values in zip(*(c.values for c in data.columns))]


def _columns(names: Sequence[str]) -> list:
    from omero.grid import DoubleColumn, ImageColumn, LongColumn, RoiColumn, StringColumn

    cols = [ImageColumn("Image", "the analysed image", []), RoiColumn("Roi", "the object's ROI (-1: none, cap)", [])]
    for name, safe in zip(names, column_names(names)):
        description = name if safe != name else ""
        if name in LONG_COLUMNS:
            cols.append(LongColumn(safe, description, []))
        elif name in STRING_COLUMNS:
            cols.append(StringColumn(safe, description, STRING_COLUMNS[name], []))
        else:
            cols.append(DoubleColumn(safe, description or "level-0 pixels unless named otherwise", []))
    return cols


def _cell(name: str, value):
    if name in LONG_COLUMNS:
        return int(value)
    if name in STRING_COLUMNS:
        return fit_utf8(str(value), STRING_COLUMNS[name])
    return math.nan if value in ("", None) else float(value)


class TableWriter:
    """An OMERO.table created on the first rows, in the group of ``context``.

    Parameters
    ----------
    conn
        The BlitzGateway.
    name
        The table file's name.
    channels
        Channel names (one ``mean_<channel>`` column each).
    context
        Ice call context naming the group (``{"omero.group": "<id>"}``).
    """

    def __init__(self, conn, name: str, channels: Sequence[str], context: dict) -> None:
        self._conn, self.name, self._context = conn, name, context
        columns = object_columns(channels)
        self._names = [columns[0], "label_value", *columns[1:]]
        self._table = None
        self.file_id: int | None = None
        self.rows = 0

    def _open(self) -> None:
        self._table = new_table(self._conn, self.name, self._context)
        self.file_id = int(self._table.getOriginalFile().getId().getValue())
        self._table.initialize(_columns(self._names))

    def add(self, image_id: int, objects: Sequence[ObjectRecord], roi_ids: Sequence[int]) -> None:
        """Append one row per object."""
        if not objects:
            return
        if self._table is None:
            self._open()
        cols = _columns(self._names)
        cols[0].values = [image_id] * len(objects)
        cols[1].values = [int(r) for r in roi_ids]
        from dlcore.omero.label_image import label_value

        rows = [[row[0], int(label_value(row[0])), *row[1:]] for row in (object_row(o) for o in objects)]
        for index, name in enumerate(self._names):
            cols[index + 2].values = [_cell(name, row[index]) for row in rows]
        self._table.addData(cols)
        self.rows += len(objects)

    def ensure_created(self) -> None:
        """Create the (empty) table when no object was found, so every run has one."""
        if self._table is None:
            self._open()

    def close(self) -> int | None:
        """Close the table; return its OriginalFile id."""
        if self._table is not None:
            self._table.close()
            self._table = None
        return self.file_id

    def discard(self) -> None:
        """Close the table without keeping it (its file is deleted by the sink's clean-up)."""
        if self._table is not None:
            try:
                self._table.close()
            finally:
                self._table = None
