"""Annotated datasets from OMERO: ROIs become label masks or crops, tags become classes.

:func:`dataset_from_omero` turns the selected Images (or those of Datasets/Projects) into an
:class:`~dlcore.train.data.AnnotatedDataset`:

- ``semantic``: every area ROI (polygon, rectangle, ellipse, mask) is burnt into a mask with its
  class id (1..n in the order of ``classes``, or of the sorted class names found); larger ROIs are
  drawn first so a small ROI inside a large one keeps its class; 0 = unlabelled;
- ``instances``: every ROI is one object (ids 1..n within its region);
- ``classification``: every ROI's bounding box is a crop with the ROI's class (or, with classes from
  image tags, with the image's class); an image without ROIs is used whole at the chosen level.

A ROI's class comes from its name (else its first shape's text), from its shapes' text (the
"comment" OMERO.iviewer shows, ``class_source="roi_comment"``), from a tag linked to the ROI
(``"roi_tag"``), or from a tag on the image (``"image_tag"``).  ROIs that dlcore wrote (description
``dlcore:...``) are results, not annotations, and are skipped unless asked for.

:func:`image_strokes` reads an image's ROIs as sparse labels for a pixel classifier
(:class:`~dlcore.pixels.scribbles.Stroke` values in full-resolution pixels, one per shape): polygons,
rectangles and ellipses are filled, lines and polylines drawn ``strokeWidth`` pixels wide, points
drawn as small disks, masks placed as they are.

Only the annotated regions are read: the ROIs' bounding boxes plus ``margin`` pixels, nearby ROIs
merged into one region, at the chosen resolution level, through :class:`~dlcore.omero.slide.OmeroSlide`.
Each region is one sample whose ``group`` is the image, so an image never straddles train and test.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import InputError, OmeroError, ParameterError
from dlcore.omero.shapes import ShapeGeometry, shape_geometry, shape_kind
from dlcore.omero.shapes import _v as _sv

CLASS_SOURCES = ("roi_name", "roi_comment", "roi_tag", "image_tag")
STROKE_CLASS_SOURCES = ("roi_name", "roi_comment", "roi_tag")  # a pixel classifier's labels: per ROI or shape
TASKS = ("semantic", "instances", "classification")
DLCORE_ROI_PREFIX = "dlcore:"

Q_ROIS = "select distinct r from Roi r left outer join fetch r.shapes where r.image.id = :iid order by r.id"
Q_ROI_TAGS = ("select l from RoiAnnotationLink l join fetch l.child a "
              "where l.parent.id in (:ids) and a.class = TagAnnotation")
Q_IMAGE_TAGS = ("select l from ImageAnnotationLink l join fetch l.child a "
                "where l.parent.id = :iid and a.class = TagAnnotation")
Q_IMAGE_MAPS = ("select l from ImageAnnotationLink l join fetch l.child a "
                "where l.parent.id = :iid and a.class = MapAnnotation")
Q_IMAGE_OBJECTIVE = ("select o.nominalMagnification from Image i join i.objectiveSettings s join s.objective o "
                     "where i.id = :iid")


@dataclass(frozen=True)
class AnnotationOptions:
    """How OMERO annotations become a training dataset.

    Attributes
    ----------
    task : ``"semantic"``, ``"instances"`` or ``"classification"``.
    class_source : ``"roi_name"`` (ROI name, else shape text), ``"roi_comment"`` (the shapes' text),
        ``"roi_tag"`` or ``"image_tag"``.
    classes : class names in class-id order; None = the sorted names found.
    level : resolution level read (0 = full resolution, 1 = the next smaller, ...).
    margin : pixels (at ``level``) added around the ROIs of a segmentation region.
    include_dlcore_rois : also use ROIs that dlcore wrote (description ``dlcore:...``).
    max_region_pixels : largest region read at once; a larger one asks for a lower resolution.
    """

    task: str
    class_source: str = "roi_name"
    classes: tuple[str, ...] | None = None
    level: int = 0
    margin: int = 32
    include_dlcore_rois: bool = False
    max_region_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ParameterError(f"task={self.task!r} must be one of {', '.join(TASKS)}")
        if self.class_source not in CLASS_SOURCES:
            raise ParameterError(f"class source {self.class_source!r} must be one of {', '.join(CLASS_SOURCES)}")
        if self.class_source == "image_tag" and self.task != "classification":
            raise ParameterError("classes from image tags make an image classification dataset; for segmentation "
                                 "name or tag the ROIs (class source 'roi_name' or 'roi_tag')")
        if self.level < 0 or self.margin < 0:
            raise ParameterError(f"level={self.level} and margin={self.margin} must be 0 or more")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ParameterError(f"classes={self.classes!r} must be distinct names (or none: the names found)")


@dataclass
class AnnotatedRoi:
    """One usable ROI: its id, class (None when it has none) and area shapes."""

    roi_id: int
    cls: str | None
    shapes: list[ShapeGeometry] = field(default_factory=list)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        boxes = np.array([s.bbox for s in self.shapes])
        return float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())

    @property
    def area(self) -> float:
        return sum(s.area for s in self.shapes)


def _v(value):
    return value.getValue() if hasattr(value, "getValue") else value


def _params(**values):
    from omero.rtypes import rlist, rlong
    from omero.sys import ParametersI

    params = ParametersI()
    for key, value in values.items():
        params.add(key, rlist([rlong(v) for v in value]) if isinstance(value, (list, tuple)) else rlong(value))
    return params


READ_CONTEXT = {"omero.group": "-1"}


def read_rois(conn, image_id: int, options: AnnotationOptions) -> tuple[list[AnnotatedRoi], list[str]]:
    """The image's usable ROIs with their classes, and notes on what was skipped and why."""
    query = conn.getQueryService()
    notes: list[str] = []
    rois, skipped_dlcore, skipped_shapes = [], 0, []
    for roi in query.findAllByQuery(Q_ROIS, _params(iid=image_id), READ_CONTEXT):
        if not options.include_dlcore_rois and str(_v(roi.getDescription()) or "").startswith(DLCORE_ROI_PREFIX):
            skipped_dlcore += 1
            continue
        shapes = []
        for shape in roi.copyShapes():
            try:
                shapes.append(shape_geometry(shape))
            except InputError as exc:
                skipped_shapes.append(f"ROI {int(_v(roi.getId()))} {shape_kind(shape)}: {exc}")
        if shapes:
            name = (_roi_name(roi) if options.class_source == "roi_name" else
                    _roi_comment(roi) if options.class_source == "roi_comment" else None)
            rois.append(AnnotatedRoi(int(_v(roi.getId())), name, shapes))
    if skipped_dlcore:
        notes.append(f"{skipped_dlcore} ROIs written by dlcore (results, not annotations) skipped")
    if skipped_shapes:
        notes.append(f"{len(skipped_shapes)} shapes without area skipped ({skipped_shapes[0]}...)")
    if options.class_source == "roi_tag" and rois:
        tags = _roi_tags(query, [r.roi_id for r in rois])
        for roi in rois:
            roi.cls = _pick_tag(tags.get(roi.roi_id, []), options.classes, f"ROI {roi.roi_id}")
    return rois, notes


def _roi_name(roi) -> str | None:
    name = str(_v(roi.getName()) or "").strip()
    if name:
        return name
    for shape in roi.copyShapes():
        text = str(_v(getattr(shape, "getTextValue", lambda: None)()) or "").strip()
        if text:
            return text
    return None


def _shape_text(shape) -> str | None:
    """A shape's text (its "comment" in OMERO.iviewer, "text" in OMERO.insight), None when empty."""
    return str(_v(getattr(shape, "getTextValue", lambda: None)()) or "").strip() or None


def _roi_comment(roi) -> str | None:
    """The one text of the ROI's shapes; InputError when its shapes name different classes."""
    texts = list(dict.fromkeys(t for t in (_shape_text(s) for s in roi.copyShapes()) if t))
    if len(texts) > 1:
        raise InputError(f"ROI {int(_v(roi.getId()))} has shapes with the comments {', '.join(map(repr, texts))}: "
                         "which class is it? Give its shapes one comment, or split it into one ROI per class")
    return texts[0] if texts else None


def _roi_tags(query, roi_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for link in query.findAllByQuery(Q_ROI_TAGS, _params(ids=roi_ids), READ_CONTEXT):
        out.setdefault(int(_v(link.getParent().getId())), []).append(str(_v(link.getChild().getTextValue())))
    return out


def image_tags(conn, image_id: int) -> list[str]:
    """The texts of the tags linked to the image."""
    links = conn.getQueryService().findAllByQuery(Q_IMAGE_TAGS, _params(iid=image_id), READ_CONTEXT)
    return [str(_v(link.getChild().getTextValue())) for link in links]


def image_stain(conn, image_id: int) -> str | None:
    """The image's stain: the value of a ``stain`` (or ``staining``) key-value pair on it, in any namespace
    but dlcore's own (OMERO has no stain field; a facility records it as a key-value, and an OME-TIFF's
    ``stain`` MapAnnotation is imported as one)."""
    from dlcore.io.acquisition import STAIN_KEYS
    from dlcore.omero.annotations import NS_PREFIX

    links = conn.getQueryService().findAllByQuery(Q_IMAGE_MAPS, _params(iid=image_id), READ_CONTEXT)
    for link in sorted(links, key=lambda link: _v(link.getChild().getId())):
        if str(_v(link.getChild().getNs()) or "").startswith(NS_PREFIX):
            continue
        for pair in link.getChild().getMapValue() or []:
            if str(pair.name).strip().lower() in STAIN_KEYS and str(pair.value or "").strip():
                return str(pair.value).strip()
    return None


def image_magnification(conn, image_id: int) -> float | None:
    """The nominal magnification of the image's objective (``Image.objectiveSettings.objective``, as
    Bio-Formats imports it from the scanner's metadata), or None when the image has no objective."""
    rows = conn.getQueryService().projection(Q_IMAGE_OBJECTIVE, _params(iid=image_id), READ_CONTEXT)
    value = _v(rows[0][0]) if rows and rows[0] else None
    return float(value) if value is not None else None


def _pick_tag(tags: list[str], classes: tuple[str, ...] | None, what: str) -> str | None:
    """The one class among ``tags`` (those in ``classes`` when given); None without tags."""
    candidates = [t for t in dict.fromkeys(tags) if classes is None or t in classes]
    if len(candidates) > 1:
        raise InputError(f"{what} has the tags {', '.join(candidates)}: which class is it? Remove all but one, or "
                         "name the classes to use")
    if not candidates and tags and classes is not None:
        raise InputError(f"{what} has the tags {', '.join(tags)}, none of which is a class ({', '.join(classes)}); "
                         "tag it with one of the classes, or add its tag to the classes")
    return candidates[0] if candidates else None


def _how_to_classify(class_source: str) -> str:
    return {"roi_name": "name the ROIs with their class",
            "roi_comment": "give their shapes the class as comment (text)"}.get(class_source,
                                                                                "tag the ROIs with their class")


# -- pixel-classifier labels -----------------------------------------------------------------
LINE_WIDTH = 3.0  # pixels: a line or polyline without a stroke width
POINT_RADIUS = 2.0  # pixels: the disk a point labels


def _stroke_width(shape, default: float) -> float:
    """The shape's ``strokeWidth`` in pixels (OMERO.iviewer and insight store it in pixels); ``default``
    when unset, not positive or in another unit."""
    width = getattr(shape, "getStrokeWidth", lambda: None)()
    if width is None:
        return default
    unit = getattr(width, "getUnit", lambda: None)()
    value = float(_sv(width, 0.0) or 0.0)
    if unit is not None and str(unit) != "PIXEL":
        return default
    return value if value > 0 else default


def shape_stroke(shape, label: str, *, line_width: float = LINE_WIDTH, point_radius: float = POINT_RADIUS):
    """One ``omero.model`` shape as a :class:`~dlcore.pixels.scribbles.Stroke` of class ``label``, in the
    image's full-resolution pixels (the shape's transform applied).

    Polygon, Rectangle and Ellipse -> ``polygon`` (filled); Polyline and Line -> ``line``, as wide as the
    shape's stroke width in pixels (``line_width`` when it has none); Point -> ``point`` (a disk of
    ``point_radius``); Mask -> ``mask``.  Raises :class:`InputError` for a Label (text only) or a shape
    without its coordinates.
    """
    from dlcore.omero.shapes import _transform, parse_points
    from dlcore.pixels.scribbles import Stroke

    kind = shape_kind(shape)
    if kind in ("Polygon", "Rectangle", "Ellipse"):
        outline = shape_geometry(shape).outline
        return Stroke(label, "polygon", tuple((float(x), float(y)) for x, y in outline))
    if kind == "Mask":
        geometry = shape_geometry(shape)
        x0, y0 = geometry.outline[0]
        return Stroke(label, "mask", ((float(x0), float(y0)),), mask=geometry.mask)
    if kind in ("Polyline", "Line"):
        if kind == "Line":
            coords = [_sv(g(), None) for g in (shape.getX1, shape.getY1, shape.getX2, shape.getY2)]
            if any(c is None for c in coords):
                raise InputError("a line without its end points")
            points = np.asarray(coords, np.float64).reshape(2, 2)
        else:
            points = parse_points(_sv(shape.getPoints(), "") or "")
            if len(points) < 2:
                raise InputError("a polyline needs at least 2 points")
        points = _transform(shape, points)
        return Stroke(label, "line", tuple((float(x), float(y)) for x, y in points),
                      width=_stroke_width(shape, line_width))
    if kind == "Point":
        x, y = _sv(shape.getX(), None), _sv(shape.getY(), None)
        if x is None or y is None:
            raise InputError("a point without coordinates")
        [(px, py)] = _transform(shape, np.array([[float(x), float(y)]]))
        return Stroke(label, "point", ((float(px), float(py)),), radius=point_radius)
    raise InputError(f"{kind} shapes label no pixels; draw polygons, rectangles, ellipses, lines, polylines, "
                     "points or masks")


def image_strokes(conn, image_id: int, *, class_source: str = "roi_name", classes: tuple[str, ...] | None = None,
                  include_dlcore_rois: bool = False, line_width: float = LINE_WIDTH,
                  point_radius: float = POINT_RADIUS) -> tuple[list, list[str]]:
    """The image's ROI shapes as pixel-classifier labels, and notes on what was skipped.

    Parameters
    ----------
    class_source
        ``"roi_name"`` (the ROI's name, else the shape's text, else another shape's text of the ROI),
        ``"roi_comment"`` (each shape's own text: OMERO.iviewer's comment) or ``"roi_tag"`` (the tag
        on the ROI; with several tags, the one among ``classes``).
    classes
        The classes to pick ROI tags from (None: a ROI must have one tag).
    include_dlcore_rois
        Also use ROIs that dlcore wrote (description ``dlcore:...``; results, not annotations).
    line_width, point_radius
        Width of lines without a stroke width, and radius of points, in pixels.

    Returns
    -------
    (strokes, notes)
        One :class:`~dlcore.pixels.scribbles.Stroke` per usable shape, in full-resolution pixels,
        labelled with its class; ``[]`` when the image has no ROIs.

    Raises
    ------
    InputError
        Shapes without a class (naming their ROIs and how to give them one), a ROI with two tags.
    ParameterError
        An unknown class source (image tags give one class per image, not per pixel).
    """
    if class_source not in STROKE_CLASS_SOURCES:
        raise ParameterError(f"class source {class_source!r} cannot label pixels; use one of "
                             f"{', '.join(STROKE_CLASS_SOURCES)} (a class per ROI or shape)")
    query = conn.getQueryService()
    found, notes, skipped_dlcore, skipped = [], [], 0, []
    for roi in query.findAllByQuery(Q_ROIS, _params(iid=image_id), READ_CONTEXT):
        if not include_dlcore_rois and str(_v(roi.getDescription()) or "").startswith(DLCORE_ROI_PREFIX):
            skipped_dlcore += 1
            continue
        roi_id = int(_v(roi.getId()))
        roi_name = str(_v(roi.getName()) or "").strip() or None
        for shape in roi.copyShapes():
            label = (roi_name or _shape_text(shape) or _roi_name(roi) if class_source == "roi_name" else
                     _shape_text(shape) if class_source == "roi_comment" else None)
            try:
                found.append((roi_id, label, shape_stroke(shape, "", line_width=line_width, point_radius=point_radius)))
            except InputError as exc:
                skipped.append(f"ROI {roi_id} {shape_kind(shape)}: {exc}")
    if skipped_dlcore:
        notes.append(f"{skipped_dlcore} ROIs written by dlcore (results, not annotations) skipped")
    if skipped:
        notes.append(f"{len(skipped)} shapes skipped ({skipped[0]}{'...' if len(skipped) > 1 else ''})")
    if class_source == "roi_tag" and found:
        tags = _roi_tags(query, sorted({roi_id for roi_id, _, _ in found}))
        picked = {roi_id: _pick_tag(tags.get(roi_id, []), classes, f"ROI {roi_id}") for roi_id, _, _ in found}
        found = [(roi_id, picked[roi_id], stroke) for roi_id, _, stroke in found]
    unnamed = sorted({roi_id for roi_id, label, _ in found if label is None})
    if unnamed:
        raise InputError(f"Image:{image_id}: ROIs {', '.join(map(str, unnamed[:10]))}"
                         f"{' ...' if len(unnamed) > 10 else ''} have no class; {_how_to_classify(class_source)}, "
                         "or delete them")
    strokes = [dataclasses.replace(stroke, label=label) for _, label, stroke in found]
    return strokes, notes


# -- regions ---------------------------------------------------------------------------------
def merge_boxes(boxes: Sequence[tuple[int, int, int, int]]) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """Merge overlapping ``(x0, y0, x1, y1)`` boxes; returns each merged box with the indices it holds."""
    groups = [(tuple(b), [i]) for i, b in enumerate(boxes)]
    merged = True
    while merged:
        merged = False
        out: list = []
        for box, members in groups:
            for k, (other, other_members) in enumerate(out):
                if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
                    out[k] = ((min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]),
                               max(box[3], other[3])), other_members + members)
                    merged = True
                    break
            else:
                out.append((box, members))
        groups = out
    return [(box, sorted(members)) for box, members in groups]


def _level_box(bbox, downsample: float, margin: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A full-resolution bbox as a level box with ``margin``, clipped to the level."""
    x0, y0, x1, y1 = bbox
    width, height = size
    return (max(0, int(np.floor(x0 / downsample)) - margin), max(0, int(np.floor(y0 / downsample)) - margin),
            min(width, int(np.ceil(x1 / downsample)) + margin), min(height, int(np.ceil(y1 / downsample)) + margin))


# -- one image -------------------------------------------------------------------------------
@dataclass
class ImageAnnotations:
    """What one image contributes: its samples (before class ids are fixed) and notes."""

    image_id: int
    name: str
    regions: list = field(default_factory=list)  # (box, [AnnotatedRoi], image label or None)
    notes: list[str] = field(default_factory=list)


def collect_image(conn, image, options: AnnotationOptions) -> ImageAnnotations:
    """Read the annotations of one image (no pixels yet) and plan its regions."""
    image_id = int(image.getId())
    found = ImageAnnotations(image_id, image.getName())
    rois, found.notes = read_rois(conn, image_id, options)
    label = None
    if options.class_source == "image_tag":
        label = _pick_tag(image_tags(conn, image_id), options.classes, f"Image:{image_id} {image.getName()}")
        if label is None:
            raise InputError(f"Image:{image_id} {image.getName()} has no tag; tag every image with its class "
                             "(e.g. 'tumour', 'normal'), or choose another class source")
    elif options.task != "instances":
        unnamed = [r.roi_id for r in rois if r.cls is None]
        if unnamed:
            how = _how_to_classify(options.class_source)
            raise InputError(f"Image:{image_id}: ROIs {', '.join(map(str, unnamed[:10]))} have no class; {how}, or "
                             "delete them")
    if not rois:
        if options.task == "classification" and label is not None:
            found.regions.append((None, [], label))
            return found
        raise InputError(f"Image:{image_id} {image.getName()} has no ROIs to learn from"
                         + (f" ({'; '.join(found.notes)})" if found.notes else "")
                         + "; draw polygons, rectangles or ellipses around the annotated structures, or leave "
                           "the image out")
    found.regions = [(None, rois, label)]
    return found


def _class_ids(images: list[ImageAnnotations], options: AnnotationOptions) -> tuple[str, ...]:
    found = sorted({r.cls for im in images for _, rois, _ in im.regions for r in rois if r.cls}
                   | {lab for im in images for _, _, lab in im.regions if lab})
    if options.classes is None:
        if not found and options.task == "instances":
            return ("object",)
        return tuple(found)
    unknown = [c for c in found if c not in options.classes]
    if unknown:
        raise InputError(f"classes {', '.join(map(repr, unknown))} are on ROIs or images but not among the classes "
                         f"given ({', '.join(options.classes)}); add them to Classes, or rename/retag those ROIs")
    return tuple(options.classes)


def _read(slide, level: int, box, options: AnnotationOptions, label: str) -> np.ndarray:
    x0, y0, x1, y1 = box
    if (x1 - x0) * (y1 - y0) > options.max_region_pixels:
        raise InputError(f"{label}: the annotated region is {x1 - x0}x{y1 - y0} pixels at resolution level {level}, "
                         f"more than {options.max_region_pixels} pixels; choose a lower resolution (a higher "
                         "Resolution_Level) or draw smaller ROIs")
    return slide.read_region(level, x0, y0, x1 - x0, y1 - y0)


def image_samples(conn, image, planned: ImageAnnotations, classes: tuple[str, ...], options: AnnotationOptions,
                  *, mpp: float | None = None) -> list:
    """Read the planned regions of one image and build its samples."""
    from dlcore.omero.shapes import rasterise
    from dlcore.omero.slide import OmeroSlide
    from dlcore.train.data import Sample

    label = f"Image:{planned.image_id} {planned.name}"
    with OmeroSlide(conn, image) as slide:
        levels = slide.info.levels
        if options.level >= len(levels):
            raise InputError(f"{label} has resolution levels 0..{len(levels) - 1}; Resolution_Level={options.level} "
                             "does not exist (0 = full resolution)")
        lv = levels[options.level]
        base_mpp = slide.info.mpp[0] if slide.info.mpp else mpp
        sample_mpp = base_mpp * lv.downsample if base_mpp else None
        group, source = f"Image:{planned.image_id}", f"Image:{planned.image_id}"
        acquired = {"mpp": sample_mpp, "channel_names": slide.info.channels,
                    "stain": image_stain(conn, planned.image_id),
                    "magnification": image_magnification(conn, planned.image_id)}
        samples = []
        for _, rois, tag in planned.regions:
            if not rois:  # a tagged image without ROIs: all of it
                box = (0, 0, lv.width, lv.height)
                samples.append(Sample(_read(slide, options.level, box, options, label), None, tag, source, group,
                                      **acquired))
                continue
            if options.task == "classification":
                for roi in rois:
                    box = _level_box(roi.bbox, lv.downsample, 0, (lv.width, lv.height))
                    image_px = _read(slide, options.level, box, options, label)
                    samples.append(Sample(image_px, None, tag or roi.cls, f"{source} ROI:{roi.roi_id}", group,
                                          annotation_ids=(f"ROI:{roi.roi_id}",), **acquired))
                continue
            boxes = [_level_box(r.bbox, lv.downsample, options.margin, (lv.width, lv.height)) for r in rois]
            for box, members in merge_boxes(boxes):
                region_rois = sorted((rois[i] for i in members), key=lambda r: -r.area)
                image_px = _read(slide, options.level, box, options, label)
                mask = np.zeros(image_px.shape[:2], np.int32)
                for n, roi in enumerate(region_rois, 1):
                    value = n if options.task == "instances" else classes.index(roi.cls) + 1
                    for geometry in roi.shapes:
                        rasterise(geometry, mask, value, origin=box[:2], downsample=lv.downsample)
                if options.task == "instances":
                    mask = _renumber(mask)
                where = f"{source} x={box[0]} y={box[1]} level={options.level}"
                samples.append(Sample(image_px, mask, None, where, group,
                                      annotation_ids=tuple(f"ROI:{r.roi_id}" for r in region_rois), **acquired))
    return samples


def _renumber(mask: np.ndarray) -> np.ndarray:
    """Instance ids 1..n in order of appearance (ids of ROIs covered entirely by smaller ones vanish)."""
    values = np.unique(mask)
    values = values[values > 0]
    lut = np.zeros(int(mask.max()) + 1, np.int32)
    lut[values] = np.arange(1, len(values) + 1)
    return lut[mask]


def dataset_from_omero(conn, data_type: str, ids: Sequence, options: AnnotationOptions, *, mpp: float | None = None,
                       progress: Callable[[str, int, int], None] | None = None):
    """Build an :class:`~dlcore.train.data.AnnotatedDataset` from OMERO annotations.

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    data_type, ids
        ``"Image"``, ``"Dataset"`` or ``"Project"`` and their ids (see :func:`~dlcore.omero.workflows.resolve_images`).
    options
        Task, class source, classes, resolution level, margin (:class:`AnnotationOptions`).
    mpp
        Full-resolution pixel size in µm for images that have none in OMERO.
    progress
        ``(stage, done, total)`` callback, one step per image read.

    Returns
    -------
    (AnnotatedDataset, images, notes)
        The dataset, the image wrappers used, and notes on what was skipped.

    Raises
    ------
    DlcoreError
        Bad ids, images without ROIs or tags, ROIs without a class or with an unknown class, regions too large.
        Every image's annotations are checked before any pixels are read.
    """
    from dlcore.omero.workflows import resolve_images

    return dataset_from_images(conn, resolve_images(conn, data_type, ids), options, mpp=mpp, progress=progress)


def dataset_from_images(conn, images: Sequence, options: AnnotationOptions, *, mpp: float | None = None,
                        progress: Callable[[str, int, int], None] | None = None):
    """:func:`dataset_from_omero` for image wrappers already resolved (and checked by the caller)."""
    from dlcore.train.data import AnnotatedDataset

    from dlcore.omero.marker_labels import without_rendered_sources

    images, left_out = without_rendered_sources(conn, list(images))
    planned = [collect_image(conn, image, options) for image in images]  # every check before reading pixels
    classes = _class_ids(planned, options)
    if not classes:
        raise InputError("no classes found; name or tag the ROIs (or tag the images) with their classes")
    samples, notes = [], {note: [] for note in left_out}
    for index, (image, plan) in enumerate(zip(images, planned), 1):
        for note in plan.notes:
            notes.setdefault(note, []).append(f"Image:{plan.image_id}")
        try:
            samples += image_samples(conn, image, plan, classes, options, mpp=mpp)
        except InputError:
            raise
        except Exception as exc:  # a server refusal on one image: say which
            raise OmeroError(f"Image:{plan.image_id} {plan.name}: reading its pixels failed: "
                             f"{getattr(exc, 'message', '') or exc}") from exc
        if progress:
            progress("read annotations", index, len(images))
    if options.task == "classification" and len({s.label for s in samples}) < 2:
        raise InputError(f"every sample has the class {samples[0].label!r}; a classifier needs examples of at least "
                         "two classes: annotate (or tag) images of another class too")
    notes = [f"{', '.join(where)}: {note}" if where else note for note, where in notes.items()]
    return AnnotatedDataset(tuple(samples), options.task, classes), images, notes
