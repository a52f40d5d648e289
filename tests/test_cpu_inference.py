"""CPU inference settings: malloc keeps freed memory (no page faults on the next pass), and forward
passes of CPU_FORWARD_BATCH tiles give what one tile at a time gives."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

_FAULTS = """
import ctypes, json, resource, sys
if sys.argv[1] == "keep":
    from dlcore.models.allocator import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 100 << 20  # 100 MB, over glibc's largest mmap threshold, as torch's activation buffers
def one_pass():  # what a forward pass does with a buffer: allocate, write every page, free
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_pass()
start = faults()
for _ in range(5):
    one_pass()
print(json.dumps((faults() - start) / 5))
"""


def _faults_per_pass(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_without_page_faults():
    system, kept = _faults_per_pass("system"), _faults_per_pass("keep")
    assert system > 20_000  # 100 MB of fresh 4 KB pages each time
    assert kept < system / 50


def test_cpu_forward_batches_give_the_tile_by_tile_result():
    from dlcore.config import Config
    from dlcore.models.device import CPU_FORWARD_BATCH
    from dlcore.models.registry import load_task

    task = load_task("nuclei-ihc-unet", {"device": "cpu"}, config=Config(models_dir=ROOT / "models"))
    network = task.network
    batch = np.random.default_rng(0).random((CPU_FORWARD_BATCH * 2 + 1, 3, 128, 128), dtype=np.float32)
    together = network.raw_outputs(batch)
    one_by_one = np.concatenate([network.raw_outputs(batch[i:i + 1]) for i in range(len(batch))])
    assert together.shape == one_by_one.shape == (len(batch), 2, 128, 128)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
