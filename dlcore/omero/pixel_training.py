"""Pixel-classifier training from OMERO ROIs: the call behind Deep Learning > Train Pixel Classifier.

:func:`train_pixels_on_objects` turns the ROIs drawn on the selected images into sparse labels
(:func:`~dlcore.omero.annotated.image_strokes`: polygons, rectangles and ellipses filled, lines and
polylines as wide as drawn, points as small disks, masks as they are), reads only the regions around
them at the working resolution (widened by the features' radius, so no label sits where the edge
changes its features), trains the random forest (:func:`dlcore.pixels.training.train_pixel_classifier`),
registers it in the node's trained-models registry (owned by the caller and the images' group, as
Train_Model does) and attaches its model card and feature-importance table to the images' datasets
(namespace ``dlcore/pixel-training``).

Everything is checked before any pixel is read: the ids, that the user may annotate one of the
images' datasets, the model name (a shared model's or another user's is refused), that the ROIs have
classes and that at least two classes have labels, the images' channels and pixel types, and the size
of every region to read.  Images of the selection without ROIs are left out with a note.

Parse mode imports this module (the script's parameters are declared here), so it imports nothing
heavy at module level.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import omero.scripts as scripts
from omero.rtypes import rstring

from dlcore.errors import InputError, ParameterError
from dlcore.omero.scripts import pixel_size_param, script_body
from dlcore.omero.trained_models import image_label

log = logging.getLogger(__name__)

NS_PIXEL_TRAINING = "dlcore/pixel-training"
CLASS_SOURCES = {"ROI name": "roi_name", "ROI comment": "roi_comment", "ROI tag": "roi_tag"}
COLOURS = ("raw", "od", "hed")
DEFAULT_SCALES = "0.7,1.6,3.5,5"
#: Most working pixels in one region read around ROIs: the features of a region are held in memory
#: whole (float32, one plane per feature: 96 planes for RGB with the defaults, 1.5 GB at this size).
MAX_REGION_PIXELS = 4_000_000
MPP_TOLERANCE = 0.05


# -- the script's parameters ---------------------------------------------------------------------
def pixel_training_params(grouping: int) -> list:
    """Class source, classes, the model's name and description, features, forest, hold-out, resolution."""
    from dlcore.pixels.features import FEATURES
    from dlcore.pixels.forest import ForestSettings

    g = grouping
    return [
        scripts.String("Class_Source", optional=False, grouping=f"{g}", default="ROI name",
                       values=[rstring(c) for c in CLASS_SOURCES],
                       description="Where each ROI's class is read: its name (else its shapes' text), each shape's "
                                   "comment (text), or a tag on the ROI"),
        scripts.String("Classes", grouping=f"{g + 1}",
                       description="Class names in order, separated by commas (e.g. 'tumour, stroma, glass'); empty: "
                                   "every class found, sorted. Every class needs labels; label the background too"),
        scripts.String("Model_Name", optional=False, grouping=f"{g + 2}",
                       description="Name of the new pixel classifier: 5 to 64 letters, digits, '-' or '_' (no "
                                   "spaces); a name you used before gets a new version; a name of a shared model or "
                                   "of another user's is refused"),
        scripts.String("Model_Description", grouping=f"{g + 3}",
                       description="One line for the model card: what the classifier finds"),
        scripts.String("Scales", grouping=f"{g + 4}", default=DEFAULT_SCALES,
                       description="Feature scales: Gaussian sigmas in working pixels, separated by commas (ilastik "
                                   "offers 0.3, 0.7, 1, 1.6, 3.5, 5, 10); larger scales see more context"),
        scripts.String("Features", grouping=f"{g + 5}", default=",".join(FEATURES),
                       description="Feature kinds, separated by commas, among: " + ", ".join(FEATURES)),
        scripts.String("Colour", grouping=f"{g + 6}", default="raw", values=[rstring(c) for c in COLOURS],
                       description="Features on the raw channels, on the optical density (od) or on the "
                                   "haematoxylin/eosin/DAB stains (hed) of 8-bit RGB brightfield images"),
        scripts.Int("Trees", grouping=f"{g + 7}", default=ForestSettings().n_trees, min=1, max=500,
                    description="Trees of the random forest (more: slower to apply, rarely better beyond 32-100)"),
        scripts.Float("Holdout_Fraction", grouping=f"{g + 8}", default=0.2, min=0.0, max=0.9,
                      description="Fraction of each class's strokes left out to measure the accuracy on labels "
                                  "the forest has not seen (0: not measured; the model itself learns from all)"),
        scripts.Float("Working_Pixel_Size_um", grouping=f"{g + 9}", min=0.01,
                      description="Learn at this pixel size in µm (e.g. 1.0 for 10x); empty: the images' own pixels"),
        pixel_size_param(g + 10),
    ]


# -- reading the inputs ---------------------------------------------------------------------------
def _names(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))


def _floats(value, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _names(value))
    except ValueError:
        raise ParameterError(f"{key}={value!r} must be numbers separated by commas, e.g. {DEFAULT_SCALES}") from None


@dataclass(frozen=True)
class PixelTrainingRequest:
    """What a Train_Pixel_Classifier run is asked to do (the script's inputs, checked)."""

    name: str
    class_source: str = "roi_name"
    classes: tuple[str, ...] | None = None
    scales: tuple[float, ...] = (0.7, 1.6, 3.5, 5.0)
    features: tuple[str, ...] | None = None  # None: every feature kind
    colour: str = "raw"
    trees: int = 32
    holdout_fraction: float = 0.2
    working_mpp: float | None = None
    image_mpp: float | None = None
    description: str = ""
    max_region_pixels: int = MAX_REGION_PIXELS

    def __post_init__(self) -> None:
        from dlcore.pixels.features import FeatureSpec
        from dlcore.pixels.package import check_model_name

        check_model_name(self.name, what="Model_Name")
        if self.class_source not in CLASS_SOURCES.values():
            raise ParameterError(f"Class_Source {self.class_source!r} must be one of {', '.join(CLASS_SOURCES)}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ParameterError(f"Classes {', '.join(self.classes)}: name each class once")
        FeatureSpec(scales=self.scales, features=self.features or FeatureSpec().features, colour=self.colour)
        if not 1 <= self.trees <= 1000:
            raise ParameterError(f"Trees={self.trees} must be between 1 and 1000")
        if not 0 <= self.holdout_fraction < 1:
            raise ParameterError(f"Holdout_Fraction={self.holdout_fraction} must be at least 0 and below 1")
        for key, value in (("Working_Pixel_Size_um", self.working_mpp), ("Image_Pixel_Size_um", self.image_mpp)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ParameterError(f"{key}={value} must be a positive pixel size in µm (0.25 = 40x, 0.5 = 20x)")

    def feature_spec(self, max_value: float):
        from dlcore.pixels.features import FeatureSpec

        features = self.features or FeatureSpec().features
        return FeatureSpec(scales=self.scales, features=features, colour=self.colour, max_value=max_value)

    def as_text(self) -> str:
        return (f"class source={self.class_source}, scales={','.join(f'{s:g}' for s in self.scales)}, "
                f"features={','.join(self.features) if self.features else 'all'}, colour={self.colour}, "
                f"trees={self.trees}, holdout={self.holdout_fraction:g}, working pixel size="
                f"{self.working_mpp if self.working_mpp else 'native'}")


def request_from_inputs(inputs: dict) -> PixelTrainingRequest:
    """The :class:`PixelTrainingRequest` of a script's inputs (ParameterError naming a bad one)."""
    source = inputs.get("Class_Source") or "ROI name"
    if source not in CLASS_SOURCES and source not in CLASS_SOURCES.values():
        raise ParameterError(f"Class_Source={source!r} must be one of {', '.join(CLASS_SOURCES)}")
    colour = str(inputs.get("Colour") or "raw").strip().lower()
    if colour not in COLOURS:
        raise ParameterError(f"Colour={colour!r} must be one of {', '.join(COLOURS)}")
    trees = inputs.get("Trees")
    holdout = inputs.get("Holdout_Fraction")
    return PixelTrainingRequest(
        name=str(inputs.get("Model_Name") or "").strip(), class_source=CLASS_SOURCES.get(source, source),
        classes=_names(inputs.get("Classes")) or None,
        scales=_floats(inputs.get("Scales") or DEFAULT_SCALES, "Scales"),
        features=_names(inputs.get("Features")) or None, colour=colour, trees=int(32 if trees is None else trees),
        holdout_fraction=float(0.2 if holdout is None else holdout),
        working_mpp=inputs.get("Working_Pixel_Size_um") or None, image_mpp=inputs.get("Image_Pixel_Size_um") or None,
        description=str(inputs.get("Model_Description") or "").strip())


# -- planning: every check before a pixel is read --------------------------------------------------
@dataclass
class _PlannedImage:
    image: object  # the image wrapper
    strokes: list
    mpp: float | None  # level 0's pixel size in µm (OMERO's, else Image_Pixel_Size_um)


def _native_mpp(image) -> float | None:
    value = image.getPixelSizeX(units="MICROMETER")
    value = value.getValue() if hasattr(value, "getValue") else value
    return float(value) if value else None


def _plan(conn, images, request: PixelTrainingRequest,
          progress) -> tuple[list[_PlannedImage], tuple[str, ...], list[str]]:
    """The images with ROIs, their strokes, the classes and notes; InputError before any pixel is read."""
    from dlcore.omero.annotated import image_strokes

    planned, notes, without = [], [], []
    for index, image in enumerate(images, 1):
        strokes, image_notes = image_strokes(conn, int(image.getId()), class_source=request.class_source,
                                             classes=request.classes)
        notes += [f"{image_label(image)}: {n}" for n in image_notes]
        if strokes:
            planned.append(_PlannedImage(image, strokes, _native_mpp(image) or request.image_mpp))
        else:
            without.append(image)
        if progress:
            progress("read ROIs", index, len(images))
    if not planned:
        raise InputError(f"none of the {len(images)} selected images has ROIs to learn from"
                         + (f" ({'; '.join(notes)})" if notes else "")
                         + "; draw a few polygons, lines or points on each class (and on the background) in "
                           "OMERO.iviewer, name them with their class, and run this again")
    if without:
        names = ", ".join(f"Image:{int(i.getId())}" for i in without[:10]) + (" ..." if len(without) > 10 else "")
        notes.append(f"{len(without)} image(s) without ROIs left out ({names})")
    found = sorted({s.label for p in planned for s in p.strokes})
    if request.classes is None:
        classes = tuple(found)
    else:
        unknown = [c for c in found if c not in request.classes]
        if unknown:
            raise InputError(f"the ROIs have the classes {', '.join(map(repr, unknown))}, which are not among the "
                             f"Classes given ({', '.join(request.classes)}); add them to Classes, or rename those ROIs")
        missing = [c for c in request.classes if c not in found]
        if missing:
            raise InputError(f"class {', '.join(map(repr, missing))} has no labels: no ROI of the selected images "
                             f"is of that class; draw some, or leave it out of Classes")
        classes = tuple(request.classes)
    if len(classes) < 2:
        raise InputError(f"every ROI is of the class {classes[0]!r}; a pixel classifier needs labels of at least two "
                         "classes: label the background (and whatever else is not "
                         f"{classes[0]!r}) with ROIs of its own class")
    _check_images(planned, request)
    return planned, classes, notes


def _check_images(planned: list[_PlannedImage], request: PixelTrainingRequest) -> None:
    """One kind of image (channels, pixel type), the colour space possible, pixel sizes where needed."""
    kinds = {(int(p.image.getPrimaryPixels().getSizeC()), str(p.image.getPixelsType())) for p in planned}
    if len(kinds) > 1:
        raise InputError("the annotated images differ in channels or pixel type ("
                         + "; ".join(f"{c} channels of {t}" for c, t in sorted(kinds))
                         + "); a classifier learns one kind of image: select images of one kind")
    [(channels, pixels_type)] = kinds
    if request.colour in ("od", "hed") and (channels != 3 or pixels_type != "uint8"):
        raise ParameterError(f"Colour={request.colour} needs 8-bit RGB brightfield images, but the images have "
                             f"{channels} channels of {pixels_type}; choose Colour=raw")
    if request.working_mpp:
        unknown = [p for p in planned if p.mpp is None]
        if unknown:
            raise InputError(f"{', '.join(image_label(p.image) for p in unknown[:5])} has no pixel size, so it cannot be "
                             f"read at Working_Pixel_Size_um={request.working_mpp}; give it with Image_Pixel_Size_um "
                             "(0.25 = 40x, 0.5 = 20x), or leave Working_Pixel_Size_um empty")
    else:
        sizes = sorted({round(p.mpp, 4) for p in planned if p.mpp})
        if sizes and sizes[-1] > sizes[0] * (1 + MPP_TOLERANCE):
            raise InputError(f"the annotated images have different pixel sizes ({', '.join(f'{s:g}' for s in sizes)} "
                             "µm); set Working_Pixel_Size_um so that they are all read alike (e.g. "
                             f"{sizes[-1]:g})")


def _clusters(strokes, margin_level0: float) -> list[list]:
    """The strokes grouped into regions: those whose boxes (widened by the margin) overlap, together."""
    from dlcore.omero.annotated import merge_boxes
    from dlcore.pixels.scribbles import bounding_box

    boxes = [bounding_box([s], margin_level0) for s in strokes]
    return [[strokes[i] for i in members] for _, members in merge_boxes(boxes)]


def _regions(slide, strokes, request, margin: int):
    """The plan of one slide: the resolution, and each region's strokes and working-pixel box."""
    from dlcore.io.slide import plan_resolution
    from dlcore.pixels.scribbles import bounding_box

    plan = plan_resolution(slide.info, request.working_mpp)
    w, h = plan.working_size(slide.info)
    out = []
    for group in _clusters(strokes, margin * plan.factor):
        x0, y0, x1, y1 = bounding_box([s.scaled(plan.factor) for s in group], margin)
        box = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
        out.append((group, box))
    return plan, out


# -- the workflow ---------------------------------------------------------------------------------
def _read_training_images(conn, planned, classes, request, margin, progress):
    """Every region around the ROIs at the working resolution, as LabelledImages (region sizes checked
    on every image before the first pixel is read)."""
    from dlcore.io.slide import with_mpp
    from dlcore.omero.slide import OmeroSlide
    from dlcore.pixels.local_data import read_region_strokes

    slides = []
    try:
        for p in planned:
            slide = OmeroSlide(conn, p.image)
            slides.append(slide)
            if slide.info.mpp is None and request.image_mpp:
                slide.info = with_mpp(slide.info, request.image_mpp)
        plans = []
        for p, slide in zip(planned, slides):
            plan, regions = _regions(slide, p.strokes, request, margin)
            for _, (x0, y0, x1, y1) in regions:
                if x1 <= x0 or y1 <= y0:
                    raise InputError(f"{image_label(p.image)}: some ROIs lie outside the image; move or delete them")
                if (x1 - x0) * (y1 - y0) > request.max_region_pixels:
                    raise InputError(
                        f"{image_label(p.image)}: ROIs cover a region of {x1 - x0}x{y1 - y0} working pixels, more than "
                        f"{request.max_region_pixels} at once; a pixel classifier learns from scribbles: draw "
                        "smaller shapes or lines inside each class, or set a coarser Working_Pixel_Size_um")
            plans.append(regions)
        out, conflicting, total = [], 0, sum(len(r) for r in plans)
        for p, slide, regions in zip(planned, slides, plans):
            for k, (group, box) in enumerate(regions, 1):
                name = f"{image_label(p.image)} region {k} (x={box[0]}, y={box[1]})"
                labelled, clashes = read_region_strokes(slide, group, classes, mpp=request.working_mpp, margin=margin,
                                                        name=name)
                out.append(labelled)
                conflicting += clashes
                if progress:
                    progress("read regions", len(out), total)
        channel_names = tuple(slides[0].info.channels)
        return out, conflicting, channel_names
    finally:
        for slide in slides:
            slide.close()


def _provenance(planned, request: PixelTrainingRequest, n_regions: int) -> str:
    where = ", ".join(image_label(p.image) for p in planned[:20])
    more = f" and {len(planned) - 20} more" if len(planned) > 20 else ""
    return (f"OMERO images {where}{more}: {sum(len(p.strokes) for p in planned)} ROI shapes "
            f"({request.class_source.replace('_', ' ')} = class) in {n_regions} regions read at "
            f"{f'{request.working_mpp} µm/px' if request.working_mpp else 'the images own pixels'}")


def train_pixels_on_objects(conn, data_type: str, ids, request: PixelTrainingRequest, *, config=None,
                            progress=None) -> dict:
    """Train a pixel classifier on the ROIs of the selected OMERO images, register it, attach its card.

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    data_type, ids
        The selection (``"Image"``, ``"Dataset"`` or ``"Project"`` ids).
    request
        The model's name and settings (:class:`PixelTrainingRequest`).
    config
        dlcore's configuration (default :func:`~dlcore.config.load_config`): the model goes into
        ``trained_models_dir`` (else ``models_dir``), with ``owner.json`` naming the caller and the
        first object's group (:mod:`dlcore.models.ownership`).
    progress
        ``(stage, done, total)`` callback.

    Returns
    -------
    dict with ``trained`` (:class:`~dlcore.pixels.training.TrainedPixelClassifier`), ``folder`` (the
    package), ``version``, ``attached`` (file name -> FileAnnotation id), ``datasets`` (ids),
    ``images`` (how many were used), ``regions``, ``classes``, ``conflicting`` (pixels two classes
    claimed, left unlabelled) and ``notes``.

    Raises
    ------
    DlcoreError
        Bad ids or settings, nowhere to attach the card, a name the caller may not use, no ROIs, ROIs
        without a class, fewer than two classes or a class without labels, mixed kinds of images or
        regions too large: all before any pixel is read, and nothing is written.  A failure to attach
        removes the registered package again.
    """
    from dlcore.config import load_config
    from dlcore.omero.model_access import owner_for_training
    from dlcore.omero.trained_models import new_model_key
    from dlcore.omero.training import report_datasets
    from dlcore.omero.workflows import resolve_images
    from dlcore.pixels.features import full_scale
    from dlcore.pixels.forest import ForestSettings
    from dlcore.pixels.package import IMPORTANCE_FILE, register_pixel_classifier
    from dlcore.pixels.training import PixelTrainingOptions, train_pixel_classifier
    from dlcore.train.registry_io import read_rdf

    config = config or load_config()
    key = new_model_key(conn, request.name, config)
    images = resolve_images(conn, data_type, ids)
    datasets = report_datasets(images)  # where the card goes, checked before any pixel is read
    owner = owner_for_training(conn, data_type, list(ids))
    planned, classes, notes = _plan(conn, images, request, progress)
    spec = request.feature_spec(full_scale(str(planned[0].image.getPixelsType())))
    margin = spec.radius()
    labelled, conflicting, channel_names = _read_training_images(conn, planned, classes, request, margin, progress)
    if conflicting:
        notes.append(f"{conflicting} pixels claimed by ROIs of two classes were left unlabelled")
    options = PixelTrainingOptions(features=spec, forest=ForestSettings(n_trees=request.trees),
                                   holdout_fraction=request.holdout_fraction)
    trained = train_pixel_classifier(labelled, classes, options=options, channel_names=channel_names,
                                     progress=progress)
    mpp = request.working_mpp or next((p.mpp for p in planned if p.mpp), None)
    example = max(labelled, key=lambda im: int((im.labels > 0).sum())).image
    reproduce = (f"OMERO Deep Learning > Train Pixel Classifier: Data_Type={data_type}, "
                 f"IDs={','.join(map(str, ids))}, classes={','.join(classes)}, {request.as_text()}")
    folder = register_pixel_classifier(trained, config.trained_dir, name=key, example=example, mpp=mpp, owner=owner,
                                       description=request.description,
                                       training_data=_provenance(planned, request, len(labelled)), reproduce=reproduce)
    version = str(read_rdf(folder).get("version", ""))
    attached = _attach(conn, folder, key, version, classes, datasets, IMPORTANCE_FILE, config)
    return {"trained": trained, "folder": folder, "version": version, "attached": attached,
            "datasets": [int(d.getId()) for d in datasets], "images": len(planned), "regions": len(labelled),
            "classes": classes, "conflicting": conflicting, "notes": notes}


def _attach(conn, folder, name: str, version: str, classes, datasets, importance_file: str, config) -> dict[str, int]:
    """The model card and feature importances, named after the model and version, on every dataset (the
    registered package is removed again when that fails)."""
    from dlcore.omero.trained_models import attached_or_removed, copy_as
    from dlcore.omero.training import attach_files

    with attached_or_removed(folder, config) as scratch:
        card = copy_as(folder / "README.md", scratch, f"{name}-{version}-model-card.md")
        table = copy_as(folder / importance_file, scratch, f"{name}-{version}-feature-importance.csv")
        return attach_files(conn, [
            (card, "text/markdown", f"model card of pixel classifier {folder.name} {version} (classes "
                                    f"{', '.join(classes)}): training labels, held-out accuracy, limits"),
            (table, "text/csv", f"feature importances of pixel classifier {folder.name} {version} (mean decrease "
                                "in impurity per feature)"),
        ], datasets, NS_PIXEL_TRAINING)


# -- the script body ------------------------------------------------------------------------------
def _figure(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_lines(out: dict) -> list[str]:
    """The Message of a finished training: what was learnt, how well, where the card is, what to do next."""
    trained, folder = out["trained"], out["folder"]
    m = trained.metrics
    held = m.get("heldout_strokes")
    lines = [f"✓ Trained pixel classifier {folder.name} version {out['version']} (classes "
             f"{', '.join(out['classes'])}) on {out['regions']} regions of {out['images']} images.",
             "  labels: " + ", ".join(f"{c} {v['pixels']} px in {v['strokes']} strokes"
                                      for c, v in trained.label_counts.items()),
             f"  out-of-bag accuracy {_figure(m.get('oob_accuracy'))} (optimistic: pixels of one stroke look alike)"]
    if held:
        lines.append(f"  held-out strokes ({held['strokes_held_out']} strokes never seen in training): accuracy "
                     f"{_figure(held['accuracy'])}, balanced accuracy {_figure(held['balanced_accuracy'])}")
    else:
        lines.append("  held-out strokes: not measured (every class needs at least two separate strokes, and "
                     "Holdout_Fraction above 0)")
    lines.append("  top features: " + ", ".join(f"{n} {v:.3f}" for n, v in trained.importance[:5]))
    where = ", ".join(map(str, out["datasets"]))
    lines.append(f"  model card and feature importances attached to Dataset {where} (FileAnnotation "
                 f"{', '.join(map(str, out['attached'].values()))})")
    lines.append(f"  Run Model lists it now as {folder.name}: run it on your slides and check the class map")
    lines += [f"  ! {w}" for w in trained.warnings]
    lines += [f"  note: {n}" for n in out["notes"]]
    return lines


def train_pixels_script(script_client, *, conn=None, config=None) -> str:
    """The body of Train_Pixel_Classifier: train, register, attach the card, set ``Message`` and ``Model_Card``."""

    def work(conn, inputs) -> str:
        from omero.model import FileAnnotationI
        from omero.rtypes import robject

        from dlcore.progress import LineProgress

        request = request_from_inputs(inputs)
        out = train_pixels_on_objects(conn, inputs.get("Data_Type", "Image"), list(inputs.get("IDs") or []), request,
                                      config=config, progress=LineProgress())
        card_id = next(iter(out["attached"].values()))
        script_client.setOutput("Model_Card", robject(FileAnnotationI(card_id, False)))
        return "\n".join(summary_lines(out))

    return script_body(script_client, work, conn=conn)


__all__ = ["pixel_training_params", "PixelTrainingRequest", "request_from_inputs", "train_pixels_on_objects",
           "train_pixels_script", "summary_lines", "NS_PIXEL_TRAINING"]
