"""Model-only throughput of an installed model: tiles per second through the network on its device
(host-to-device copy, autocast, device-to-host copy included; no reading, no post-processing), the
FLOPs of one tile, and the fraction of the device's bf16 peak that makes.

    python tools/model_throughput.py nuclei-ihc-unet [--device cuda] [--batches 20] [--peak-tflops 989]

Prints one JSON line.  The peak (dense bf16 tensor-core TFLOP/s) is looked up from the GPU's name
(H100/H200 SXM 989, H100 PCIe 756, A100 312, L40S 362, L4 121) unless given; on a CPU no peak is
reported.  tools/gpu_benchmark.sh calls this; it runs on a CPU too (slowly), which is how it is tested.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 TFLOP/s of a GPU by its name (the most specific known name it contains), else None."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_TFLOPS[key]
    return None


def tile_flops(task, windows: list[np.ndarray]) -> float:
    """FLOPs of the network on ``windows`` (torch's operator counter), per tile."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        task.probabilities(windows)
    return counter.get_total_flops() / len(windows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (after 3 warm-up batches)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)

    import torch

    from dlcore.models.registry import load_task

    params = {"device": args.device}
    if args.batch_size:
        params["batch_size"] = args.batch_size
    task = load_task(args.model, params)
    side = task.tile_size + 2 * task.halo
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 256, (side, side, task.network.spec.in_channels), dtype=np.uint8)
               for _ in range(task.batch_size)]
    task = task.prepare(windows[:2])
    flops = tile_flops(task, windows[:1])
    for _ in range(3):
        task.probabilities(windows)
    on_gpu = task.on_gpu
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.batches):
        task.probabilities(windows)  # returns host arrays: the device has finished
    seconds = time.perf_counter() - start
    tiles_per_s = args.batches * len(windows) / seconds
    name = torch.cuda.get_device_name(task.network.device.torch_device()) if on_gpu else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if on_gpu else None)
    achieved = tiles_per_s * flops / 1e12
    print(json.dumps({
        "model": args.model, "device": task.network.device.name, "device_name": name,
        "autocast": task.network.device.autocast_dtype, "window_px": side, "batch_size": len(windows),
        "tiles_per_s": round(tiles_per_s, 2), "gflops_per_tile": round(flops / 1e9, 2),
        "achieved_tflops": round(achieved, 3), "peak_bf16_tflops": peak,
        "fraction_of_bf16_peak": None if not peak else round(achieved / peak, 4),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
