"""``train_model``: from an annotated dataset to a new, versioned model package with a QC report.

Steps: image-level split (train / validation / held-out test, by group) → optional k-fold
cross-validation on the non-test part → the final training (from scratch, or from a registered
model with its first N encoder stages frozen) with early stopping on the validation loss →
evaluation on the held-out test images → QC report → bioimage.io package in the registry
(``name`` or ``name-vN``), whose card holds the training data, the test metrics and the limits.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlcore.errors import InputError, ParameterError
from dlcore.train.data import AnnotatedDataset, describe
from dlcore.train.evaluate import evaluate, headline, instance_postprocess, tune_postprocess
from dlcore.train.metrics import summarise_folds
from dlcore.train.spec import TrainResult, TrainSpec
from dlcore.train.splits import kfold_by_group, split_by_group

__all__ = ["TrainSpec", "TrainResult", "train_model"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


def _make_model(dataset: AnnotatedDataset, spec: TrainSpec, registry: Path, base_model: str | None):
    """``(model, (callable, kwargs), base rdf or None)``, seeded for reproducibility."""
    import torch

    from dlcore.train.loop import architecture_for, build_model, load_base_model, n_outputs

    torch.manual_seed(spec.seed)
    in_channels = dataset.samples[0].image.shape[-1]
    if base_model:
        return load_base_model(base_model, registry, n_out=n_outputs(dataset), in_channels=in_channels)
    arch = architecture_for(spec, in_channels, n_outputs(dataset))
    return build_model(*arch), arch, None


def _check(dataset: AnnotatedDataset, spec: TrainSpec, base_model: str | None) -> None:
    if not dataset.samples:
        raise InputError("the dataset has no samples; annotate at least a few images")
    if spec.task != dataset.task:
        raise ParameterError(f"spec.task={spec.task!r} but the dataset is for {dataset.task!r}")
    if spec.freeze_stages and not base_model:
        raise ParameterError(f"freeze_stages={spec.freeze_stages} needs a base model to start from (--base-model NAME)")
    channels = {s.image.shape[-1] for s in dataset.samples}
    if len(channels) != 1:
        raise ParameterError(f"all images must have the same number of channels; found {sorted(channels)}")


def _cross_validate(dataset, pool, spec, registry, base_model, progress) -> dict:
    pool_ds = dataset.subset(pool)
    folds = kfold_by_group(pool_ds.groups, spec.k_folds, seed=spec.seed)
    results = []
    for f, (tr, va) in enumerate(folds):
        from dlcore.train.loop import train_network

        model, _, _ = _make_model(dataset, spec, registry, base_model)
        history = train_network(model, pool_ds.subset(tr), pool_ds.subset(va), spec, frozen=spec.freeze_stages,
                                progress=progress, stage=f"fold {f + 1}/{spec.k_folds}")
        metrics, _ = evaluate(model, pool_ds.subset(va), spec)
        results.append({**headline(metrics, dataset.task), "epochs_run": len(history.train_loss)})
    keys = [k for k in results[0] if k != "epochs_run"]
    return {"k": spec.k_folds, "folds": results, "summary": summarise_folds(results, keys)}


def _dataset_mpp(dataset: AnnotatedDataset) -> float | None:
    values = [s.mpp for s in dataset.samples]
    return float(np.median(values)) if all(v is not None for v in values) else None


def dlcore_config(dataset: AnnotatedDataset, spec: TrainSpec, post: dict | None = None) -> dict:
    """The ``config.dlcore`` block of the package (see :mod:`dlcore.models.spec`); ``post``: the
    instance watershed settings (default :func:`~dlcore.train.evaluate.instance_postprocess`)."""
    dtype = dataset.samples[0].image.dtype
    max_value = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    cfg = {"name": spec.name, "mpp": _dataset_mpp(dataset), "tile_size": spec.tile_size, "halo": spec.halo,
           "normalization": {"type": spec.normalization, "max_value": max_value},
           "classes": list(dataset.classes)}
    if dataset.task == "semantic":
        cfg.update(kind="semantic", output_activation="softmax")
    elif dataset.task == "instances":
        cfg.update(kind="instances", output_activation="sigmoid",
                   postprocess=post or instance_postprocess(spec))
    else:
        tile = spec.patch_size * max(1, spec.tile_size // spec.patch_size)
        cfg.update(kind="patch_classification", output_activation="softmax", patch_size=spec.patch_size,
                   tile_size=tile, halo=0)
        if "background" in dataset.classes:
            cfg["background_class"] = "background"
    return cfg


def _test_input(dataset: AnnotatedDataset, spec: TrainSpec, divisor: int) -> np.ndarray:
    from dlcore.train.targets import center_crop, pad_to

    image = dataset.samples[0].image
    if dataset.task == "classification":
        return center_crop(image, spec.patch_size)
    side = max(divisor, min(256, image.shape[0], image.shape[1]) // divisor * divisor)
    return pad_to(image, side, side)[:side, :side]


def _cover(test: AnnotatedDataset, predictions: dict, fallback: AnnotatedDataset) -> np.ndarray:
    from dlcore.train.report import _display, error_overlay

    if test.samples and test.task != "classification":
        s = test.samples[0]
        img = error_overlay(s.image, s.mask, predictions["maps"][0], test.task)
    else:
        img = _display((test.samples or fallback.samples)[0].image)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def card_markdown(spec: TrainSpec, dataset: AnnotatedDataset, split_sizes: dict, summary: dict, test: dict,
                  kfold: dict | None, history: dict, base_model: str | None, test_summary: dict | None = None) -> str:
    """The model card: what, trained on what, how well on held-out data, limits, how to reproduce."""
    lines = [f"# {spec.name}", "", spec.description or f"A {spec.task} model trained with dlcore.", "",
             "## Training data", "", spec.training_data or "(no description given)", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items()]
    lines += [f"- split (image-level, by group): {split_sizes}", ""]
    lines += ["## Training", "",
              f"- start: {'from the registered model ' + repr(base_model) if base_model else 'from scratch'}"
              + (f", first {spec.freeze_stages} encoder stage(s) frozen" if spec.freeze_stages else ""),
              f"- epochs run: {history['epochs_run']} of {spec.epochs} (kept epoch {history['best_epoch'] + 1}, "
              f"early stopping patience {spec.patience}), {spec.steps_per_epoch} steps x batch {spec.batch_size}, "
              f"patch {spec.patch_size} px, AdamW lr {spec.lr}",
              f"- augmentations: {dataclasses.asdict(spec.augment)}",
              f"- training time: {history['seconds']:.0f} s on CPU ({spec.threads} threads)"]
    tuning = history.get("postprocess_tuning")
    if tuning:
        best = max(row["f1"] for row in tuning["grid"])
        lines.append(f"- watershed settings chosen on the validation images (best F1 {best:.3f} over boundary "
                     f"thresholds {sorted({r['boundary_threshold'] for r in tuning['grid']})} x seed sizes "
                     f"{sorted({r['min_seed_size'] for r in tuning['grid']})}): {tuning['chosen']}")
    lines.append("")
    lines += ["## Validation (held-out test split)", ""]
    if test:
        lines += ["Measured on the held-out test images only (never seen in training or early stopping):", "",
                  "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in headline(test, spec.task).items()]
        for per in ("iou", "dice", "roc_auc", "recall"):
            if isinstance(test.get(per), dict):
                lines += [f"| {per} [{c}] | {_fmt(v)} |" for c, v in test[per].items()]
        if spec.task == "instances":
            lines += [f"| matched / true / predicted objects (IoU≥0.5) | {test['tp']} / {test['n_true']} / "
                      f"{test['n_pred']} |"]
        if test_summary:
            counts = {k: v for k, v in test_summary.items() if k in ("samples", "groups", "per_class", "objects",
                                                                       "pixels_per_class")}
            lines += ["", f"Test set: {counts}."]
    else:
        lines.append("No test split was held out (test_fraction=0): there is no independent figure of merit.")
    if kfold:
        lines += ["", f"{kfold['k']}-fold cross-validation on the non-test images (mean ± sd; each fold's "
                  "validation images also decided its early stopping, so these are slightly optimistic):", ""]
        lines += [f"- {k}: {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in kfold["summary"].items()]
    lines += ["", "The QC report (learning curves, confusion matrix, overlays with errors marked) is in `report/`.", "",
              "## Limits", "", spec.limits or "Trained on few images; check it on your own data before use.", ""]
    if spec.reproduce:
        lines += ["## Reproduce", "", f"`{spec.reproduce}`", ""]
    return "\n".join(lines)


def _package_folder(spec: TrainSpec, registry: Path) -> tuple[str, Path]:
    from dlcore.train.registry_io import next_version

    version, folder = next_version(spec.name, registry)
    return (spec.version or version), registry / folder


def train_model(dataset: AnnotatedDataset, *, spec: TrainSpec, out_registry: Path, base_model: str | None = None,
                progress: Progress | None = None, owner: dict | None = None) -> TrainResult:
    """Train a model on ``dataset`` and add it to the registry as a new package version.

    Parameters
    ----------
    dataset : the annotated images (its ``task`` must equal ``spec.task``).
    spec : every training setting (:class:`TrainSpec`).
    out_registry : the registry folder the package is written into (``name/`` or ``name-vN/``).
    base_model : a registered model to start from (transfer learning), by name in ``out_registry`` or
        as a package folder's absolute path; None trains from scratch.
    progress : ``(stage, done, total)`` callback.
    owner : the ``owner.json`` record (:mod:`dlcore.models.ownership`) written into the package before
        it appears in the registry; None for a model without owner (shared).

    The version is chosen and the package written under the registry's lock
    (:func:`~dlcore.train.registry_io.registry_lock`), so concurrent trainings never collide.

    Returns
    -------
    TrainResult with the package folder, the report's main page (``report/report.md`` in the
    package) and the metrics.
    """
    import torch

    from dlcore.models.ownership import OWNER_FILE
    from dlcore.models.package import write_package
    from dlcore.train.registry_io import registry_lock
    from dlcore.train.loop import train_network
    from dlcore.train.report import write_report

    _check(dataset, spec, base_model)
    registry = Path(out_registry)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    started = time.monotonic()
    try:
        split = split_by_group(dataset.groups, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                               seed=spec.seed, test_groups=spec.test_groups)
        sizes = {part: {"samples": len(idx), "groups": len({dataset.groups[i] for i in idx})}
                 for part, idx in (("train", split.train), ("val", split.val), ("test", split.test))}
        kfold = (_cross_validate(dataset, split.train + split.val, spec, registry, base_model, progress)
                 if spec.k_folds > 1 else None)
        model, arch, _ = _make_model(dataset, spec, registry, base_model)
        train, val, test = (dataset.subset(i) for i in (split.train, split.val, split.test))
        history = train_network(model, train, val if split.val else None, spec, frozen=spec.freeze_stages,
                                progress=progress, stage="train").as_dict()
        post, tuning = None, None
        if dataset.task == "instances" and spec.tune_postprocess and split.val:
            if progress:
                progress("tune post-processing", 0, 1)
            post, grid = tune_postprocess(model, val, spec)
            tuning = {"chosen": {k: post[k] for k in ("boundary_threshold", "min_seed_size")}, "grid": grid}
            history["postprocess_tuning"] = tuning
        if progress:
            progress("evaluate", 0, 1)
        test_metrics, predictions = evaluate(model, test, spec, post) if split.test else ({}, {})
        if progress:
            progress("evaluate", 1, 1)
        summary = describe(dataset)
        with registry_lock(registry):  # choose the version and write it, atomically for other trainings
            version, folder = _package_folder(spec, registry)
            card = card_markdown(spec, dataset, sizes, summary, test_metrics, kfold, history, base_model,
                                 describe(test) if test.samples else None)
            metrics = {"test": headline(test_metrics, spec.task) if test_metrics else None,
                       "kfold": kfold["summary"] if kfold else None, "split": sizes,
                       "epochs_run": history["epochs_run"], "train_seconds": history["seconds"],
                       "postprocess_tuning": tuning}
            training_data = {"description": spec.training_data, "samples": summary["samples"],
                             "groups": summary["groups"], "classes": list(dataset.classes),
                             "base_model": base_model, "freeze_stages": spec.freeze_stages,
                             "spec": {k: v for k, v in dataclasses.asdict(spec).items()
                                      if k not in ("description", "training_data", "limits")}}
            package = write_package(
                folder, name=spec.name, description=spec.description or f"{spec.task} model trained with dlcore",
                model=model, architecture=arch, dlcore_config=dlcore_config(dataset, spec, post),
                test_input=_test_input(test if test.samples else train, spec, int(getattr(model, "divisor", 1))),
                cover=_cover(test, predictions, train), card_markdown=card, authors=list(spec.authors),
                tags=list(spec.tags) or ["dlcore", spec.task], version=version,
                training_data=json.loads(json.dumps(training_data, default=str)),
                metrics=json.loads(json.dumps(metrics, default=str)), license=spec.license,
                extra_files={OWNER_FILE: json.dumps(owner, indent=2)} if owner else None)
        if progress:
            progress("report", 0, 1)
        report = write_report(package / "report", title=f"QC report: {spec.name} {version}",
                              summary={"task": spec.task, "base model": base_model or "none (from scratch)",
                                       "frozen encoder stages": spec.freeze_stages, "split": sizes,
                                       "package": package.name},
                              test=test, metrics=test_metrics, predictions=predictions, history=history,
                              kfold=kfold)
        if progress:
            progress("report", 1, 1)
    finally:
        torch.set_num_threads(threads)
    log.info("trained %s %s in %.0f s -> %s", spec.name, version, time.monotonic() - started, package)
    all_metrics = {"test": test_metrics, "kfold": kfold, "history": history, "split": sizes, "version": version}
    return TrainResult(package_path=package, report_path=report, metrics=all_metrics)

