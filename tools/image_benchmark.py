"""Prediction models (the engine's ``image`` kind) side by side with MONAI's sliding-window inference.

The reference is what a MONAI user writes for a whole image: read it into memory, normalise it, run
``monai.inferers.sliding_window_inference`` (same network, same window and overlap as dlcore's tiles,
Gaussian blending) and save the float32 result.  dlcore runs the same model with ``dlcore run``: tiles
streamed from the file, blended on disk, written as a pyramidal OME-TIFF.

    python tools/image_benchmark.py prepare OUT                  # all-tissue IHC mosaics, 2048 and 4096 px
    python tools/image_benchmark.py monai IMAGE MODEL OUT.tif    # the reference, end to end (time it)
    dlcore run IMAGE --task MODEL -o OUT --no-tissue-detection    # dlcore, end to end (time it)
    python tools/image_benchmark.py seams IMAGE MODEL            # both against one whole-image pass

``seams`` runs the network once over the whole image (no tiles: the answer tiling should give) and
reports how far dlcore's blended tiles and MONAI's Gaussian-blended windows are from it, over the
whole image and on the tile seams alone; both use the task's normalisation from the same windows, so
only the tiling differs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def prepare(out: Path, sides=(2048, 4096)) -> None:
    """All-tissue IHC mosaics (``pixel_benchmark.write_mosaic``) of each side."""
    from pixel_benchmark import write_mosaic

    out.mkdir(parents=True, exist_ok=True)
    for side in sides:
        print(write_mosaic(out / f"mosaic-{side}.ome.tif", side))


def _task(model: str, image: np.ndarray):
    """The registered model's task, normalised on eight windows spread over ``image`` as dlcore's
    calibration picks them without tissue detection (centred on a row across the middle)."""
    from dlcore.models.registry import load_task

    task = load_task(model, {})
    h, w = image.shape[:2]
    size = min(512, h, w)
    windows = []
    for i in range(8):
        x = int(np.clip((i + 0.5) / 8 * w - size / 2, 0, w - size))
        y = int(np.clip(0.5 * h - size / 2, 0, h - size))
        windows.append(image[y:y + size, x:x + size])
    return task.prepare(windows)


def _monai_predict(task, image: np.ndarray) -> np.ndarray:
    """``(C, Y, X)`` predicted values of the whole in-memory image by MONAI's sliding window (Gaussian)."""
    import torch
    from monai.inferers import sliding_window_inference

    x, low, high = task._normalized(task.inputs(image))
    window = task.tile_size + 2 * task.halo
    window = task.network.spec.valid_size(window)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(task.network.raw_outputs(batch.numpy()))

    with torch.inference_mode():
        raw = sliding_window_inference(torch.from_numpy(x[None]), roi_size=(window, window),
                                       sw_batch_size=task.batch_size, predictor=predictor,
                                       overlap=2 * task.halo / window, mode="gaussian", padding_mode="reflect")
    return task._to_output_units(raw[0].numpy(), low, high)


def monai_run(image_path: Path, model: str, out: Path) -> None:
    """The reference end to end: read, normalise, sliding window, write a float32 TIFF."""
    import tifffile

    start = time.perf_counter()
    image = tifffile.imread(image_path, level=0)
    task = _task(model, image)
    values = _monai_predict(task, image)
    tifffile.imwrite(out, values, compression="zlib", compressionargs={"level": 1}, tile=(256, 256))
    print(f"{image_path.name}: {values.shape} in {time.perf_counter() - start:.1f} s")


def _dlcore_predict(task, image_path: Path, work: Path) -> np.ndarray:
    """dlcore's blended tiles of the file, through the engine, as float32 values."""
    import dataclasses

    import tifffile

    from dlcore.io.local import open_slide
    from dlcore.io.local_sink import LocalFolderSink
    from dlcore.workflows import RunOptions, analyse_slide

    prepared = _Frozen(dataclasses.replace(task, output_dtype="float32"))  # the engine calls prepare() again
    slide = open_slide(image_path)
    try:
        result = analyse_slide(slide, prepared, LocalFolderSink(work),
                               options=RunOptions(detect_tissue=False, checkpoint=False))
    finally:
        slide.close()
    return tifffile.imread(result.outputs["predicted image"], level=0)


class _Frozen:
    """A task whose ``prepare`` keeps the normalisation it already has (so both contenders share it)."""

    def __init__(self, task) -> None:
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def prepare(self, samples):
        return self


def _compare(name: str, values: np.ndarray, truth: np.ndarray, seams: np.ndarray) -> str:
    error = np.abs(values.astype(np.float64) - truth)
    span = float(truth.max() - truth.min()) or 1.0
    psnr = 10 * np.log10(span ** 2 / max(float((error ** 2).mean()), 1e-20))
    return (f"| {name} | {error.mean():.2e} | {np.percentile(error, 99.9):.2e} | {error.max():.2e} | "
            f"{error[:, seams].mean():.2e} | {error[:, seams].max():.2e} | {psnr:.1f} |")


def seams(image_path: Path, model: str, work: Path) -> None:
    """Whole-image pass vs dlcore's tiles vs MONAI's windows (see the module docstring)."""
    import tifffile

    image = tifffile.imread(image_path, level=0)
    task = _task(model, image)
    start = time.perf_counter()
    truth = task.predict([image])[0].astype(np.float64)
    print(f"whole-image pass: {time.perf_counter() - start:.1f} s")
    dl = _dlcore_predict(task, image_path, work)
    ref = _monai_predict(task, image)
    mask = np.zeros(image.shape[:2], bool)
    for edge in range(task.tile_size, image.shape[0], task.tile_size):
        mask[max(edge - task.halo, 0):edge + task.halo] = True
    for edge in range(task.tile_size, image.shape[1], task.tile_size):
        mask[:, max(edge - task.halo, 0):edge + task.halo] = True
    print(f"{image_path.name}, {model}: tiles {task.tile_size} + halo {task.halo}; seam bands: "
          f"{mask.mean():.0%} of the pixels")
    print("| contender | mean abs error | 99.9th percentile | max abs error | mean on seams | max on seams | "
          "PSNR vs whole (dB) |")
    print("|---|---|---|---|---|---|---|")
    print(_compare("dlcore (blended tiles, streamed)", dl, truth, mask))
    print(_compare("MONAI sliding window (Gaussian)", ref, truth, mask))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p = sub.add_parser("monai")
    p.add_argument("image", type=Path)
    p.add_argument("model")
    p.add_argument("out", type=Path)
    p = sub.add_parser("seams")
    p.add_argument("image", type=Path)
    p.add_argument("model")
    p.add_argument("--work", type=Path, default=Path("/tmp/image-benchmark-work"))
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out)
    elif args.command == "monai":
        monai_run(args.image, args.model, args.out)
    else:
        seams(args.image, args.model, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
