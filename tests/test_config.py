"""dlcore's configuration file."""
from __future__ import annotations

from pathlib import Path

import pytest

from dlcore.config import Config, load_config, parse_config
from dlcore.errors import ConfigError


def test_defaults_without_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("DLCORE_CONFIG", raising=False)
    monkeypatch.delenv("DLCORE_MODELS", raising=False)
    monkeypatch.setattr("dlcore.config.SYSTEM_CONFIG", tmp_path / "none.toml")
    monkeypatch.setattr("dlcore.config.USER_CONFIG", tmp_path / "none2.toml")
    config = load_config()
    assert config.device == "auto" and config.source is None and config.roi_cap == 5000


def test_file_from_environment(monkeypatch, tmp_path):
    path = tmp_path / "dlcore.toml"
    path.write_text('[dlcore]\nmodels_dir = "/opt/m"\ndevice = "cuda:1"\nbatch_size = 16\nroi_cap = 100\n'
                    '[processor]\ngpu_slots_per_gpu = 2\ngpu_nodes = ["gpu1"]\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(path))
    monkeypatch.delenv("DLCORE_MODELS", raising=False)
    config = load_config()
    assert config.models_dir == Path("/opt/m") and config.device == "cuda:1" and config.batch_size == 16
    assert config.processor.gpu_slots_per_gpu == 2 and config.processor.gpu_nodes == ("gpu1",)
    assert config.source == path
    monkeypatch.setenv("DLCORE_MODELS", str(tmp_path))
    assert load_config().models_dir == tmp_path


@pytest.mark.parametrize("text,message", [
    ("[dlcore]\ndevise = 'cpu'\n", "unknown key"),
    ("[dlcore]\ndevice = 'tpu'\n", "not one of auto"),
    ("[dlcore]\nbatch_size = 0\n", "at least 1"),
    ("[dlcore\n", "not valid TOML"),
    ("[gpu]\n", "unknown key"),
])
def test_bad_files_are_refused_clearly(text, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        parse_config(text, path=tmp_path / "x.toml")


def test_missing_file_named_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DLCORE_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="does not name a file"):
        load_config()


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().device = "cpu"  # type: ignore[misc]
