"""What every kind of imported ("field") model provides: an importer that checks a weights file and says
what it is, and a network that turns slide windows into instance labels (or class maps, or patch classes).

A kind (:class:`Kind`) knows one published format: InstanSeg's TorchScript, StarDist's Keras folder,
TIAToolbox's state dicts, Cellpose's network files.  ``inspect`` reads a file (or folder) a facility
already has, refuses anything that is not a complete, intact model of that kind (:class:`ModelError`
naming the file, the problem and the fix), and returns an :class:`Inspected`: the files to copy into a
registry package, the resolution, classes and tiling the model needs, and its settings.  ``load`` turns
an installed package back into a :class:`FieldNetwork` the engine runs.

A :class:`FieldNetwork` is fitted once per slide (its normalisation statistics come from sample windows
of the whole slide, so that every tile is normalised alike and tiling cannot change the answer) and
maps ``(Y, X, C)`` windows, in the slide's dtype, to ``(Y, X)`` int32 instance labels of the same size
(0 background), or to :class:`TypedLabels` when the model also gives each object a class.

What a model gives is its *output* (:data:`OUTPUTS`): ``instances`` (above); ``semantic``, where
``predict`` returns ``(Y, X)`` class maps (0 background, class ``i`` is ``classes[i - 1]``), e.g. HoVer-Net+'s
epithelial layers; ``patch_classification``, where the network's ``classify(patches)`` takes ``(P, P, C)``
patches of the model's patch size and returns one probability per class for each, ``(N, K)`` float32,
e.g. TIAToolbox's Kather-100K tissue classifiers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from dlcore.tiling.tile_objects import TypedLabels  # noqa: F401 - what a FieldNetwork may return

OUTPUTS = ("instances", "semantic", "patch_classification")


@dataclass(frozen=True)
class Publisher:
    """Where weights come from, as their publisher states it (for the card)."""

    source: str                 # URL, or "Publication; URL"
    training_data: str          # what the publisher says the model was trained on
    licence: str                # SPDX id as the publisher gives it (e.g. "Apache-2.0", "CC-BY-NC-4.0")
    citation: str = ""
    authors: tuple[str, ...] = ()  # the model's authors, as the publisher names them
    performance: str = ""       # how well the publisher says it does, on what (for the card)


@dataclass(frozen=True)
class Inspected:
    """A checked weights file (or folder) of a known kind, and what dlcore needs to run it.

    Attributes
    ----------
    kind : the kind's name (``"instanseg"``, ``"stardist"``, ...).
    files : package file name -> the source file to copy into the package.
    weights_file : the package file name holding the weights (its sha256 goes into the rdf and the card).
    weights_format : the bioimage.io weights format of that file (``"torchscript"``, ``"keras_hdf5"``,
        ``"pytorch_state_dict"``).
    in_channels : channels the model takes (3 for RGB brightfield).
    mpp : pixel size in µm the model was trained at (the engine reads the slide at that resolution), or
        None when the file does not say (the user then gives ``--mpp``).
    classes : object class names (``("nucleus",)``, or e.g. HoVer-Net's PanNuke types); for a ``semantic``
        output the classes of map values 1..n; for ``patch_classification`` the classifier's outputs in order.
    tile_size, halo : the engine's tiling (halo at least the largest object's radius plus the model's
        receptive field, so that stitching by ownership keeps whole objects).
    runtime : the kind's own settings (thresholds, normalisation percentiles, architecture config),
        stored as ``config.dlcore.runtime`` and given back to :meth:`Kind.load`.
    publisher : the source, training data and licence when the file is a known published model, else None.
    description : one line for the registry.
    default_name : the registry name to use when the user gives none.
    scratch : a temporary folder the inspection unpacked files into (a zip), removed once they are copied.
    output : what the model gives, one of :data:`OUTPUTS` (see the module docstring).
    patch_size : a patch classifier's input size in pixels at ``mpp`` (``tile_size`` is a multiple of it).
    background_class : a patch classifier's class for glass or empty patches (left out of the slide's
        decision), or None.
    alternatives : other outputs the same weights give, by output name (``dlcore models import --task``):
        the fields that differ (e.g. HoVer-Net+'s ``semantic`` tissue layers: classes, tiling, runtime).
    """

    kind: str
    files: dict[str, Path]
    weights_file: str
    weights_format: str
    in_channels: int
    mpp: float | None
    classes: tuple[str, ...]
    tile_size: int
    halo: int
    runtime: dict = field(default_factory=dict)
    publisher: Publisher | None = None
    description: str = ""
    default_name: str = ""
    scratch: Path | None = None
    output: str = "instances"
    patch_size: int | None = None
    background_class: str | None = None
    alternatives: dict = field(default_factory=dict)


class FieldNetwork(Protocol):
    """An imported model ready to run (see the module docstring)."""

    def fit(self, samples: list[np.ndarray]) -> "FieldNetwork":
        """A copy whose normalisation uses statistics of these ``(Y, X, C)`` sample windows of one slide."""

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray | TypedLabels]:
        """Instance labels (a ``semantic`` output: class maps) for each ``(Y, X, C)`` window, each ``(Y, X)``
        int32 (0 background).  A ``patch_classification`` network has ``classify(patches) -> (N, K)`` instead."""

    def describe(self) -> dict:
        """What the run's provenance records: normalisation values, thresholds, device."""


class Kind(Protocol):
    """One importable model format (see the module docstring)."""

    name: str

    def inspect(self, path: Path) -> Inspected:
        """Check ``path`` is a complete, intact model of this kind; raise ModelError otherwise."""

    def load(self, folder: Path, cfg: dict, device: str = "cpu") -> FieldNetwork:
        """The network of an installed package (``cfg``: its completed ``config.dlcore``, with ``runtime``)."""
