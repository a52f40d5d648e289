"""Object text rendered in a worker, joined with the id in the sink, is byte for byte what csv.writer
and json.dumps give for the whole record."""
import csv
import io
import json

import pytest

from dlcore.io.object_text import csv_line, geojson_feature, render_object_text, text_of, with_text
from dlcore.io.sink import object_row
from dlcore.objects import ObjectRecord


def _record(object_id=0, *, class_name=None, area_um2=12.3456, polygon=((1.0, 2.0), (5.125, 2.0), (5.0, 7.333))):
    return ObjectRecord(id=object_id, centroid=(3.14159, 4.5), bbox=(1.0, 2.0, 5.5, 7.25), area_px=42,
                        area_um2=area_um2, perimeter_px=21.987, mean_intensity=(10.0, 20.5, 30.1234),
                        polygon=polygon, class_name=class_name)


def _whole_record_csv(obj):
    out = io.StringIO()
    csv.writer(out).writerow(object_row(obj))
    return out.getvalue()


def _whole_record_feature(obj, run_key, color):
    ring = [[round(x, 2), round(y, 2)] for x, y in obj.polygon] + [[round(obj.polygon[0][0], 2), round(obj.polygon[0][1], 2)]]
    props = {"objectType": "detection", "name": f"{run_key} {obj.id}",
             "measurements": {"dlcore id": obj.id, "Area px": obj.area_px, "Perimeter px": round(obj.perimeter_px, 2),
                              **({"Area µm^2": round(obj.area_um2, 3)} if obj.area_um2 is not None else {})}}
    if obj.class_name:
        props["classification"] = {"name": obj.class_name, "color": list(color)}
    return json.dumps({"type": "Feature", "id": str(obj.id), "geometry": {"type": "Polygon", "coordinates": [ring]},
                       "properties": props}, separators=(",", ":"))


@pytest.mark.parametrize("class_name,area_um2", [(None, 12.3456), ("tumour, \"grade 2\"", None), ("µ-cell", 0.5)])
def test_joined_text_is_the_whole_records(class_name, area_um2):
    text = render_object_text(_record(class_name=class_name, area_um2=area_um2))  # rendered without the id
    final = _record(object_id=1234, class_name=class_name, area_um2=area_um2)
    assert csv_line(1234, text) == _whole_record_csv(final)
    run_key = 'nuclei "v2" µ'
    classification = json.dumps({"name": class_name, "color": [1, 2, 3]}, separators=(",", ":")) if class_name else None
    feature = geojson_feature(1234, text, name_prefix=json.dumps(f"{run_key} ")[:-1], classification=classification)
    assert feature == _whole_record_feature(final, run_key, (1, 2, 3))
    assert json.loads(feature)["properties"]["measurements"]["dlcore id"] == 1234


def test_no_geometry_under_three_vertices_and_text_follows_the_record():
    record = _record(polygon=((1.0, 1.0), (2.0, 2.0)))
    assert render_object_text(record).geometry is None
    assert text_of(record).csv_tail == render_object_text(record).csv_tail  # rendered on demand
    (attached,) = with_text([_record()])
    assert attached.text == render_object_text(_record())
    assert attached == _record()  # the text is not part of the record's value
