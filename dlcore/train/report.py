"""The QC report saved with a trained model: PNG plots plus ``report.md`` and ``report.html``.

- ``learning_curves.png``: training and validation loss per epoch (and validation pixel/patch
  accuracy), the kept epoch marked;
- ``confusion_matrix.png``: pixel (semantic) or patch (classification) confusion matrix on the test set;
- ``overlays.png``: test images with predictions, errors marked — semantic: wrong pixels in red;
  instances: matched objects green, false positives red, missed objects blue; classification: the
  test patches titled with truth and prediction, wrong ones framed in red.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from dlcore.train.data import AnnotatedDataset


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: dict, path: Path, *, loss_label: str = "cross-entropy") -> Path:
    """Loss curves (and validation accuracy, when the history has it) per epoch with the kept epoch marked;
    ``loss_label`` names the loss on the y axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train loss")
    ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.axvline(history["best_epoch"] + 1, color="grey", ls=":", label="kept epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_label)
    if np.isfinite(history.get("val_accuracy", [np.nan])).any():
        ax2 = ax.twinx()
        ax2.plot(epochs, history["val_accuracy"], color="tab:green", ls="--", label="validation accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion(cm, names, path: Path, *, title: str) -> Path:
    """A row-normalised confusion matrix with counts."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 2.2 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _display(image: np.ndarray) -> np.ndarray:
    img = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, -1)
    img = img.astype(np.float32)
    return np.clip(img / 255.0 if image.dtype == np.uint8 else img / max(float(img.max()), 1e-6), 0, 1)


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, task: str) -> np.ndarray:
    """An RGB float overlay of a prediction with its errors marked (see the module docstring)."""
    from skimage.segmentation import find_boundaries

    out = _display(image).copy()
    if task == "semantic":
        wrong = (truth != pred)
        out[wrong] = 0.5 * out[wrong] + 0.5 * np.array([1.0, 0.0, 0.0])
        out[find_boundaries(pred, mode="inner")] = [1.0, 1.0, 0.0]
        return out
    from dlcore.train.metrics import instance_iou, match_instances

    iou, t_ids, p_ids = instance_iou(truth, pred)
    pairs = match_instances(iou, 0.5)
    matched_p = {p_ids[c] for _, c in pairs}
    matched_t = {t_ids[r] for r, _ in pairs}
    missed = np.isin(truth, [t for t in t_ids if t not in matched_t]) & (truth > 0)
    out[find_boundaries(np.where(missed, truth, 0), mode="inner")] = [0.1, 0.3, 1.0]
    edges = find_boundaries(pred, mode="inner")
    good = np.isin(pred, list(matched_p))
    out[edges & good] = [0.0, 0.9, 0.0]
    out[edges & ~good & (pred > 0)] = [1.0, 0.0, 0.0]
    return out


def plot_overlays(dataset: AnnotatedDataset, predictions: dict, path: Path, *, limit: int = 6) -> Path:
    """Test images with predictions and errors marked (see the module docstring)."""
    plt = _plt()
    n = min(len(dataset.samples), limit if dataset.task != "classification" else 24)
    cols = min(n, 3 if dataset.task != "classification" else 6)
    rows = int(np.ceil(n / cols))
    scale = 4 if dataset.task != "classification" else 1.8
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.4), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        s, ax = dataset.samples[i], axes.ravel()[i]
        if dataset.task == "classification":
            pred = dataset.classes[int(predictions["proba"][i].argmax())]
            ax.imshow(_display(s.image))
            ax.set_title(f"true {s.label}\npred {pred}", fontsize=7, color="black" if pred == s.label else "red")
            if pred != s.label:
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color("red")
                    spine.set_linewidth(3)
        else:
            ax.imshow(error_overlay(s.image, s.mask, predictions["maps"][i], dataset.task))
            ax.set_title(Path(s.source).name[-40:], fontsize=7)
    legend = {"semantic": "red tint: wrong pixels; yellow: predicted region edges",
              "instances": "green: matched (IoU>=0.5); red: false positive; blue: missed",
              "classification": "red frame/title: misclassified"}[dataset.task]
    fig.suptitle(legend, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def metrics_table(metrics: dict) -> list[tuple[str, str]]:
    """Scalar metrics and per-class dictionaries as (name, value) rows."""
    rows = []
    for key, value in metrics.items():
        if key in ("confusion_matrix", "per_threshold"):
            continue
        if isinstance(value, dict):
            rows += [(f"{key} [{k}]", _fmt(v)) for k, v in value.items()]
        elif not isinstance(value, list):
            rows.append((key, _fmt(value)))
    return rows


def write_report(out_dir: Path, *, title: str, summary: dict, test: AnnotatedDataset, metrics: dict,
                 predictions: dict, history: dict, kfold: dict | None) -> Path:
    """Write the plots, ``report.md``, ``report.html`` and ``metrics.json``; returns ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [("Learning curves", plot_learning_curves(history, out / "learning_curves.png"))]
    if "confusion_matrix" in metrics:
        names = (("background",) + test.classes) if test.task == "semantic" else test.classes
        figures.append(("Confusion matrix (test)", plot_confusion(metrics["confusion_matrix"], names,
                                                                  out / "confusion_matrix.png",
                                                                  title="test set")))
    if test.samples:
        figures.append(("Test predictions, errors marked", plot_overlays(test, predictions, out / "overlays.png")))
    (out / "metrics.json").write_text(json.dumps({"test": metrics, "kfold": kfold, "history": history,
                                                  "summary": summary}, indent=1, default=str))
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {v}" for k, v in summary.items()]
    md += ["", "## Held-out test metrics", "", "| metric | value |", "| --- | --- |"]
    md += [f"| {k} | {v} |" for k, v in metrics_table(metrics)]
    if kfold:
        md += ["", f"## {kfold['k']}-fold cross-validation (mean ± sd over folds)", "",
               "| metric | mean | sd |", "| --- | --- | --- |"]
        md += [f"| {k} | {v['mean']:.3f} | {v['sd']:.3f} |" for k, v in kfold["summary"].items()]
    for caption, fig in figures:
        md += ["", f"## {caption}", "", f"![{caption}]({fig.name})"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text(_html(title, summary, metrics, kfold, figures))
    return out / "report.md"


def _html(title, summary, metrics, kfold, figures) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd}img{max-width:100%}</style></head><body>", f"<h1>{e(title)}</h1><ul>"]
    parts += [f"<li><b>{e(str(k))}</b>: {e(str(v))}</li>" for k, v in summary.items()]
    parts.append("</ul><h2>Held-out test metrics</h2><table>")
    parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in metrics_table(metrics)]
    parts.append("</table>")
    if kfold:
        parts.append(f"<h2>{kfold['k']}-fold cross-validation</h2><table><tr><th>metric</th><th>mean</th><th>sd</th></tr>")
        parts += [f"<tr><td>{e(k)}</td><td>{v['mean']:.3f}</td><td>{v['sd']:.3f}</td></tr>"
                  for k, v in kfold["summary"].items()]
        parts.append("</table>")
    for caption, fig in figures:
        parts.append(f"<h2>{e(caption)}</h2><img src='{e(fig.name)}' alt='{e(caption)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
