"""On a CUDA GPU (``pytest -m gpu``; tools/gpu_benchmark.sh runs these): the shipped nuclei U-Net
gives on the GPU (bf16 autocast) the objects it gives on the CPU, and the engine's outputs do not
depend on the number of workers when the model feeds them from the GPU."""
from __future__ import annotations

import numpy as np
import pytest

from test_parallel_engine import ROOT, _outputs, slide_path  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device: torch.cuda.is_available() is False "
                    f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return torch


def _task(device: str):
    from dlcore.config import Config
    from dlcore.models.registry import load_task

    return load_task("nuclei-ihc-unet", {"device": device}, config=Config(models_dir=ROOT / "models"))


def test_unet_on_the_gpu_matches_the_cpu(cuda, slide_path):  # noqa: F811
    from dlcore.io import open_slide

    gpu, cpu = _task("cuda"), _task("cpu")
    assert gpu.on_gpu and gpu.network.device.autocast_dtype in ("bfloat16", "float16")
    slide = open_slide(slide_path)
    try:
        side = gpu.tile_size + 2 * gpu.halo
        window = slide.read_region(0, 0, 0, side, side)
    finally:
        slide.close()
    gpu, cpu = gpu.prepare([window]), cpu.prepare([window])
    on_gpu, on_cpu = gpu.probabilities([window])[0], cpu.probabilities([window])[0]
    assert on_gpu.shape == on_cpu.shape
    assert np.abs(on_gpu - on_cpu).max() < 0.1  # bf16 rounding, not a different result
    fg_gpu, fg_cpu = on_gpu[0] > 0.5, on_cpu[0] > 0.5  # channel 0: foreground (sigmoid), 1: boundary
    assert fg_cpu.sum() > 1000
    assert (fg_gpu & fg_cpu).sum() / (fg_gpu | fg_cpu).sum() > 0.98


def test_engine_outputs_on_the_gpu_do_not_depend_on_workers(cuda, slide_path, tmp_path):  # noqa: F811
    task = _task("cuda")
    runs = {w: _outputs(slide_path, tmp_path / f"w{w}", task, w) for w in (1, 3)}
    assert runs[1]["objects"] > 100
    assert runs[3] == runs[1]
