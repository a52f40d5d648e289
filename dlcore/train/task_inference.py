"""Decide whether a folder of label masks holds instance ids or semantic classes, and name the classes.

A folder ``images/`` + ``labels/`` read without an explicit task is surveyed (:func:`survey_masks`) and
the task is chosen by :func:`infer_task`:

- a class table beside the masks (``classes.txt``, ``classes.csv`` or ``classes.json``, see
  :func:`read_class_table`) makes it ``semantic`` with those names;
- many ids (more than :data:`MAX_GENERIC_CLASSES` in one mask), nearly each one connected blob, make it
  ``instances``;
- a few values that recur as several separate regions make it ``semantic`` with generic names
  ``class_1..class_n``;
- anything else (a few ids each one blob, a binary mask of many small blobs, many values that are not
  one blob each, empty masks) is ambiguous: :class:`~dlcore.errors.InputError` names what was seen and
  asks for ``--task semantic|instances``.

An explicit task always wins, except that ``semantic`` without a class table refuses to invent more
than :data:`MAX_GENERIC_CLASSES` generic class names.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlcore.errors import InputError

MAX_GENERIC_CLASSES = 16
ONE_BLOB_FRACTION = 0.9  # ids that are one connected blob, for "one blob per id"
CLASS_TABLES = ("classes.txt", "classes.csv", "classes.json")
SHOWN = 10


@dataclass(frozen=True)
class MaskSurvey:
    """What the label masks of a dataset look like.

    Attributes
    ----------
    masks : number of masks.
    distinct_values : distinct non-zero values over all masks.
    max_values_per_mask : the most distinct non-zero values in one mask.
    one_blob_fraction : fraction of (mask, value) pairs that are one connected blob (8-connected).
    blobs_per_value : median number of blobs per (mask, value) pair.
    object_area : median blob area in pixels.
    """

    masks: int
    distinct_values: int
    max_values_per_mask: int
    one_blob_fraction: float
    blobs_per_value: float
    object_area: float

    def describe(self) -> str:
        """One line: number of distinct values, blobs per value, typical object size."""
        return (f"{self.masks} mask(s) with {self.distinct_values:,} distinct non-zero value(s) "
                f"(up to {self.max_values_per_mask:,} in one mask), {self.blobs_per_value:g} blob(s) per value "
                f"(median; {self.one_blob_fraction:.0%} of values are one blob), typical object "
                f"{self.object_area:,.0f} px")


def survey_masks(masks) -> MaskSurvey:
    """Survey ``(Y, X)`` integer masks (0 = background): values, connected blobs per value, blob sizes."""
    from skimage.measure import label

    values: set[int] = set()
    per_mask = 0
    blob_counts: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    n = 0
    for mask in masks:
        n += 1
        mask = np.asarray(mask)
        present = np.unique(mask)
        present = present[present != 0]
        values.update(int(v) for v in present)
        per_mask = max(per_mask, len(present))
        if not len(present):
            continue
        # neighbouring pixels of the same value are one component
        components = label(mask, background=0, connectivity=2)
        count = int(components.max())
        area = np.bincount(components.ravel(), minlength=count + 1)[1:]
        first = np.zeros(count + 1, np.int64)
        flat = components.ravel()
        first[flat] = np.arange(flat.size)  # any pixel of each component
        value_of = mask.ravel()[first[1:]]
        _, blobs = np.unique(value_of, return_counts=True)
        blob_counts.append(blobs)
        areas.append(area)
    blobs = np.concatenate(blob_counts) if blob_counts else np.zeros(0, int)
    area = np.concatenate(areas) if areas else np.zeros(0, int)
    return MaskSurvey(masks=n, distinct_values=len(values), max_values_per_mask=per_mask,
                      one_blob_fraction=float(np.mean(blobs == 1)) if blobs.size else 0.0,
                      blobs_per_value=float(np.median(blobs)) if blobs.size else 0.0,
                      object_area=float(np.median(area)) if area.size else 0.0)


def read_class_table(root: Path) -> tuple[str, ...] | None:
    """Class names of mask values 1..n from a table in ``root`` or ``root/labels``, or None when there is none.

    ``classes.txt``: one name per line (line i names value i).  ``classes.csv``: a ``name`` column (with
    an optional ``value`` column giving the order), or the first column.  ``classes.json``: a list of
    names, or an object ``{"1": "tumour", ...}``.  Raises :class:`InputError` for a table that is empty
    or does not parse.
    """
    for folder in (root, root / "labels"):
        for name in CLASS_TABLES:
            path = folder / name
            if path.is_file():
                classes = _parse_table(path)
                if not classes:
                    raise InputError(f"{path} names no classes; write one class name per mask value 1..n")
                return classes
    return None


def _parse_table(path: Path) -> tuple[str, ...]:
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                data = data.get("classes", data)
            if isinstance(data, dict):
                return tuple(str(data[k]) for k in sorted(data, key=lambda k: int(k)) if int(k) != 0)
            return tuple(str(c) for c in data)
        if path.suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if rows and "name" in rows[0]:
                if "value" in rows[0]:
                    rows = [r for r in sorted(rows, key=lambda r: int(r["value"])) if int(r["value"]) != 0]
                return tuple(r["name"].strip() for r in rows if r["name"].strip())
            return tuple(line.split(",")[0].strip() for line in text.splitlines() if line.strip())
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path} does not parse as a class table ({exc}); write a list of names, value 1 first, "
                         "or a classes.txt with one name per line") from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class TaskChoice:
    """The task and classes chosen for a mask folder, and why (one line)."""

    task: str
    classes: tuple[str, ...]
    reason: str


def _ask(root: Path, survey: MaskSurvey, why: str) -> InputError:
    return InputError(f"{root}: cannot tell whether the label masks are instance ids or semantic classes: {why}. "
                      f"Seen: {survey.describe()}. Pass --task instances (each id one object) or --task semantic "
                      f"(each value a class; name them in {root / 'classes.txt'}, one per line for values 1..n)")


def infer_task(root: Path, masks, *, task: str | None = None, classes: tuple[str, ...] | None = None) -> TaskChoice:
    """Choose ``semantic`` or ``instances`` and the class names for the masks of folder ``root``.

    Parameters
    ----------
    root : the dataset folder (for the class table and the messages).
    masks : the ``(Y, X)`` integer masks.
    task : an explicit ``"semantic"`` or ``"instances"``; it wins over the survey.
    classes : explicit class names; else the class table, else generic ones.

    Raises
    ------
    InputError
        The masks are ambiguous and no task was given, or ``semantic`` would need more than
        :data:`MAX_GENERIC_CLASSES` generic class names.
    """
    masks = list(masks)
    table = classes if classes is not None else read_class_table(root)
    if task == "instances":
        return TaskChoice("instances", tuple(table or ("nucleus",)), "--task instances")
    if task is None and table is not None:
        return TaskChoice("semantic", tuple(table), "semantic: the class table names the mask values")
    if task == "semantic":
        if table is not None:
            return TaskChoice("semantic", tuple(table), "--task semantic")
        top = max((int(m.max()) for m in masks if m.size), default=0)
        if top > MAX_GENERIC_CLASSES:
            survey = survey_masks(masks)
            raise InputError(f"{root}: --task semantic would make {top:,} classes class_1..class_{top} from the mask "
                             f"values ({survey.describe()}); these look like instance ids. Pass --task instances, "
                             f"or confirm the classes with a class table {root / 'classes.txt'} (one name per line "
                             "for values 1..n)")
        return TaskChoice("semantic", tuple(f"class_{i}" for i in range(1, max(top, 1) + 1)),
                          "--task semantic, generic class names")
    survey = survey_masks(masks)
    if survey.distinct_values == 0:
        raise _ask(root, survey, "every mask is empty")
    one_blob = survey.one_blob_fraction >= ONE_BLOB_FRACTION
    if survey.max_values_per_mask > MAX_GENERIC_CLASSES:
        if one_blob:
            return TaskChoice("instances", ("nucleus",),
                              f"instances: {survey.distinct_values:,} instance ids, {survey.one_blob_fraction:.0%} "
                              f"one blob each, typical object {survey.object_area:,.0f} px")
        raise _ask(root, survey, f"more than {MAX_GENERIC_CLASSES} values in a mask, but they are not one blob each")
    if one_blob:
        raise _ask(root, survey, "a few values, each one blob: a few objects or a few regions")
    if survey.distinct_values == 1:
        raise _ask(root, survey, "one value in several blobs: a binary mask of one class, or of objects")
    top = max(int(m.max()) for m in masks if m.size)
    if top > MAX_GENERIC_CLASSES:
        raise _ask(root, survey, f"mask values reach {top}, beyond {MAX_GENERIC_CLASSES} generic classes")
    return TaskChoice("semantic", tuple(f"class_{i}" for i in range(1, top + 1)),
                      f"semantic: {survey.distinct_values} values that recur as {survey.blobs_per_value:g} regions "
                      "each (median); generic class names (name them in classes.txt)")


def summarize_classes(task: str, classes, *, ids: int | None = None) -> str:
    """A readable summary: the first :data:`SHOWN` class names then "... and N more" (or the number of ids)."""
    classes = list(classes)
    shown = ", ".join(classes[:SHOWN]) + (f", ... and {len(classes) - SHOWN:,} more" if len(classes) > SHOWN else "")
    if task == "instances":
        return (f"{ids:,} instance ids, " if ids is not None else "") + f"object class(es) {shown}"
    return f"{len(classes):,} class(es): {shown}"


__all__ = ["MAX_GENERIC_CLASSES", "MaskSurvey", "TaskChoice", "infer_task", "read_class_table", "summarize_classes",
           "survey_masks"]
