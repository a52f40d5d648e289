"""An object's CSV row and GeoJSON feature as text, rendered where the object is found.

Turning numbers into text is most of what the local folder sink does per object.  The slide-wide id
is only known once the main process has stitched the tile (grid order), so a worker renders everything
*but* the id (:func:`render_object_text`), and the sink joins the id in with a few string
concatenations (:func:`csv_line`, :func:`geojson_feature`).  The result is byte for byte what
``csv.writer`` and ``json.dumps`` give for the whole record.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np

from dlcore.io.sink import object_row
from dlcore.objects import ObjectRecord

_COMPACT = (",", ":")


@dataclass(frozen=True)
class ObjectText:
    """One object's text without its id: ``csv_tail`` is its CSV row after ``"<id>,"`` (line end
    included), ``geometry`` its GeoJSON geometry, ``measurements_tail`` its measurements object after
    ``{"dlcore id":<id>``, and ``class_name`` what the classification names."""

    csv_tail: str
    geometry: str | None
    measurements_tail: str
    class_name: str | None


def render_object_text(obj: ObjectRecord) -> ObjectText:
    """``obj``'s text for :func:`csv_line` and :func:`geojson_feature` (its id is not used)."""
    row = io.StringIO()
    csv.writer(row).writerow(object_row(obj)[1:])
    geometry = None
    if len(obj.polygon) >= 3:
        ring = np.round(np.asarray(obj.polygon), 2).tolist()
        ring.append(ring[0])
        geometry = json.dumps({"type": "Polygon", "coordinates": [ring]}, separators=_COMPACT)
    measurements = {"Area px": obj.area_px, "Perimeter px": round(obj.perimeter_px, 2),
                    **({"Area µm^2": round(obj.area_um2, 3)} if obj.area_um2 is not None else {})}
    return ObjectText(csv_tail=row.getvalue(), geometry=geometry,
                      measurements_tail=json.dumps(measurements, separators=_COMPACT)[1:],
                      class_name=obj.class_name)


def with_text(records: list[ObjectRecord]) -> list[ObjectRecord]:
    """Attach its :class:`ObjectText` to each of ``records`` (fresh records of one tile that nobody else
    holds yet: the frozen dataclass is set in place rather than copied) and return them."""
    for record in records:
        object.__setattr__(record, "text", render_object_text(record))
    return records


def text_of(obj: ObjectRecord) -> ObjectText:
    """The text a worker rendered for ``obj``, or rendered now (an object measured again when stitched)."""
    return obj.text if obj.text is not None else render_object_text(obj)


def csv_line(object_id: int, text: ObjectText) -> str:
    """The object's CSV row, as ``csv.writer`` writes it (``\\r\\n`` line end)."""
    return f"{object_id},{text.csv_tail}"


def geojson_feature(object_id: int, text: ObjectText, *, name_prefix: str, classification: str | None) -> str:
    """The object's GeoJSON feature, as ``json.dumps(..., separators=(",", ":"))`` writes it.

    ``name_prefix`` is ``json.dumps(run_key + " ")`` without its closing quote; ``classification`` is the
    JSON of the feature's classification object, or None for an unclassified object.
    """
    classified = f',"classification":{classification}' if classification is not None else ""
    return (f'{{"type":"Feature","id":"{object_id}","geometry":{text.geometry},"properties":'
            f'{{"objectType":"detection","name":{name_prefix}{object_id}","measurements":'
            f'{{"dlcore id":{object_id},{text.measurements_tail}{classified}}}}}')
