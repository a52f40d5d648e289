"""Model packages and the registry: write, validate, install (folder, zip, git@commit), refuse, remove."""
from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("bioimageio.spec")

from dlcore.config import Config  # noqa: E402
from dlcore.errors import ModelError  # noqa: E402
from dlcore.models import registry  # noqa: E402
from model_packages import tiny_semantic_package  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return tiny_semantic_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(models_dir=tmp_path / "models", device="cpu", batch_size=2)


def test_written_package_is_complete_and_valid(package):
    import yaml

    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5")
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert rdf["config"]["dlcore"]["output_activation"] == "softmax"
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_linear"
    assert np.load(package / "test_output.npy").shape == (1, 3, 32, 32)
    card = (package / "README.md").read_text()
    assert "Validation" in card and "accuracy" in card and "random initialisation" in card
    report = registry.validate_package(package)
    assert report.ok, report.problems
    assert sum("reproduce the test output" in c for c in report.checks) == 2


def _copy(package: Path, dest: Path) -> Path:
    shutil.copytree(package, dest)
    return dest


def test_wrong_weights_sha256_is_refused_and_nothing_installed(package, tmp_path, config):
    bad = _copy(package, tmp_path / "bad")
    data = bytearray((bad / "weights.pt").read_bytes())
    data[-10] ^= 0xFF
    (bad / "weights.pt").write_bytes(bytes(data))
    report = registry.validate_package(bad)
    assert not report.ok and "sha256" in report.reason().lower()
    with pytest.raises(ModelError, match="refused"):
        registry.install(str(bad), config)
    assert list(config.models_dir.iterdir()) == []  # no half-installed or hidden staging folder


def test_test_output_that_does_not_reproduce_is_refused(package, tmp_path, config):
    import yaml

    from dlcore.models.package import sha256_file

    bad = _copy(package, tmp_path / "bad")
    out = np.load(bad / "test_output.npy")
    np.save(bad / "test_output.npy", out + 0.5)
    rdf = yaml.safe_load((bad / "rdf.yaml").read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = sha256_file(bad / "test_output.npy")  # consistent hashes
    (bad / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    report = registry.validate_package(bad)
    assert not report.ok and "do not reproduce the test output" in report.reason()
    with pytest.raises(ModelError, match="do not reproduce"):
        registry.install(str(bad), config)
    assert list(config.models_dir.iterdir()) == []


def test_install_from_folder_and_zip_then_remove(package, tmp_path, config):
    record = registry.install(str(package), config)
    assert record.name == "tiny-semantic" and record.kind == "semantic"
    assert record.install["type"] == "folder"
    assert "Random weights" in record.card_text()
    with pytest.raises(ModelError, match="installed already"):
        registry.install(str(package), config)
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in package.iterdir():
            zf.write(f, f"tiny/{f.name}")
    record = registry.install(str(archive), config, name="tiny-zip")
    assert record.install["type"] == "zip"
    assert [m.name for m in registry.list_models(config)] == ["tiny-semantic", "tiny-zip"]
    registry.remove("tiny-zip", config)
    assert [m.name for m in registry.list_models(config)] == ["tiny-semantic"]
    with pytest.raises(ModelError, match="no task or model called"):
        registry.remove("tiny-zip", config)


@pytest.mark.parametrize("member", ["../evil", "absolute"])
def test_a_zip_with_a_member_outside_its_folder_is_refused(member, package, tmp_path, config):
    outside = tmp_path / "outside"
    outside.mkdir()
    member = str(outside / "evil") if member == "absolute" else member
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in package.iterdir():
            zf.write(f, f"tiny/{f.name}")
        zf.writestr(member, "written outside the folder")
    message = _refused(archive, config, "holds a file outside its folder")
    assert message.endswith(f"({member}); refused") and str(archive) in message
    assert list(outside.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "evil.zip", "models", "outside"]


def test_install_from_git_url_pinned_commit(package, tmp_path, config):
    repo = tmp_path / "repo"
    shutil.copytree(package, repo / "models" / "tiny")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "v1"], check=True)
    first = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "models" / "tiny" / "weights.pt").write_bytes(b"broken later")  # HEAD is broken, the pin is not
    subprocess.run([*git, "-C", str(repo), "commit", "-qam", "v2"], check=True)
    record = registry.install(f"file://{repo}@{first[:10]}", config)
    assert record.install["type"] == "git" and record.install["commit"] == first
    assert record.install["subdir"] == "models/tiny"
    assert json.loads((record.path / "install.json").read_text())["commit"] == first
    with pytest.raises(ModelError, match="refused"):
        registry.install(f"file://{repo}", config, name="tiny-head")
    assert sorted(p.name for p in config.models_dir.iterdir()) == ["tiny-semantic"]


def test_listing_does_not_import_torch(package, tmp_path):
    code = ("import sys; from dlcore.config import Config; from dlcore.models.registry import list_models;"
            f"print([m.name for m in list_models(Config(models_dir=__import__('pathlib').Path({str(package.parent)!r})))]);"
            "print('torch' in sys.modules, 'bioimageio.spec' in sys.modules)")
    done = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.stdout.split("\n")[:2] == ["['tiny']", "False False"], done.stderr


def test_cli_models_commands(package, tmp_path, monkeypatch, capsys):
    from dlcore.cli import main

    monkeypatch.setenv("DLCORE_MODELS", str(tmp_path / "models"))
    assert main(["models", "validate", str(package)]) == 0
    assert main(["models", "install", str(package)]) == 0
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "nuclei-classical" in out and "tiny-semantic" in out
    assert main(["models", "show", "tiny-semantic"]) == 0
    assert main(["models", "remove", "tiny-semantic"]) == 0
    assert main(["models", "show", "tiny-semantic"]) == 1
    assert "no task or model called" in capsys.readouterr().err


def _edit_rdf(folder: Path, edit) -> None:
    import yaml

    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))


def _refused(source: Path, config: Config, match: str) -> str:
    with pytest.raises(ModelError, match=match) as exc:
        registry.install(str(source), config)
    assert list(config.models_dir.iterdir()) == []  # nothing installed, no staging folder left
    return str(exc.value)


def test_a_package_missing_its_weights_is_refused(package, tmp_path, config):
    bad = _copy(package, tmp_path / "bad")
    (bad / "weights.pt").unlink()
    assert "weights.pt" in _refused(bad, config, "refused")


_MARKER = Path("/nonexistent")  # set by the test: where the payload would leave its mark


def _payload(marker: str) -> None:  # what a malicious pickle would run
    Path(marker).write_text("ran")


class _PickledPayload:
    def __reduce__(self):
        return (_payload, (str(_MARKER),))


def test_pickle_bearing_weights_are_refused_and_never_run(package, tmp_path, config):
    import torch

    from dlcore.models.package import sha256_file

    global _MARKER
    _MARKER = tmp_path / "payload-ran"
    bad = _copy(package, tmp_path / "bad")
    state = torch.load(bad / "weights.pt", weights_only=True)
    torch.save({**state, "payload": _PickledPayload()}, bad / "weights.pt")
    (bad / "weights_torchscript.pt").unlink()

    def edit(rdf):
        del rdf["weights"]["torchscript"]
        rdf["weights"]["pytorch_state_dict"]["sha256"] = sha256_file(bad / "weights.pt")  # consistent hashes
    _edit_rdf(bad, edit)
    message = _refused(bad, config, "refused")
    assert "weights" in message and not _MARKER.exists()


def test_an_rdf_that_points_outside_its_folder_is_refused(package, tmp_path, config):
    bad = _copy(package, tmp_path / "pkg" / "bad")
    outside = tmp_path / "pkg" / "elsewhere.pt"
    (bad / "weights.pt").rename(outside)

    def edit(rdf):
        rdf["weights"]["pytorch_state_dict"]["source"] = "../elsewhere.pt"
    _edit_rdf(bad, edit)
    assert "outside" in _refused(bad, config, "refused")
    from dlcore.models.loader import _file

    with pytest.raises(ModelError, match="lies outside its folder"):
        _file(bad, "/etc/passwd")


def test_a_link_out_of_the_package_is_refused(package, tmp_path, config):
    bad = _copy(package, tmp_path / "bad")
    (bad / "notes.txt").symlink_to("/etc/hostname")
    assert "notes.txt" in _refused(bad, config, "link\\(s\\) to files outside the package")


def test_a_corrupt_rdf_is_refused(package, tmp_path, config):
    bad = _copy(package, tmp_path / "bad")
    (bad / "rdf.yaml").write_text("weights: [unclosed\n  - : :\n")
    _refused(bad, config, "refused|cannot read")
