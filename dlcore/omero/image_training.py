"""Prediction models trained on OMERO images: the call behind Deep Learning > Train Image Model.

:func:`train_image_model_on_objects` reads the training images from OMERO and hands them to the same
training and packaging as ``dlcore train DATASET --task n2v|care|translate``
(:func:`dlcore.restore.training.train_image_model`, :func:`dlcore.restore.metrics.evaluate`,
:func:`dlcore.restore.package.register_image_model`):

- ``n2v`` (Noise2Void): the selected images (or those of the selected Datasets or Projects) are the
  noisy training images; ``Source_Channels`` picks channels (default: all);
- ``care`` and ``translate``: pairs, by one of two rules common in OMERO practice:

  * two datasets, ``Source_Dataset`` and ``Target_Dataset`` (a name or an ID among the selection's
    datasets), their images matched by name (file extensions ignored: ``field01.tif`` pairs with
    ``field01.ome.tiff``), the images of a pair of the same size;
  * one multi-channel image per field, ``Source_Channels`` and ``Target_Channels`` given by name or
    index (e.g. brightfield -> a fluorescence channel).

  With two datasets, ``Source_Channels`` / ``Target_Channels`` may also pick channels of each side.

From every image (pair) a bounded region is read at ``Resolution_Level`` (native pixels: resampling
would change the noise a restoration model learns): each rectangle ROI drawn on it (on the source
image, else on the target), else a central crop of at most ``Max_Megapixels``.  Memory stays bounded
whatever the images' size, and the regions' total is capped.

Everything is checked before any pixel is read: the model's name (a shared model's or another
user's is refused), the options (loss for the mode, patch size), the ids, that the user may annotate
a dataset of the images (the card goes there), the pairing (unmatched names, sizes that differ), the
channels, pixel types (one type for the inputs: the model records it), the levels, the regions'
sizes (at least one patch, at most the cap) and that the split can hold data out (two regions, or
one wide enough for vertical strips).  The model is registered in the node's trained-models folder
with ``owner.json`` (Run_Model lists it at once), its card and QC report are attached to the images'
datasets (namespace ``dlcore/image-training``), and a failed attachment removes the package again.

Parse mode imports this module (the script's parameters are declared here), so nothing heavy is
imported at module level.
"""
from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field

import omero.scripts as scripts
from omero.rtypes import rstring

from dlcore.errors import InputError, OmeroError, ParameterError
from dlcore.omero.scripts import parse_parameters, pixel_size_param, script_body
from dlcore.omero.trained_models import image_label

log = logging.getLogger(__name__)

NS_IMAGE_TRAINING = "dlcore/image-training"
MODES = ("n2v", "care", "translate")
MODE_DEFAULT_LOSS = "mode default"
DEFAULT_MEGAPIXELS = 4.0
#: Most pixel values (pixels x source and target channels) of all regions together: each is held as
#: read and as normalised float32, so this bounds the training data to about 1 GB.
MAX_TOTAL_VALUES = 120_000_000
#: Seconds kept after training for the package (torchscript export, validation) and the attachments.
TIME_RESERVE_S = 240.0
#: :class:`~dlcore.restore.training.ImageTrainingOptions` fields set through ``Training_Parameters``.
ADVANCED = ("steps_per_epoch", "batch_size", "lr", "channels", "norm", "final_activation", "target_normalization",
            "val_fraction", "test_fraction", "patience", "seed", "threads", "augment", "mask_fraction",
            "mask_neighbourhood", "val_crop", "max_seconds")
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".png", ".jpg", ".jpeg", ".czi", ".nd2",
                  ".lif", ".lsm", ".ims", ".oib", ".oir", ".dv", ".zvi", ".vsi", ".svs", ".ndpi", ".scn", ".mrxs")


# -- the script's parameters ---------------------------------------------------------------------
def image_training_params(grouping: int) -> list:
    """Mode, pairing, the model's name and description, the regions read, training settings."""
    from dlcore.restore.losses import LOSSES
    from dlcore.restore.training import ImageTrainingOptions

    defaults = ImageTrainingOptions()
    g = grouping
    return [
        scripts.String("Mode", optional=False, grouping=f"{g}", default="n2v", values=[rstring(m) for m in MODES],
                       description="n2v: Noise2Void denoising, learnt from the noisy images alone; care: restoration "
                                   "learnt from pairs of low and high quality acquisitions of the same field; "
                                   "translate: one image predicted from another (e.g. brightfield -> a fluorescence "
                                   "channel, H&E -> an IHC marker)"),
        scripts.String("Source_Dataset", grouping=f"{g + 1}",
                       description="care/translate, pairs from two datasets: the dataset of the input images (low "
                                   "quality, or the source modality), by name or ID, among the selected datasets "
                                   "(or the selected project's, or the selected images')"),
        scripts.String("Target_Dataset", grouping=f"{g + 2}",
                       description="care/translate, pairs from two datasets: the dataset of the images to predict; "
                                   "its images pair with the Source_Dataset's by name (extensions ignored) and "
                                   "must be of the same size"),
        scripts.String("Source_Channels", grouping=f"{g + 3}",
                       description="The input channels, by name or index (0 = first), separated by commas, e.g. "
                                   "'Brightfield' or '0'; empty: every channel (n2v, and pairs from two datasets)"),
        scripts.String("Target_Channels", grouping=f"{g + 4}",
                       description="care/translate: the channels to predict, e.g. 'GFP'. Without datasets, source "
                                   "and target are channels of each selected image (one field per image)"),
        scripts.String("Model_Name", optional=False, grouping=f"{g + 5}",
                       description="Name of the new model: 5 to 64 letters, digits, '-' or '_' (no spaces); a name "
                                   "you used before gets a new version; a name of a shared model or of another "
                                   "user's is refused"),
        scripts.String("Model_Description", grouping=f"{g + 6}",
                       description="One line for the model card: what the model restores or predicts, from what"),
        scripts.Int("Epochs", grouping=f"{g + 7}", default=defaults.epochs, min=1,
                    description="Most training epochs (training stops early when validation stops improving, and "
                                "before the script's time limit)"),
        scripts.Int("Patch_Size", grouping=f"{g + 8}", default=defaults.patch_size, min=16,
                    description="Side of the training patches in pixels (a multiple of 4 with the default network; "
                                "every region read must hold one)"),
        scripts.String("Loss", grouping=f"{g + 9}", default=MODE_DEFAULT_LOSS,
                       values=[rstring(v) for v in (MODE_DEFAULT_LOSS, *LOSSES)],
                       description="Training loss; mode default: n2v mse, care l1, translate l1+ssim (n2v takes "
                                   "mse or l1 only)"),
        scripts.Int("Resolution_Level", grouping=f"{g + 10}", default=0, min=0,
                    description="Pyramid level read: 0 = full resolution, 1 = the next smaller, ... (native "
                                "pixels: the model runs at this level's pixel size)"),
        scripts.Float("Max_Megapixels", grouping=f"{g + 11}", default=DEFAULT_MEGAPIXELS, min=0.01,
                      description="Most pixels read per image, in millions: each rectangle ROI on an image is a "
                                  "training region, else its central crop of at most this size"),
        scripts.String("Training_Parameters", grouping=f"{g + 12}",
                       description="Advanced, as name=value separated by commas, e.g. 'batch_size=8, lr=0.0005'. "
                                   f"Names: {', '.join(ADVANCED)}"),
        pixel_size_param(g + 13),
    ]


# -- reading the inputs ---------------------------------------------------------------------------
def _names(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _text(value) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


@dataclass(frozen=True)
class ImageTrainingRequest:
    """What a Train_Image_Model run is asked to do (the script's inputs, checked).

    Attributes
    ----------
    name, description : the new model's name and one line for its card.
    mode : ``n2v``, ``care`` or ``translate``.
    source_dataset, target_dataset : pairs from two datasets (a name or an ID each), or None.
    source_channels, target_channels : channel names or indices (empty: every channel).
    options : the :class:`~dlcore.restore.training.ImageTrainingOptions`.
    level : the resolution level read (0 = full resolution).
    max_megapixels : most pixels read per image (a rectangle ROI larger than this is refused).
    image_mpp : level 0's pixel size in µm for images that have none.
    """

    name: str
    mode: str = "n2v"
    source_dataset: str | None = None
    target_dataset: str | None = None
    source_channels: tuple[str, ...] = ()
    target_channels: tuple[str, ...] = ()
    options: object = None
    level: int = 0
    max_megapixels: float = DEFAULT_MEGAPIXELS
    image_mpp: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        from dlcore.restore.losses import check_loss
        from dlcore.restore.package import check_model_name
        from dlcore.restore.training import ImageTrainingOptions

        check_model_name(self.name, what="Model_Name")
        if self.mode not in MODES:
            raise ParameterError(f"Mode={self.mode!r} must be one of {', '.join(MODES)}")
        if self.options is None:
            object.__setattr__(self, "options", ImageTrainingOptions())
        check_loss(self.options.loss, self.mode)
        datasets = (self.source_dataset, self.target_dataset)
        if self.mode == "n2v":
            if any(datasets) or self.target_channels:
                raise ParameterError("Mode=n2v learns from the noisy images alone: leave Source_Dataset, Target_Dataset "
                                     "and Target_Channels empty (Source_Channels may pick the channels to denoise), "
                                     "or choose Mode=care or translate for pairs")
        elif any(datasets) and not all(datasets):
            raise ParameterError(f"Mode={self.mode} with pairs from two datasets needs both Source_Dataset and "
                                 "Target_Dataset")
        elif not any(datasets) and not (self.source_channels and self.target_channels):
            raise ParameterError(f"Mode={self.mode} learns from pairs: give Source_Dataset and Target_Dataset (images "
                                 "matched by name), or Source_Channels and Target_Channels (one multi-channel image "
                                 "per field, e.g. Source_Channels=Brightfield, Target_Channels=GFP)")
        if all(datasets) and self.source_dataset == self.target_dataset:
            raise ParameterError(f"Source_Dataset and Target_Dataset are both {self.source_dataset!r}; pairs come "
                                 "from two datasets (or give channels of one image instead)")
        for key, names in (("Source_Channels", self.source_channels), ("Target_Channels", self.target_channels)):
            if len(set(names)) != len(names):
                raise ParameterError(f"{key}={', '.join(names)}: name each channel once")
        if self.pairing == "channels":
            both = sorted(set(self.source_channels) & set(self.target_channels))
            if both:
                raise ParameterError(f"channel {', '.join(both)} is both in Source_Channels and Target_Channels; a "
                                     "model predicts other channels than it sees")
        if self.level < 0:
            raise ParameterError(f"Resolution_Level={self.level} must be 0 (full resolution) or more")
        if not (self.max_megapixels > 0 and math.isfinite(self.max_megapixels)):
            raise ParameterError(f"Max_Megapixels={self.max_megapixels} must be a positive number of megapixels")
        if self.image_mpp is not None and not (self.image_mpp > 0 and math.isfinite(self.image_mpp)):
            raise ParameterError(f"Image_Pixel_Size_um={self.image_mpp} must be a positive pixel size in µm")

    @property
    def pairing(self) -> str:
        """``none`` (Noise2Void), ``datasets`` or ``channels``."""
        if self.mode == "n2v":
            return "none"
        return "datasets" if self.source_dataset else "channels"

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    def as_text(self) -> str:
        o = self.options
        pairs = {"none": "", "datasets": f"source dataset {self.source_dataset}, target dataset {self.target_dataset}, ",
                 "channels": ""}[self.pairing]
        return (f"mode={self.mode}, {pairs}source channels={','.join(self.source_channels) or 'all'}, target channels="
                f"{','.join(self.target_channels) or ('all' if self.mode != 'n2v' else '-')}, level={self.level}, "
                f"max {self.max_megapixels:g} Mpx per image, epochs={o.epochs}, patch={o.patch_size}, "
                f"loss={o.loss or 'default'}")


def training_options(inputs: dict):
    """The :class:`~dlcore.restore.training.ImageTrainingOptions` of a script's inputs."""
    from dlcore.restore.training import ImageTrainingOptions

    values = parse_parameters(inputs.get("Training_Parameters"), input_name="Training_Parameters")
    unknown = sorted(set(values) - set(ADVANCED))
    if unknown:
        raise ParameterError(f"Training_Parameters: {', '.join(unknown)} unknown; use {', '.join(ADVANCED)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    loss = _text(inputs.get("Loss"))
    defaults = ImageTrainingOptions()
    epochs, patch = inputs.get("Epochs"), inputs.get("Patch_Size")
    return ImageTrainingOptions(epochs=int(defaults.epochs if epochs is None else epochs),
                                patch_size=int(defaults.patch_size if patch is None else patch),
                                loss=None if loss in (None, MODE_DEFAULT_LOSS) else loss, **values)


def request_from_inputs(inputs: dict) -> ImageTrainingRequest:
    """The :class:`ImageTrainingRequest` of a script's inputs (ParameterError naming a bad one)."""
    level, megapixels = inputs.get("Resolution_Level"), inputs.get("Max_Megapixels")
    return ImageTrainingRequest(
        name=str(inputs.get("Model_Name") or "").strip(), mode=str(inputs.get("Mode") or "n2v").strip().lower(),
        source_dataset=_text(inputs.get("Source_Dataset")), target_dataset=_text(inputs.get("Target_Dataset")),
        source_channels=_names(inputs.get("Source_Channels")), target_channels=_names(inputs.get("Target_Channels")),
        options=training_options(inputs), level=int(level or 0),
        max_megapixels=float(DEFAULT_MEGAPIXELS if megapixels is None else megapixels),
        image_mpp=inputs.get("Image_Pixel_Size_um") or None, description=str(inputs.get("Model_Description") or "").strip())


# -- pairing --------------------------------------------------------------------------------------
def image_stem(name: str) -> str:
    """An image's name without its file extension (``field01.ome.tif`` -> ``field01``), for pairing."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _dataset_label(dataset) -> str:
    return f"Dataset:{int(dataset.getId())} {dataset.getName()!r}"


def _scope_datasets(conn, data_type: str, ids, images) -> list:
    """The datasets the pairing names may refer to: the selected ones, the selected projects', or the
    selected images'."""
    found: dict[int, object] = {}
    if data_type == "Dataset":
        candidates = [conn.getObject("Dataset", int(i)) for i in ids]
    elif data_type == "Project":
        candidates = [d for i in ids for d in conn.getObject("Project", int(i)).listChildren()]
    else:
        candidates = [p for image in images for p in image.listParents() if p.OMERO_CLASS == "Dataset"]
    for dataset in candidates:
        if dataset is not None:
            found.setdefault(int(dataset.getId()), dataset)
    return list(found.values())


def _find_dataset(scope: list, wanted: str, key: str):
    by_id = [d for d in scope if wanted.isdigit() and int(d.getId()) == int(wanted)]
    by_name = by_id or [d for d in scope if d.getName() == wanted] or \
        [d for d in scope if d.getName().casefold() == wanted.casefold()]
    if len(by_name) == 1:
        return by_name[0]
    available = ", ".join(_dataset_label(d) for d in scope[:12]) or "none"
    if by_name:
        named = ", ".join(_dataset_label(d) for d in by_name)
        raise InputError(f"{key}={wanted!r} names {len(by_name)} datasets ({named}); give its ID instead")
    raise InputError(f"{key}={wanted!r} is none of the selection's datasets ({available}); give the name or the ID of "
                     "one of them, or select the datasets (or their project)")


def _by_stem(images, dataset) -> dict:
    out: dict[str, object] = {}
    for image in images:
        stem = image_stem(image.getName())
        if stem in out:
            raise InputError(f"{_dataset_label(dataset)} has two images named {stem!r} ({image_label(out[stem])}, "
                             f"{image_label(image)}); pairs are matched by name: rename one")
        out[stem] = image
    return out


def dataset_pairs(conn, data_type: str, ids, images, request: ImageTrainingRequest) -> list[tuple[object, object]]:
    """``(source image, target image)`` pairs of the Source_Dataset and the Target_Dataset, matched by
    name; InputError naming every image without a partner."""
    from dlcore.omero.workflows import resolve_images

    scope = _scope_datasets(conn, data_type, ids, images)
    source = _find_dataset(scope, request.source_dataset, "Source_Dataset")
    target = _find_dataset(scope, request.target_dataset, "Target_Dataset")
    if int(source.getId()) == int(target.getId()):
        raise ParameterError(f"Source_Dataset and Target_Dataset are both {_dataset_label(source)}; pairs come from "
                             "two datasets")
    sources = _by_stem(resolve_images(conn, "Dataset", [int(source.getId())], skip_training_renderings=True), source)
    targets = _by_stem(resolve_images(conn, "Dataset", [int(target.getId())], skip_training_renderings=True), target)
    lonely = [image_label(sources[s]) for s in sources if s not in targets]
    unmatched = [image_label(targets[s]) for s in targets if s not in sources]
    if lonely or unmatched:
        parts = []
        if lonely:
            parts.append(f"{', '.join(lonely[:10])} in {_dataset_label(source)} ha{'s' if len(lonely) == 1 else 've'} "
                         f"no partner in {_dataset_label(target)}")
        if unmatched:
            parts.append(f"{', '.join(unmatched[:10])} in {_dataset_label(target)} ha"
                         f"{'s' if len(unmatched) == 1 else 've'} no partner in {_dataset_label(source)}")
        raise InputError("unpaired images: " + "; ".join(parts) + " (pairs share their name, file extensions "
                         "ignored: field01.tif + field01.ome.tiff); rename them, or move the lonely ones out")
    return [(sources[s], targets[s]) for s in sorted(sources)]


# -- planning: every check before a pixel is read --------------------------------------------------
@dataclass(frozen=True)
class PlannedRegion:
    """One training image as planned: where it is read and which channels are source and target.

    ``target`` is None for Noise2Void and the source image itself for pairs of channels; ``box`` is
    ``(x, y, width, height)`` at ``level``.
    """

    name: str
    source: object = field(repr=False)
    target: object | None = field(repr=False)
    source_channels: tuple[int, ...]
    target_channels: tuple[int, ...]
    level: int
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class TrainingPlan:
    """What :func:`plan_regions` found: the regions, the pixel size they are read at (µm, or None), the
    names of the source and target channels (those of the first image), how many channels the first
    source image has, and notes for the Message."""

    regions: list[PlannedRegion]
    mpp: float | None
    source_names: tuple[str, ...]
    target_names: tuple[str, ...]
    image_channels: int
    notes: list[str]


def _describe(conn, image, image_mpp):
    """The image's SlideInfo (levels, channels, pixel type, pixel size), without reading a pixel."""
    from dlcore.io.slide import with_mpp
    from dlcore.omero.slide import OmeroSlide

    with OmeroSlide(conn, image) as slide:
        info = slide.info
    if info.mpp is None and image_mpp:
        info = with_mpp(info, image_mpp)
    return info


def channel_indices(info, wanted: tuple[str, ...], label: str, key: str) -> tuple[int, ...]:
    """The indices of the channels ``wanted`` (names, else indices; empty: all) in an image."""
    if not wanted:
        return tuple(range(len(info.channels)))
    out = []
    for token in wanted:
        folded = [i for i, c in enumerate(info.channels) if c.casefold() == token.casefold()]
        if token in info.channels:
            out.append(info.channels.index(token))
        elif len(folded) == 1:
            out.append(folded[0])
        elif token.isdigit() and int(token) < len(info.channels):
            out.append(int(token))
        else:
            channels = ", ".join(f"{i} {c}" for i, c in enumerate(info.channels))
            raise InputError(f"{label} has no channel {token!r} ({key}); its channels: {channels}. Give channel names "
                             "or indices (0 = first)")
    if len(set(out)) != len(out):
        raise ParameterError(f"{key}={', '.join(wanted)} names one channel of {label} twice")
    return tuple(out)


def _rectangles(conn, image) -> list[tuple[int, tuple[float, float, float, float]]]:
    """``(roi id, (x0, y0, x1, y1))`` of the rectangles drawn on an image (level 0; dlcore's results skipped)."""
    from dlcore.omero.annotated import AnnotationOptions, read_rois

    rois, _ = read_rois(conn, int(image.getId()), AnnotationOptions("semantic"))
    return [(r.roi_id, s.bbox) for r in rois for s in r.shapes if s.kind == "Rectangle"]


def _central_box(width: int, height: int, max_pixels: int) -> tuple[int, int, int, int]:
    """The central crop of a ``width`` x ``height`` level holding at most ``max_pixels`` (square when it can be)."""
    if width * height <= max_pixels:
        return 0, 0, width, height
    side = int(math.isqrt(max_pixels))
    w, h = min(width, side), min(height, side)
    if w < side:
        h = min(height, max_pixels // w)
    elif h < side:
        w = min(width, max_pixels // h)
    return (width - w) // 2, (height - h) // 2, w, h


def _boxes(conn, source, target, info, request: ImageTrainingRequest, label: str) -> list[tuple[str, tuple]]:
    """``(what, box)`` of the regions read from one image (pair): its rectangle ROIs, else a central crop."""
    rects = _rectangles(conn, source)
    if not rects and target is not None and target is not source:
        rects = _rectangles(conn, target)
    level = info.levels[request.level]
    if not rects:
        box = _central_box(level.width, level.height, request.max_pixels)
        whole = box[2:] == (level.width, level.height)
        return [("" if whole else f" centre {box[2]}x{box[3]}", box)]
    out, d = [], level.downsample
    for roi_id, (x0, y0, x1, y1) in rects:
        bx0, by0 = max(0, int(round(x0 / d))), max(0, int(round(y0 / d)))
        bx1, by1 = min(level.width, int(round(x1 / d))), min(level.height, int(round(y1 / d)))
        if bx1 <= bx0 or by1 <= by0:
            raise InputError(f"{label}: the rectangle of ROI {roi_id} lies outside the image; move or delete it")
        box = (bx0, by0, bx1 - bx0, by1 - by0)
        if box[2] * box[3] > request.max_pixels:
            raise InputError(f"{label}: the rectangle of ROI {roi_id} covers {box[2]}x{box[3]} pixels at level "
                             f"{request.level}, more than Max_Megapixels={request.max_megapixels:g}; draw a smaller "
                             "rectangle, raise Max_Megapixels, or choose a coarser Resolution_Level")
        out.append((f" ROI {roi_id}", box))
    for i, (what_a, a) in enumerate(out):
        for what_b, b in out[i + 1:]:
            if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]:
                raise InputError(f"{label}: the rectangles of{what_a} and{what_b} overlap, so held-out pixels "
                                 "could be trained on; draw rectangles that do not overlap")
    return out


def _same(kinds: dict, what: str, fix: str) -> None:
    """InputError when the images differ in ``what`` (``kinds``: value -> image labels)."""
    if len(kinds) > 1:
        raise InputError(f"the {what} differ (" + "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in kinds.items())
                         + f"); {fix}")


def plan_regions(conn, pairs: list[tuple[object, object | None]], request: ImageTrainingRequest,
                 progress=None) -> TrainingPlan:
    """The :class:`TrainingPlan` of the images; InputError or ParameterError (naming the image) before
    any pixel is read.

    ``pairs`` are ``(source, target)`` images: target None for Noise2Void, the source itself for
    pairs of channels.
    """
    from dlcore.io.slide import level_mpp

    planned, notes, types, counts, mpps = [], [], {}, {}, {}
    first = None  # the first image's (source names, target names, channel count): the model's channel names
    patch = request.options.patch_size
    for index, (source, target) in enumerate(pairs, 1):
        label = image_label(source) if target is None or target is source else \
            f"{image_label(source)} + {image_label(target)}"
        info = _describe(conn, source, request.image_mpp)
        if not request.level < len(info.levels):
            raise InputError(f"{image_label(source)} has resolution levels 0..{len(info.levels) - 1}; choose "
                             f"Resolution_Level {len(info.levels) - 1} or less")
        src = channel_indices(info, request.source_channels, image_label(source), "Source_Channels")
        if target is None:
            tgt, tinfo = (), None
        elif target is source:
            tinfo = info
            tgt = channel_indices(info, request.target_channels, image_label(source), "Target_Channels")
            if set(src) & set(tgt):
                raise InputError(f"{image_label(source)}: Source_Channels and Target_Channels name the same channel "
                                 f"{', '.join(info.channels[i] for i in sorted(set(src) & set(tgt)))}")
        else:
            tinfo = _describe(conn, target, request.image_mpp)
            if (tinfo.levels[0].width, tinfo.levels[0].height) != (info.levels[0].width, info.levels[0].height):
                raise InputError(f"{image_label(source)} is {info.levels[0].width}x{info.levels[0].height} but its "
                                 f"partner {image_label(target)} is {tinfo.levels[0].width}x{tinfo.levels[0].height}: "
                                 "the images of a pair must be the same size (registered, same field of view)")
            if not request.level < len(tinfo.levels):
                raise InputError(f"{image_label(target)} has resolution levels 0..{len(tinfo.levels) - 1}; choose "
                                 f"Resolution_Level {len(tinfo.levels) - 1} or less")
            tgt = channel_indices(tinfo, request.target_channels, image_label(target), "Target_Channels")
        pixels = source.getPrimaryPixels()
        if int(pixels.getSizeZ()) > 1 or int(pixels.getSizeT()) > 1:
            notes.append(f"{image_label(source)} has {pixels.getSizeZ()} z-sections and {pixels.getSizeT()} "
                         "timepoints: z=0, t=0 was read")
        types.setdefault(f"{len(src)} channel(s) of {info.dtype}", []).append(image_label(source))
        if tinfo is not None:
            counts.setdefault(f"{len(tgt)} target channel(s)", []).append(image_label(target))
        mpp = level_mpp(info, request.level)
        mpps.setdefault(None if mpp is None else round(mpp, 4), []).append(image_label(source))
        if first is None:
            first = (tuple(info.channels[i] for i in src),
                     tuple(tinfo.channels[i] for i in tgt) if tinfo is not None else (), len(info.channels))
        for what, box in _boxes(conn, source, target, info, request, label):
            if box[2] < patch or box[3] < patch:
                raise InputError(f"{label}{what}: {box[2]}x{box[3]} pixels at level {request.level} cannot hold a "
                                 f"{patch} px training patch; draw a larger rectangle, choose a finer Resolution_Level "
                                 "or a smaller Patch_Size")
            planned.append(PlannedRegion(f"{label}{what}", source, target, src, tgt, request.level, box))
        if progress:
            progress("check images", index, len(pairs))
    _same(types, "input images' channels or pixel types", "a model learns one kind of input: select images of one "
          "kind, or pick the same channels with Source_Channels")
    _same(counts, "target channel counts", "pick the same number of target channels in every image")
    known = sorted(m for m in mpps if m is not None)
    if known and known[-1] > known[0] * 1.05:
        notes.append(f"the images have different pixel sizes at level {request.level} "
                     f"({', '.join(f'{m:g}' for m in known)} µm); the model records {known[0]:g} µm")
    values = sum(r.box[2] * r.box[3] * (len(r.source_channels) + len(r.target_channels)) for r in planned)
    if values > MAX_TOTAL_VALUES:
        raise InputError(f"the {len(planned)} regions hold {values / 1e6:.0f} million pixel values (pixels x channels), "
                         f"more than {MAX_TOTAL_VALUES / 1e6:.0f} million at once; select fewer images, lower "
                         "Max_Megapixels, or choose a coarser Resolution_Level")
    if len(planned) == 1:
        _check_strips(planned[0], request.options)
    return TrainingPlan(planned, known[0] if known else None, *first, notes)


def _check_strips(region: PlannedRegion, options) -> None:
    """One region is split into vertical strips (training | validation | test): the restore data module's
    rule (:func:`~dlcore.restore.data.strip_split`) applied to its width before any pixel is read."""
    import numpy as np

    from dlcore.restore.data import PreparedImage, strip_split

    row = np.zeros((1, 1, region.box[2]), np.float32)
    try:
        strip_split(PreparedImage(name=region.name, source=row, target=row, source_low=(0.0,), source_high=(1.0,),
                                  target_low=(0.0,), target_high=(1.0,), dtype="float32"),
                    val_fraction=options.val_fraction, test_fraction=options.test_fraction,
                    min_width=options.patch_size)
    except ParameterError as exc:
        raise InputError(f"there is one region to learn from, so it is split into vertical strips, and {exc}; or "
                         "select a second image (or draw a second rectangle)") from None


# -- reading, training, registering ----------------------------------------------------------------
def read_regions(conn, planned: list[PlannedRegion], progress=None) -> list:
    """The planned regions as :class:`~dlcore.restore.data.ImagePair` ``(Y, X, C)`` arrays as read."""
    import numpy as np

    from dlcore.omero.slide import OmeroSlide
    from dlcore.restore.data import ImagePair

    out = []
    for index, region in enumerate(planned, 1):
        with OmeroSlide(conn, region.source) as slide:
            pixels = slide.read_region(region.level, *region.box)
        source = np.ascontiguousarray(pixels[..., list(region.source_channels)])
        if region.target is None:
            target = None
        elif region.target is region.source:
            target = np.ascontiguousarray(pixels[..., list(region.target_channels)])
        else:
            with OmeroSlide(conn, region.target) as slide:
                target = slide.read_region(region.level, *region.box)
            target = np.ascontiguousarray(target[..., list(region.target_channels)])
        out.append(ImagePair(region.name, source, target))
        if progress:
            progress("read regions", index, len(planned))
    return out


def _is_index_name(names) -> bool:
    """OMERO names a channel without a name by its index ('0', '1', ...): no name to show."""
    return any(str(n).strip().isdigit() for n in names)


def output_names(mode: str, source: tuple[str, ...], target: tuple[str, ...], n_out: int) -> list[str]:
    """Names of the predicted channels: the target's channel names (translate), the source's (else the
    target's) with ' denoised' / ' restored' (n2v, care), else the CLI's defaults; OMERO's index names
    ('0', '1') count as none."""
    from dlcore.restore.cli import DEFAULT_NAMES

    base = DEFAULT_NAMES[mode]
    if mode == "translate" and len(target) == n_out and not _is_index_name(target):
        chosen = [str(n) for n in target]
    elif mode in ("n2v", "care") and len(source) == n_out and not _is_index_name(source):
        chosen = [f"{n} {base}" for n in source]
    elif mode == "care" and len(target) == n_out and not _is_index_name(target):
        chosen = [f"{n} {base}" for n in target]
    else:
        chosen = [base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)]
    return chosen if len(set(chosen)) == len(chosen) else [f"{base}_{i}" for i in range(n_out)]


def _bounded_by_session(conn, options):
    """``options`` with ``max_seconds`` ending training :data:`TIME_RESERVE_S` before the script's session."""
    import dataclasses

    from dlcore.omero.budget import session_budget

    remaining = session_budget(conn).remaining_s()
    if remaining is None:
        return options
    left = remaining - TIME_RESERVE_S
    if left < 60:
        raise OmeroError(f"the script's time limit (omero.scripts.timeout) leaves {remaining:.0f} s, too little to train "
                         "and register a model; an OMERO administrator can raise it")
    if options.max_seconds is None or options.max_seconds > left:
        return dataclasses.replace(options, max_seconds=float(left))
    return options


def _provenance(planned: list[PlannedRegion], request: ImageTrainingRequest) -> str:
    where = "; ".join(r.name for r in planned[:12]) + (f" and {len(planned) - 12} more" if len(planned) > 12 else "")
    rule = {"none": "noisy images (Noise2Void: no targets)",
            "datasets": f"pairs of Source_Dataset {request.source_dataset!r} and Target_Dataset "
                        f"{request.target_dataset!r} matched by image name",
            "channels": f"pairs of channels of each image: {', '.join(request.source_channels)} -> "
                        f"{', '.join(request.target_channels)}"}[request.pairing]
    return (f"OMERO: {rule}; {len(planned)} regions read at resolution level {request.level} (rectangle ROIs, else a "
            f"central crop of at most {request.max_megapixels:g} Mpx): {where}")


def train_image_model_on_objects(conn, data_type: str, ids, request: ImageTrainingRequest, *, config=None,
                                 progress=None) -> dict:
    """Train a prediction model on the selected OMERO images, register it, attach its card and QC report.

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    data_type, ids
        The selection (``"Image"``, ``"Dataset"`` or ``"Project"`` ids).
    request
        The model's name, mode, pairing and settings (:class:`ImageTrainingRequest`).
    config
        dlcore's configuration (default :func:`~dlcore.config.load_config`): the model goes into
        ``trained_models_dir`` (else ``models_dir``) with ``owner.json`` naming the caller and the
        first object's group (:mod:`dlcore.models.ownership`).
    progress
        ``(stage, done, total)`` callback.

    Returns
    -------
    dict with ``trained`` (:class:`~dlcore.restore.training.TrainedImageModel`), ``evaluation`` (None
    for Noise2Void or without held-out images), ``folder``, ``version``, ``attached`` (file name ->
    FileAnnotation id), ``datasets`` (ids), ``images``, ``regions``, ``output_channels``,
    ``source_channels`` (names), ``seconds`` and ``notes``.

    Raises
    ------
    DlcoreError
        Bad settings or ids, a name the caller may not use, nowhere to attach the card, unpaired images,
        pairs of different sizes, unknown channels, mixed kinds of input, regions too small or too large:
        all before any pixel is read, and nothing is written.  A failure to attach removes the registered
        package again.
    """
    import time

    from dlcore.config import load_config
    from dlcore.omero.model_access import owner_for_training
    from dlcore.omero.trained_models import new_model_key
    from dlcore.omero.training import report_datasets
    from dlcore.omero.workflows import resolve_images
    from dlcore.restore.metrics import evaluate
    from dlcore.restore.package import register_image_model
    from dlcore.restore.training import train_image_model
    from dlcore.train.registry_io import read_rdf

    config = config or load_config()
    key = new_model_key(conn, request.name, config)
    ids = list(ids)
    images = resolve_images(conn, data_type, ids, skip_training_renderings=True)
    if request.pairing == "datasets":
        pairs = dataset_pairs(conn, data_type, ids, images, request)
    else:
        pairs = [(image, image if request.pairing == "channels" else None) for image in images]
    used = list({int(i.getId()): i for pair in pairs for i in pair if i is not None}.values())
    datasets = report_datasets(used)  # where the card goes, checked before any pixel is read
    owner = owner_for_training(conn, data_type, ids)
    plan = plan_regions(conn, pairs, request, progress)
    planned, notes = plan.regions, list(plan.notes)
    _bounded_by_session(conn, request.options)  # refused now if too little time is left

    started = time.monotonic()
    training_images = read_regions(conn, planned, progress)
    options = _bounded_by_session(conn, request.options)
    trained = train_image_model(training_images, mode=request.mode, options=options, progress=progress)
    evaluation = evaluate(trained) if request.mode != "n2v" and trained.split.test else None
    outputs = output_names(request.mode, plan.source_names, plan.target_names, trained.out_channels)
    reproduce = (f"OMERO Deep Learning > Train Image Model: Data_Type={data_type}, IDs={','.join(map(str, ids))}, "
                 f"{request.as_text()}")
    folder = register_image_model(trained, config.trained_dir, name=key, owner=owner, example=training_images[0].source,
                                  output_channels=outputs, evaluation=evaluation, mpp=plan.mpp,
                                  description=request.description, training_data=_provenance(planned, request),
                                  reproduce=reproduce)
    version = str(read_rdf(folder).get("version", ""))
    attached = _attach(conn, folder, key, version, request.mode, datasets, config)
    if options is not request.options and trained.history.get("seconds", 0) >= options.max_seconds:
        notes.append(f"training stopped at the script's time limit ({options.max_seconds:.0f} s for training)")
    return {"trained": trained, "evaluation": evaluation, "folder": folder, "version": version, "attached": attached,
            "datasets": [int(d.getId()) for d in datasets], "images": len(used), "regions": len(planned),
            "pairs": len(pairs) if request.pairing == "datasets" else None,
            "output_channels": outputs, "source_channels": list(plan.source_names),
            "image_channels": plan.image_channels, "seconds": time.monotonic() - started, "notes": notes}


def _attach(conn, folder, key: str, version: str, mode: str, datasets, config) -> dict[str, int]:
    """The model card and the QC report (a zip of ``report/`` and the card) on every dataset; the registered
    package is removed again when that fails."""
    from dlcore.omero.trained_models import attached_or_removed, copy_as, zip_folder
    from dlcore.omero.training import attach_files
    from dlcore.restore.package import MODE_TASK

    with attached_or_removed(folder, config) as scratch:
        card = copy_as(folder / "README.md", scratch, f"{key}-{version}-model-card.md")
        bundle = scratch / "bundle"
        shutil.copytree(folder / "report", bundle / "report")
        shutil.copy2(folder / "README.md", bundle / "README.md")
        report = zip_folder(bundle, scratch / f"{key}-{version}-qc-report")
        return attach_files(conn, [
            (card, "text/markdown", f"model card of {MODE_TASK[mode]} model {folder.name} {version} ({mode}): training "
                                    "data, held-out figures beside baselines, limits"),
            (report, "application/zip", f"QC report of {MODE_TASK[mode]} model {folder.name} {version}: learning "
                                        "curves, held-out metrics.csv, error maps, qc.json"),
        ], datasets, NS_IMAGE_TRAINING)


# -- the script body ------------------------------------------------------------------------------
def _run_hint(out: dict) -> str:
    """How Run Model runs the new model on images like the training ones."""
    n_in, n_image = len(out["source_channels"]), out["image_channels"]
    if n_in == n_image:
        return ""
    if n_in == 1:
        return f" with Model_Parameters channel=N (the image's {out['source_channels'][0]} channel's index)"
    return (f"; it takes {n_in} channels ({', '.join(out['source_channels'])}): Run Model runs it on images with "
            "exactly these channels")


def summary_lines(out: dict) -> list[str]:
    """The Message of a finished training: what was learnt, how well, where the card is, what to do next."""
    trained, folder, evaluation = out["trained"], out["folder"], out["evaluation"]
    h = trained.history
    split = trained.split.describe()
    images = f"{out['pairs']} image pairs" if out.get("pairs") else f"{out['images']} images"
    lines = [f"✓ Trained {trained.mode} model {folder.name} version {out['version']} on {out['regions']} regions of "
             f"{images} ({', '.join(out['source_channels'])} -> {', '.join(out['output_channels'])}).",
             f"  split {split['method']}: training {len(split['train']['images'])} ({split['train']['pixels']} px), "
             f"validation {len(split['val']['images'])} ({split['val']['pixels']} px), held-out test "
             f"{len(split['test']['images'])} ({split['test']['pixels']} px)",
             f"  {h['epochs_run']} epoch{'s' if h['epochs_run'] != 1 else ''} (kept epoch {h['best_epoch'] + 1}), "
             f"loss {trained.loss}, {out['seconds']:.0f} s"]
    if evaluation is not None:
        lines.append("  held-out test (never trained on), PSNR dB / SSIM / Pearson r: " + "; ".join(
            f"{p} {m['psnr']:.2f} / {m['ssim']:.3f} / {m['pearson_r']:.3f}" for p, m in evaluation.summary.items()))
    elif trained.mode == "n2v" and trained.split.test:
        from dlcore.restore.training import heldout_loss

        lines.append(f"  held-out masked-pixel loss {heldout_loss(trained):.5f} (Noise2Void has no clean targets: look "
                     "at the denoised images)")
    else:
        lines.append("  held-out test: none (too few images to hold one out: select at least 3, or draw more "
                     "rectangles)")
    where = ", ".join(map(str, out["datasets"]))
    lines.append(f"  model card and QC report attached to Dataset {where} (FileAnnotation "
                 f"{', '.join(map(str, out['attached'].values()))})")
    lines.append(f"  Run Model lists it now as {folder.name}{_run_hint(out)}: run it on your images and check them")
    lines += [f"  note: {n}" for n in out["notes"]]
    return lines


def train_image_script(script_client, *, conn=None, config=None) -> str:
    """The body of Train_Image_Model: train, register, attach, set ``Message``, ``Model_Card`` and ``QC_Report``."""

    def work(conn, inputs) -> str:
        from omero.model import FileAnnotationI
        from omero.rtypes import robject

        from dlcore.progress import LineProgress

        request = request_from_inputs(inputs)
        out = train_image_model_on_objects(conn, inputs.get("Data_Type", "Image"), list(inputs.get("IDs") or []),
                                           request, config=config, progress=LineProgress())
        card_id, report_id = list(out["attached"].values())[:2]
        script_client.setOutput("Model_Card", robject(FileAnnotationI(card_id, False)))
        script_client.setOutput("QC_Report", robject(FileAnnotationI(report_id, False)))
        return "\n".join(summary_lines(out))

    return script_body(script_client, work, conn=conn)


__all__ = ["image_training_params", "ImageTrainingRequest", "request_from_inputs", "training_options",
           "dataset_pairs", "plan_regions", "TrainingPlan", "PlannedRegion", "read_regions",
           "train_image_model_on_objects", "train_image_script", "summary_lines", "output_names", "image_stem",
           "channel_indices", "NS_IMAGE_TRAINING"]
