"""Training labels derived from a marker instead of drawn by hand.

A marker is a stain or a channel that shows what a model should find, but that the routine slides will
not have: an IHC marker (DAB) on a section whose routine stain is haematoxylin, or a fluorescence channel
used only for training.  This module turns the marker into labels on the routine image;
:mod:`dlcore.marker.dataset` writes them as a training folder ``dlcore train`` reads as it is.

Marker sources
    - a stain of the same brightfield image by colour deconvolution (``"dab"``, ``"hematoxylin"``,
      ``"eosin"``; the slide's own stain vectors, :mod:`dlcore.tasks.stains`), or a channel of the same
      image (``"channel:NAME"`` or ``"channel:INDEX"``);
    - the same, read from a second image of the same section (a restained or re-imaged serial
      acquisition), registered onto the routine image first (:mod:`dlcore.marker.registration`): the
      labels lie on the routine image's pixels;
    - optionally a registered pixel classifier applied to the marker image: the marker signal is then
      the probability of one of its classes.

Methods (:data:`METHODS`)
    ``threshold``
        The marker signal smoothed (``sigma``), thresholded (Otsu's, or a fixed value), objects under
        ``min_size`` pixels removed: a semantic mask, class ``positive`` (1) against the background (0).
    ``instances``
        The same threshold, holes filled, touching objects split by the classical pipeline's watershed
        (:class:`dlcore.tasks.classical.ClassicalNuclei` run on the marker signal): instance labels.
    ``positive-cells``
        Nuclei segmented on the routine image's nuclear signal (haematoxylin, or a channel) by the
        classical pipeline, each nucleus (or cell: the nucleus grown by ``cell_expansion`` pixels, for
        membrane and cytoplasm markers) classed ``positive`` when the marker's mean over it is above the
        threshold (``positive_by="mean"``) or when at least ``min_fraction`` of it is
        (``positive_by="fraction"``): QuPath's positive cell detection.  The label image is the class
        map (0 background, 1 ``negative``, 2 ``positive`` nuclei); the nuclei's instance ids and their
        classes are written beside it.

The routine input (``input``) is what the trained model will see: ``hematoxylin`` (the image rendered
as if stained with haematoxylin alone: the stain's optical density only, as RGB), ``rgb`` (the image as
it is), or ``channel:NAME``.  Deriving labels from DAB and training on an RGB input that shows the DAB
teaches a model to find brown, not what the routine stain shows: provenance says so.

Sizes: a region is held in memory whole, at most :data:`MAX_PIXELS` pixels; a larger image is refused
with the command to crop a region (``--region x,y,w,h``).  Pixel classifiers run in tiles with a halo
of their features' radius.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import InputError, ParameterError, SlideError

log = logging.getLogger(__name__)

STAIN_MARKERS = ("dab", "hematoxylin", "eosin")
METHODS = ("threshold", "instances", "positive-cells")
INPUTS = ("hematoxylin", "rgb")  # or "channel:NAME"
POSITIVE_BY = ("mean", "fraction")
REGISTRATION_KINDS = ("affine", "rigid", "similarity")
#: the largest region derived at once (pixels): the region, its marker signal and labels are held whole
MAX_PIXELS = 25_000_000
PROVENANCE_FILE = "labels_provenance.json"
OBJECTS_FILE = "objects.csv"
CLASSIFIER_TILE = 1024  # pixels per pixel-classifier tile (plus a halo of the features' radius)
OTSU_SAMPLE = 2_000_000  # values an Otsu threshold is computed from (sampled beyond this)

Progress = Callable[[str, int, int], None]


# -- parameters ---------------------------------------------------------------------------------------
def parse_channel_spec(text: str, *, what: str) -> str:
    """``"channel:NAME"`` checked for a non-empty name; returns the name (or index as text)."""
    name = text.split(":", 1)[1].strip() if ":" in text else ""
    if not name:
        raise ParameterError(f"{what}={text!r} names no channel; write channel:NAME or channel:INDEX "
                             "(e.g. channel:CD3 or channel:1)")
    return name


def parse_region(text: str | Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """``"x,y,w,h"`` (level-0 pixels) as four ints; None stays None.

    Raises :class:`ParameterError` naming the value and the form expected.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(int(round(float(str(p).strip()))) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ParameterError(f"region {text!r} must be four numbers x,y,width,height in full-resolution pixels, "
                             "e.g. --region 0,0,4096,4096")
    x, y, w, h = values
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ParameterError(f"region {text!r}: x and y must be >= 0 and width and height positive, "
                             "e.g. --region 0,0,4096,4096")
    return values


@dataclass(frozen=True)
class MarkerSpec:
    """What the marker is and how labels are made from it (every field goes into the provenance).

    Attributes
    ----------
    marker : the marker signal: ``"dab"``, ``"hematoxylin"``, ``"eosin"`` (colour deconvolution of 8-bit
        RGB) or ``"channel:NAME"`` / ``"channel:INDEX"``; read from the routine image itself, or from the
        second image when one is given.
    method : ``"threshold"``, ``"instances"`` or ``"positive-cells"`` (see the module docstring).
    threshold : a fixed threshold on the smoothed marker signal; None: Otsu's, computed per image
        (recorded in the provenance, which shows the signal's scale).
    sigma : Gaussian smoothing of the marker signal in pixels (0: none).
    min_size : objects (threshold components, instances) with fewer pixels are removed.
    min_distance : smallest distance between two objects' centres for the watershed (``instances``).
    positive_by : ``"mean"`` (the marker's mean over a nucleus above the threshold) or ``"fraction"``
        (at least ``min_fraction`` of its pixels above it), for ``positive-cells``.
    min_fraction : see ``positive_by``.
    cell_expansion : pixels a nucleus is grown by (without overlapping its neighbours) before the marker
        is measured: 0 for nuclear markers, a few pixels for membrane or cytoplasm markers.
    nuclei_channel : where ``positive-cells`` finds nuclei on the routine image: ``"hematoxylin"`` or
        ``"channel:NAME"`` (e.g. DAPI).
    input : the routine input written for training: ``"hematoxylin"``, ``"rgb"`` or ``"channel:NAME"``.
    stain_vectors : ``"estimate"`` (the image's own, Macenko) or ``"reference"`` (scikit-image's rgb2hed).
    pixel_classifier : a registered pixel classifier applied to the marker image; the marker signal is
        then the probability of ``classifier_class`` (default threshold 0.5).
    classifier_class : the classifier's class that is the marker (default: the class named as ``marker``).
    registration_kind : ``"affine"`` or ``"rigid"``, for a second image.
    marker_nuclei_channel : the second image's channel that shows nuclei (``"channel:NAME"``), which
        registration aligns; needed when it is not 8-bit RGB (whose haematoxylin is used).
    """

    marker: str = "dab"
    method: str = "threshold"
    threshold: float | None = None
    sigma: float = 2.0
    min_size: int = 60
    min_distance: int = 6
    positive_by: str = "mean"
    min_fraction: float = 0.5
    cell_expansion: int = 0
    nuclei_channel: str = "hematoxylin"
    input: str = "hematoxylin"
    stain_vectors: str = "estimate"
    pixel_classifier: str | None = None
    classifier_class: str | None = None
    registration_kind: str = "affine"
    marker_nuclei_channel: str | None = None

    def __post_init__(self) -> None:
        if self.marker not in STAIN_MARKERS and not self.marker.startswith("channel:"):
            raise ParameterError(f"marker={self.marker!r} is not one of {', '.join(STAIN_MARKERS)} or channel:NAME "
                                 "(a second image is given as image:PATH, with its marker as one of these)")
        if self.marker.startswith("channel:"):
            parse_channel_spec(self.marker, what="marker")
        if self.method not in METHODS:
            raise ParameterError(f"method={self.method!r} must be one of {', '.join(METHODS)}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ParameterError(f"threshold={self.threshold} must be a number (or otsu)")
        if not 0 <= self.sigma <= 50:
            raise ParameterError(f"sigma={self.sigma} must be between 0 and 50 pixels")
        if self.min_size < 0:
            raise ParameterError(f"min_size={self.min_size} must be >= 0 pixels")
        if self.min_distance < 1:
            raise ParameterError(f"min_distance={self.min_distance} must be at least 1 pixel")
        if self.positive_by not in POSITIVE_BY:
            raise ParameterError(f"positive_by={self.positive_by!r} must be one of {', '.join(POSITIVE_BY)}")
        if not 0 < self.min_fraction <= 1:
            raise ParameterError(f"min_fraction={self.min_fraction} must be in (0, 1]")
        if not 0 <= self.cell_expansion <= 100:
            raise ParameterError(f"cell_expansion={self.cell_expansion} must be between 0 and 100 pixels")
        if self.nuclei_channel != "hematoxylin" and not self.nuclei_channel.startswith("channel:"):
            raise ParameterError(f"nuclei_channel={self.nuclei_channel!r} must be 'hematoxylin' or channel:NAME")
        if self.nuclei_channel.startswith("channel:"):
            parse_channel_spec(self.nuclei_channel, what="nuclei_channel")
        if self.input not in INPUTS and not self.input.startswith("channel:"):
            raise ParameterError(f"input={self.input!r} must be one of {', '.join(INPUTS)} or channel:NAME")
        if self.input.startswith("channel:"):
            parse_channel_spec(self.input, what="input")
        if self.stain_vectors not in ("estimate", "reference"):
            raise ParameterError(f"stain_vectors={self.stain_vectors!r} must be 'estimate' or 'reference'")
        if self.registration_kind not in REGISTRATION_KINDS:
            raise ParameterError(f"registration kind {self.registration_kind!r} must be one of "
                                 f"{', '.join(REGISTRATION_KINDS)}")
        if self.marker_nuclei_channel is not None:
            parse_channel_spec(self.marker_nuclei_channel, what="marker_nuclei_channel")
        if self.classifier_class is not None and not self.pixel_classifier:
            raise ParameterError("classifier_class needs pixel_classifier=NAME too")

    @property
    def task(self) -> str:
        """The training task the labels are for: ``instances`` for ``instances``, else ``semantic``."""
        return "instances" if self.method == "instances" else "semantic"

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the label values 1..n (``positive``; or ``negative``, ``positive``)."""
        return ("negative", "positive") if self.method == "positive-cells" else ("positive",)


# -- signals ------------------------------------------------------------------------------------------
def channel_index(spec: str, channels: Sequence[str], *, what: str, image: str) -> int:
    """The index of ``channel:NAME`` (a name, case-insensitive, or an index) among ``channels``."""
    name = parse_channel_spec(spec, what=what)
    lowered = [c.lower() for c in channels]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    if name.isdigit() and int(name) < len(channels):
        return int(name)
    raise SlideError(f"{what}={spec!r}: {image} has no channel {name!r}; its channels are "
                     + ", ".join(f"{i} ({c})" for i, c in enumerate(channels)))


def _rgb(image: np.ndarray, *, what: str, name: str) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SlideError(f"{what} needs 8-bit RGB brightfield, but {name} is "
                         f"{image.shape[2] if image.ndim == 3 else 1}-channel {image.dtype}; choose channel:NAME")
    return image


def stain_matrix(rgb: np.ndarray, how: str, *, where: np.ndarray | None = None):
    """The stain vectors of an 8-bit RGB region: estimated from it (Macenko; from the pixels ``where`` is
    True, when given) or the reference ones."""
    from dlcore.tasks.stains import StainMatrix, estimate_stains

    if how != "estimate":
        return StainMatrix()
    return estimate_stains([rgb if where is None else rgb[where][None]])


def signal_of(image: np.ndarray, spec_text: str, *, channels: Sequence[str], stains, what: str,
              name: str) -> np.ndarray:
    """The ``(Y, X)`` float32 signal ``spec_text`` (a stain or ``channel:NAME``) of a ``(Y, X, C)`` image."""
    from dlcore.tasks.stains import STAINS

    if spec_text in STAINS:
        return stains.concentrations(_rgb(image, what=f"{what}={spec_text!r}", name=name))[..., STAINS.index(spec_text)]
    index = channel_index(spec_text, channels, what=what, image=name)
    return image[..., index].astype(np.float32)


def hematoxylin_rendering(rgb: np.ndarray, stains) -> np.ndarray:
    """The image as if stained with haematoxylin alone: its haematoxylin optical density only, as 8-bit RGB
    (the inverse of :func:`dlcore.tasks.stains.optical_density`)."""
    concentrations = stains.concentrations(rgb)
    vector = np.asarray(stains.vectors[0], np.float64)
    vector = vector / np.linalg.norm(vector)
    od = concentrations[..., 0:1].astype(np.float64) * vector[None, None, :]
    return np.clip(np.rint(256.0 * np.power(10.0, -od) - 1.0), 0, 255).astype(np.uint8)


def routine_input(image: np.ndarray, input_spec: str, *, channels: Sequence[str], stains, name: str) -> np.ndarray:
    """The ``(Y, X, C)`` pixels a model trained on these labels sees (see :attr:`MarkerSpec.input`)."""
    if input_spec == "hematoxylin":
        return hematoxylin_rendering(_rgb(image, what="input='hematoxylin'", name=name), stains)
    if input_spec == "rgb":
        return image
    index = channel_index(input_spec, channels, what="input", image=name)
    return np.ascontiguousarray(image[..., index:index + 1])


def smooth(signal: np.ndarray, sigma: float) -> np.ndarray:
    """The signal smoothed by a Gaussian of ``sigma`` pixels (float32; 0: unchanged)."""
    from scipy import ndimage as ndi

    signal = signal.astype(np.float32, copy=False)
    return ndi.gaussian_filter(signal, sigma) if sigma > 0 else signal


def threshold_of(smoothed: np.ndarray, threshold: float | None, *, name: str, seed: int = 0) -> float:
    """``threshold``, or Otsu's threshold of the smoothed signal (a sample of it beyond :data:`OTSU_SAMPLE`)."""
    from dlcore.tasks.classical import otsu_threshold

    if threshold is not None:
        return float(threshold)
    values = smoothed.ravel()
    if values.size > OTSU_SAMPLE:
        values = np.random.default_rng(seed).choice(values, OTSU_SAMPLE, replace=False)
    try:
        return otsu_threshold(values)
    except ParameterError:
        raise InputError(f"{name}: the marker signal is uniform, so no threshold separates positive from negative; "
                         "check --marker (is the marker in this image?), or give --threshold VALUE") from None


def classifier_probability(image: np.ndarray, task, class_index: int, *, tile: int = CLASSIFIER_TILE,
                           progress: Progress | None = None) -> np.ndarray:
    """The ``(Y, X)`` probability of class ``class_index`` (0-based) of a pixel classifier task, computed
    tile by tile with a mirrored halo of the features' radius (the same result as on the whole image)."""
    from dlcore.pixels.task import classify_pixels

    radius = task.features.radius()
    height, width = image.shape[:2]
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    out = np.empty((height, width), np.float32)
    corners = [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]
    for done, (y, x) in enumerate(corners, 1):
        h, w = min(tile, height - y), min(tile, width - x)
        window = padded[y:y + h + 2 * radius, x:x + w + 2 * radius]
        probs = classify_pixels(window, task.features, task.forest)
        out[y:y + h, x:x + w] = probs[class_index, radius:radius + h, radius:radius + w]
        if progress:
            progress("pixel classifier", done, len(corners))
    return out


def load_classifier(spec: MarkerSpec, *, config=None):
    """The pixel classifier task and the index of its marker class; ParameterError naming the classes."""
    from dlcore.errors import ModelError
    from dlcore.models.registry import load_task
    from dlcore.pixels.task import PixelClassifierTask

    task = load_task(spec.pixel_classifier, {}, config=config)
    if not isinstance(task, PixelClassifierTask):
        raise ModelError(f"{spec.pixel_classifier!r} is not a pixel classifier; give one trained with "
                         "`dlcore train --task pixels` (see `dlcore models`)")
    wanted = spec.classifier_class or (spec.marker if spec.marker in task.all_classes else None)
    if wanted is None or wanted not in task.all_classes:
        raise ParameterError(f"pixel classifier {spec.pixel_classifier!r} has the classes "
                             f"{', '.join(task.all_classes)}; say which is the marker: "
                             f"--pixel-classifier {spec.pixel_classifier}:CLASS")
    return task, task.all_classes.index(wanted), wanted


# -- labels -------------------------------------------------------------------------------------------
def threshold_mask(smoothed: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    """Pixels of the smoothed signal above ``threshold``, components under ``min_size`` pixels removed."""
    from dlcore.imageops import remove_small

    return remove_small(smoothed > threshold, min_size)


def instance_labels(signal: np.ndarray, threshold: float, spec: MarkerSpec, *, name: str) -> np.ndarray:
    """Objects of the marker: the classical pipeline's threshold, hole filling and watershed run on the
    marker signal (smoothed by ``spec.sigma``; no background removal, no size limit), int32 ids."""
    from dlcore.tasks.classical import ClassicalNuclei

    if not threshold > 0:
        raise InputError(f"{name}: the marker threshold is {threshold:.4g}, not above 0: the marker signal is "
                         "(almost) absent; check --marker, or give a positive --threshold")
    task = ClassicalNuclei(channel=0, sigma=spec.sigma, threshold=float(threshold), min_size=spec.min_size,
                           min_distance=spec.min_distance, max_area_um2=None, background_radius_um=None,
                           split_touching=True)
    return task.segment(signal[..., None]).astype(np.int32)


def segment_nuclei(image: np.ndarray, spec: MarkerSpec, *, channels: Sequence[str], stains, mpp: float | None,
                   name: str):
    """Nuclei of the routine image by the classical pipeline (its defaults; stains as given); returns the
    int32 labels and the task's provenance."""
    from dlcore.tasks.classical import ClassicalNuclei

    if spec.nuclei_channel == "hematoxylin":
        _rgb(image, what="nuclei_channel='hematoxylin'", name=name)
        task = ClassicalNuclei(channel="hematoxylin", stain_matrix=stains.vectors, stain_method=stains.method)
    else:
        task = ClassicalNuclei(channel=channel_index(spec.nuclei_channel, channels, what="nuclei_channel", image=name))
    task = task.at_resolution(mpp).prepare([image])
    return task.segment(image).astype(np.int32), task.provenance()


def classify_cells(nuclei: np.ndarray, smoothed: np.ndarray, threshold: float, spec: MarkerSpec):
    """Each nucleus's marker mean and fraction above the threshold, over the nucleus or the cell (grown by
    ``cell_expansion``), and its class; returns ``(class map, rows)``: 0 background, 1 negative, 2 positive
    on the nuclei's pixels, and one row per nucleus."""
    from scipy import ndimage as ndi

    measured = nuclei
    if spec.cell_expansion:
        from skimage.segmentation import expand_labels

        measured = expand_labels(nuclei, spec.cell_expansion)
    ids = np.unique(nuclei[nuclei > 0])
    if not len(ids):
        return np.zeros(nuclei.shape, np.uint8), []
    means = np.asarray(ndi.mean(smoothed, measured, ids), np.float64)
    fractions = np.asarray(ndi.mean((smoothed > threshold).astype(np.float32), measured, ids), np.float64)
    positive = means > threshold if spec.positive_by == "mean" else fractions >= spec.min_fraction
    lut = np.zeros(int(nuclei.max()) + 1, np.uint8)
    lut[ids] = np.where(positive, 2, 1)
    areas = np.bincount(nuclei.ravel(), minlength=lut.size)[ids]
    centres = ndi.center_of_mass(np.ones(nuclei.shape, np.uint8), nuclei, ids)
    rows = [{"id": int(i), "class": "positive" if p else "negative", "marker_mean": round(float(m), 5),
             "fraction_above": round(float(f), 4), "area_px": int(a), "y": round(float(c[0]), 2),
             "x": round(float(c[1]), 2)}
            for i, p, m, f, a, c in zip(ids, positive, means, fractions, areas, centres)]
    return lut[nuclei], rows


def _object_rows(labels: np.ndarray, smoothed: np.ndarray, threshold: float) -> list[dict]:
    from scipy import ndimage as ndi

    ids = np.unique(labels[labels > 0])
    if not len(ids):
        return []
    means = ndi.mean(smoothed, labels, ids)
    fractions = ndi.mean((smoothed > threshold).astype(np.float32), labels, ids)
    areas = np.bincount(labels.ravel())[ids]
    centres = ndi.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids)
    return [{"id": int(i), "class": "positive", "marker_mean": round(float(m), 5),
             "fraction_above": round(float(f), 4), "area_px": int(a), "y": round(float(c[0]), 2),
             "x": round(float(c[1]), 2)}
            for i, m, f, a, c in zip(ids, means, fractions, areas, centres)]


# -- one image ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarkerLabels:
    """The labels derived for one image region, and what is needed to write them.

    Attributes
    ----------
    name : a file-name-safe stem for the region's files.
    image : ``(Y, X, C)`` routine input (what the model will see).
    labels : ``(Y, X)`` label image for ``labels/``: class ids (semantic) or object ids (instances).
    instances : ``(Y, X)`` nuclei ids (``positive-cells``), else None.
    objects : one dict per object (id, class, marker mean, fraction above the threshold, area, centre).
    signal : ``(Y, X)`` the smoothed marker signal on the routine image's pixels (for checking).
    threshold : the threshold used.
    task, classes : what ``dlcore train`` needs.
    mpp : the region's pixel size in µm, or None.
    provenance : the record written in ``labels_provenance.json``.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray | None
    objects: list
    signal: np.ndarray
    threshold: float
    task: str
    classes: tuple[str, ...]
    mpp: float | None
    provenance: dict = field(default_factory=dict)

    def counts(self) -> dict:
        """Pixels per class, objects, and positive / negative cells."""
        out = {"pixels": int(self.labels.size)}
        if self.task == "semantic":
            values = np.bincount(self.labels.ravel().astype(np.int64), minlength=len(self.classes) + 1)
            out["pixels_per_class"] = {"background": int(values[0]),
                                       **{c: int(v) for c, v in zip(self.classes, values[1:])}}
        if self.objects or self.task == "instances" or self.instances is not None:
            out["objects"] = len(self.objects)
            for c in self.classes:
                out[f"{c}_objects"] = sum(o["class"] == c for o in self.objects)
        return out


def check_size(width: int, height: int, *, name: str, limit: int = MAX_PIXELS) -> None:
    """InputError telling to crop a region when ``width x height`` is above ``limit`` pixels."""
    if width * height > limit:
        side = int(math.sqrt(limit)) // 256 * 256
        raise InputError(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more than the "
                         f"{limit / 1e6:g} megapixels labels are derived from at once; crop a region with "
                         f"--region x,y,w,h (e.g. --region 0,0,{side},{side}), or Region in OMERO")


def read_routine(slide, region: tuple[int, int, int, int] | None, *, limit: int = MAX_PIXELS):
    """The region's level-0 pixels (the whole image when None) and the region actually read."""
    from dlcore.io.slide import check_region

    info = slide.info
    if region is None:
        region = (0, 0, info.width, info.height)
        check_size(info.width, info.height, name=info.name, limit=limit)
    else:
        try:
            check_region(info, 0, *region)
        except InputError as exc:
            raise InputError(f"{exc} (--region x,y,w,h is in full-resolution pixels)") from None
        check_size(region[2], region[3], name=f"region {','.join(map(str, region))} of {info.name}", limit=limit)
    return slide.read_region(0, *region), region


def _compose(matrix: np.ndarray, offset_fixed: tuple[float, float], offset_moving: tuple[float, float]) -> np.ndarray:
    """The fixed-region -> moving-crop matrix of a fixed -> moving ``matrix``: T(-moving) @ M @ T(fixed)."""
    to_fixed = np.array([[1, 0, offset_fixed[0]], [0, 1, offset_fixed[1]], [0, 0, 1]], np.float64)
    from_moving = np.array([[1, 0, -offset_moving[0]], [0, 1, -offset_moving[1]], [0, 0, 1]], np.float64)
    return from_moving @ np.asarray(matrix, np.float64) @ to_fixed


def _with_matrix(registration, matrix: np.ndarray):
    """``registration`` with another matrix, of the type its field holds."""
    current = registration.matrix
    value = matrix if isinstance(current, np.ndarray) else tuple(tuple(float(v) for v in row) for row in matrix)
    return dataclasses.replace(registration, matrix=value)


def _structure_channel(info, spec_text: str | None, *, what: str) -> int | None:
    """The channel that shows nuclei for registration: None for 8-bit RGB (its haematoxylin), else the
    channel ``spec_text`` names (required)."""
    if info.is_rgb and (spec_text is None or spec_text == "hematoxylin"):
        return None
    if spec_text is None or spec_text == "hematoxylin":
        if len(info.channels) == 1:
            return 0
        raise ParameterError(f"{info.name} is not 8-bit RGB: name the channel that shows its nuclei for the "
                             f"registration with {what}=channel:NAME (its channels: {', '.join(info.channels)})")
    return channel_index(spec_text, info.channels, what=what, image=info.name)


def aligned_marker(routine, marker, region: tuple[int, int, int, int], *, kind: str, mpp: float | None,
                   marker_mpp: float | None, fixed_channel_spec: str | None = None,
                   moving_channel_spec: str | None = None, limit: int = MAX_PIXELS,
                   progress: Progress | None = None):
    """The second image's pixels warped onto the routine region, and the registration.

    Both images whole within ``limit``: registered whole (:func:`~dlcore.marker.registration.register`).
    Otherwise slide to slide (:func:`~dlcore.marker.registration.register_slides`, which needs pixel sizes),
    and only the marker's part that maps onto the region is read.  Returns ``(pixels, covered, registration,
    how)``: ``covered`` is False where no pixel of the second image lands (its signal is unknown there).
    """
    from dlcore.marker import registration as reg

    ri, mi = routine.info, marker.info
    fixed_channel = _structure_channel(ri, fixed_channel_spec, what="nuclei_channel")
    moving_channel = _structure_channel(mi, moving_channel_spec, what="marker_nuclei_channel")
    if progress:
        progress("registration", 0, 1)
    if ri.width * ri.height <= limit and mi.width * mi.height <= limit:
        fixed = reg.structure_image(routine.read_region(0, 0, 0, ri.width, ri.height), channel=fixed_channel)
        moving = marker.read_region(0, 0, 0, mi.width, mi.height)
        registration = reg.register(fixed, reg.structure_image(moving, channel=moving_channel), kind=kind,
                                    fixed_mpp=mpp, moving_mpp=marker_mpp)
        crop, origin = moving, (0, 0)
        how = "whole images"
    else:
        if not (mpp and marker_mpp):
            raise InputError(f"{ri.name} or {mi.name} is too large to register whole and has no pixel size; give "
                             "the routine image's with --mpp (and make sure the marker image has one)")
        working = max(mpp, marker_mpp, max(ri.width * mpp, ri.height * mpp, mi.width * marker_mpp,
                                           mi.height * marker_mpp) / 16384)
        registration = reg.register_slides(routine, marker, working_mpp=working, kind=kind,
                                           fixed_channel=fixed_channel, moving_channel=moving_channel)
        x, y, w, h = region
        corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]], np.float64)
        mapped = corners @ np.asarray(registration.matrix, np.float64).T
        margin = 16
        x0 = int(max(0, math.floor(mapped[:, 0].min()) - margin))
        y0 = int(max(0, math.floor(mapped[:, 1].min()) - margin))
        x1 = int(min(mi.width, math.ceil(mapped[:, 0].max()) + margin))
        y1 = int(min(mi.height, math.ceil(mapped[:, 1].max()) + margin))
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"region {','.join(map(str, region))} of {ri.name} maps outside {mi.name} after "
                             "registration: the images do not show the same part of the section")
        check_size(x1 - x0, y1 - y0, name=f"the part of {mi.name} under the region", limit=limit)
        crop, origin = marker.read_region(0, x0, y0, x1 - x0, y1 - y0), (x0, y0)
        how = f"slide to slide at {working:.3g} µm/px"
    local = _with_matrix(registration, _compose(registration.matrix, region[:2], origin))
    warped = reg.warp_to_fixed(crop, local, (region[3], region[2]))
    if warped.ndim == 2:
        warped = warped[..., None]
    covered = reg.warp_to_fixed(np.ones(crop.shape[:2], np.uint8), local, (region[3], region[2]), labels=True) > 0
    if progress:
        progress("registration", 1, 1)
    return warped.astype(crop.dtype, copy=False), covered, registration, how


def _stem(name: str) -> str:
    from dlcore.train.data import image_stem

    stem = image_stem(Path(name))
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip("._") or "image"


def derive_labels(routine, *, spec: MarkerSpec, region: tuple[int, int, int, int] | None = None, marker=None,
                  mpp: float | None = None, name: str | None = None, config=None, limit: int = MAX_PIXELS,
                  progress: Progress | None = None) -> MarkerLabels:
    """Labels on one routine image region, derived from the marker (see the module docstring).

    Parameters
    ----------
    routine : the routine image (a :class:`~dlcore.io.slide.Slide`: local file or OMERO image).
    spec : the marker, method and options.
    region : ``(x, y, w, h)`` in level-0 pixels; None: the whole image (refused above ``limit`` pixels).
    marker : a second image of the same section holding the marker (a Slide), registered onto the
        routine image; None: the marker is in the routine image itself.
    mpp : the routine image's pixel size in µm when it has none (for the nuclei pipeline's sizes).
    name : the stem of the files written (default: the image's name, plus the region).
    config : dlcore's configuration (for a pixel classifier; default: the machine's).

    Raises
    ------
    DlcoreError
        An unknown channel or stain for this image, a region outside it or too large, a uniform marker,
        a registration that fails its residual check (:class:`~dlcore.marker.registration.RegistrationError`).
    """
    import dlcore

    info = routine.info
    routine_mpp = (sum(info.mpp) / 2 if info.mpp else None) or mpp
    pixels, region = read_routine(routine, region, limit=limit)
    whole = region == (0, 0, info.width, info.height)
    stem = name or (_stem(info.name) + ("" if whole else f"_x{region[0]}_y{region[1]}"))
    label = info.name if whole else f"{info.name} region {','.join(map(str, region))}"
    reasons = [why for why, needed in (
        ("input='hematoxylin'", spec.input == "hematoxylin"),
        ("nuclei_channel='hematoxylin'", spec.method == "positive-cells" and spec.nuclei_channel == "hematoxylin"),
        (f"marker={spec.marker!r}", marker is None and spec.marker in STAIN_MARKERS and not spec.pixel_classifier))
        if needed]
    stains = stain_matrix(_rgb(pixels, what=" and ".join(reasons), name=label), spec.stain_vectors) if reasons else None
    record: dict = {
        "image": info.name, "identity": info.identity, "region": {"x": region[0], "y": region[1], "width": region[2],
                                                                  "height": region[3]},
        "pixel_size_um": routine_mpp, "method": spec.method, "task": spec.task, "classes": list(spec.classes),
        "input": spec.input, "parameters": dataclasses.asdict(spec), "dlcore_version": dlcore.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if stains is not None:
        record["routine_stains"] = stains.describe()
    # -- the marker image, on the routine region's pixels
    covered = None
    if marker is None:
        marker_pixels, marker_channels, marker_stains = pixels, info.channels, stains
        record["marker_source"] = {"image": "the same image", "signal": spec.marker}
    else:
        mi = marker.info
        marker_mpp = sum(mi.mpp) / 2 if mi.mpp else None
        marker_pixels, covered, registration, how = aligned_marker(
            routine, marker, region, kind=spec.registration_kind, mpp=routine_mpp, marker_mpp=marker_mpp,
            fixed_channel_spec=spec.nuclei_channel, moving_channel_spec=spec.marker_nuclei_channel, limit=limit,
            progress=progress)
        marker_channels = mi.channels
        marker_stains = None
        record["marker_source"] = {"image": mi.name, "identity": mi.identity, "signal": spec.marker}
        record["registration"] = {**registration.as_dict(), "registered": how}
        record["marker_coverage"] = round(float(covered.mean()), 6)
        if not covered.any():
            raise InputError(f"no pixel of {mi.name} lands on {label} after registration: choose the region the "
                             "two images share")
    if spec.pixel_classifier:
        task, index, cls = load_classifier(spec, config=config)
        if marker_pixels.shape[2] != task.in_channels:
            raise SlideError(f"pixel classifier {spec.pixel_classifier!r} was trained on {task.in_channels}-channel "
                             f"images, but the marker image has {marker_pixels.shape[2]}")
        raw = classifier_probability(marker_pixels, task, index, progress=progress)
        record["marker_source"].update(signal=f"probability of class {cls!r} of pixel classifier "
                                              f"{spec.pixel_classifier!r}", classifier=task.provenance())
        threshold_default = 0.5
    else:
        if spec.marker in STAIN_MARKERS and marker_stains is None:
            marker_stains = stain_matrix(_rgb(marker_pixels, what=f"marker={spec.marker!r}", name="the marker image"),
                                         spec.stain_vectors, where=covered)
        if marker_stains is not None and spec.marker in STAIN_MARKERS:
            record["marker_source"]["stains"] = marker_stains.describe()
        raw = signal_of(marker_pixels, spec.marker, channels=marker_channels, stains=marker_stains, what="marker",
                        name=label if marker is None else marker.info.name)
        threshold_default = None
    if marker is None and spec.input == "rgb" and (spec.marker in STAIN_MARKERS or spec.pixel_classifier):
        record["warning"] = ("the training input is the RGB image that shows the marker itself: a model trained on it "
                             "learns the marker's colour; use input 'hematoxylin' to learn from the routine stain")
    if progress:
        progress("labels", 0, 1)
    if covered is not None and not covered.all():
        raw = np.where(covered, raw, 0).astype(np.float32)  # no marker known there: never positive
    smoothed = smooth(raw, spec.sigma)
    threshold = threshold_of(smoothed if covered is None else smoothed[covered],
                             spec.threshold if spec.threshold is not None else threshold_default, name=label)
    record["threshold"] = {"value": round(float(threshold), 6),
                           "how": "given" if spec.threshold is not None else
                           ("0.5 (classifier probability)" if threshold_default is not None else
                            "Otsu's, on the smoothed marker signal of this region")}
    instances, objects = None, []
    if spec.method == "threshold":
        labels = threshold_mask(smoothed if covered is None else np.where(covered, smoothed, 0), threshold,
                                spec.min_size).astype(np.uint8)
    elif spec.method == "instances":
        labels = instance_labels(raw, threshold, spec, name=label)
        if covered is not None and not covered.all():  # objects reaching where the marker is unknown go
            from dlcore.imageops import remove_small

            outside = np.unique(labels[~covered])
            labels = remove_small(np.where(np.isin(labels, outside[outside > 0]), 0, labels), 1)
        objects = _object_rows(labels, smoothed, threshold)
    else:
        nuclei, nuclei_task = segment_nuclei(pixels, spec, channels=info.channels, stains=stains, mpp=routine_mpp,
                                             name=label)
        if covered is not None and not covered.all():  # a nucleus the marker image does not cover is unknown
            from scipy import ndimage as ndi

            outside = np.unique(nuclei[~ndi.binary_erosion(covered, iterations=max(1, spec.cell_expansion),
                                                           border_value=1)])
            nuclei = np.where(np.isin(nuclei, outside[outside > 0]), 0, nuclei).astype(np.int32)
            record["nuclei_outside_marker"] = int((outside > 0).sum())
        labels, objects = classify_cells(nuclei, smoothed, threshold, spec)
        instances = nuclei
        record["nuclei"] = nuclei_task
    image = routine_input(pixels, spec.input, channels=info.channels, stains=stains, name=label)
    if progress:
        progress("labels", 1, 1)
    result = MarkerLabels(name=stem, image=image, labels=labels, instances=instances, objects=objects,
                          signal=smoothed, threshold=float(threshold), task=spec.task, classes=spec.classes,
                          mpp=routine_mpp, provenance=record)
    record["counts"] = result.counts()
    return result
