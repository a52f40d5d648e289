"""The parameters of a training run (:class:`TrainSpec`) and its result (:class:`TrainResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dlcore.errors import ParameterError
from dlcore.train.augment import AugmentSpec

TASK_KINDS = ("semantic", "instances", "classification")
NORMALIZATIONS = ("scale_0_1", "percentile", "imagenet")


@dataclass(frozen=True)
class TrainSpec:
    """Everything that decides a training run; recorded in the model card's provenance.

    Attributes
    ----------
    task : ``"semantic"``, ``"instances"`` (foreground/boundary U-Net + watershed) or ``"classification"``.
    name : the model's name in the registry (the package folder is ``name`` or ``name-vN``).
    version : the package version; None = one above the highest version of ``name`` in the registry.
    epochs, steps_per_epoch, batch_size, lr, weight_decay : optimisation (AdamW).
    patch_size : side of the training tiles (segmentation) or patches (classification), pixels.
    channels : U-Net widths (from scratch); ``classifier_width``/``classifier_depth`` for classifiers.
    freeze_stages : with a base model, the first N encoder stages keep their weights.
    k_folds : > 1 runs k-fold cross-validation on the non-test data and reports mean ± sd.
    val_fraction, test_fraction : fractions of split groups for validation and the held-out test.
    test_groups : groups held out as the test set explicitly (overrides ``test_fraction``).
    seed : seeds the split, sampling, augmentation and initialisation.
    patience, min_delta : early stopping on the validation loss.
    augment : the histology augmentations.
    normalization : input normalisation recorded in the package (``scale_0_1``: uint8 / 255).
    boundary_width : instance targets: width in pixels of the boundary class.
    min_size : instance post-processing: smallest object kept, pixels.
    tune_postprocess : instances: choose the watershed's boundary threshold and seed size on the
        validation images (:func:`dlcore.train.evaluate.tune_postprocess`) instead of the defaults.
    tile_size, halo : inference tiling written into the package.
    threads : torch CPU threads.
    max_seconds : stop training (keeping the best epoch) after this long; None = no limit.
    description, training_data : free text for the card (what the data are, how labels were made).
    limits : free text for the card's limitations section.
    reproduce : the command that reproduces this model (for the card).
    authors, tags, license : package metadata.
    """

    task: str
    name: str
    version: str | None = None
    epochs: int = 30
    steps_per_epoch: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patch_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128)
    classifier_width: int = 16
    classifier_depth: int = 4
    freeze_stages: int = 0
    k_folds: int = 1
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    test_groups: tuple[str, ...] | None = None
    seed: int = 0
    patience: int = 5
    min_delta: float = 0.0
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    normalization: str = "scale_0_1"
    boundary_width: int = 2
    min_size: int = 30
    tune_postprocess: bool = True
    tile_size: int = 512
    halo: int = 32
    threads: int = 2
    max_seconds: float | None = None
    description: str = ""
    training_data: str = ""
    limits: str = ""
    reproduce: str = ""
    authors: tuple[str, ...] = ("dlcore",)
    tags: tuple[str, ...] = ()
    license: str = "BSD-3-Clause"

    def __post_init__(self) -> None:
        if self.task not in TASK_KINDS:
            raise ParameterError(f"task={self.task!r} must be one of {TASK_KINDS}")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ParameterError(f"name={self.name!r} must be a non-empty name without spaces or slashes")
        for key in ("epochs", "steps_per_epoch", "batch_size", "patience", "threads", "k_folds"):
            if getattr(self, key) < 1:
                raise ParameterError(f"{key}={getattr(self, key)} must be at least 1")
        if self.patch_size < 16 or self.patch_size % 16:
            raise ParameterError(f"patch_size={self.patch_size} must be a multiple of 16, at least 16")
        if self.freeze_stages < 0:
            raise ParameterError(f"freeze_stages={self.freeze_stages} must be >= 0")
        if not self.lr > 0:
            raise ParameterError(f"lr={self.lr} must be positive")
        if self.normalization not in NORMALIZATIONS:
            raise ParameterError(f"normalization={self.normalization!r} must be one of {NORMALIZATIONS}")
        if self.tile_size % 16 or self.tile_size <= 2 * self.halo:
            raise ParameterError(f"tile_size={self.tile_size} must be a multiple of 16 larger than 2*halo={2 * self.halo}")


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    package_path : the new bioimage.io package folder in the registry.
    report_path : the QC report's main page (``report.md``; ``report.html`` and PNGs beside it).
    metrics : held-out test metrics, k-fold summary, history and split sizes (JSON-able).
    """

    package_path: Path
    report_path: Path
    metrics: dict
