"""Training prediction networks: Noise2Void, CARE and image translation on dlcore's U-Net.

:func:`train_image_model` draws random patches from the training images (flips and 90-degree
rotations), trains :class:`dlcore.models.architectures.UNet2D` with Adam (cosine learning-rate decay),
measures the loss on fixed validation crops after every epoch, stops early when it no longer improves
and keeps the best epoch's weights.

- ``n2v`` (Noise2Void): input = the noisy patch with blind-spot pixels replaced
  (:mod:`dlcore.restore.masking`), target = the noisy patch, loss on the masked pixels only;
- ``care``: input = the low-quality image, target = the high-quality one (both percentile-normalised);
- ``translate``: input = one image, target = another (a stain, a modality), on its own scale or
  percentile-normalised.

The network is dlcore's own (plain PyTorch, copied into every package as its architecture source), so
the package runs in bioimage.io tools without dlcore; CAREamics was not used (see :mod:`dlcore.restore`).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dlcore.errors import ParameterError
from dlcore.restore.data import (ImagePair, PreparedImage, Split, check_mode, prepare_images, random_patch,
                                 split_images, validation_crops)
from dlcore.restore.losses import check_loss, make_loss, masked_loss
from dlcore.restore.masking import BlindSpotMasking, mask_patch

log = logging.getLogger(__name__)

ACTIVATIONS = ("none", "sigmoid")
N2V_VALIDATION_MASKS = 8


@dataclass(frozen=True)
class ImageTrainingOptions:
    """The settings of a training run (recorded in the package).

    Attributes
    ----------
    epochs, steps_per_epoch, batch_size, lr : optimisation (Adam, cosine decay to 5 % of ``lr``).
    patch_size : side of the training patches, pixels (a multiple of the U-Net's divisor).
    loss : ``l1``, ``mse``, ``ssim`` or ``l1+ssim``; None: the mode's default (n2v mse, care l1,
        translate l1+ssim; Noise2Void takes mse or l1 only).
    channels : the U-Net's widths, shallow to deep (``len - 1`` poolings).
    norm : the U-Net's normalisation layers: ``batch``, ``instance`` or ``none``.
    final_activation : ``none``, or ``sigmoid`` for targets on a 0-1 scale (the outputs then stay in it).
    target_normalization : ``percentile`` (per image, 1 / 99.8 %) or ``none`` (targets kept as they are).
    percentiles : the normalisation's low and high percentiles.
    val_fraction, test_fraction : held out (by image; by vertical strips when there is one image).
    patience, min_delta : early stopping on the validation loss.
    seed : seeds the split, the patches, the masks and the initialisation.
    threads : torch CPU threads while training.
    augment : flips and 90-degree rotations of the patches.
    mask_fraction, mask_neighbourhood : Noise2Void's masked fraction (0.2 %) and window (5 x 5).
    val_crop : side of the validation crops.
    max_seconds : stop (keeping the best epoch) after this long; None: no limit.
    """

    epochs: int = 40
    steps_per_epoch: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    patch_size: int = 64
    loss: str | None = None
    channels: tuple[int, ...] = (16, 32, 64)
    norm: str = "batch"
    final_activation: str = "none"
    target_normalization: str = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    patience: int = 8
    min_delta: float = 0.0
    seed: int = 0
    threads: int = 2
    augment: bool = True
    mask_fraction: float = 0.002
    mask_neighbourhood: int = 5
    val_crop: int = 256
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for key in ("epochs", "steps_per_epoch", "batch_size", "patch_size", "threads", "val_crop"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ParameterError(f"{key}={getattr(self, key)!r} must be a positive integer")
        if not self.lr > 0:
            raise ParameterError(f"lr={self.lr} must be positive")
        if self.final_activation not in ACTIVATIONS:
            raise ParameterError(f"final_activation={self.final_activation!r} must be one of {ACTIVATIONS}")
        divisor = 2 ** (len(self.channels) - 1)
        if self.patch_size % divisor or self.patch_size < 16:
            raise ParameterError(f"patch_size={self.patch_size} must be at least 16 and a multiple of {divisor} "
                                 f"(the U-Net with widths {tuple(self.channels)} pools {len(self.channels) - 1} times)")
        BlindSpotMasking(self.mask_fraction, self.mask_neighbourhood)  # checks them

    def as_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["percentiles"] = list(self.percentiles)
        return out


@dataclass(frozen=True)
class TrainedImageModel:
    """A trained prediction network and everything its package records.

    Attributes
    ----------
    model : the torch module (CPU, eval mode), an instance of ``architecture``'s class.
    architecture : ``(callable name, kwargs)`` in :mod:`dlcore.models.architectures`.
    mode, loss : what was trained, with which loss.
    options : the :class:`ImageTrainingOptions`.
    split : the images trained on, validated on (early stopping) and held out for QC.
    history : per-epoch losses, the kept epoch, seconds.
    in_channels, out_channels : the network's.
    source_dtype : the pixel type of the training inputs.
    target_low, target_high : the training targets' median per-channel percentiles (how a translation's
        percentile-normalised output maps back to target units); 0 and 1 for targets kept as they are.
    """

    model: object = field(repr=False)
    architecture: tuple[str, dict]
    mode: str
    loss: str
    options: ImageTrainingOptions
    split: Split = field(repr=False)
    history: dict
    in_channels: int
    out_channels: int
    source_dtype: str
    target_low: tuple[float, ...]
    target_high: tuple[float, ...]

    def predict(self, image: PreparedImage | np.ndarray) -> np.ndarray:
        """The network's ``(C_out, Y, X)`` output (normalised target units) for a prepared image or a
        normalised ``(C, Y, X)`` array."""
        from dlcore.restore.inference import predict_normalized

        x = image.source if isinstance(image, PreparedImage) else image
        return predict_normalized(self.model, np.asarray(x, np.float32))


def architecture_for(in_channels: int, out_channels: int, options: ImageTrainingOptions) -> tuple[str, dict]:
    """The U-Net (callable name, JSON kwargs) for these channels and options."""
    return "UNet2D", {"in_channels": int(in_channels), "out_channels": int(out_channels),
                      "channels": [int(c) for c in options.channels], "norm": options.norm,
                      "final_activation": options.final_activation}


class _Patches:
    """Training batches (random, augmented patches) and fixed validation batches."""

    def __init__(self, split: Split, mode: str, options: ImageTrainingOptions, rng: np.random.Generator) -> None:
        self.mode, self.options, self.rng = mode, options, rng
        size = options.patch_size
        self.train = [im for im in split.train if im.height >= size and im.width >= size]
        if not self.train:
            sizes = ", ".join(f"{im.name} {im.width}x{im.height}" for im in split.train)
            raise ParameterError(f"no training image holds a {size} px patch ({sizes}); use a smaller patch size")
        areas = np.array([(im.height - size + 1) * (im.width - size + 1) for im in self.train], float)
        self.weights = areas / areas.sum()
        self.masking = BlindSpotMasking(options.mask_fraction, options.mask_neighbourhood)

    def _masked(self, x: np.ndarray, rng: np.random.Generator):
        masked = mask_patch(x, self.masking, rng)
        return masked.input, masked.mask

    def batch(self):
        """``(input, target, mask or None)`` numpy arrays for one step."""
        xs, ys, ms = [], [], []
        for i in self.rng.choice(len(self.train), self.options.batch_size, p=self.weights):
            x, y = random_patch(self.train[int(i)], self.options.patch_size, self.rng, augment=self.options.augment)
            if self.mode == "n2v":
                x, mask = self._masked(x, self.rng)
                ms.append(mask)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys), (np.stack(ms) if ms else None)


def _fixed_crops(images: Sequence[PreparedImage], mode: str, options: ImageTrainingOptions):
    """Fixed ``[(input, target, mask or None)]`` crops for validation and test losses.  Noise2Void's masks
    are drawn once (a generator seeded with ``options.seed + 1``), ``N2V_VALIDATION_MASKS`` per crop: at
    0.2 % one mask holds too few pixels for a steady loss."""
    rng = np.random.default_rng(options.seed + 1)
    masking = BlindSpotMasking(options.mask_fraction, options.mask_neighbourhood)
    out = []
    for x, y in validation_crops(images, options.val_crop):
        if mode != "n2v":
            if min(x.shape[1:]) >= 11:  # SSIM's window
                out.append((x, y, None))
            continue
        for _ in range(N2V_VALIDATION_MASKS):
            masked = mask_patch(x, masking, rng)
            out.append((masked.input, y, masked.mask))
    return out


def _criterion(mode: str, loss: str):
    if mode == "n2v":
        return lambda pred, target, mask: masked_loss(pred, target, mask, loss)
    base = make_loss(loss, data_range=1.0)
    return lambda pred, target, mask: base(pred, target)


def _validation_loss(model, crops, criterion) -> float:
    """The pixel-weighted mean loss over the validation crops (each padded to the divisor, cropped back)."""
    import torch

    from dlcore.restore.inference import pad_reflect, valid_size

    model.eval()
    divisor = int(getattr(model, "divisor", 1))
    total, weight = 0.0, 0
    with torch.no_grad():
        for x, y, mask in crops:
            h, w = x.shape[1:]
            padded = pad_reflect(x, valid_size(h, divisor), valid_size(w, divisor))
            pred = model(torch.from_numpy(np.ascontiguousarray(padded[None])))[:, :, :h, :w]
            m = None if mask is None else torch.from_numpy(mask[None])
            n = int(mask.sum()) if mask is not None else h * w
            total += float(criterion(pred, torch.from_numpy(np.ascontiguousarray(y[None])), m)) * n
            weight += n
    return total / max(weight, 1)


def train_image_model(images: Sequence[ImagePair] | Split, *, mode: str, options: ImageTrainingOptions | None = None,
                      progress=None) -> TrainedImageModel:
    """Train a prediction network (see the module docstring).

    Parameters
    ----------
    images
        The training images as read (:class:`~dlcore.restore.data.ImagePair`; normalised and split here
        with ``options``), or a ready :class:`~dlcore.restore.data.Split` of prepared images (a recipe's
        own split).
    mode
        ``n2v``, ``care`` or ``translate``.
    options
        :class:`ImageTrainingOptions` (defaults when None).
    progress
        ``(stage, done, total)`` callback, called once per epoch (:mod:`dlcore.progress`).

    Returns
    -------
    TrainedImageModel
        The network with the best validation loss, the split and the history.

    Raises
    ------
    ParameterError
        When the options do not fit the mode or the images.
    InputError
        When the images are unusable (missing targets, mismatched channels).
    """
    import torch

    from dlcore.train.loop import History, build_model

    check_mode(mode)
    options = options or ImageTrainingOptions()
    loss_name = check_loss(options.loss, mode)
    if isinstance(images, Split):
        split = images
    else:
        prepared = prepare_images(images, mode=mode, target_normalization=options.target_normalization,
                                  percentiles=options.percentiles)
        split = split_images(prepared, val_fraction=options.val_fraction, test_fraction=options.test_fraction,
                             seed=options.seed, min_width=options.patch_size)
    if not split.train:
        raise ParameterError("the split left no training image")
    first = split.train[0]
    in_channels, out_channels = first.source.shape[0], first.target.shape[0]
    if mode == "n2v" and in_channels != out_channels:
        raise ParameterError("Noise2Void predicts its own input: source and target channels must match")
    architecture = architecture_for(in_channels, out_channels, options)

    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        torch.manual_seed(options.seed)
        rng = np.random.default_rng(options.seed)
        model = build_model(*architecture)
        patches = _Patches(split, mode, options, rng)
        val_crops = _fixed_crops(split.val, mode, options)
        criterion = _criterion(mode, loss_name)
        optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs, eta_min=options.lr * 0.05)
        history, best, best_state, bad = History(), np.inf, None, 0
        started = time.monotonic()
        for epoch in range(options.epochs):
            model.train()
            losses = []
            for _ in range(options.steps_per_epoch):
                x, y, mask = patches.batch()
                optimizer.zero_grad()
                pred = model(torch.from_numpy(x))
                loss = criterion(pred, torch.from_numpy(y), None if mask is None else torch.from_numpy(mask))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            scheduler.step()
            history.train_loss.append(float(np.mean(losses)))
            val_loss = _validation_loss(model, val_crops, criterion) if val_crops else history.train_loss[-1]
            history.val_loss.append(val_loss)
            if val_loss < best - options.min_delta:
                best, bad, history.best_epoch = val_loss, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
            log.info("%s epoch %d: train %.5f val %.5f", mode, epoch + 1, history.train_loss[-1], val_loss)
            if progress:
                progress("train", epoch + 1, options.epochs)
            if bad >= options.patience:
                history.stopped_early = True
                break
            if options.max_seconds and time.monotonic() - started > options.max_seconds:
                history.stopped_early = True
                log.warning("time limit of %.0f s reached after %d epochs", options.max_seconds, epoch + 1)
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        history.seconds = time.monotonic() - started
        if progress and len(history.train_loss) < options.epochs:
            progress("train", options.epochs, options.epochs)
    finally:
        torch.set_num_threads(threads)
    record = history.as_dict()
    record.pop("val_accuracy", None)
    record["loss"] = loss_name
    t_low = np.median([im.target_low for im in split.train], axis=0)
    t_high = np.median([im.target_high for im in split.train], axis=0)
    return TrainedImageModel(model=model, architecture=architecture, mode=mode, loss=loss_name, options=options,
                             split=split, history=record, in_channels=int(in_channels), out_channels=int(out_channels),
                             source_dtype=first.dtype, target_low=tuple(map(float, t_low)),
                             target_high=tuple(map(float, t_high)))


def heldout_loss(trained: TrainedImageModel, images: Sequence[PreparedImage] | None = None) -> float | None:
    """The training loss (Noise2Void: on masked pixels) on the held-out ``images`` (default: the split's
    test images); None when there are none."""
    import torch

    images = list(trained.split.test if images is None else images)
    crops = _fixed_crops(images, trained.mode, trained.options)
    if not crops:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(trained.options.threads)
    try:
        return _validation_loss(trained.model, crops, _criterion(trained.mode, trained.loss))
    finally:
        torch.set_num_threads(threads)


__all__ = ["ImageTrainingOptions", "TrainedImageModel", "train_image_model", "architecture_for", "heldout_loss"]
