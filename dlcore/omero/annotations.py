"""Key-value pairs, tags, attached files, and finding the results of an earlier run.

Every annotation a run writes carries the namespace ``dlcore/<run key>`` (:func:`namespace`), so the
results of each task or model are told apart from other models' results and from the user's own
annotations (those have other namespaces or none).  A re-run of the same run key replaces exactly:

- the annotations linked to the image in that namespace (key-value pairs, files, the table);
- the image's links to tags in that namespace (the tags themselves are shared, never deleted);
- the ROIs whose description is that run key's marker (:func:`dlcore.omero.rois.roi_marker`);
- the label image named in the earlier key-value pairs.

The HQL below is all the adapter asks the query service; the test double implements these queries.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

NS_PREFIX = "dlcore/"
LABEL_IMAGE_KEY = "label image"
RUN_ID_KEY = "run id"

# Earlier results are looked for among the caller's own objects only: a Delete2 over objects of several
# owners fails whole, and another user's results of the same model are theirs to replace.
Q_RUN_LINKS = ("select l from ImageAnnotationLink l join fetch l.child a "
               "where l.parent.id = :iid and a.ns = :ns and a.details.owner.id = :uid")
Q_RUN_ROIS = ("select r.id, r.description from Roi r where r.image.id = :iid "
              "and r.description like :marker escape '!' and r.details.owner.id = :uid")
LIKE_ESCAPE = "!"


def like_prefix(text: str) -> str:
    """A LIKE pattern matching strings that start with ``text`` literally: ``_`` and ``%`` (wildcards in
    SQL and HQL) and the escape character itself are escaped with ``!`` (the query says ``escape '!'``)."""
    for char in (LIKE_ESCAPE, "_", "%"):
        text = text.replace(char, LIKE_ESCAPE + char)
    return text + "%"
Q_TAG = "select t from TagAnnotation t where t.ns = :ns and t.textValue = :name"


def namespace(run_key: str) -> str:
    """The namespace of everything a run of ``run_key`` writes."""
    return NS_PREFIX + run_key


def _params(**values):
    from omero.rtypes import rlong, rstring
    from omero.sys import ParametersI

    params = ParametersI()
    for key, value in values.items():
        params.add(key, rlong(value) if isinstance(value, int) else rstring(value))
    return params


@dataclass
class EarlierRun:
    """What an earlier run of the same key left on an image (ids to delete or unlink)."""

    annotation_ids: list[int] = field(default_factory=list)
    tag_links: dict[str, int] = field(default_factory=dict)  # tag text -> ImageAnnotationLink id
    tag_ids: dict[str, int] = field(default_factory=dict)  # tag text -> TagAnnotation id
    roi_ids: list[int] = field(default_factory=list)
    label_image_ids: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.annotation_ids or self.tag_links or self.roi_ids or self.label_image_ids)


def find_earlier_run(conn, image_id: int, run_key: str, *, keep_run_id: str, context: dict) -> EarlierRun:
    """The caller's results of earlier runs of ``run_key`` on the image, except those of run ``keep_run_id``."""
    from omero.model import MapAnnotationI, TagAnnotationI

    from dlcore.omero.rois import ROI_MARKER

    query = conn.getQueryService()
    found = EarlierRun()
    uid = int(conn.getUserId())
    for link in query.findAllByQuery(Q_RUN_LINKS, _params(iid=image_id, ns=namespace(run_key), uid=uid), context):
        child = link.getChild()
        if isinstance(child, TagAnnotationI):
            text = child.getTextValue().getValue()
            found.tag_links[text] = int(link.getId().getValue())
            found.tag_ids[text] = int(child.getId().getValue())
            continue
        if isinstance(child, MapAnnotationI):
            values = {nv.name: nv.value for nv in (child.getMapValue() or [])}
            if values.get(RUN_ID_KEY) == keep_run_id:
                continue
            label = values.get(LABEL_IMAGE_KEY, "")
            if label.startswith("Image:"):
                found.label_image_ids.append(int(label.split(":")[1].split()[0]))
        found.annotation_ids.append(int(child.getId().getValue()))
    marker = ROI_MARKER.format(run_key=run_key)
    rows = query.projection(Q_RUN_ROIS, _params(iid=image_id, marker=like_prefix(marker), uid=uid), context)
    keep = marker + keep_run_id
    found.roi_ids = [int(row[0].getValue()) for row in rows if row[1].getValue() != keep]
    return found


def map_annotation(run_key: str, pairs: Iterable[tuple[str, str]]):
    """An unsaved ``MapAnnotationI`` in the run's namespace."""
    from omero.model import MapAnnotationI, NamedValue
    from omero.rtypes import rstring

    ann = MapAnnotationI()
    ann.setNs(rstring(namespace(run_key)))
    ann.setMapValue([NamedValue(str(k), str(v)) for k, v in pairs])
    return ann


def key_values(provenance: dict, summary: dict, extra: dict[str, str]) -> list[tuple[str, str]]:
    """The key-value pairs a biologist reads on the image: what ran, what it found, where results are."""
    task = provenance.get("task", {})
    pairs = [
        ("task", str(task.get("task", summary.get("task", "")))),
        ("version", str(task.get("version", ""))),
    ]
    if task.get("checksum") or task.get("sha256"):
        pairs.append(("checksum", str(task.get("checksum") or task.get("sha256"))))
    pairs.append(("parameters", json.dumps(task.get("parameters", {}), sort_keys=True, default=str)))
    for key in ("objects", "truncated_objects", "tiles", "tissue_fraction", "tissue_area_mm2", "working_mpp",
                "object_area_fraction_of_tissue"):
        if summary.get(key) is not None:
            pairs.append((key.replace("_", " "), str(summary[key])))
    for key in ("class_area_mm2", "class_pixels"):
        if summary.get(key):
            pairs.append((key.replace("_", " "), json.dumps(summary[key])))
    pairs.extend(extra.items())
    pairs.extend([
        ("dlcore version", str(provenance.get("dlcore_version", ""))),
        ("created", str(provenance.get("created", ""))),
        ("input", str(provenance.get("input", {}).get("identity", ""))),
    ])
    return pairs


def image_link(image_id: int, annotation):
    """An unsaved link from the image to ``annotation`` (saved or not)."""
    from omero.model import ImageAnnotationLinkI, ImageI

    link = ImageAnnotationLinkI()
    link.setParent(ImageI(image_id, False))
    link.setChild(annotation)
    return link


def tag_for(conn, run_key: str, name: str, context: dict):
    """The group's tag ``name`` in the run's namespace, or a new unsaved one."""
    from omero.model import TagAnnotationI
    from omero.rtypes import rstring

    found = conn.getQueryService().findAllByQuery(Q_TAG, _params(ns=namespace(run_key), name=name), context)
    if found:
        return TagAnnotationI(found[0].getId().getValue(), False)
    tag = TagAnnotationI()
    tag.setTextValue(rstring(name))
    tag.setNs(rstring(namespace(run_key)))
    tag.setDescription(rstring(f"classification result of dlcore {run_key}"))
    return tag


def file_annotation(file_id: int, run_key: str, description: str):
    """An unsaved ``FileAnnotationI`` for an existing OriginalFile (the OMERO.table)."""
    from omero.model import FileAnnotationI, OriginalFileI
    from omero.rtypes import rstring

    ann = FileAnnotationI()
    ann.setFile(OriginalFileI(file_id, False))
    ann.setNs(rstring(namespace(run_key)))
    ann.setDescription(rstring(description))
    return ann
