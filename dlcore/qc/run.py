"""One slide's quality control: the low-resolution pass, the focus pass, the QC mask and its flags.

:func:`run_qc` reads a QC thumbnail of about ``qc_mpp`` µm per pixel (2 µm: HistoQC works at
1.25-2.5x), finds tissue on it as the analysis does (:mod:`dlcore.tiling.tissue`), finds pen ink,
folds, pale tissue, bubbles and coverslip edges on it (:mod:`dlcore.qc.artefacts`, brightfield RGB
only), and measures focus over the tissue at the working resolution (:mod:`dlcore.qc.focus`).  The
result is a label image of :data:`~dlcore.qc.classes.QC_CLASSES`, the fraction of the tissue each
artefact covers, a pass / warn / fail flag per artefact and for the slide, and the stain figures.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import ParameterError
from dlcore.io.slide import Slide, SlideInfo, plan_resolution
from dlcore.progress import ProgressCallback
from dlcore.qc import artefacts
from dlcore.qc.classes import ARTEFACTS, QC_CLASSES, TISSUE, flag_for, worst
from dlcore.qc.focus import DEFAULT_BLOCK, DEFAULT_THRESHOLD, FocusMap, focus_map, grey_scale

QC_MODES = ("off", "flag", "exclude")
QC_NAMESPACE = "dlcore/qc"
STAIN_OD_RANGE = (0.15, 1.5)  # median tissue OD outside this: the slide is warned as under- or over-stained


@dataclass(frozen=True)
class QCOptions:
    """How QC looks at a slide.

    Attributes
    ----------
    qc_mpp: µm per pixel of the QC thumbnail (its long side is kept within 512-4096 pixels).
    focus_mpp: µm per pixel the focus is measured at (a run passes its working resolution); None with
        a slide that has a pixel size: 0.5 µm; without one: native pixels.
    focus_block: working pixels per side of a focus block.
    blur_threshold: sharpness under which a block is blurred.
    threads: reader threads of the focus pass.
    """

    qc_mpp: float = 2.0
    focus_mpp: float | None = None
    focus_block: int = DEFAULT_BLOCK
    blur_threshold: float = DEFAULT_THRESHOLD
    threads: int = 2

    def __post_init__(self) -> None:
        if not (self.qc_mpp > 0 and math.isfinite(self.qc_mpp)):
            raise ParameterError(f"qc_mpp={self.qc_mpp} must be a positive pixel size in µm (e.g. 2)")
        if self.focus_block < 16:
            raise ParameterError(f"focus_block={self.focus_block} is too small; use at least 16 pixels (default 64)")
        if self.focus_mpp is not None and not (self.focus_mpp > 0 and math.isfinite(self.focus_mpp)):
            raise ParameterError(f"focus_mpp={self.focus_mpp} must be a positive pixel size in µm (e.g. 0.5), or "
                                 "None for the default")
        if not (0 < self.blur_threshold < 10):
            raise ParameterError(f"blur_threshold={self.blur_threshold} must lie in (0, 10) (default {DEFAULT_THRESHOLD})")

    def as_dict(self) -> dict:
        return {"qc_mpp": self.qc_mpp, "focus_mpp": self.focus_mpp, "focus_block": self.focus_block,
                "blur_threshold": self.blur_threshold}


@dataclass(frozen=True)
class QCResult:
    """A slide's QC: its mask, figures and flags.

    ``mask`` is a ``(Y, X)`` uint8 label image of :data:`QC_CLASSES`, each pixel covering ``downsample``
    level-0 pixels (``mpp`` µm, None without a pixel size); ``tissue`` the tissue the analysis's detector
    finds on the same grid (it takes pen ink, a bubble's rim and disc or a coverslip edge on glass for
    tissue: they are not glass); ``thumb`` the RGB (or display) thumbnail it was found on.
    ``fractions`` are each artefact's share of that tissue, what an analysis without QC would count
    (an artefact the detector leaves out counts nothing), ``areas_mm2`` each class's area on it,
    ``flags`` their pass / warn / fail, ``verdict`` the worst flag.
    """

    slide: str
    mask: np.ndarray
    tissue: np.ndarray
    downsample: float
    mpp: float | None
    thumb: np.ndarray
    fractions: dict[str, float]
    areas_mm2: dict[str, float | None]
    flags: dict[str, str]
    verdict: str
    stain: dict[str, float | str]
    focus: dict[str, float | int | None]
    methods: dict[str, str]
    options: dict
    timings: dict[str, float] = field(default_factory=dict)

    def artefact_mask(self) -> np.ndarray:
        """Pixels of any artefact class, on tissue or not (what ``--qc exclude`` leaves out)."""
        return self.mask > TISSUE

    def usable_tissue(self) -> np.ndarray:
        """Pixels of tissue with no artefact."""
        return self.mask == TISSUE

    def digest(self) -> str:
        """A digest of the mask (a checkpoint of an excluding run is reused only for the same mask)."""
        return hashlib.sha256(self.mask.tobytes() + repr(self.mask.shape).encode()).hexdigest()[:16]

    def excluded_fraction(self) -> float:
        return float(sum(self.fractions.values()))

    def summary(self) -> dict:
        """The figures a person reads and that provenance, key-value pairs and tables carry."""
        return {"verdict": self.verdict, "flags": dict(self.flags),
                "fractions_of_tissue": {k: round(v, 5) for k, v in self.fractions.items()},
                "areas_mm2": dict(self.areas_mm2), "artefact_fraction_of_tissue": round(self.excluded_fraction(), 5),
                "stain": dict(self.stain), "focus": dict(self.focus)}

    def as_dict(self) -> dict:
        """Everything of the QC report but the pictures (``qc.json``)."""
        return {"slide": self.slide, **self.summary(), "methods": dict(self.methods), "options": dict(self.options),
                "mask": {"downsample": self.downsample, "mpp": self.mpp, "shape": list(self.mask.shape),
                         "classes": {c.value: c.name for c in QC_CLASSES}},
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}

    def table_row(self) -> dict:
        """This slide's row of the batch QC table (:func:`table_row`)."""
        return table_row(self.slide, self.summary())

    def tags(self) -> tuple[str, ...]:
        """Tags for the image: ``QC pass|warn|fail`` and ``QC: <artefact>`` for each artefact flagged."""
        return (f"QC {self.verdict}", *(f"QC: {name}" for name, flag in self.flags.items() if flag != "pass"))


def table_row(slide: str, summary: dict) -> dict:
    """One flat row of the batch QC table (CSV, OMERO.table) from a QC summary (:meth:`QCResult.summary`,
    or an analysis's ``qc`` block): slide, verdict, tissue area, each artefact's fraction and flag, stain
    and focus figures."""
    row: dict = {"slide": slide, "verdict": summary["verdict"], "tissue_mm2": summary["areas_mm2"].get("tissue_total")}
    for c in ARTEFACTS:
        row[f"{c.name}_fraction"] = summary["fractions_of_tissue"][c.name]
        row[f"{c.name}_flag"] = summary["flags"][c.name]
    row["stain_flag"] = summary["flags"]["stain"]
    row["median_od"] = summary["stain"].get("median_od")
    row["median_sharpness"] = summary["focus"].get("median_sharpness")
    return row


def qc_thumbnail_side(info: SlideInfo, qc_mpp: float) -> int:
    """The QC thumbnail's long side: about ``qc_mpp`` µm per pixel, within 512-4096 pixels (2048 without
    a pixel size)."""
    if info.mpp is None:
        return 2048
    microns = max(info.width * info.mpp[0], info.height * info.mpp[1])
    return int(np.clip(round(microns / qc_mpp), 512, 4096))


def run_qc(slide: Slide, *, info: SlideInfo | None = None, options: QCOptions = QCOptions(),
           progress: ProgressCallback | None = None) -> QCResult:
    """Quality control of ``slide`` (see the module docstring).  ``info`` overrides the slide's own
    (e.g. a pixel size given with ``--mpp``)."""
    from dlcore.tiling.tissue import thumbnail, tissue_mask_from_thumbnail

    info = info or slide.info
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    thumb, downsample = thumbnail(slide, max_side=qc_thumbnail_side(info, options.qc_mpp))
    tissue, tissue_method = tissue_mask_from_thumbnail(thumb, info)
    mpp0 = None if info.mpp is None else (info.mpp[0] + info.mpp[1]) / 2
    um_per_px = downsample * mpp0 if mpp0 else downsample * 0.5  # sizes assume 0.5 µm/px without a pixel size
    methods = {"tissue": tissue_method}
    found: dict[str, np.ndarray] = {}
    stats = {"median_od": float("nan"), "median_saturation": float("nan")}
    if info.is_rgb:
        if progress is not None:
            progress("QC low resolution", 0, 1)
        picture = artefacts.Picture.of(thumb)
        stats = artefacts.tissue_statistics(picture, tissue)
        detections = {"pen": artefacts.detect_pen(picture, um_per_px=um_per_px)}
        if tissue.any():
            detections["fold"] = artefacts.detect_folds(picture, tissue, um_per_px=um_per_px,
                                                        exclude=detections["pen"].mask)
            detections["pale"] = artefacts.detect_pale(picture, tissue, um_per_px=um_per_px)
        detections["bubble"], detections["coverslip_edge"] = artefacts.detect_bubbles_and_edges(
            picture, um_per_px=um_per_px)
        for name, detection in detections.items():
            found[name], methods[name] = detection.mask, detection.method
        if progress is not None:
            progress("QC low resolution", 1, 1)
    else:
        methods["pen, fold, pale, bubble, coverslip_edge"] = "not applicable: the slide is not 8-bit RGB brightfield"
    timings["low_resolution_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    focus_mpp = options.focus_mpp if options.focus_mpp is not None else (0.5 if mpp0 else None)
    if focus_mpp is not None and mpp0 and focus_mpp < mpp0:
        focus_mpp = mpp0  # never enlarged: interpolation would read as blur
    plan = plan_resolution(info, focus_mpp)
    judged = tissue & ~found.get("pen", np.zeros_like(tissue))
    focus = focus_map(slide, plan, plan.working_size(info), judged, downsample, block=options.focus_block,
                      threshold=options.blur_threshold, scale=grey_scale(thumb), threads=options.threads,
                      progress=progress)
    blur = focus.on_grid(tissue.shape, downsample) & tissue
    found["blur"] = _drop_small_regions(blur, 4 * (focus.block * plan.factor / downsample) ** 2)
    methods["blur"] = (f"mean |Laplacian| / (grey std + 2) < {focus.threshold} in {focus.block}-px blocks at "
                       f"{plan.working_mpp or 'native'} µm/px (grey std >= 4), regions of >= 4 blocks")
    timings["focus_s"] = time.perf_counter() - t0

    mask = np.where(tissue, TISSUE, 0).astype(np.uint8)
    for qc_class in sorted(ARTEFACTS, key=lambda c: c.value):  # later classes win where artefacts overlap
        if qc_class.name in found:
            mask[found[qc_class.name]] = qc_class.value
    return _result(info, mask, tissue, downsample, mpp0, thumb, stats, focus, methods, options, timings, focus_mpp)


def _drop_small_regions(mask: np.ndarray, min_px: float) -> np.ndarray:
    from dlcore.imageops import remove_small

    return remove_small(mask, max(1, int(math.ceil(min_px)))).astype(bool) if mask.any() else mask


def _result(info, mask, tissue, downsample, mpp0, thumb, stats, focus: FocusMap, methods, options, timings,
            focus_mpp) -> QCResult:
    counts = np.bincount(mask[tissue], minlength=len(QC_CLASSES))  # on tissue: an artefact on glass counts nothing
    tissue_total = int(tissue.sum())
    fractions = {c.name: (float(counts[c.value]) / tissue_total if tissue_total else 0.0) for c in ARTEFACTS}
    mask_mpp = downsample * mpp0 if mpp0 else None
    area = (mask_mpp ** 2 / 1e6) if mask_mpp else None
    areas = {c.name: (round(float(counts[c.value]) * area, 5) if area else None) for c in QC_CLASSES
             if c.value >= TISSUE}
    areas["tissue_total"] = round(tissue_total * area, 5) if area else None
    flags = {c.name: flag_for(c, fractions[c.name]) for c in ARTEFACTS}
    median_od = stats["median_od"]
    if info.is_rgb and math.isfinite(median_od):
        low, high = STAIN_OD_RANGE
        flags["stain"] = "warn" if not (low <= median_od <= high) else "pass"
        stain = {"median_od": round(median_od, 4), "median_saturation": round(stats["median_saturation"], 4),
                 "judgement": ("under-stained" if median_od < low else "over-stained" if median_od > high else "in range")
                 + f" (median tissue OD {median_od:.2f}; expected {low}-{high})"}
    else:
        flags["stain"] = "pass"
        stain = {"judgement": "not judged (not 8-bit RGB brightfield, or no tissue)"}
    if tissue_total == 0:  # nothing to analyse (artefacts on glass do not make tissue)
        flags["tissue"] = "fail"
    judged = np.isfinite(focus.sharpness)
    median = focus.median()
    focus_figures = {"blocks_judged": int(judged.sum()), "blocks_blurred": int(focus.blurred().sum()),
                     "median_sharpness": None if median is None else round(median, 4), "block_px": focus.block,
                     "mpp": focus_mpp}
    return QCResult(slide=info.name, mask=mask, tissue=tissue, downsample=float(downsample), mpp=mask_mpp, thumb=thumb,
                    fractions=fractions, areas_mm2=areas, flags=flags, verdict=worst(flags.values()), stain=stain,
                    focus=focus_figures, methods=methods, options=options.as_dict(), timings=timings)


def qc_problems(summary: dict) -> str:
    """The checks a QC summary (:meth:`QCResult.summary`, or an analysis's ``qc`` block) did not pass, for
    a person, e.g. ``pen 4.5 % of tissue (warn), blur 22.9 % of tissue (fail)``; empty when every check
    passed."""
    fractions = summary.get("fractions_of_tissue", {})
    parts = []
    for name, flag in summary.get("flags", {}).items():
        if flag == "pass":
            continue
        if name in fractions:
            parts.append(f"{name} {100 * fractions[name]:.1f} % of tissue ({flag})")
        elif name == "stain":
            parts.append(f"stain {summary.get('stain', {}).get('judgement', '')} ({flag})")
        else:
            parts.append(f"{name} ({flag})")
    return ", ".join(parts)


def qc_run_summary(result: QCResult, mode: str) -> dict:
    """The ``qc`` block of an analysis's summary: the QC figures, the mode, what it left out of the tissue
    (``exclude``: every artefact's area on tissue; ``flag``: nothing) and the tissue area analysed (the
    denominator for densities; the summary's ``tissue_area_mm2`` is the whole tissue's)."""
    artefact_mm2 = [v for name, v in result.areas_mm2.items() if name in result.fractions and v is not None]
    excluded = mode == "exclude"
    excluded_mm2 = (round(sum(artefact_mm2), 5) if result.mpp else None) if excluded else 0.0
    tissue_mm2 = result.areas_mm2.get("tissue_total")
    return {"mode": mode, **result.summary(),
            "excluded_fraction_of_tissue": round(result.excluded_fraction(), 5) if excluded else 0.0,
            "excluded_area_mm2": excluded_mm2,
            "analysed_tissue_mm2": None if tissue_mm2 is None or excluded_mm2 is None
            else round(tissue_mm2 - excluded_mm2, 5)}
