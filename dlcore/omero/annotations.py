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
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

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


def query_params(**values):
    """``omero.sys.ParametersI`` of ``values`` for an HQL query (ints as ``rlong``, the rest as ``rstring``)."""
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
    for link in query.findAllByQuery(Q_RUN_LINKS, query_params(iid=image_id, ns=namespace(run_key), uid=uid), context):
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
    rows = query.projection(Q_RUN_ROIS, query_params(iid=image_id, marker=like_prefix(marker), uid=uid), context)
    keep = marker + keep_run_id
    found.roi_ids = [int(row[0].getValue()) for row in rows if row[1].getValue() != keep]
    return found


def delete_earlier_run(conn, earlier: EarlierRun, *, keep_tags: set[str], context: dict, label: str) -> str:
    """Delete what :func:`find_earlier_run` found, in one Delete2 waited on
    (:func:`~dlcore.omero.deleting.delete_objects`): ROIs, annotations, label images, and the links to the
    tags not in ``keep_tags`` (the tags themselves are shared and stay).  The new results are complete by
    then, so a failure is not raised but returned in the note ("... NOT deleted (why); delete them by
    hand") and logged.  Returns a note of what was replaced ('' when nothing); ``label`` names the image
    and run in the log."""
    from dlcore.omero.deleting import delete_objects

    stale_tag_links = [link for tag, link in earlier.tag_links.items() if tag not in keep_tags]
    targets = {"Roi": earlier.roi_ids, "Annotation": earlier.annotation_ids,
               "ImageAnnotationLink": stale_tag_links, "Image": earlier.label_image_ids}
    targets = {graph: list(ids) for graph, ids in targets.items() if ids}
    if not targets:
        return ""
    what = ", ".join(f"{len(ids)} {graph}" for graph, ids in targets.items())
    try:
        delete_objects(conn, targets, context=context)
    except Exception as exc:  # the new results are complete; say what is left over
        log.warning("%s: deleting the earlier results failed: %s", label, exc)
        return f"{what} NOT deleted ({getattr(exc, 'message', '') or exc}); delete them by hand"
    return what


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
    for key in ("objects_by_class", "class_area_mm2", "class_pixels", "slide_classification"):
        if summary.get(key):
            pairs.append((key.replace("_", " "), json.dumps(summary[key])))
    if summary.get("slide_class"):
        pairs.append(("slide class", str(summary["slide_class"])))
    if summary.get("qc"):
        pairs.extend(qc_key_values(summary["qc"], prefix="QC "))
    pairs.extend(extra.items())
    pairs.extend([
        ("dlcore version", str(provenance.get("dlcore_version", ""))),
        ("created", str(provenance.get("created", ""))),
        ("input", str(provenance.get("input", {}).get("identity", ""))),
    ])
    return pairs


QC_MODE_TEXT = {"flag": "flag (artefacts reported, the whole tissue analysed)",
                "exclude": "exclude (artefact regions left out of the analysis)"}


def qc_key_values(qc: dict, *, prefix: str = "") -> list[tuple[str, str]]:
    """A QC summary as key-value pairs a person reads, each key preceded by ``prefix``.

    ``qc`` is :meth:`dlcore.qc.run.QCResult.summary` or the ``qc`` block of an analysis's summary
    (:func:`dlcore.qc.run.qc_run_summary`, which adds ``mode`` and what was excluded).  The pairs are the
    verdict, the mode (a run's block), one pair per artefact (``"warn: 9.16 % of tissue, 0.0667 mm²"``),
    the stain's flag and judgement, the tissue and artefact areas, the focus figures and, for a run that
    excluded the artefacts, what it left out.
    """
    flags, areas = qc.get("flags", {}), qc.get("areas_mm2", {})
    pairs = [("verdict", str(qc.get("verdict", "")))]
    if qc.get("mode"):
        pairs.append(("mode", QC_MODE_TEXT.get(qc["mode"], str(qc["mode"]))))
    for name, fraction in qc.get("fractions_of_tissue", {}).items():
        pairs.append((name, f"{flags.get(name, 'pass')}: {_share(fraction, areas.get(name))}"))
    pairs.append(("stain", f"{flags.get('stain', 'pass')}: {qc.get('stain', {}).get('judgement', 'not judged')}"))
    if flags.get("tissue") == "fail":
        pairs.append(("tissue", "fail: no tissue found"))
    if areas.get("tissue_total") is not None:
        pairs.append(("tissue area mm2", f"{areas['tissue_total']:.4g}"))
    if qc.get("artefact_fraction_of_tissue") is not None:
        pairs.append(("artefacts", _share(qc["artefact_fraction_of_tissue"], None)))
    focus = qc.get("focus", {})
    sharpness = focus.get("median_sharpness")
    pairs.append(("median sharpness", "not measured" if sharpness is None else f"{sharpness:.4g}"))
    if focus.get("blocks_judged") is not None:
        pairs.append(("blurred focus blocks", f"{focus.get('blocks_blurred', 0)} of {focus['blocks_judged']} "
                                              f"({focus.get('block_px')} px at {focus.get('mpp') or 'native'} µm/px)"))
    if qc.get("mode") == "exclude":
        pairs.append(("excluded from the analysis",
                      _share(qc.get("excluded_fraction_of_tissue", 0.0), qc.get("excluded_area_mm2"))))
    return [(prefix + key, value) for key, value in pairs]


def _share(fraction: float, area_mm2: float | None) -> str:
    return f"{100 * float(fraction):.2f} % of tissue" + ("" if area_mm2 is None else f", {area_mm2:.4g} mm²")


#: what the files a run or QC attaches are, by file name (files not listed: their output name)
FILE_DESCRIPTIONS = {
    "qc.json": "slide quality control: figures, flags and methods (JSON)",
    "qc_mask.ome.tif": "slide quality control mask (OME-TIFF; 0 background, 1 tissue, 2-7 artefacts: see its name)",
    "qc_overview.png": "slide quality control overview: each artefact in its colour, with the verdict",
    "class_outlines.geojson": "class regions as polygons (GeoJSON; QuPath: File > Import objects)",
}
MIMETYPES = {".json": "application/json", ".geojson": "application/geo+json", ".csv": "text/csv",
             ".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff", ".zip": "application/zip",
             ".md": "text/markdown", ".html": "text/html"}


def mimetype_of(path) -> str:
    """The mimetype OMERO.web serves an attached file with, from its suffix (``.ome.tif``: image/tiff);
    ``application/octet-stream`` for other suffixes."""
    return MIMETYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def image_link(image_id: int, annotation):
    """An unsaved link from the image to ``annotation`` (saved or not)."""
    from omero.model import ImageAnnotationLinkI, ImageI

    link = ImageAnnotationLinkI()
    link.setParent(ImageI(image_id, False))
    link.setChild(annotation)
    return link


def tag_for(conn, run_key: str, name: str, context: dict, *, description: str | None = None):
    """The group's tag ``name`` in the run's namespace, or a new unsaved one (with ``description``, by
    default "classification result of dlcore <run key>")."""
    from omero.model import TagAnnotationI
    from omero.rtypes import rstring

    found = conn.getQueryService().findAllByQuery(Q_TAG, query_params(ns=namespace(run_key), name=name), context)
    if found:
        return TagAnnotationI(found[0].getId().getValue(), False)
    tag = TagAnnotationI()
    tag.setTextValue(rstring(name))
    tag.setNs(rstring(namespace(run_key)))
    tag.setDescription(rstring(description or f"classification result of dlcore {run_key}"))
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
