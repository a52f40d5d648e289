"""The dlcore command line: help, info, run, exit codes and messages."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dlcore.cli import main
from synthetic import disc_image, write_ome_tiff, write_png


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "info", "models", "demo", "benchmark"):
        assert command in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2


def test_info(tmp_path, capsys):
    path = write_ome_tiff(tmp_path / "s.ome.tif", np.zeros((300, 400, 3), np.uint8), mpp=0.25, tile=128, levels=2)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "400 x 300 px" in out and "0.2500 x 0.2500 µm" in out and "128 x 128" in out and "1: 200 x 150" in out


def test_run_segments_and_reports(tmp_path, capsys):
    path = write_png(tmp_path / "discs.png", disc_image(256))
    code = main(["run", "nuclei-classical", str(path), "-o", str(tmp_path / "out"), "--channel", "0",
                 "--tile-size", "128", "--halo", "32", "--no-tissue-detection"])
    assert code == 0
    out = capsys.readouterr().out
    assert "✓ discs.png:" in out and "objects" in out and "labels.ome.tif" in out
    assert (tmp_path / "out" / "discs" / "nuclei-classical" / "objects.csv").exists()


def test_bad_inputs_exit_1_with_a_message(tmp_path, capsys):
    good = write_png(tmp_path / "discs.png", disc_image(128))
    code = main(["run", "nuclei-classical", str(tmp_path / "missing.svs"), str(good), "-o", str(tmp_path / "o"),
                 "--channel", "0", "--no-tissue-detection"])
    captured = capsys.readouterr()
    assert code == 1
    assert "no such file" in captured.err and "1 of 2 slides done, 1 failed" in captured.out
    assert main(["run", "nuclei-classical", str(good), "--sigma", "-2"]) == 1
    assert "sigma=-2.0 must be >= 0" in capsys.readouterr().err
    assert main(["run", "no-such-model", str(good)]) == 1
    assert "no task or model called 'no-such-model'" in capsys.readouterr().err
    assert main(["run", "nuclei-classical", str(good), "--param", "colour=red"]) == 1
    assert "has no parameter(s) ['colour']" in capsys.readouterr().err


def test_rgb_task_on_grey_image_explains_the_fix(tmp_path, capsys):
    path = write_png(tmp_path / "grey.png", disc_image(128))
    assert main(["run", "nuclei-classical", str(path), "-o", str(tmp_path / "o")]) == 1
    assert "--channel" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "dlcore.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("dlcore ")


def test_import_dlcore_stays_light():
    code = "import sys, dlcore, dlcore.cli; print(any(m in sys.modules for m in ('torch', 'omero', 'monai', 'skimage')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
