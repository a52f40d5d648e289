#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one run on a machine with an NVIDIA GPU (issue 10).
#
#   bash tools/gpu_benchmark.sh [OUT_DIR]          # default OUT_DIR: $OUT, else ./gpu-benchmark
#
# Needs: nvidia-smi and a driver; the network only for package registries (PyPI), and only when the
# virtual environment does not exist yet.  Steps:
#   1. a virtual environment with a CUDA build of torch (DLCORE_VENV, default ./.venv-gpu; the torch
#      requirement is DLCORE_TORCH, default torch==2.13.0, which PyPI serves as a CUDA build on Linux);
#   2. the `gpu` marker tests (tests/test_gpu.py);
#   3. model-only throughput: tiles/s, FLOPs per tile, fraction of bf16 peak (tools/model_throughput.py);
#   4. end to end on a synthetic slide with 1, 2, 4, 8 and all-but-one workers (`dlcore benchmark`),
#      sampling `nvidia-smi` every 100 ms for the GPU's busy fraction during each run.
# Prints a summary table at the end; every raw figure lands in OUT_DIR (JSON and logs).
# DLCORE_GPU_BENCH_SIZE (default 16384) is the synthetic slide's side; DLCORE_GPU_BENCH_WORKERS the
# worker counts (default "1 2 4 8 <cores - 1>").  DLCORE_GPU_BENCH_DEVICE=cpu (with a stand-in
# nvidia-smi on PATH and a small size) runs the whole script on a CPU: how it is checked without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-benchmark}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
command -v nvidia-smi >/dev/null || { echo "gpu_benchmark: nvidia-smi not found: this needs an NVIDIA GPU and its driver" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"

venv=${DLCORE_VENV:-$PWD/.venv-gpu}
py=$venv/bin/python
device=${DLCORE_GPU_BENCH_DEVICE:-cuda}
if [ "$device" = cpu ]; then
  echo "[gpu] DLCORE_GPU_BENCH_DEVICE=cpu: a check of this script on the CPU, not GPU figures"
  export DLCORE_CONFIG=$out/cpu-check.toml
  printf '[dlcore]\ndevice = "cpu"\n' > "$DLCORE_CONFIG"
elif ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "[gpu] installing into $venv with ${DLCORE_TORCH:-torch==2.13.0}"
  DLCORE_VENV=$venv DLCORE_TORCH=${DLCORE_TORCH:-torch==2.13.0} bash tools/install.sh 2>&1 | tee "$out/install.log"
fi
"$py" -c 'import torch, sys; print("[gpu] torch", torch.__version__, "CUDA", torch.version.cuda, "sees", torch.cuda.device_count(), "GPU(s)"); sys.exit(0 if torch.cuda.is_available() else 1)' \
  || [ "$device" = cpu ] \
  || { echo "gpu_benchmark: torch in $venv cannot use the GPU (a CPU build, or a driver older than its CUDA)" >&2; exit 2; }

echo "[gpu] the gpu marker tests"
set +e
if [ "$device" = cpu ]; then echo "(skipped on the CPU check)" | tee "$out/gpu-tests.log"; true
else "$py" -m pytest -m gpu -q tests/test_gpu.py 2>&1 | tee "$out/gpu-tests.log"; fi
tests_rc=$?  # pipefail: pytest's status, not tee's
set -e

echo "[gpu] model-only throughput"
"$py" tools/model_throughput.py nuclei-ihc-unet --device "$device" --batches "${DLCORE_GPU_BENCH_BATCHES:-50}" | tee "$out/model-only.json"

cores=$(nproc)
size=${DLCORE_GPU_BENCH_SIZE:-16384}
counts=${DLCORE_GPU_BENCH_WORKERS:-"1 2 4 8 $(( cores > 1 ? cores - 1 : 1 ))"}
for w in $counts; do
  echo "[gpu] end to end, $w worker(s)"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > "$out/util-w$w.txt" &
  sampler=$!
  "$venv/bin/dlcore" benchmark --task nuclei-ihc-unet --sizes "$size" --skip-task-alone --workers "$w" \
    --json "$out/e2e-w$w.json" > "$out/e2e-w$w.log" 2>&1 || { kill $sampler; cat "$out/e2e-w$w.log" >&2; exit 1; }
  kill $sampler; wait $sampler 2>/dev/null || true
done

"$py" - "$out" $counts <<'PY'
import json, sys
from pathlib import Path
out, counts = Path(sys.argv[1]), sys.argv[2:]
model = json.loads((out / "model-only.json").read_text().strip().splitlines()[-1])
print(f"\nGPU: {model['device_name']}, autocast {model['autocast']}, window {model['window_px']} px, batch {model['batch_size']}")
print(f"model only: {model['tiles_per_s']} tiles/s, {model['gflops_per_tile']} GFLOP/tile, "
      f"{model['achieved_tflops']} TFLOP/s = {model['fraction_of_bf16_peak']} of the bf16 peak ({model['peak_bf16_tflops']} TFLOP/s)")
print("\n| workers | tiles | objects | end-to-end s | s / Gpx tissue | GPU busy (mean utilisation) | peak RSS MB main / worker |")
print("|---|---|---|---|---|---|---|")
for w in counts:
    row = json.loads((out / f"e2e-w{w}.json").read_text())["results"][0]
    samples = [float(v) for v in (out / f"util-w{w}.txt").read_text().split() if v.replace(".", "").isdigit()]
    busy = sum(samples) / len(samples) / 100 if samples else float("nan")
    print(f"| {w} | {row['tiles']} | {row['objects']} | {row['end_to_end_s']} | {row['s_per_gpx_tissue']} | "
          f"{busy:.2f} | {row['peak_rss_mb']} / {row['worker_peak_rss_mb']} |")
PY
echo "[gpu] gpu tests exit status: $tests_rc (log: $out/gpu-tests.log)"
exit "$tests_rc"
