"""The QC files of a slide and the batch QC table.

Per slide: ``qc.json`` (figures, flags, methods), ``qc_mask.ome.tif`` (the label image of QC classes,
with its pixel size and the class names in its description) and ``qc_overview.png`` (the thumbnail
beside the same with each artefact filled in its colour, and a legend with each class's share of the
tissue and the verdict).  Per batch: a CSV with one row per slide, where a slide checked again replaces
its row (the table never holds a slide twice).
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from dlcore.qc.classes import ARTEFACTS, QC_CLASSES, TISSUE
from dlcore.qc.run import QCResult

FILES = {"qc_json": "qc.json", "qc_mask": "qc_mask.ome.tif", "qc_overview": "qc_overview.png"}


def write_qc_files(result: QCResult, folder: Path) -> dict[str, Path]:
    """Write the three QC files of ``result`` into ``folder`` (created); their paths by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name for kind, name in FILES.items()}
    paths["qc_json"].write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
    write_mask(result, paths["qc_mask"])
    render_qc_overview(result, paths["qc_overview"])
    return paths


def write_mask(result: QCResult, path: Path) -> Path:
    """The QC mask as a one-plane uint8 OME-TIFF; class values and names in its description."""
    import tifffile

    metadata: dict = {"axes": "YX", "Name": "dlcore QC mask: " + ", ".join(f"{c.value}={c.name}" for c in QC_CLASSES)}
    if result.mpp:
        metadata.update(PhysicalSizeX=result.mpp, PhysicalSizeY=result.mpp, PhysicalSizeXUnit="µm",
                        PhysicalSizeYUnit="µm")
    tifffile.imwrite(path, result.mask, ome=True, metadata=metadata, compression="zlib", photometric="minisblack")
    return path


def colour_mask(mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (same size as ``mask``) with each artefact class filled half-transparent in its colour and
    the tissue outlined in green."""
    from skimage.segmentation import find_boundaries

    out = rgb.astype(np.float32)
    for qc_class in ARTEFACTS:
        sel = mask == qc_class.value
        out[sel] = 0.4 * out[sel] + 0.6 * np.asarray(qc_class.color, np.float32)
    out[find_boundaries(mask >= TISSUE, mode="outer")] = QC_CLASSES[TISSUE].color
    return out.astype(np.uint8)


def render_qc_overview(result: QCResult, path: Path, *, max_side: int = 1200) -> Path:
    """The QC overview picture (see the module docstring)."""
    from PIL import Image, ImageDraw

    from dlcore.overview import display_thumbnail

    picture, scale = display_thumbnail(result.thumb, max_side)
    h, w = picture.shape[:2]
    rows = (np.minimum((np.arange(h) + 0.5) / scale, result.mask.shape[0] - 1)).astype(int)
    cols = (np.minimum((np.arange(w) + 0.5) / scale, result.mask.shape[1] - 1)).astype(int)
    mask = result.mask[np.ix_(rows, cols)]
    legend_h = 18 * (len(ARTEFACTS) + 2)
    canvas = Image.new("RGB", (2 * w + 10, h + legend_h), (255, 255, 255))
    canvas.paste(Image.fromarray(picture), (0, 0))
    canvas.paste(Image.fromarray(colour_mask(mask, picture)), (w + 10, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, h + 4), f"{result.slide}: QC {result.verdict.upper()}", fill=(0, 0, 0))
    for i, qc_class in enumerate(ARTEFACTS, start=1):
        y = h + 4 + 18 * i
        draw.rectangle([6, y + 2, 18, y + 12], fill=qc_class.color, outline=(0, 0, 0))
        draw.text((24, y), f"{qc_class.name}: {100 * result.fractions[qc_class.name]:.2f} % of tissue "
                           f"({result.flags[qc_class.name]})", fill=(0, 0, 0))
    canvas.save(path)
    return path


def update_batch_table(path: Path, rows: list[dict]) -> Path:
    """Add ``rows`` (:meth:`QCResult.table_row`) to the batch QC CSV at ``path``, replacing the rows of
    the same slides; written to a temporary file and renamed, so the table is never half-written, under
    an exclusive lock on ``.<name>.lock`` beside it, so runs writing to one folder at once keep each other's rows."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge_rows(path, rows)


def _merge_rows(path: Path, rows: list[dict]) -> Path:
    existing: list[dict] = []
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            existing = list(csv.DictReader(handle))
    replaced = {row["slide"] for row in rows}
    merged = [row for row in existing if row.get("slide") not in replaced] + rows
    columns = list(dict.fromkeys([key for row in rows for key in row] + [k for row in existing for k in row]))
    handle, tmp = tempfile.mkstemp(prefix=".qc-batch-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in merged:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
