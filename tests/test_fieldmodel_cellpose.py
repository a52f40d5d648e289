"""Cellpose 3 models imported and run through the field-models worker (issue 16).

These tests need the field-models environment (tools/install_field_env.sh: cellpose 3.1.1.3 beside
TIAToolbox) named by ``DLCORE_FIELD_PYTHON``; they are deselected by default (marker ``field_env``) and
run explicitly in CI::

    DLCORE_FIELD_PYTHON=/path/to/field/bin/python pytest -m field_env tests/test_fieldmodel_cellpose.py

The model is ``tests/cellpose_weights.py --nuclei``: a CPnet in Cellpose's own file format whose weights
are set by hand to find dark round objects (see that script), written with the field environment's Python.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from dlcore.config import Config
from dlcore.errors import ModelError, ParameterError
from dlcore.fieldmodels.base import Publisher
from dlcore.fieldmodels.package import import_model
from dlcore.models.registry import load_task, validate_package
from field_env import field_python
from field_weights import he_like_image
from test_field_models import _run, _slide
from test_tiling_invariance import match_f1

pytestmark = pytest.mark.field_env

HERE = Path(__file__).resolve().parent
BSD = Publisher(source="Cellpose test network (hand-set weights, tests/cellpose_weights.py)",
                training_data="none: hand-set weights", licence="BSD-3-Clause")
DIAMETER = 12.0  # he_like_image's nuclei: radius 6 px
# the hand-set network's flows are not Cellpose-accurate, so its masks fail Cellpose's flow check
# (flow_threshold 0.4 keeps about 17 of 30 at GAIN 10): the engine tests switch the check off
NO_FLOW_CHECK = {"flow_threshold": 0.0}
# a worker whose every network connection is refused and written down (Python's sitecustomize hook)
GUARD = '''
import os, socket
_log = os.environ["DLCORE_TEST_NETLOG"]
def _refuse(*args, **kwargs):
    with open(_log, "a") as f:
        f.write(repr(args[1:] or kwargs) + "\\n")
    raise OSError("network access refused by the dlcore test guard")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
'''


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    """Workers of this module refuse (and log) any network connection, and Cellpose's models folder is empty."""
    folder = tmp_path_factory.mktemp("netguard")
    (folder / "sitecustomize.py").write_text(GUARD)
    models = tmp_path_factory.mktemp("cellpose-models-empty")
    log = folder / "connections.log"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "DLCORE_TEST_NETLOG", "CELLPOSE_LOCAL_MODELS_PATH")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), str(HERE.parent)])
    os.environ["DLCORE_TEST_NETLOG"] = str(log)
    os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = str(models)
    yield log, models
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, guard) -> Path:
    """The hand-set nuclei CPnet in Cellpose's file format (``nuclei`` in the name: class "nucleus")."""
    out = tmp_path_factory.mktemp("cellpose") / "nuclei_test_model.pth"
    subprocess.run([field_python(), str(HERE / "cellpose_weights.py"), str(out), "--nuclei", "--diam-mean",
                    str(DIAMETER)], check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def installed(model_file, tmp_path_factory):
    """One package imported from the model file, shared by the running tests."""
    config = Config(models_dir=tmp_path_factory.mktemp("registry") / "models", device="cpu", batch_size=2)
    record = import_model("cellpose", model_file, name="cp-nuclei", mpp=0.5, publisher=BSD, config=config)
    return config, record


def _entries(config) -> list[str]:
    root = Path(config.models_dir)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_inspect_reads_the_cellpose_file(model_file):
    from dlcore.fieldmodels.kinds import get_kind

    inspected = get_kind("cellpose").inspect(model_file)
    assert inspected.kind == "cellpose" and inspected.weights_file == "cellpose_model.pth"
    assert inspected.files == {"cellpose_model.pth": model_file.resolve()}
    assert inspected.weights_format == "pytorch_state_dict" and inspected.in_channels == 3
    assert inspected.mpp is None and inspected.classes == ("nucleus",) and inspected.publisher is None
    assert inspected.halo >= 2 * DIAMETER and inspected.tile_size == 512
    runtime = inspected.runtime
    assert runtime["diam_mean"] == DIAMETER and runtime["diameter"] == DIAMETER and runtime["channels"] == [0, 0]
    assert runtime["cellpose_version"] == "3.1.1.3" and runtime["nbase"] == [2, 32, 64, 128, 256]


@pytest.mark.parametrize("problem", ["truncated", "not cellpose", "missing"])
def test_bad_files_are_refused_and_nothing_is_registered(problem, model_file, tmp_path):
    config = Config(models_dir=tmp_path / "models", device="cpu", batch_size=2)
    before = _entries(config)
    if problem == "truncated":
        bad = tmp_path / "cyto3"
        bad.write_bytes(model_file.read_bytes()[: 1_000_000])
        expected = "truncated"
    elif problem == "not cellpose":
        import torch

        bad = tmp_path / "resnet.pth"
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(2)}, bad)
        expected = "not a Cellpose CPnet"
    else:
        bad, expected = tmp_path / "absent.pth", "no such file"
    with pytest.raises(ModelError, match=expected) as info:
        import_model("cellpose", bad, name="bad", mpp=0.5, publisher=BSD, config=config)
    assert str(bad.name) in str(info.value)
    assert _entries(config) == before


def test_import_gives_a_valid_package(installed, guard):
    config, record = installed
    report = validate_package(record.path)
    assert report.ok, report
    assert (Path(record.path) / "cellpose_model.pth").is_file()
    log, models = guard
    assert not log.exists() or log.read_text() == "", log.read_text()
    assert list(models.iterdir()) == []


def test_tiles_give_the_objects_of_the_whole_image(installed, guard, tmp_path):
    """Four 128 px tiles with a 32 px halo against one window of the whole 256 px slide."""
    config, _ = installed
    image = he_like_image(256, n_nuclei=30, radius=DIAMETER / 2, seed=1)
    path = _slide(tmp_path / "slide.ome.tif", image, 0.5)
    started = time.perf_counter()
    whole, whole_labels = _run(path, load_task("cp-nuclei", {"device": "cpu", "tile_size": 512, "halo": 64,
                                                             **NO_FLOW_CHECK}, config=config), tmp_path / "whole")
    seconds = time.perf_counter() - started
    tiled, tiled_labels = _run(path, load_task("cp-nuclei", {"device": "cpu", "tile_size": 128, "halo": 32,
                                                             **NO_FLOW_CHECK}, config=config), tmp_path / "tiled")
    assert whole.summary["tiles"] == 1 and tiled.summary["tiles"] == 4
    # 30 nuclei drawn; the hand-set network finds them, plus a few small noise blobs
    assert 25 <= whole.summary["objects"] <= 45, whole.summary
    f1, tp, n_whole, n_tiled = match_f1(whole_labels, tiled_labels)
    print(f"cellpose: whole {n_whole} objects in {seconds:.1f} s ({seconds / (256 * 256 / 1e6):.0f} s/Mpx with the "
          f"worker's start), tiled {n_tiled}, matched {tp}, F1 {f1:.3f}")
    # Cellpose is not tiling-invariant by construction (its own 224 px tiles, the style vector averaged over
    # each of them, flows followed for 200 steps): the halo keeps whole nuclei, so allow a few differences
    assert f1 >= 0.85, (f1, tp, n_whole, n_tiled)
    prov = tiled.provenance["task"]["network"]
    assert prov["normalization"]["scope"] == "slide"
    assert prov["normalization"] == whole.provenance["task"]["network"]["normalization"]
    assert prov["parameters"]["flow_threshold"] == 0.0 and prov["parameters"]["diameter"] == DIAMETER
    log, models = guard
    assert not log.exists() or log.read_text() == "", log.read_text()
    assert list(models.iterdir()) == []


def test_parameters_are_checked(installed):
    config, _ = installed
    task = load_task("cp-nuclei", {"device": "cpu", "diameter": 10, "cellprob_threshold": -1}, config=config)
    assert task is not None
    with pytest.raises(ParameterError, match="no parameter 'nms_thresh'"):
        load_task("cp-nuclei", {"device": "cpu", "nms_thresh": 0.3}, config=config)
