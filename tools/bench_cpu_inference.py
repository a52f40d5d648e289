"""The network alone on the CPU under an allocator setting: seconds, minor page faults and peak RSS
per tile (BENCHMARKS.md, "CPU inference: the page faults").

    python tools/bench_cpu_inference.py MODE THREADS [TILES_PER_PASS]

MODE: ``default`` (whatever the environment gives: run it with ``DLCORE_MALLOC=system``, and with
``MALLOC_*`` or ``GLIBC_TUNABLES`` variables for glibc's own settings) or ``mallopt:MB`` (no mmap, keep
MB of freed memory; ``mallopt:MB:arena1`` also one arena).  One setting per process: malloc settings
cannot be undone.  Prints one JSON line.
"""
import ctypes, json, os, resource, sys, time
import numpy as np
mode = sys.argv[1]; threads = int(sys.argv[2]); batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
os.environ["DLCORE_MALLOC"] = "system"  # dlcore must not set malloc itself: this script sets what MODE says
os.environ["DLCORE_TORCH_THREADS"] = str(threads)  # what dlcore gives torch when the network loads
libc = ctypes.CDLL("libc.so.6")
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX, M_TOP_PAD = -1, -4, -8, -2
if mode.startswith("mallopt"):
    limit = int(mode.split(":")[1]) << 20
    assert libc.mallopt(M_MMAP_MAX, 0) == 1
    assert libc.mallopt(M_TRIM_THRESHOLD, limit) == 1
    if "arena1" in mode: assert libc.mallopt(M_ARENA_MAX, 1) == 1
import torch
from dlcore.models.registry import load_task
from dlcore.config import Config
from pathlib import Path
import dlcore.models.device as device
device.CPU_FORWARD_BATCH = batch  # the pass size under test
task = load_task("nuclei-ihc-unet", {"device": "cpu", "batch_size": batch}, config=Config(models_dir=Path(__file__).resolve().parent.parent / "models"))
side = task.tile_size + 2 * task.halo
rng = np.random.default_rng(0)
windows = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
task = task.prepare(windows[:2])
task.probabilities(windows)
n = max(2, 16 // batch)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t0 = time.perf_counter()
for _ in range(n): task.probabilities(windows)
dt = time.perf_counter() - t0; f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"mode": mode, "threads": torch.get_num_threads(), "batch": batch, "s_per_tile": round(dt / n / batch, 3),
                  "minor_faults_per_tile": int((f1 - f0) / n / batch), "peak_rss_mb": round(ru.ru_maxrss / 1024),
                  "sys_fraction": round(ru.ru_stime / (ru.ru_utime + ru.ru_stime), 2)}))
