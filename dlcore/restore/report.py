"""The QC report of a prediction model: files written into its package's ``report/`` folder.

- ``metrics.csv``: one row per held-out image and predictor (the model and the baselines): PSNR, SSIM,
  Pearson r, NRMSE, MAE;
- ``error_map_<n>.png``: per held-out image (at most four): input, target, prediction and
  ``|prediction - target|`` with a colour bar;
- ``learning_curves.png``: training and validation loss per epoch, the kept epoch marked;
- ``qc.json``: the summary figures, the split and the history.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from dlcore.restore.metrics import METRICS, Evaluation, error_map
from dlcore.train.report import plot_learning_curves

MAX_ERROR_MAPS = 4


def write_metrics_csv(evaluation: Evaluation, path: Path) -> str:
    """``metrics.csv`` (image, predictor, the metrics); returns the path."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "predictor", *METRICS])
        for row in evaluation.rows:
            writer.writerow([row["image"], row["predictor"], *(f"{row[m]:.6g}" for m in METRICS)])
    return str(path)


def write_qc_report(folder: str | Path, trained, evaluation: Evaluation | None, *,
                    extra: dict | None = None) -> list[str]:
    """Write the QC files (see the module docstring) into ``folder``; returns their names relative to it.

    ``evaluation`` None (Noise2Void on real data: no clean targets) writes the learning curves and
    ``qc.json`` only.  ``extra`` is added to ``qc.json`` (e.g. a synthetic-noise check).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    curves = plot_learning_curves(trained.history, folder / "learning_curves.png", loss_label=f"{trained.loss} loss")
    names = [curves.name]
    if evaluation is not None:
        names.append(Path(write_metrics_csv(evaluation, folder / "metrics.csv")).name)
        by_name = {im.name: im for im in trained.split.test}
        for i, (image_name, prediction) in enumerate(list(evaluation.predictions.items())[:MAX_ERROR_MAPS]):
            image = by_name.get(image_name)
            if image is None:
                continue
            path = error_map(prediction, image.target, folder / f"error_map_{i + 1}.png", source=image.source,
                             title=f"held-out {image_name} (never trained on)")
            names.append(Path(path).name)
    qc = {"mode": trained.mode, "loss": trained.loss, "split": trained.split.describe(), "history": trained.history,
          "heldout": None if evaluation is None else evaluation.summary,
          "data_range": None if evaluation is None else evaluation.data_range, **(extra or {})}
    (folder / "qc.json").write_text(json.dumps(qc, indent=2, default=float))
    names.append("qc.json")
    return names


__all__ = ["write_qc_report", "write_metrics_csv"]
