"""The QC mask's classes and the rules that turn their areas into pass / warn / fail flags.

One table says everything about a class: its value in the QC mask, its name (used in JSON keys,
key-value pairs, tags and table columns), its colour in the overview, and the fractions of the tissue
it may cover before a slide is flagged ``warn`` and ``fail``.  Where artefacts overlap, the class
listed later in :data:`QC_CLASSES` wins (``pen`` over ``fold`` over ``blur``...): the mask holds one
class per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QCClass:
    """One class of the QC mask.

    ``warn`` and ``fail`` are fractions of the slide's tissue area (tissue plus artefacts on it);
    None for the classes that are not artefacts.
    """

    value: int
    name: str
    color: tuple[int, int, int]
    description: str
    warn: float | None = None
    fail: float | None = None

    @property
    def is_artefact(self) -> bool:
        return self.warn is not None


QC_CLASSES: tuple[QCClass, ...] = (
    QCClass(0, "background", (0, 0, 0), "glass or scanner margin"),
    QCClass(1, "tissue", (40, 170, 60), "usable tissue"),
    QCClass(2, "pale", (150, 220, 255), "under-stained tissue: far less optical density than the slide's tissue",
            warn=0.05, fail=0.30),
    QCClass(3, "blur", (255, 150, 0), "out of focus at the working resolution", warn=0.05, fail=0.25),
    QCClass(4, "fold", (160, 0, 200), "tissue fold or over-stained region: far darker than tissue of its hue, thick",
            warn=0.02, fail=0.20),
    QCClass(5, "bubble", (0, 220, 220), "air bubble: a region closed by a thin unstained rim", warn=0.01, fail=0.20),
    QCClass(6, "coverslip_edge", (255, 255, 0), "coverslip edge or crack: a long straight unstained line",
            warn=0.0, fail=0.10),
    QCClass(7, "pen", (255, 0, 80), "pen ink (blue, green, black or red marker)", warn=0.0, fail=0.10),
)
BY_NAME = {c.name: c for c in QC_CLASSES}
ARTEFACTS = tuple(c for c in QC_CLASSES if c.is_artefact)
TISSUE = BY_NAME["tissue"].value
LEVELS = ("pass", "warn", "fail")


def flag_for(qc_class: QCClass, fraction: float) -> str:
    """``pass``, ``warn`` or ``fail`` for an artefact covering ``fraction`` of the tissue.

    A class with ``warn=0`` warns on any area at all (pen ink is never an accident of the tissue)."""
    if qc_class.fail is not None and fraction >= qc_class.fail:
        return "fail"
    if qc_class.warn is not None and fraction > 0 and fraction >= qc_class.warn:
        return "warn"
    return "pass"


def worst(flags) -> str:
    """The worst of some flags (``pass`` for none)."""
    return max(flags, key=LEVELS.index, default="pass")
