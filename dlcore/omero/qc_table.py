"""The batch QC table of a dataset: an OMERO.table ``dlcore QC`` with one row per checked image.

Columns: ``Image`` (ImageColumn), then those of :func:`dlcore.qc.run.table_row` (``slide`` is the image's
name): text columns (verdict, flags) as StringColumns sized to their longest value in UTF-8 bytes, figures
as DoubleColumns (NaN where unknown).  The table is attached to the dataset as a FileAnnotation in the
namespace ``dlcore/qc``, in the dataset's group.

A dataset holds one such table per user.  QC_Slides on some of a dataset's images writes a new table with
their rows and the earlier tables' rows of the dataset's other images (so a table never holds an image
twice, and checking one image does not drop the others; two runs at once leave two tables, which the next
run merges), links it, and then deletes the earlier tables it read (one Delete2, waited on).  An earlier
table that cannot be read is kept, never deleted.  A failure before the link deletes the new table's file;
the earlier tables stay.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from dlcore.errors import OmeroError
from dlcore.omero import annotations as ann
from dlcore.omero.deleting import delete_objects
from dlcore.omero.qc_writer import QC_RUN_KEY
from dlcore.omero.tables import column_names, fit_utf8, new_table, read_rows
from dlcore.omero.workflows import server_message

log = logging.getLogger(__name__)

TABLE_NAME = "dlcore QC.h5"
IMAGE_COLUMN = "Image"
# the caller's QC tables on a dataset (the FileAnnotations in the QC namespace linked to it)
Q_DATASET_QC_LINKS = ("select l from DatasetAnnotationLink l join fetch l.child a "
                      "where l.parent.id = :did and a.ns = :ns and a.details.owner.id = :uid")


def earlier_tables(conn, dataset_id: int, context: dict) -> list[tuple[int, int]]:
    """The caller's QC tables on the dataset: ``(FileAnnotation id, OriginalFile id)``, oldest first."""
    from omero.model import FileAnnotationI

    params = ann.query_params(did=int(dataset_id), ns=ann.namespace(QC_RUN_KEY), uid=int(conn.getUserId()))
    found = []
    for link in conn.getQueryService().findAllByQuery(Q_DATASET_QC_LINKS, params, context):
        child = link.getChild()
        if isinstance(child, FileAnnotationI) and child.getFile() is not None:
            found.append((int(child.getId().getValue()), int(child.getFile().getId().getValue())))
    return sorted(found)


def merged_rows(earlier: Sequence[dict], new: dict[int, dict], keep_images: set[int]) -> list[tuple[int, dict]]:
    """The rows of the new table: the earlier rows of images in ``keep_images`` that were not checked now
    (their first row each), then the new rows (``{image id: table_row}``)."""
    kept: dict[int, dict] = {}
    for row in earlier:
        image_id = int(row.get(IMAGE_COLUMN, -1))
        if image_id in keep_images and image_id not in new and image_id not in kept:
            kept[image_id] = {k: v for k, v in row.items() if k != IMAGE_COLUMN}
    return [*kept.items(), *new.items()]


def _columns(rows: list[tuple[int, dict]]) -> list:
    """Empty OMERO.tables columns for ``rows``: Image, then each key of the newest row, text keys as
    StringColumns (sized for the longest value), others as DoubleColumns."""
    from omero.grid import DoubleColumn, ImageColumn, StringColumn

    names = list(rows[-1][1])
    columns = [ImageColumn(IMAGE_COLUMN, "the checked image", [])]
    for name, safe in zip(names, column_names(names)):
        values = [row.get(name) for _, row in rows]
        if any(isinstance(v, str) for v in values):
            size = max([len(str(v or "").encode("utf-8")) for v in values] + [1])
            columns.append(StringColumn(safe, name, size, []))
        else:
            columns.append(DoubleColumn(safe, name, []))
    return columns


def _fill(columns: list, rows: list[tuple[int, dict]]) -> list:
    from omero.grid import StringColumn

    names = list(rows[-1][1])
    columns[0].values = [int(image_id) for image_id, _ in rows]
    for column, name in zip(columns[1:], names):
        values = [row.get(name, row.get(column.name)) for _, row in rows]  # earlier rows: by column name
        if isinstance(column, StringColumn):
            column.values = [fit_utf8("" if v is None else str(v), column.size) for v in values]
        else:
            column.values = [math.nan if v in (None, "") else float(v) for v in values]
    return columns


def replace_dataset_table(conn, dataset, rows: dict[int, dict]) -> str:
    """Write the dataset's QC table with ``rows`` (``{image id: table_row}``) and the earlier table's rows of
    its other images, link it, then delete the caller's earlier QC table(s) of the dataset.

    Returns the Message's note, e.g. ``"Dataset:3 slides: table FileAnnotation:12 (2 images)"``.  Raises
    :class:`~dlcore.errors.OmeroError` when the table cannot be written (nothing new is left then).
    """
    from omero.model import DatasetAnnotationLinkI, DatasetI, FileAnnotationI, OriginalFileI
    from omero.rtypes import rstring

    dataset_id = int(dataset.getId())
    label = f"Dataset:{dataset_id} {dataset.getName()}"
    context = {"omero.group": str(int(dataset.getDetails().getGroup().getId()))}
    earlier_rows: list[dict] = []  # newest table first: an image's newest row wins
    earlier, unreadable = [], []
    for annotation_id, file_id in reversed(earlier_tables(conn, dataset_id, context)):
        try:
            earlier_rows += read_rows(conn, file_id, context)
            earlier.append((annotation_id, file_id))
        except Exception as exc:  # kept, never deleted: its rows would be lost
            log.warning("%s: the earlier QC table FileAnnotation:%s cannot be read: %s", label, annotation_id, exc)
            unreadable.append(annotation_id)
    note = (f"; the earlier table FileAnnotation:{', '.join(map(str, unreadable))} could not be read, so it is kept "
            "beside the new one (delete it once you no longer need its rows)" if unreadable else "")
    in_dataset = {int(image.getId()) for image in dataset.listChildren()}
    table_rows = merged_rows(earlier_rows, rows, in_dataset)
    table, file_id = None, None
    try:
        table = new_table(conn, TABLE_NAME, context)
        file_id = int(table.getOriginalFile().getId().getValue())
        columns = _columns(table_rows)
        table.initialize(columns)
        table.addData(_fill(columns, table_rows))
        table.close()
        table = None
        annotation = FileAnnotationI()
        annotation.setFile(OriginalFileI(file_id, False))
        annotation.setNs(rstring(ann.namespace(QC_RUN_KEY)))
        annotation.setDescription(rstring("slide quality control: one row per image (dlcore QC_Slides)"))
        link = DatasetAnnotationLinkI()
        link.setParent(DatasetI(dataset_id, False))
        link.setChild(annotation)
        saved = conn.getUpdateService().saveAndReturnObject(link, context)
    except Exception as exc:
        problem = _discard(conn, table, file_id, context)
        raise OmeroError(f"{label}: the QC table could not be written ({server_message(exc)}){problem}") from exc
    annotation_id = int(saved.getChild().getId().getValue())
    if earlier:
        try:
            delete_objects(conn, {"Annotation": [a for a, _ in earlier]}, context=context)
        except Exception as exc:  # the new table is complete; say what is left over
            log.warning("%s: deleting the earlier QC table failed: %s", label, exc)
            note += (f"; the earlier table (FileAnnotation {', '.join(str(a) for a, _ in earlier)}) is NOT deleted "
                     f"({server_message(exc)}): delete it by hand")
    replaced = " (replaces the earlier one)" if earlier and "NOT deleted" not in note else ""
    rows_text = f"{len(table_rows)} row{'s' if len(table_rows) != 1 else ''} (one per image)"
    return f"{label}: table FileAnnotation:{annotation_id}, {rows_text}{replaced}{note}"


def _discard(conn, table, file_id: int | None, context: dict) -> str:
    """Close and delete a table that could not be finished; a note when deleting it failed ('' else)."""
    if table is not None:
        try:
            table.close()
        except Exception:  # noqa: BLE001 - the table's file is deleted below either way
            pass
    if file_id is None:
        return ""
    try:
        delete_objects(conn, {"OriginalFile": [file_id]}, context=context)
    except Exception as exc:
        log.error("the unfinished QC table OriginalFile:%s could not be deleted: %s", file_id, exc)
        return f"; its unfinished file OriginalFile:{file_id} could not be deleted either: delete it by hand"
    return ""
