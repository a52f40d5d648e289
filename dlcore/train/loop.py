"""The training loop: models from scratch or from a registered package, freezing, early stopping.

Segmentation models learn from random tiles of the training images (augmented), classifiers from
random crops of the training patches.  After every epoch the loss on fixed validation tiles
decides early stopping, and the weights of the best epoch are kept.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError, ParameterError
from dlcore.train.augment import augment
from dlcore.train.data import AnnotatedDataset
from dlcore.train.spec import TrainSpec
from dlcore.train.targets import (center_crop, grid_crops, instance_targets, normalize, random_crops, resize_tile,
                                  two_channel_targets, whole_image_normalized)

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch curves and the epoch whose weights were kept."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "val_accuracy": self.val_accuracy,
                "best_epoch": self.best_epoch, "epochs_run": len(self.train_loss),
                "stopped_early": self.stopped_early, "seconds": round(self.seconds, 1)}


def n_outputs(dataset: AnnotatedDataset) -> int:
    """Network outputs: classes + background (semantic), 2 (instances: foreground, boundary), classes."""
    if dataset.task == "semantic":
        return len(dataset.classes) + 1
    if dataset.task == "instances":
        return 2
    return len(dataset.classes)


def architecture_for(spec: TrainSpec, in_channels: int, n_out: int) -> tuple[str, dict]:
    """The architecture (callable name, kwargs) of a model trained from scratch."""
    if spec.task == "classification":
        return "PatchClassifier", {"in_channels": in_channels, "n_classes": n_out,
                                   "width": spec.classifier_width, "depth": spec.classifier_depth}
    return "UNet2D", {"in_channels": in_channels, "out_channels": n_out, "channels": list(spec.channels)}


def build_model(callable_name: str, kwargs: dict):
    """Instantiate an architecture of :mod:`dlcore.models.architectures`."""
    from dlcore.models import architectures

    if callable_name not in ("UNet2D", "PatchClassifier"):
        raise ModelError(f"architecture {callable_name!r} is not one dlcore can train (UNet2D, PatchClassifier)")
    return getattr(architectures, callable_name)(**kwargs)


# -- base models from the registry ---------------------------------------------------------------
def load_base_model(name: str, registry: Path, *, n_out: int, in_channels: int):
    """A registered model's network with its weights, the head resized to ``n_out`` outputs.

    Returns
    -------
    (model, (callable_name, kwargs), rdf) ; layers whose shapes changed (the head) start fresh.
    """
    import torch

    from dlcore.train.registry_io import find_package, read_rdf, state_dict_entry

    folder = find_package(name, registry)
    rdf = read_rdf(folder)
    callable_name, kwargs, weights_file = state_dict_entry(rdf, folder)
    kwargs = dict(kwargs)
    if kwargs.get("in_channels", in_channels) != in_channels:
        raise ParameterError(f"base model {name!r} takes {kwargs['in_channels']} input channels; the data have {in_channels}")
    kwargs["n_classes" if callable_name == "PatchClassifier" else "out_channels"] = n_out
    model = build_model(callable_name, kwargs)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    log.info("base model %s: %d of %d tensors loaded (%s start fresh)", name, len(kept), len(own),
             ", ".join(sorted(set(own) - set(kept))) or "none")
    return model, (callable_name, kwargs), rdf


def freeze_stages(model, n: int) -> list:
    """Freeze the first ``n`` encoder stages (no gradients, normalisation statistics fixed)."""
    stages = list(model.encoder_stages)
    if n > len(stages):
        raise ParameterError(f"freeze_stages={n}, but the model has {len(stages)} encoder stages")
    for stage in stages[:n]:
        stage.requires_grad_(False)
        stage.eval()
    return stages[:n]


# -- batches -------------------------------------------------------------------------------------
class Batches:
    """Training batches and fixed validation batches drawn from a dataset."""

    def __init__(self, dataset: AnnotatedDataset, spec: TrainSpec, rng: np.random.Generator) -> None:
        self.dataset, self.spec, self.rng = dataset, spec, rng
        self.class_index = {c: i for i, c in enumerate(dataset.classes)}
        if dataset.task == "instances":
            self.targets = [instance_targets(s.mask, boundary_width=spec.boundary_width) for s in dataset.samples]
        elif dataset.task == "semantic":
            self.targets = [s.mask.astype(np.int64) for s in dataset.samples]
        else:
            self.targets = [None] * len(dataset.samples)
        # percentile statistics are the whole image's (as the engine's are the slide's), never a tile's
        self.images = [whole_image_normalized(s.image, spec.normalization) for s in dataset.samples]
        areas = np.array([s.image.shape[0] * s.image.shape[1] for s in dataset.samples], float)
        self.weights = areas / areas.sum() if dataset.task != "classification" else None

    def _pair(self, index: int, image: np.ndarray, target):
        x = normalize(image, "scale_0_1" if self.spec.normalization == "percentile" else self.spec.normalization)
        if self.dataset.task == "classification":
            return x, self.class_index[self.dataset.samples[index].label]
        if self.dataset.task == "instances":
            return x, two_channel_targets(target)
        return x, np.ascontiguousarray(target, dtype=np.int64)

    def _training_tile(self, index: int):
        """One augmented ``(image, target)`` training tile of sample ``index`` (the patch size)."""
        size, augment_spec, rng = self.spec.patch_size, self.spec.augment, self.rng
        zoom = float(np.exp(rng.uniform(-1, 1) * np.log1p(augment_spec.scale_jitter))) if augment_spec.scale_jitter else 1.0
        side = max(8, int(round(size / zoom)))
        sample = self.dataset.samples[index]
        ids = sample.mask if self.dataset.task == "instances" else None
        image, target, ids = random_crops(self.images[index], self.targets[index], ids, side, rng)
        if (ids is not None and image.shape[-1] == 3 and image.dtype == np.uint8
                and augment_spec.ihc_probability and rng.random() < augment_spec.ihc_probability):
            from dlcore.train.restain import as_ihc

            image = as_ihc(image, ids, rng)
        if side != size:
            image, target = resize_tile(image, target, size)
        return augment(image, target, rng, augment_spec)

    def train_batch(self):
        """A batch ``(x (B, C, P, P) float32, y)`` of augmented random tiles or patches."""
        xs, ys = [], []
        n = len(self.dataset.samples)
        picks = self.rng.choice(n, self.spec.batch_size, p=self.weights) if self.weights is not None \
            else self.rng.integers(0, n, self.spec.batch_size)
        for i in picks:
            image, target = self._training_tile(int(i))
            x, y = self._pair(i, image, target)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.asarray(ys) if self.dataset.task == "classification" else np.stack(ys)

    def fixed_batches(self, *, limit: int = 64):
        """Deterministic, unaugmented batches covering the dataset (grid tiles, or centre crops)."""
        pairs = []
        for i, sample in enumerate(self.dataset.samples):
            if self.dataset.task == "classification":
                pairs.append(self._pair(i, center_crop(self.images[i], self.spec.patch_size), None))
            else:
                per = max(limit // len(self.dataset.samples), 1)
                pairs += [self._pair(i, im, t) for im, t in grid_crops(self.images[i], self.targets[i],
                                                                        self.spec.patch_size, limit=per)]
        b = self.spec.batch_size
        for start in range(0, len(pairs), b):
            chunk = pairs[start:start + b]
            yield np.stack([p[0] for p in chunk]), np.asarray([p[1] for p in chunk])


def loss_function(task: str):
    """Cross-entropy; for instances binary cross-entropy per channel (foreground, boundary), the
    boundary's positives weighted x3 so that the thin rims are learned."""
    import torch

    if task == "instances":
        return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 3.0]).view(2, 1, 1))
    return torch.nn.CrossEntropyLoss()


def _correct(out, y) -> tuple[int, int]:
    """Correct pixels/patches and their count (instances: thresholded sigmoid channels)."""
    if out.shape == y.shape:
        return int(((out > 0).float() == y).sum()), y.numel()
    return int((out.argmax(1) == y).sum()), y.numel()


def _evaluate_loss(model, batches, criterion) -> tuple[float, float]:
    import torch

    model.eval()
    total, n, correct, count = 0.0, 0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            out = model(x)
            total += float(criterion(out, y)) * len(x)
            n += len(x)
            c, m = _correct(out, y)
            correct += c
            count += m
    return total / max(n, 1), correct / max(count, 1)


def train_network(model, train: AnnotatedDataset, val: AnnotatedDataset | None, spec: TrainSpec, *,
                  frozen: int = 0, progress=None, stage: str = "train"):
    """Train ``model`` in place; returns the :class:`History` (the best epoch's weights are loaded).

    Parameters
    ----------
    frozen : the first N encoder stages stay frozen (see :func:`freeze_stages`).
    progress : ``(stage, done, total)`` callback, called once per epoch.
    """
    import torch

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    frozen_stages = freeze_stages(model, frozen) if frozen else []
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs, eta_min=spec.lr * 0.05)
    criterion = loss_function(spec.task)
    batches = Batches(train, spec, rng)
    val_batches = list(Batches(val, spec, rng).fixed_batches()) if val is not None and val.samples else None
    history, best, best_state, bad = History(), np.inf, None, 0
    started = time.monotonic()
    for epoch in range(spec.epochs):
        model.train()
        for s in frozen_stages:
            s.eval()
        losses = []
        for _ in range(spec.steps_per_epoch):
            x, y = batches.train_batch()
            optimizer.zero_grad()
            loss = criterion(model(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        history.train_loss.append(float(np.mean(losses)))
        if val_batches:
            val_loss, val_acc = _evaluate_loss(model, val_batches, criterion)
        else:
            val_loss, val_acc = history.train_loss[-1], float("nan")
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_acc)
        if val_loss < best - spec.min_delta:
            best, bad, history.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        log.info("%s epoch %d: train %.4f val %.4f acc %.3f", stage, epoch + 1, history.train_loss[-1], val_loss, val_acc)
        if progress:
            progress(stage, epoch + 1, spec.epochs)
        if bad >= spec.patience:
            history.stopped_early = True
            break
        if spec.max_seconds and time.monotonic() - started > spec.max_seconds:
            history.stopped_early = True
            log.warning("%s: time limit of %.0f s reached after %d epochs", stage, spec.max_seconds, epoch + 1)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.monotonic() - started
    if progress and len(history.train_loss) < spec.epochs:
        progress(stage, spec.epochs, spec.epochs)
    return history
