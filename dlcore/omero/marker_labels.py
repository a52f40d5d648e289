"""Training labels from a marker, written as ROIs on OMERO images: the call behind Deep Learning > Labels From
Marker.

For each selected image (or each image of the selected Datasets or Projects), :func:`labels_on_objects`
derives labels from a marker (:mod:`dlcore.marker.labels`): a stain or channel of the image itself, or of a
second image of the same section given by its ID, registered onto each selected image first.  The labels
become ROIs that Train_Model and Train_Pixel_Classifier read as they read hand-drawn ones (class source
"ROI name"), on the image a model should learn from (``Training_Image``, :data:`TRAINING_IMAGES`):

- ``haematoxylin rendering``: a NEW image beside the selected one, in its group and datasets, named
  ``<name> [haematoxylin only, for training]``: the processed region rendered as if stained with
  haematoxylin alone (:func:`dlcore.marker.labels.hematoxylin_rendering`, uint8 RGB, the source's pixel
  size), written tile by tile (:func:`dlcore.omero.image_output.write_new_image`).  The ROIs go on it,
  shifted by the region's origin, with the key-value pairs (source image, region, rendering, marker,
  method); the source gets key-value pairs naming it (``training image`` = ``Image:<id>``).  Its
  description starts with :data:`RENDERING_DESCRIPTION`, so dataset-level runs of this script and of the
  analyses skip it (:func:`dlcore.omero.workflows.resolve_images`), while Train_Model reads it.  This is
  how a model learns to find a marker (DAB) from the routine stain only: the source image shows the marker,
  and a model trained on its pixels learns the marker's colour;
- ``source image``: the selected image itself;
- ``auto`` (the default): the rendering when the marker is DAB or eosin of the selected image itself
  (brightfield), else (a second image holds the marker, a channel, the haematoxylin) the source image.

The ROIs:

- ``threshold``: one ROI per connected region, a mask shape (exact, holes included), named ``positive``;
- ``instances``: one ROI per object, a polygon, named ``positive``;
- ``positive-cells``: one ROI per nucleus, a polygon, named ``positive`` or ``negative``.

The class is also each shape's text (OMERO.iviewer's comment), so class source "ROI comment" reads it too.
The ROIs' description is ``dlcore-marker-labels:<run id>``: not the ``dlcore:`` of analysis results, which
Train_Model skips, because these ROIs are annotations meant for training.  Key-value pairs in the namespace
``dlcore/marker-labels`` record the marker, method, threshold, registration, counts and dlcore's version.

Nothing half-written stays behind, and nothing is duplicated: every image's labels are derived (and every
check passed) before anything is written; the new renderings, ROIs and key-value pairs of all images are
then saved, each id in the node's journal (:mod:`dlcore.omero.journal`), and a failure deletes all of them
(a rendering with its ROIs); only when all are saved are the caller's earlier results of those images
deleted: marker ROIs and key-value pairs on the source, and the renderings its earlier pairs name (with
their ROIs).  A run of someone else, and everyone's other ROIs, are never touched.

Parse mode imports this module (the script's parameters are declared here): nothing heavy at module level.
"""
from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import omero.scripts as scripts
from omero.rtypes import rstring

from dlcore.errors import DlcoreError, InputError, OmeroError, ParameterError
from dlcore.omero.scripts import pixel_size_param, script_body

log = logging.getLogger(__name__)

RUN_KEY = "marker-labels"  # namespace dlcore/marker-labels
ROI_PREFIX = "dlcore-marker-labels:"  # NOT "dlcore:": Train_Model skips those (results), these are annotations
ROI_BATCH = 500
MARKERS = ("dab", "hematoxylin", "eosin", "channel")
KINDS = ("affine", "rigid", "similarity")
CLASS_COLOURS = {"positive": (255, 200, 0), "negative": (0, 190, 255)}
POLYGON_VERTICES = 256
TASK_NAMES = {"semantic": "semantic segmentation", "instances": "instance segmentation"}
AUTO, RENDERING, SOURCE = "auto", "haematoxylin rendering", "source image"
TRAINING_IMAGES = (AUTO, RENDERING, SOURCE)  # where the labels go (Training_Image)
RENDERED_MARKERS = ("dab", "eosin")  # the stains the haematoxylin-only rendering removes (auto: rendering)
#: how the haematoxylin-only training images are recognised (skipped as input by dataset-level runs)
RENDERING_DESCRIPTION = "dlcore training rendering"
RENDERING_SUFFIX = " [haematoxylin only, for training]"
TRAINING_IMAGE_KEY = "training image"  # the key, on the source image, naming its rendering
SOURCE_IMAGE_KEY = "source image"  # the key, on the rendering, naming its source
RGB_CHANNELS = ("Red", "Green", "Blue")


def is_training_rendering(description: str | None) -> bool:
    """True for a haematoxylin-only training image Labels From Marker wrote (never an input of dataset-level
    runs of Labels From Marker or of the analyses; Train_Model reads its ROIs)."""
    return bool(description) and description.startswith(RENDERING_DESCRIPTION)


def without_rendered_sources(conn, images: list) -> tuple[list, list[str]]:
    """``images`` without the sources whose haematoxylin-only training image is among them too, and a note
    for each one left out.

    After Labels From Marker wrote its labels on a rendering, a Dataset selected for training holds both
    the source (no marker ROIs, and its pixels show the marker) and the rendering (the ROIs, no marker):
    training learns from the rendering alone.  The source is named by the rendering's own key-value pair
    (``source image``), written by the rendering's owner."""
    from omero.model import MapAnnotationI

    from dlcore.omero import annotations as ann
    from dlcore.omero.annotated import READ_CONTEXT

    sources: dict[int, int] = {}
    for image in images:
        if not is_training_rendering(image.getDescription()):
            continue
        params = ann.query_params(iid=int(image.getId()), ns=ann.namespace(RUN_KEY),
                                  uid=int(image.getDetails().getOwner().getId()))
        for link in conn.getQueryService().findAllByQuery(ann.Q_RUN_LINKS, params, READ_CONTEXT):
            child = link.getChild()
            if isinstance(child, MapAnnotationI):
                pointer = {nv.name: nv.value for nv in (child.getMapValue() or [])}.get(SOURCE_IMAGE_KEY, "")
                if pointer.startswith("Image:"):
                    sources[int(pointer.split(":")[1].split()[0])] = int(image.getId())
    kept = [image for image in images if int(image.getId()) not in sources]
    notes = [f"Image:{int(image.getId())} {image.getName()} left out: its haematoxylin-only training image "
             f"Image:{sources[int(image.getId())]} holds its marker labels (trained on instead)"
             for image in images if int(image.getId()) in sources]
    return kept, notes


# -- the script's parameters ---------------------------------------------------------------------
def marker_label_params(grouping: int) -> list:
    """The marker, the method and its options, the second image, the region, the ROI limit."""
    from dlcore.marker.labels import METHODS, MarkerSpec
    from dlcore.omero.scripts import _default_roi_cap

    d = MarkerSpec()
    g = grouping
    return [
        scripts.String("Marker", optional=False, grouping=f"{g}", default="dab", values=[rstring(m) for m in MARKERS],
                       description="The marker: a stain of a brightfield image (DAB, haematoxylin, eosin, by colour "
                                   "deconvolution) or a channel (named in Marker_Channel)"),
        scripts.String("Marker_Channel", grouping=f"{g + 1}",
                       description="With Marker=channel: the channel's name or number (0 = first)"),
        scripts.Long("Marker_Image_ID", grouping=f"{g + 2}", min=1,
                     description="Optional: a second image of the same section that holds the marker (a re-stain, a "
                                 "fluorescence scan); it is registered onto each selected image first. Empty: the "
                                 "marker is in the selected images themselves"),
        scripts.String("Registration", grouping=f"{g + 3}", default=d.registration_kind,
                       values=[rstring(k) for k in KINDS],
                       description="How the second image may be moved onto the selected one"),
        scripts.String("Marker_Nuclei_Channel", grouping=f"{g + 4}",
                       description="For a second image that is not RGB: its channel that shows nuclei (e.g. DAPI), "
                                   "which registration aligns"),
        scripts.String("Method", optional=False, grouping=f"{g + 5}", default=d.method,
                       values=[rstring(m) for m in METHODS],
                       description="threshold: regions where the marker is (class 'positive'); instances: its objects, "
                                   "split by watershed; positive-cells: every nucleus (found on the haematoxylin), "
                                   "named 'positive' or 'negative' by the marker"),
        scripts.String("Threshold", grouping=f"{g + 6}", default="otsu",
                       description="'otsu' (computed per image, recorded in the key-value pairs) or a value of the "
                                   "smoothed marker signal"),
        scripts.Float("Sigma", grouping=f"{g + 7}", default=d.sigma, min=0.0, max=50.0,
                      description="Smoothing of the marker before the threshold, in pixels"),
        scripts.Int("Min_Size", grouping=f"{g + 8}", default=d.min_size, min=0,
                    description="Remove regions and objects smaller than this many pixels"),
        scripts.String("Positive_By", grouping=f"{g + 9}", default=d.positive_by,
                       values=[rstring(v) for v in ("mean", "fraction")],
                       description="positive-cells: a cell is positive when the marker's mean over it is above the "
                                   "threshold, or when Min_Fraction of it is"),
        scripts.Float("Min_Fraction", grouping=f"{g + 10}", default=d.min_fraction, min=0.01, max=1.0,
                      description="positive-cells with Positive_By=fraction: the share of a cell above the threshold"),
        scripts.Int("Cell_Expansion", grouping=f"{g + 11}", default=d.cell_expansion, min=0, max=100,
                    description="positive-cells: grow each nucleus by this many pixels before measuring the marker "
                                "(0 for nuclear markers; a few pixels for membrane or cytoplasm markers)"),
        scripts.String("Nuclei_Channel", grouping=f"{g + 12}", default=d.nuclei_channel,
                       description="positive-cells: where nuclei are found: 'hematoxylin' (brightfield) or "
                                   "channel:NAME (e.g. channel:DAPI)"),
        scripts.String("Pixel_Classifier", grouping=f"{g + 13}",
                       description="Optional: a pixel classifier (Train Pixel Classifier) applied to the marker image, "
                                   "as NAME or NAME:CLASS; the CLASS's probability is the marker (threshold 0.5)"),
        scripts.String("Region", grouping=f"{g + 14}",
                       description="x,y,width,height in full-resolution pixels; needed for images above 25 "
                                   "megapixels (labels are derived from a region at once)"),
        scripts.Int("Max_ROIs", grouping=f"{g + 15}", min=1, default=_default_roi_cap(),
                    description="Most ROIs written per image; more objects than this is refused (choose a smaller "
                                "Region), so an image never gets part of its labels"),
        pixel_size_param(g + 16),
        scripts.String("Training_Image", grouping=f"{g + 17}", default=AUTO,
                       values=[rstring(v) for v in TRAINING_IMAGES],
                       description="Where the ROIs go. haematoxylin rendering: a new image beside the selected one "
                                   "(same datasets), the region as if stained with haematoxylin only, so a model "
                                   "trained on it learns to find the marker from the routine stain instead of seeing "
                                   "it (a re-run replaces it); source image: the selected image itself; auto: the "
                                   "rendering when the marker is DAB or eosin of the selected image itself, else the "
                                   "source image"),
    ]


@dataclass(frozen=True)
class MarkerLabelRequest:
    """What a Labels_From_Marker run is asked to do (the script's inputs, checked)."""

    spec: object  # dlcore.marker.labels.MarkerSpec
    region: tuple[int, int, int, int] | None = None
    marker_image_id: int | None = None
    max_rois: int = 5000
    image_mpp: float | None = None
    training_image: str = AUTO

    def __post_init__(self) -> None:
        if self.max_rois < 1:
            raise ParameterError(f"Max_ROIs={self.max_rois} must be at least 1")
        if self.image_mpp is not None and not self.image_mpp > 0:
            raise ParameterError(f"Image_Pixel_Size_um={self.image_mpp} must be a positive pixel size in µm")
        if self.training_image not in TRAINING_IMAGES:
            raise ParameterError(f"Training_Image={self.training_image!r} must be one of {', '.join(TRAINING_IMAGES)}")

    @property
    def rendering(self) -> bool:
        """True when the labels go on a haematoxylin-only rendering (``Training_Image``, ``auto`` resolved:
        the marker is DAB or eosin of the selected image itself)."""
        if self.training_image != AUTO:
            return self.training_image == RENDERING
        return self.marker_image_id is None and getattr(self.spec, "marker", None) in RENDERED_MARKERS


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def request_from_inputs(inputs: dict) -> MarkerLabelRequest:
    """The :class:`MarkerLabelRequest` of a script's inputs (ParameterError naming a bad one)."""
    from dlcore.marker.labels import MarkerSpec, parse_region
    from dlcore.omero.scripts import _default_roi_cap

    from dlcore.marker.labels import METHODS, POSITIVE_BY

    marker = _text(inputs.get("Marker")) or "dab"
    for key, value, allowed in (("Marker", marker, MARKERS), ("Method", inputs.get("Method"), METHODS),
                                ("Positive_By", inputs.get("Positive_By"), POSITIVE_BY),
                                ("Registration", inputs.get("Registration"), KINDS),
                                ("Training_Image", inputs.get("Training_Image"), TRAINING_IMAGES)):
        if value is not None and _text(value) and _text(value) not in allowed:
            raise ParameterError(f"{key}={_text(value)!r} must be one of {', '.join(allowed)}")
    if marker == "channel":
        channel = _text(inputs.get("Marker_Channel"))
        if not channel:
            raise ParameterError("Marker=channel needs Marker_Channel: the channel's name or number (0 = first)")
        marker = f"channel:{channel}"
    threshold_text = _text(inputs.get("Threshold")).lower() or "otsu"
    if threshold_text == "otsu":
        threshold = None
    else:
        try:
            threshold = float(threshold_text)
        except ValueError:
            raise ParameterError(f"Threshold={inputs.get('Threshold')!r} must be 'otsu' or a number") from None
    classifier, _, cls = _text(inputs.get("Pixel_Classifier")).partition(":")
    nuclei = _text(inputs.get("Nuclei_Channel")) or "hematoxylin"
    if nuclei != "hematoxylin" and not nuclei.startswith("channel:"):
        nuclei = f"channel:{nuclei}"
    marker_nuclei = _text(inputs.get("Marker_Nuclei_Channel")) or None
    if marker_nuclei and not marker_nuclei.startswith("channel:"):
        marker_nuclei = f"channel:{marker_nuclei}"

    def number(key, default, kind=float):
        value = inputs.get(key)
        return default if value is None else kind(value)

    defaults = MarkerSpec()
    spec = MarkerSpec(
        marker=marker, method=_text(inputs.get("Method")) or defaults.method, threshold=threshold,
        sigma=number("Sigma", defaults.sigma), min_size=number("Min_Size", defaults.min_size, int),
        positive_by=_text(inputs.get("Positive_By")) or defaults.positive_by,
        min_fraction=number("Min_Fraction", defaults.min_fraction),
        cell_expansion=number("Cell_Expansion", defaults.cell_expansion, int), nuclei_channel=nuclei,
        input="rgb", pixel_classifier=classifier.strip() or None, classifier_class=cls.strip() or None,
        registration_kind=_text(inputs.get("Registration")) or defaults.registration_kind,
        marker_nuclei_channel=marker_nuclei)
    marker_id = inputs.get("Marker_Image_ID")
    return MarkerLabelRequest(spec=spec, region=parse_region(_text(inputs.get("Region")) or None),
                              marker_image_id=int(marker_id) if marker_id else None,
                              max_rois=int(inputs.get("Max_ROIs") or _default_roi_cap()),
                              image_mpp=inputs.get("Image_Pixel_Size_um") or None,
                              training_image=_text(inputs.get("Training_Image")) or AUTO)


# -- labels as ROIs -------------------------------------------------------------------------------
def _colour(name: str, alpha: int = 255) -> int:
    from dlcore.omero.rois import omero_color

    return omero_color(CLASS_COLOURS.get(name, (255, 200, 0)), alpha)


def _new_roi(image_id: int, cls: str, shape, marker: str):
    from omero.model import ImageI, RoiI
    from omero.rtypes import rint

    roi = RoiI()
    roi.setImage(ImageI(image_id, False))
    roi.setName(rstring(cls))
    roi.setDescription(rstring(marker))
    shape.setTextValue(rstring(cls))
    shape.setStrokeColor(rint(_colour(cls)))
    roi.addShape(shape)
    return roi


def mask_rois(labels, image_id: int, origin: tuple[int, int], cls: str, marker: str) -> list:
    """One unsaved ROI with a mask shape per connected region of a boolean ``labels`` (8-connected), in
    full-resolution pixels offset by ``origin`` (x, y); exact, holes included."""
    import numpy as np
    from omero.model import MaskI
    from omero.rtypes import rdouble, rint
    from scipy import ndimage as ndi

    components, _ = ndi.label(labels > 0, structure=np.ones((3, 3), bool))
    out = []
    for index, box in enumerate(ndi.find_objects(components), 1):
        if box is None:
            continue
        bits = components[box] == index
        shape = MaskI()
        shape.setX(rdouble(origin[0] + box[1].start))
        shape.setY(rdouble(origin[1] + box[0].start))
        shape.setWidth(rdouble(bits.shape[1]))
        shape.setHeight(rdouble(bits.shape[0]))
        shape.setBytes(np.packbits(bits.astype(np.uint8)).tobytes())  # row by row, most significant bit first
        shape.setFillColor(rint(_colour(cls, alpha=96)))
        out.append(_new_roi(image_id, cls, shape, marker))
    return out


def polygon_rois(instances, classes: dict[int, str], image_id: int, origin: tuple[int, int], marker: str) -> list:
    """One unsaved ROI with a polygon per object of an instance map (its outline along the pixel edges, in
    full-resolution pixels offset by ``origin``), named with ``classes[id]``."""
    import numpy as np
    from omero.model import PolygonI
    from omero.rtypes import rint
    from scipy import ndimage as ndi

    from dlcore.objects import outlines
    from dlcore.omero.rois import points_text

    boxes = ndi.find_objects(instances)
    ids = [i for i, box in enumerate(boxes, 1) if box is not None]
    masks = [instances[boxes[i - 1]] == i for i in ids]
    out = []
    for i, mask, poly in zip(ids, masks, outlines(masks, max_vertices=POLYGON_VERTICES)):
        if len(poly) < 3:
            continue
        box = boxes[i - 1]
        xy = poly[:, ::-1] + np.array([origin[0] + box[1].start + 0.5, origin[1] + box[0].start + 0.5])
        shape = PolygonI()
        shape.setPoints(rstring(points_text(xy)))
        cls = classes.get(i, "positive")
        shape.setFillColor(rint(_colour(cls, alpha=0)))
        out.append(_new_roi(image_id, cls, shape, marker))
    return out


def rois_for(result, image_id: int, marker: str, *, origin: tuple[int, int] | None = None) -> list:
    """The unsaved ROIs of one image's :class:`~dlcore.marker.labels.MarkerLabels`, in the source image's
    pixels (``origin`` None: the region's), or offset by ``origin`` (``(0, 0)``: on the region's rendering)."""
    if origin is None:
        region = result.provenance["region"]
        origin = (region["x"], region["y"])
    if result.task == "semantic" and result.instances is None:
        return mask_rois(result.labels, image_id, origin, result.classes[-1], marker)
    ids = result.instances if result.instances is not None else result.labels
    classes = {int(o["id"]): o["class"] for o in result.objects}
    return polygon_rois(ids, classes, image_id, origin, marker)


# -- the workflow ---------------------------------------------------------------------------------
@dataclass
class _Planned:
    image: object
    result: object
    rois: list
    group_id: int
    rendering: bool = False  # the ROIs go on a new haematoxylin-only rendering of the region
    datasets: list = field(default_factory=list)  # the source's datasets the caller may link into
    written: dict = field(default_factory=dict)


def _label(image) -> str:
    return f"Image:{int(image.getId())} {image.getName()}"


def rendering_text(result) -> str:
    """What the rendering is, for its key-value pairs."""
    stains = result.provenance.get("routine_stains")
    return ("haematoxylin only: the source's haematoxylin optical density by colour deconvolution, as 8-bit RGB "
            "(no DAB, no eosin)" + (f"; stain vectors {json.dumps(stains, default=str)}" if stains else ""))


def key_values(result, request: MarkerLabelRequest, *, marker_label: str, run_id: str, rois: int,
               source: str | None = None) -> list:
    """The key-value pairs of one image's labels: what a person reads, then the full record.  ``source``
    (``Image:<id> <name>``): the pairs of the haematoxylin-only rendering of that image's region."""
    import dlcore

    p = result.provenance
    counts = p["counts"]
    region = p["region"]
    pairs = []
    if source is not None:
        pairs += [(SOURCE_IMAGE_KEY, source), ("rendering", rendering_text(result)),
                  ("origin", f"pixel (0, 0) here is pixel ({region['x']}, {region['y']}) of the source image")]
    pairs += [("method", p["method"]), ("marker", f"{p['marker_source']['signal']} of {marker_label}"),
              ("threshold", f"{p['threshold']['value']:.6g} ({p['threshold']['how']})"),
              ("classes", ", ".join(result.classes)), ("ROIs", str(rois))]
    for key in ("objects", "positive_objects", "negative_objects"):
        if key in counts:
            pairs.append((key.replace("_", " "), str(counts[key])))
    if "pixels_per_class" in counts:
        pairs.append(("pixels per class", json.dumps(counts["pixels_per_class"])))
    pairs.append(("region", f"{region['x']},{region['y']},{region['width']},{region['height']}"))
    if p.get("registration"):
        reg = p["registration"]
        pairs += [("registration", f"{reg['kind']}: residual {reg['residual_px']} px (90th percentile "
                                   f"{reg['residual_p90_px']} px) on {reg['patches']} patches"),
                  ("registration matrix", json.dumps(reg["matrix"])),
                  ("marker coverage", f"{100 * p['marker_coverage']:.1f} %")]
    if p.get("warning"):
        pairs.append(("warning", _omero_warning()))
    pairs += [
        ("train with", f"Train Model: Task={TASK_NAMES[result.task]}, Class_Source=ROI name"),
        ("parameters", json.dumps(p["parameters"], sort_keys=True, default=str)),
        ("dlcore version", dlcore.__version__),
        ("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
        ("input", p["identity"]),
        ("run id", run_id),
    ]
    return pairs


def pointer_pairs(result, *, rendering_id: int, rois: int, marker_label: str, run_id: str) -> list:
    """The key-value pairs on the source image naming its rendering (a re-run deletes the image they name)."""
    p = result.provenance
    region = p["region"]
    return [(TRAINING_IMAGE_KEY, f"Image:{int(rendering_id)}"),
            ("labels", f"{rois} ROIs on the training image (haematoxylin only): train on it, not on this image, "
                       "which shows the marker"),
            ("method", p["method"]), ("marker", f"{p['marker_source']['signal']} of {marker_label}"),
            ("region", f"{region['x']},{region['y']},{region['width']},{region['height']}"),
            ("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
            ("run id", run_id)]


def _omero_warning() -> str:
    return ("the marker is in this image itself, so a model trained on its pixels sees the marker; to learn the "
            "routine stain, choose Training_Image=haematoxylin rendering (brightfield), or give the routine image and "
            "put the marker's as Marker_Image_ID")


def _check_rgb(slide) -> None:
    info = slide.info
    if len(info.channels) != 3 or info.dtype != "uint8":
        raise ParameterError(f"Training_Image={RENDERING} needs 8-bit RGB brightfield images, but it has "
                             f"{len(info.channels)} {info.dtype} channel(s); choose Training_Image={SOURCE}")


def _plan(conn, images, request: MarkerLabelRequest, marker_image, progress) -> list[_Planned]:
    """Every image's labels and ROIs, derived before anything is written."""
    import dataclasses

    from dlcore.io.slide import with_mpp
    from dlcore.marker.labels import derive_labels
    from dlcore.omero.slide import OmeroSlide

    rendering = request.rendering
    # the routine input derive_labels renders: the haematoxylin-only rendering, or the image as it is
    spec = dataclasses.replace(request.spec, input="hematoxylin" if rendering else "rgb")
    planned = []
    for index, image in enumerate(images, 1):
        label = _label(image)
        try:
            with OmeroSlide(conn, image) as slide:
                if rendering and request.training_image == RENDERING:
                    _check_rgb(slide)
                if slide.info.mpp is None and request.image_mpp:
                    slide.info = with_mpp(slide.info, request.image_mpp)
                if marker_image is not None:
                    with OmeroSlide(conn, marker_image) as second:
                        result = derive_labels(slide, spec=spec, region=request.region, marker=second,
                                               mpp=request.image_mpp)
                else:
                    result = derive_labels(slide, spec=spec, region=request.region, mpp=request.image_mpp)
        except DlcoreError as exc:
            raise type(exc)(f"{label}: {exc}") from exc
        # on the rendering, the region's origin is (0, 0); the image the ROIs go on is set when it exists
        rois = rois_for(result, int(image.getId()), ROI_PREFIX, origin=(0, 0) if rendering else None)
        if len(rois) > request.max_rois:
            raise InputError(f"{label}: the marker gives {len(rois)} objects, more than Max_ROIs={request.max_rois}; "
                             "choose a smaller Region (x,y,width,height), a larger Min_Size, or raise Max_ROIs")
        if not rois:
            raise InputError(f"{label}: the marker gives no {'positive region' if result.task == 'semantic' and result.instances is None else 'object'}"
                             f" (threshold {result.threshold:.4g}); check Marker (is it in this image?) or give a "
                             "lower Threshold")
        datasets = ([int(p.getId()) for p in image.listParents() if p.OMERO_CLASS == "Dataset" and p.canLink()]
                    if rendering else [])
        planned.append(_Planned(image, result, rois, int(image.getDetails().getGroup().getId()), rendering, datasets))
        if progress:
            progress("derive labels", index, len(images))
    return planned


def rendering_description(source_id: int, region: dict, run_id: str) -> str:
    """The description of the rendering of a source image's region (how it is recognised and skipped)."""
    return (f"{RENDERING_DESCRIPTION}: haematoxylin only, of Image:{int(source_id)} region {region['x']},{region['y']},"
            f"{region['width']},{region['height']} (Labels From Marker, run {run_id}); train on its ROIs")


def write_rendering(conn, result, source, *, run_id: str, context: dict, on_created=None, on_deleted=None) -> int:
    """The haematoxylin-only rendering of the labels' region (``result.image``, ``(Y, X, 3)`` uint8) as a new
    image, unlinked, named ``<source name> [haematoxylin only, for training]``, with the region's pixel size
    and RGB display; its id.  Deleted again if writing it fails (:func:`~dlcore.omero.image_output.write_new_image`)."""
    import numpy as np

    from dlcore.omero.image_output import write_new_image

    pixels = np.ascontiguousarray(result.image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise OmeroError(f"the rendering is {pixels.shape} {pixels.dtype}, not (Y, X, 3) uint8")
    height, width = pixels.shape[:2]
    return write_new_image(
        conn, lambda c, x, y, w, h: pixels[y:y + h, x:x + w, c], width=width, height=height, channels=RGB_CHANNELS,
        pixels_type="uint8", windows=[(0.0, 255.0)] * 3, colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
        name=f"{source.getName()}{RENDERING_SUFFIX}",
        description=rendering_description(int(source.getId()), result.provenance["region"], run_id),
        mpp=result.mpp, context=context, on_created=on_created, on_deleted=on_deleted)


def _write(conn, plan: _Planned, request: MarkerLabelRequest, *, run_id: str, marker_label: str, created: dict,
           journal) -> None:
    """Save one image's rendering (when asked), ROIs (batches) and key-value pairs, recording every new id in
    ``created`` (group id -> graph -> ids) and in the image's journal.  A rendering's ROIs and key-value
    pairs are deleted with it, so only the rendering and the source's pairs naming it are recorded."""
    from omero.model import ImageI

    from dlcore.omero import annotations as ann
    from dlcore.omero.label_image import dataset_links

    context = {"omero.group": str(plan.group_id)}
    source_id = int(plan.image.getId())
    update = conn.getUpdateService()
    mine: dict[str, list[int]] = {"Roi": [], "Annotation": [], "Image": []}  # what the journal lists
    group_created = created.setdefault(plan.group_id, {})

    def add(graph: str, ids: list[int]) -> None:
        mine[graph].extend(ids)
        group_created.setdefault(graph, []).extend(ids)
        journal.record(mine)

    def drop(graph: str, oid: int) -> None:  # deleted already (a rendering that failed midway)
        mine[graph].remove(oid)
        group_created[graph].remove(oid)
        journal.record(mine)

    target_id = source_id
    if plan.rendering:
        target_id = write_rendering(conn, plan.result, plan.image, run_id=run_id, context=context,
                                    on_created=lambda oid: add("Image", [oid]),
                                    on_deleted=lambda oid: drop("Image", oid))
        for roi in plan.rois:
            roi.setImage(ImageI(target_id, False))
    for roi in plan.rois:
        roi.setDescription(rstring(ROI_PREFIX + run_id))
    roi_ids = []
    for start in range(0, len(plan.rois), ROI_BATCH):
        saved = update.saveAndReturnArray(plan.rois[start:start + ROI_BATCH], context)
        new = [int(r.getId().getValue()) for r in saved]
        roi_ids += new
        if not plan.rendering:
            add("Roi", new)
    source = _label(plan.image) if plan.rendering else None
    pairs = key_values(plan.result, request, marker_label=marker_label, run_id=run_id, rois=len(roi_ids),
                       source=source)
    links = [ann.image_link(target_id, ann.map_annotation(RUN_KEY, pairs))]
    if plan.rendering:  # the pointer on the source, and the rendering into the source's datasets, in one save
        links.append(ann.image_link(source_id, ann.map_annotation(RUN_KEY, pointer_pairs(
            plan.result, rendering_id=target_id, rois=len(roi_ids), marker_label=marker_label, run_id=run_id))))
        links += dataset_links(target_id, plan.datasets)
    saved = update.saveAndReturnArray(links, context)
    annotation_ids = [int(link.getChild().getId().getValue()) for link in saved[:2 if plan.rendering else 1]]
    add("Annotation", annotation_ids[1:] if plan.rendering else annotation_ids)
    plan.written = {"ROIs": len(roi_ids), "key-value pairs": f"MapAnnotation:{annotation_ids[0]}"}
    if plan.rendering:
        plan.written.update({"training image": target_id, "datasets": list(plan.datasets),
                             "pointer": f"MapAnnotation:{annotation_ids[1]}"})


def _earlier_rois(conn, image_id: int, run_id: str, context: dict) -> list[int]:
    """The caller's marker ROIs of earlier runs on the image."""
    from dlcore.omero import annotations as ann

    params = ann.query_params(iid=image_id, marker=ann.like_prefix(ROI_PREFIX), uid=int(conn.getUserId()))
    rows = conn.getQueryService().projection(ann.Q_RUN_ROIS, params, context)
    return [int(row[0].getValue()) for row in rows if row[1].getValue() != ROI_PREFIX + run_id]


def earlier_renderings(conn, image_id: int, run_id: str, context: dict) -> list[int]:
    """The renderings earlier runs made of the image: named by the caller's key-value pairs on it (other than
    run ``run_id``'s), still there, the caller's, and renderings indeed (their description)."""
    from omero.model import MapAnnotationI

    from dlcore.omero import annotations as ann
    from dlcore.omero.journal import owned_existing

    params = ann.query_params(iid=int(image_id), ns=ann.namespace(RUN_KEY), uid=int(conn.getUserId()))
    named = []
    for link in conn.getQueryService().findAllByQuery(ann.Q_RUN_LINKS, params, context):
        child = link.getChild()
        if not isinstance(child, MapAnnotationI):
            continue
        values = {nv.name: nv.value for nv in (child.getMapValue() or [])}
        pointer = values.get(TRAINING_IMAGE_KEY, "")
        if values.get(ann.RUN_ID_KEY) != run_id and pointer.startswith("Image:"):
            named.append(int(pointer.split(":")[1].split()[0]))
    if not named:
        return []
    found = owned_existing(conn, {"Image": list(dict.fromkeys(named))}, context=context).get("Image", [])
    out = []
    for oid in found:
        image = conn.getObject("Image", oid)
        if image is not None and is_training_rendering(image.getDescription()):
            out.append(oid)
    return out


def labels_on_objects(conn, data_type: str, ids: Sequence, request: MarkerLabelRequest, *, work_dir=None,
                      progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Derive labels from a marker on the selected OMERO images and write them as ROIs (see the module docstring).

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    data_type, ids
        The selection (``"Image"``, ``"Dataset"`` or ``"Project"`` ids): the routine images.  The
        haematoxylin-only renderings of earlier runs in a Dataset or Project are skipped.
    request
        The marker, method and options, and where the labels go (:class:`MarkerLabelRequest`).
    work_dir
        The node's scratch folder (the journal of created objects); None: the system's temporary folder.
    progress
        ``(stage, done, total)`` callback.

    Returns
    -------
    dict with ``images`` (one dict per image: ``image``, ``result``, ``written`` (with ``training image``,
    the rendering's id, when there is one), ``replaced``), ``run_id``, ``marker`` (what holds the marker,
    in words) and ``rendering`` (True when the labels are on renderings).

    Raises
    ------
    DlcoreError
        Bad ids or options, an image the caller may not annotate, a selected rendering, an unknown channel, a
        region outside an image or too large, a failed registration, no labels or more than ``max_rois``:
        before anything is written.  A failure while writing deletes everything this run wrote, then is
        raised; the earlier results stay.
    """
    from dlcore.omero import annotations as ann
    from dlcore.omero.journal import CreationJournal, delete_leftovers, journal_folder
    from dlcore.omero.slide import server_uuid
    from dlcore.omero.workflows import resolve_images

    images = resolve_images(conn, data_type, ids, skip_training_renderings=True)
    renderings = [i for i in images if is_training_rendering(i.getDescription())]
    if renderings:
        raise ParameterError(f"{', '.join(_label(i) for i in renderings[:5])} "
                             f"{'is a haematoxylin-only training image' if len(renderings) == 1 else 'are haematoxylin-only training images'}"
                             " that Labels From Marker made (the marker is gone from it); select its source image (its "
                             f"key-value pair '{SOURCE_IMAGE_KEY}'). Nothing was written")
    marker_image, marker_label = None, "the same image"
    if request.marker_image_id is not None:
        marker_image = conn.getObject("Image", int(request.marker_image_id))
        if marker_image is None:
            raise OmeroError(f"Marker_Image_ID {request.marker_image_id}: no such image, or you may not see it; "
                             "check the ID. Nothing was written")
        marker_label = _label(marker_image)
        same = [i for i in images if int(i.getId()) == int(request.marker_image_id)]
        if same:
            raise ParameterError(f"Marker_Image_ID {request.marker_image_id} is also a selected image: select the "
                                 "routine-stain images, and give the marker's image as Marker_Image_ID")
    refused = [i for i in images if not i.canAnnotate()]
    if refused:
        raise OmeroError(f"you may not add ROIs to {', '.join(_label(i) for i in refused[:5])}"
                         f"{' ...' if len(refused) > 5 else ''} (another user's image in a read-only or private group); "
                         "ask its owner, or copy it to a group where you may annotate. Nothing was written")
    planned = _plan(conn, images, request, marker_image, progress)

    run_id = uuid.uuid4().hex[:12]
    server = server_uuid(conn)
    created: dict[int, dict[str, list[int]]] = {}
    journals = []
    try:
        for index, plan in enumerate(planned, 1):
            journal = CreationJournal(journal_folder(work_dir), server=server, user_id=int(conn.getUserId()),
                                      image_id=int(plan.image.getId()), run_key=RUN_KEY, run_id=run_id).open()
            journals.append(journal)
            _write(conn, plan, request, run_id=run_id, marker_label=marker_label, created=created, journal=journal)
            if progress:
                progress("write ROIs", index, len(planned))
    except BaseException as exc:
        _abort(conn, created, journals, exc)
        raise
    reports = []
    for plan, journal in zip(planned, journals):
        image_id = int(plan.image.getId())
        context = {"omero.group": str(plan.group_id)}
        earlier = ann.find_earlier_run(conn, image_id, RUN_KEY, keep_run_id=run_id, context=context)
        earlier.roi_ids = _earlier_rois(conn, image_id, run_id, context)
        earlier.label_image_ids = earlier_renderings(conn, image_id, run_id, context)  # with their ROIs and pairs
        replaced = ann.delete_earlier_run(conn, earlier, keep_tags=set(), context=context,
                                          label=f"Image:{image_id} labels from marker")
        journal.close()  # the ROIs are the image's labels now
        leftovers = delete_leftovers(conn, journal, context=context, label=f"Image:{image_id}")
        reports.append({"image": plan.image, "result": plan.result, "written": plan.written,
                        "replaced": "; ".join(n for n in (replaced, leftovers) if n)})
    return {"images": reports, "run_id": run_id, "marker": marker_label, "rendering": request.rendering}


def _abort(conn, created: dict, journals: list, error: BaseException) -> None:
    """Delete what this run wrote (it failed before every image was written): one Delete2 per group."""
    import contextlib

    from dlcore.omero.deleting import delete_objects

    try:
        for group_id, targets in created.items():
            delete_objects(conn, {g: ids for g, ids in targets.items() if ids},
                           context={"omero.group": str(group_id)})
        for journal in journals:
            with contextlib.suppress(Exception):
                journal.close()
    except Exception as exc:  # beside the run's own error, which must not be hidden
        for journal in journals:
            journal.release()  # the next run on the image deletes what is listed
        listed = "; ".join(f"{graph} {ids}" for targets in created.values() for graph, ids in targets.items())
        note = f"cleaning up failed too ({getattr(exc, 'message', '') or exc}); delete these by hand: {listed}"
        log.error("labels from marker: %s", note)
        if isinstance(error, DlcoreError):
            error.args = (f"{error.args[0] if error.args else error}; {note}",)


# -- the script body ------------------------------------------------------------------------------
def summary_lines(out: dict) -> list[str]:
    """The Message of a finished run: per image what was written, then how to train on it."""
    reports = out["images"]
    first = reports[0]["result"]
    rendering = out.get("rendering", False)
    where = (f"{len(reports)} haematoxylin-only training image(s) beside the selected image(s)" if rendering
             else f"{len(reports)} image(s)")
    lines = [f"✓ Labels from the marker ({first.provenance['method']}, {first.provenance['marker_source']['signal']} of "
             f"{out['marker']}) written as ROIs on {where}:"]
    for r in reports:
        result = r["result"]
        counts = result.provenance["counts"]
        what = (", ".join(f"{counts[f'{c}_objects']} {c}" for c in result.classes if f"{c}_objects" in counts)
                or f"{counts.get('pixels_per_class', {}).get('positive', 0)} positive pixels")
        written = r["written"]
        if rendering:
            datasets = written.get("datasets") or []
            into = (f"in Dataset {', '.join(map(str, datasets))}" if datasets
                    else "not in a dataset (find it under Orphaned Images)")
            head = (f"  {_label(r['image'])} -> Image:{written['training image']} {r['image'].getName()}"
                    f"{RENDERING_SUFFIX} {into}")
        else:
            head = f"  {_label(r['image'])}"
        lines.append(f"{head}: {written['ROIs']} ROIs ({what}), threshold "
                     f"{result.threshold:.4g} ({result.provenance['threshold']['how']}); key-value pairs "
                     f"{written['key-value pairs']}")
        reg = result.provenance.get("registration")
        if reg:
            lines.append(f"    registered ({reg['kind']}): residual {reg['residual_px']} px, 90th percentile "
                         f"{reg['residual_p90_px']} px; the marker image covers "
                         f"{100 * result.provenance['marker_coverage']:.1f} % of the region")
        if r["replaced"]:
            lines.append(f"    replaced the earlier labels: {r['replaced']}")
    if rendering:
        ids = ",".join(str(r["written"]["training image"]) for r in reports)
        lines.append(f"  Train on them: Train Model with Data_Type=Image, IDs={ids}, Task={TASK_NAMES[first.task]}, "
                     f"Class_Source=ROI name (classes {', '.join(first.classes)}), or with their Dataset: training "
                     "leaves out the source images, which show the marker")
    else:
        lines.append(f"  Train on them: Train Model with Task={TASK_NAMES[first.task]}, Class_Source=ROI name "
                     f"(classes {', '.join(first.classes)})")
    if first.provenance.get("warning"):
        lines.append(f"  ! {_omero_warning()}")
    return lines


def marker_labels_script(script_client, *, conn=None, work_dir=None) -> str:
    """The body of Labels_From_Marker: derive, write, set ``Message``."""

    def work(conn, inputs) -> str:
        from dlcore.progress import LineProgress

        request = request_from_inputs(inputs)
        if work_dir is None:
            from dlcore.config import load_config

            directory = load_config().work_dir
        else:
            directory = work_dir
        out = labels_on_objects(conn, inputs.get("Data_Type", "Image"), list(inputs.get("IDs") or []), request,
                                work_dir=directory, progress=LineProgress())
        return "\n".join(summary_lines(out))

    return script_body(script_client, work, conn=conn)


__all__ = ["marker_label_params", "MarkerLabelRequest", "request_from_inputs", "labels_on_objects",
           "marker_labels_script", "summary_lines", "mask_rois", "polygon_rois", "write_rendering",
           "earlier_renderings", "is_training_rendering", "RUN_KEY", "ROI_PREFIX", "TRAINING_IMAGES",
           "RENDERING_DESCRIPTION", "TRAINING_IMAGE_KEY"]
