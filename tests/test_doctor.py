"""dlcore doctor: each check on a real (GPU-less) machine, a made-up registry and local sockets."""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dlcore.config import Config
from dlcore.doctor import (
    CheckResult,
    check_gpu,
    check_models,
    check_omero,
    check_processor_extension,
    check_torch,
    format_results,
    register_cli,
    run_checks,
)
from dlcore.gpus import GpuInventory

NO_GPU = GpuInventory((), "none")
RDF = """\
format_version: 0.5.3
type: model
name: {name}
weights:
  pytorch_state_dict:
    source: weights.pt
"""


def _model(root: Path, name: str, *, rdf: str | None = None, weights: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "rdf.yaml").write_text(RDF.format(name=name) if rdf is None else rdf)
    if weights:
        (folder / "weights.pt").write_bytes(b"\0" * 16)
    return folder


@pytest.fixture(scope="module")
def real_package(tmp_path_factory) -> Path:
    from model_packages import tiny_semantic_package

    return tiny_semantic_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture()
def registry(tmp_path, real_package):
    import shutil

    root = tmp_path / "models"
    for name in ("nuclei_unet", "tissue_classifier"):
        shutil.copytree(real_package, root / name)
    return root


def test_import_stays_light():
    code = "import sys, dlcore.doctor; print('torch' in sys.modules, 'omero' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.split() == ["False", "False"]


def test_gpu_check_without_gpu_depends_on_expect_gpu():
    relaxed = check_gpu(NO_GPU, expect_gpu=False)
    strict = check_gpu(NO_GPU, expect_gpu=True)
    assert relaxed.ok and "no CUDA GPU visible" in relaxed.detail
    assert not strict.ok and "no CUDA GPU visible" in strict.detail and "nvidia-smi" in strict.fix
    found = check_gpu(GpuInventory(("0", "1"), "nvidia-smi"), expect_gpu=True)
    assert found.ok and "2 CUDA GPU(s) visible: 0, 1" in found.detail


def test_torch_check_on_this_cpu_machine():
    torch = pytest.importorskip("torch")
    relaxed = check_torch(NO_GPU, expect_gpu=False)
    assert relaxed.ok and torch.__version__ in relaxed.detail
    if torch.version.cuda is None:
        assert "CPU-only build" in relaxed.detail
        strict = check_torch(NO_GPU, expect_gpu=True)
        assert not strict.ok and "download.pytorch.org/whl/cu" in strict.fix
        # GPUs on the system but a CPU build of torch: the classic wrong-wheel mistake.
        mismatch = check_torch(GpuInventory(("0",), "nvidia-smi"), expect_gpu=False)
        assert not mismatch.ok and "1 GPU(s) are here" in mismatch.detail


def test_models_check_accepts_valid_registry(registry):
    result = check_models(registry)
    assert result == CheckResult("models", True, f"2 model(s) valid in {registry}")


def test_models_check_names_each_problem(registry):
    _model(registry, "no_weights_file", weights=False)
    _model(registry, "broken_yaml", rdf="name: [unclosed\n")
    _model(registry, "remote_weights", rdf=textwrap.dedent("""\
        name: remote
        weights:
          torchscript:
            source: https://zenodo.org/record/1/files/w.pt
        """))
    _model(registry, "nameless", rdf="weights:\n  onnx:\n    source: weights.pt\n")
    (registry / "empty_folder").mkdir()
    result = check_models(registry)
    assert not result.ok
    assert "5 of 7 model(s) invalid" in result.detail
    assert "no_weights_file: weights pytorch_state_dict file weights.pt is missing" in result.detail
    assert "broken_yaml: rdf.yaml does not parse" in result.detail
    assert "remote_weights: weights torchscript is remote" in result.detail
    assert "nameless: rdf.yaml has no name" in result.detail
    assert "empty_folder: no rdf.yaml" in result.detail
    assert "nuclei_unet" not in result.detail


def test_models_check_missing_or_empty_registry(tmp_path):
    missing = check_models(tmp_path / "nowhere")
    assert not missing.ok and "does not exist" in missing.detail and "models_dir" in missing.fix
    (tmp_path / "empty").mkdir()
    assert "no model folders" in check_models(tmp_path / "empty").detail


def test_omero_check_tcp(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        up = check_omero("127.0.0.1", port, timeout=2)
    assert up.ok and f"127.0.0.1:{port} accepts connections" in up.detail
    down = check_omero("127.0.0.1", port, timeout=2)  # closed now
    assert not down.ok and "cannot connect" in down.detail and "omero admin status" in down.fix


def test_processor_extension_check(tmp_path):
    missing = check_processor_extension([str(tmp_path)])
    assert not missing.ok and "dlcore_processor" in missing.fix
    pytest.importorskip("omero")
    (tmp_path / "dlcore-processor.pth").write_text("import dlcore.processor.hook; dlcore.processor.hook.install()\n")
    present = check_processor_extension([str(tmp_path)])
    assert present.ok and "DlcoreProcessorI" in present.detail


def test_run_checks_reports_bad_configuration(monkeypatch, tmp_path, registry):
    bad = tmp_path / "dlcore.toml"
    bad.write_text("[dlcore]\nbatchsize = 4\n")
    monkeypatch.setenv("DLCORE_CONFIG", str(bad))
    results = run_checks(gpus=NO_GPU)
    by_name = {r.name: r for r in results}
    assert not by_name["configuration"].ok and "batchsize" in by_name["configuration"].detail
    assert [r.name for r in results] == ["configuration", "gpu", "torch", "models"]


def test_run_checks_all_pass_with_good_config(monkeypatch, tmp_path, registry):
    pytest.importorskip("torch")
    good = tmp_path / "dlcore.toml"
    good.write_text(f'[dlcore]\nmodels_dir = "{registry}"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(good))
    monkeypatch.delenv("DLCORE_MODELS", raising=False)
    results = run_checks(gpus=NO_GPU)
    assert all(r.ok for r in results), format_results(results)
    assert results[0].detail == f"read from {good}"
    strict = run_checks(Config(models_dir=registry), expect_gpu=True, gpus=NO_GPU)
    assert [r.name for r in strict if not r.ok][:1] == ["gpu"]


def test_cli_exit_codes_and_json(monkeypatch, tmp_path, registry, capsys):
    pytest.importorskip("torch")
    good = tmp_path / "dlcore.toml"
    good.write_text(f'[dlcore]\nmodels_dir = "{registry}"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(good))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine: no GPU, whatever is installed
    monkeypatch.delenv("OMERO_HOST", raising=False)
    parser = argparse.ArgumentParser(prog="dlcore")
    register_cli(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["doctor", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report] == ["configuration", "gpu", "torch", "models"]
    assert "no CUDA GPU visible" in report[1]["detail"]

    args = parser.parse_args(["doctor", "--expect-gpu"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "[FAIL] gpu: no CUDA GPU visible" in out and "fix: install or load the NVIDIA driver" in out

    args = parser.parse_args(["doctor", "--omero-host", "127.0.0.1", "--omero-port", "9", "--timeout", "1"])
    assert args.func(args) == 1
    assert "[FAIL] omero: cannot connect to 127.0.0.1:9" in capsys.readouterr().out
