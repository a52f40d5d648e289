"""What a newcomer meets first: the install scripts, --help, folders of images, killed runs, shared folders."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


from dlcore.cli import build_parser, main
from dlcore.io.local import expand_slide_paths
from dlcore.io.local_sink import owner_file, remove_dead_partials, write_owner
from synthetic import disc_image, write_png

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--channel", "0", "--no-tissue-detection", "--mpp", "0.5"]


def test_ice_wheel_script_resolves_relative_paths_before_changing_directory(tmp_path):
    """The newcomer's failure: install.sh passed .venv/bin/python, which the build ran after cd-ing into the
    unpacked sdist.  A relative PYTHON and a relative cache must resolve against the caller's folder."""
    cache = tmp_path / "cache"
    cache.mkdir()
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    wheel = cache / f"zeroc_ice-3.6.5-{tag}-{tag}-linux_x86_64.whl"
    wheel.write_bytes(b"")
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PYTHON": "venv/bin/python", "DLCORE_WHEEL_CACHE": "cache"}
    env.pop("DLCORE_ICE_WHEEL", None)
    done = subprocess.run(["bash", str(ROOT / "tools" / "build_ice_wheel.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(wheel)  # absolute, found from the caller's folder
    env["PYTHON"] = "no/such/python"
    missing = subprocess.run(["bash", str(ROOT / "tools" / "build_ice_wheel.sh")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "not an executable interpreter" in missing.stderr


def test_install_script_makes_caller_paths_absolute():
    text = (ROOT / "tools" / "install.sh").read_text()
    for variable in ("DLCORE_VENV", "PYTHON", "DLCORE_ICE_WHEEL", "DLCORE_WHEEL_CACHE"):
        assert f'{variable}=$(abspath "${variable}")' in text
    assert text.index("abspath") < text.index('cd "$(dirname "$0")/.."')
    ci = (ROOT / ".ci" / "run").read_text()
    assert "DLCORE_WHEEL_CACHE=$(mktemp -d)" in ci and "rm -rf .venv" in ci  # CI builds everything from nothing


def test_help_states_each_default_once():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("run", "evaluate", "demo", "benchmark", "train"):
        text = sub.choices[name].format_help()
        assert "(default: None)" not in text, name
        flat = " ".join(text.split())
        for chunk in flat.split("--")[1:]:
            assert chunk.lower().count("default") <= 1, (name, chunk)
    run_help = " ".join(sub.choices["run"].format_help().split())
    assert "(default: dlcore-output)" in run_help and "(default 3)" in run_help


def test_folders_are_expanded_sorted_with_unsupported_files_reported(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        write_png(folder / name, disc_image(128))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "case.mrxs.data").mkdir()  # a vendor slide's data folder is not a slide
    slides, skipped = expand_slide_paths([folder, folder / "a.png"])
    assert [p.name for p in slides] == ["a.png", "b.png"]
    assert [(p.name, reason) for p, reason in skipped] == [("notes.txt", "unsupported file type '.txt'")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert expand_slide_paths([empty]) == ([], [(empty, "the folder holds no slide files (OME-TIFF, TIFF, SVS, NDPI, MRXS, SCN, BIF, PNG, JPEG)")])


def test_run_on_a_folder_analyses_every_image(tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    write_png(folder / "one.png", disc_image(192, seed=1))
    write_png(folder / "two.png", disc_image(192, seed=2))
    (folder / "readme.txt").write_text("x")
    assert main(["run", "nuclei-classical", str(folder), "-o", str(tmp_path / "out"), *RUN]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "readme.txt" in captured.err
    assert "✓ one.png" in captured.out and "✓ two.png" in captured.out
    assert "2 of 2 slides done, 0 failed, 1 skipped" in captured.out
    assert (tmp_path / "out" / "one" / "nuclei-classical" / "objects.csv").is_file()
    assert main(["run", "nuclei-classical", str(tmp_path / "out" / "one"), "-o", str(tmp_path / "o2"), *RUN]) == 1


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_partial_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    slide_dir = tmp_path / "slide"
    slide_dir.mkdir()
    dead = slide_dir / ".partial-nuclei-classical-dead0001"
    alive = slide_dir / ".partial-nuclei-classical-live0001"
    remote = slide_dir / ".partial-nuclei-classical-remote01"
    legacy = slide_dir / ".partial-nuclei-classical-legacy01"  # an earlier version's: no owner file
    other_task = slide_dir / ".partial-other-task-dead0002"
    for folder in (dead, alive, remote, legacy, other_task):
        folder.mkdir()
        (folder / "objects.csv").write_text("id\n")
    pid = _dead_pid()
    for folder in (dead, other_task):
        owner_file(folder).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "start": "1"}))
    write_owner(alive)  # this very process
    owner_file(remote).write_text(json.dumps({"host": "another-node", "pid": pid, "start": "1"}))
    removed = remove_dead_partials(slide_dir, "nuclei-classical")
    assert removed == [dead]
    assert not dead.exists() and not owner_file(dead).exists()
    for kept in (alive, remote, legacy, other_task):
        assert kept.exists()


def test_a_kill_while_replacing_results_restores_the_previous_ones(tmp_path):
    slide_dir = tmp_path / "slide"
    slide_dir.mkdir()
    partial = slide_dir / ".partial-nuclei-classical-abcd1234"
    parked = slide_dir / ".old-nuclei-classical-abcd1234"  # the earlier results, moved aside
    partial.mkdir()
    parked.mkdir()
    (parked / "objects.csv").write_text("earlier results\n")
    owner_file(partial).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": "1"}))
    remove_dead_partials(slide_dir, "nuclei-classical")
    assert (slide_dir / "nuclei-classical" / "objects.csv").read_text() == "earlier results\n"
    assert sorted(p.name for p in slide_dir.iterdir()) == ["nuclei-classical"]


def test_kill_9_leaves_a_partial_folder_that_the_next_run_removes(tmp_path):
    """A real ``kill -9`` in the middle of a run, then the same run again on the same output folder."""
    image = disc_image(2048, seed=3)
    path = write_png(tmp_path / "big.png", image)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dlcore.cli", "run", "nuclei-classical", str(path), "-o", str(out), *RUN,
           "--tile-size", "128"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slide_dir = out / "big"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(slide_dir.glob(".partial-*/objects.csv")):
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p for p in slide_dir.glob(".partial-*") if p.is_dir()]
    assert len(left) == 1  # what kill -9 leaves behind
    assert main(["run", "nuclei-classical", str(path), "-o", str(out), *RUN, "--tile-size", "1024"]) == 0
    assert sorted(p.name for p in slide_dir.iterdir()) == ["nuclei-classical"]


def test_result_folders_follow_the_umask(tmp_path):
    path = write_png(tmp_path / "discs.png", disc_image(128))
    old = os.umask(0o002)
    try:
        assert main(["run", "nuclei-classical", str(path), "-o", str(tmp_path / "shared"), *RUN]) == 0
    finally:
        os.umask(old)
    result = tmp_path / "shared" / "discs" / "nuclei-classical"
    assert result.stat().st_mode & 0o777 == 0o775
    assert (result / "objects.csv").stat().st_mode & 0o777 == 0o664
