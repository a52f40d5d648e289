"""The model registry: one bioimage.io package per folder of ``config.models_dir``.

- :func:`list_models` / :func:`find_model` read rdf.yaml files as plain YAML (no torch, no
  bioimageio.spec: OMERO parses scripts that list models, and that must stay light);
- :func:`validate_package` checks a package with bioimageio.spec, the SHA-256 of its files, dlcore's
  own settings, and that its weights reproduce its test output;
- :func:`install` copies a package from a folder, a zip or a git repository (``URL@commit``, the
  commit recorded in ``install.json``) into the registry, only after it passed validation: it is
  unpacked into a hidden folder beside the registry and renamed into place, so a refused or failed
  install leaves nothing behind;
- :func:`remove` deletes one; :func:`load_task` turns a name into a ready task for the tile engine.

A model's registry name is its folder's name (for installs: its rdf ``name``, lower-cased, with
characters other than letters, digits, ``-``, ``_`` and ``.`` replaced by ``-``).

The registry is one folder or two (:attr:`dlcore.config.Config.model_roots`): ``models_dir``
(shipped and sysadmin-installed models) and ``trained_models_dir`` (what Train_Model writes, on a
filesystem every processor node shares).  A name is looked up in that order.  A trained model
carries an ``owner.json`` (:mod:`dlcore.models.ownership`): who may use it and add versions.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dlcore.errors import ModelError
from dlcore.models.package import inside

log = logging.getLogger(__name__)

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


@dataclass(frozen=True)
class ModelRecord:
    """A package in the registry, as listed (read without loading the model)."""

    name: str
    path: Path
    description: str = ""
    version: str = ""
    kind: str = ""
    tags: tuple[str, ...] = ()
    install: dict = field(default_factory=dict)
    owner: dict | None = None  # owner.json of a trained model (user and group); None: shared with everyone

    def card_text(self) -> str:
        """The model card (the package's documentation file, README.md by convention)."""
        rdf = _read_yaml(_rdf_path(self.path))
        doc = rdf.get("documentation") or "README.md"
        doc = doc.get("source") if isinstance(doc, dict) else doc
        path = self.path / str(doc)
        return path.read_text() if path.is_file() else f"(no model card: {doc} is not in the package)"


def _config(config):
    if config is None:
        from dlcore.config import load_config

        config = load_config()
    return config


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a YAML mapping")
    return data


def _rdf_path(folder: Path) -> Path | None:
    return next((folder / n for n in RDF_NAMES if (folder / n).is_file()), None)


def registry_name(text: str) -> str:
    """The registry (folder) name for a model name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", str(text).lower()).strip("-.")
    if not name:
        raise ModelError(f"cannot make a registry name from {text!r}")
    return name


def _record(folder: Path) -> ModelRecord:
    rdf = _read_yaml(_rdf_path(folder))
    dlcore = ((rdf.get("config") or {}).get("dlcore") or {})
    install = {}
    if (folder / "install.json").is_file():
        try:
            install = json.loads((folder / "install.json").read_text())
        except json.JSONDecodeError:
            install = {"error": "unreadable install.json"}
    from dlcore.models.ownership import read_owner

    kind = dlcore.get("kind", "semantic (no config.dlcore)")
    return ModelRecord(name=folder.name, path=folder, description=str(rdf.get("description", "")),
                       version=str(rdf.get("version", "") or ""), kind=kind,
                       tags=tuple(map(str, rdf.get("tags") or ())), install=install, owner=read_owner(folder))


def _roots(config) -> tuple[Path, ...]:
    config = _config(config)
    roots = getattr(config, "model_roots", None)
    return tuple(roots) if roots else (Path(config.models_dir),)


def list_models(config=None) -> list[ModelRecord]:
    """The packages of the registry (default: the machine's configuration), by name.

    Folders without an rdf.yaml and hidden folders (installs and trainings in progress) are skipped; a
    name in ``models_dir`` hides the same name in ``trained_models_dir``.
    """
    records: dict[str, ModelRecord] = {}
    for root in _roots(config):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name in records or folder.name.startswith(".") or not folder.is_dir() or not _rdf_path(folder):
                continue
            try:
                records[folder.name] = _record(folder)
            except ModelError as exc:
                log.warning("skipping %s: %s", folder, exc)
    return [records[name] for name in sorted(records)]


def find_model(name: str, config=None) -> ModelRecord:
    """The installed model ``name``; raises ModelError listing what is installed."""
    roots = _roots(config)
    for root in roots:
        folder = root / name
        if name and not name.startswith(".") and "/" not in name and folder.is_dir() and _rdf_path(folder):
            return _record(folder)
    names = [r.name for r in list_models(config)]
    from dlcore.tasks import builtin_task_names

    raise ModelError(f"no task or model called {name!r}; built-in tasks: {', '.join(builtin_task_names())}; "
                     f"models installed in {', '.join(map(str, roots))}: {', '.join(names) or 'none'} "
                     "(install one with `dlcore models install SOURCE`)")


def load_task(name: str, params: dict | None = None, *, config=None):
    """A ready task running the installed model ``name`` with ``params`` (see dlcore.models.tasks.build_task).

    ``params`` may also hold ``device`` (auto, cpu, cuda, cuda:N; default: the configuration) and
    ``weights_format`` (torchscript or pytorch_state_dict; default: torchscript when present).  A pixel
    classifier (:mod:`dlcore.pixels`) runs from its forest and feature settings, without torch; a
    prediction model (``image_prediction``) becomes a :class:`dlcore.restore.task.ImagePredictionTask`.
    """
    config = _config(config)
    record = find_model(name, config)
    if record.kind == "pixel_classifier":  # runs in numpy, OpenCV and scikit-learn: no torch
        from dlcore.pixels.task import load_pixel_task

        return load_pixel_task(record.path, record.name, params)
    if record.kind == "imported":  # a field model (InstanSeg, StarDist, ...) run by its kind: dlcore.fieldmodels
        from dlcore.fieldmodels.task import load_field_task

        params = dict(params or {})
        device = params.pop("device", None) or config.device
        return load_field_task(record.path, record.name, params, device=device, batch_size=config.batch_size)
    if record.kind == "image_prediction":  # predicted pixel values (denoising, translation): dlcore.restore
        from dlcore.restore.task import load_image_task

        params = dict(params or {})
        for key, default in (("device", config.device), ("batch_size", config.batch_size)):
            if params.get(key) is None:
                params[key] = default
        return load_image_task(record.path, record.name, params)
    from dlcore.models.loader import Network, read_spec
    from dlcore.models.tasks import build_task

    params = dict(params or {})
    device = params.pop("device", None) or config.device
    weights_format = params.pop("weights_format", None)
    spec = read_spec(record.path)
    spec = spec.__class__(**{**spec.__dict__, "name": record.name})
    network = Network.load(spec, device=device, weights_format=weights_format)
    return build_task(network, params, batch_size=config.batch_size)


# -- validation ---------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """The outcome of :func:`validate_package`: ``ok`` and what was checked or found wrong."""

    path: Path
    name: str = ""
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def reason(self) -> str:
        return "; ".join(self.problems)


def validate_package(path: str | Path, *, reproduce: bool = True) -> ValidationReport:
    """Check a package folder: bioimageio.spec, SHA-256 of every file, config.dlcore, test tensors.

    Parameters
    ----------
    path
        The package folder (or its rdf.yaml).
    reproduce
        Run the network on its test input (every PyTorch weights format it has) and compare with its
        test output within the package's reproducibility tolerance.

    Returns
    -------
    ValidationReport
        Never raises for a bad package: the problems are listed in the report.
    """
    from dlcore.models.loader import load_descr, spec_from_descr

    path = Path(path)
    folder = path.parent if path.is_file() else path
    report = ValidationReport(path=folder)
    rdf = _rdf_path(folder)
    if rdf is None:
        report.problems.append(f"{folder} holds no rdf.yaml")
        return report
    try:
        descr = load_descr(rdf, io_checks=True)  # format, and SHA-256 of every file that states one
        report.name = str(descr.name)
        report.checks.append(f"bioimageio.spec: valid {descr.type} description (format {descr.format_version}); "
                             "file SHA-256 match")
        imported = ((descr.config.model_extra or {}).get("dlcore") or {})
        if imported.get("kind") == "imported":  # a field model run by its kind's code: dlcore.fieldmodels
            return _validate_imported(imported, folder, report, reproduce=reproduce)
        spec = spec_from_descr(descr, folder)
        report.checks.append(f"runs in dlcore as {spec.dlcore['kind']}"
                             + (" (no config.dlcore: defaults)" if spec.foreign else " (config.dlcore valid)"))
    except ModelError as exc:
        report.problems.append(str(exc))
        return report
    except Exception as exc:  # noqa: BLE001 - bioimageio.spec may raise on unreadable files
        report.problems.append(f"bioimageio.spec cannot read the package: {exc}")
        return report
    if reproduce:
        for fmt in spec.weights:
            try:
                report.checks.append(_reproduce(spec, fmt))
            except ModelError as exc:
                report.problems.append(str(exc))
    return report


def _validate_imported(block: dict, folder: Path, report: ValidationReport, *, reproduce: bool) -> ValidationReport:
    """The rest of :func:`validate_package` for an imported field model: its config, then its test output."""
    from dlcore.fieldmodels.package import reproduce as reproduce_imported
    from dlcore.models.spec import check_dlcore_config

    try:
        cfg = check_dlcore_config(dict(block), where=f"{folder.name}: config.dlcore")
        report.checks.append(f"runs in dlcore as an imported {cfg['runtime']['kind']} model (config.dlcore valid)")
        if reproduce:
            report.checks.append(reproduce_imported(folder, cfg))
    except ModelError as exc:
        report.problems.append(str(exc))
    return report


def _reproduce(spec, fmt: str) -> str:
    """Run ``fmt`` weights on the test input; raise ModelError when the test output is not reproduced."""
    import numpy as np

    from dlcore.models.loader import _INTERNAL, Network, _output_internal, _to_axes

    if spec.test_input is None or spec.test_output is None:
        raise ModelError("the package has no test input/output tensors to check its weights with")
    network = Network.load(spec, device="cpu", weights_format=fmt)
    test_in = np.load(spec.test_input)
    expected = np.load(spec.test_output).astype(np.float32)
    got = network.post(network.raw_outputs(_to_axes(test_in.astype(np.float32), spec.input_axes, _INTERNAL)))
    got = _to_axes(got, _output_internal(spec), spec.output_axes)
    if got.shape != expected.shape:
        raise ModelError(f"{fmt} weights: output shape {got.shape} differs from the test output's {expected.shape}")
    tol = spec.tolerance
    bad = ~np.isclose(got, expected, rtol=tol["rtol"], atol=tol["atol"])
    per_million = bad.sum() / bad.size * 1e6
    if per_million > tol["mismatched_per_million"]:
        worst = float(np.abs(got - expected).max())
        raise ModelError(f"{fmt} weights do not reproduce the test output: {bad.sum()} of {bad.size} values differ "
                         f"(largest difference {worst:.3g}; tolerance rtol={tol['rtol']}, atol={tol['atol']})")
    return f"{fmt} weights reproduce the test output ({bad.sum()} of {bad.size} values outside tolerance)"


# -- install / remove ---------------------------------------------------------------------------
def _split_git(source: str) -> tuple[str, str | None] | None:
    """``(url, commit)`` when ``source`` names a git repository (optionally ``@COMMIT``), else None."""
    url, commit = source, None
    head, sep, tail = source.rpartition("@")
    if sep and head and re.fullmatch(r"[0-9A-Za-z._-]+", tail):  # not the user@ of user@host:repo
        url, commit = head, tail
    if url.startswith("git+"):
        return url[4:], commit
    if url.endswith(".git") or "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url, commit
    if (Path(url).expanduser() / ".git").exists():
        return str(Path(url).expanduser()), commit
    return None


def _git(*args: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise ModelError("installing from git needs the `git` command; install git or give a folder or zip") from exc
    if done.returncode != 0:
        raise ModelError(f"git {' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def _find_package(root: Path, subdir: str | None) -> Path:
    if subdir:
        folder = root / subdir
        if not _rdf_path(folder):
            raise ModelError(f"{subdir} in the source holds no rdf.yaml")
        return folder
    if _rdf_path(root):
        return root
    found = sorted({p.parent for n in RDF_NAMES for p in root.rglob(n) if ".git" not in p.parts})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelError("the source holds no rdf.yaml: it is not a bioimage.io package")
    raise ModelError("the source holds several packages; choose one with --subdir: "
                     + ", ".join(str(p.relative_to(root)) for p in found))


def safe_extract(archive: str | Path | zipfile.ZipFile, dest: str | Path) -> None:
    """Extract every member of the zip ``archive`` (a path or an open :class:`zipfile.ZipFile`) into ``dest``.

    Every member name is checked before anything is written: one whose path would land outside ``dest``
    (``../evil``, an absolute path such as ``/etc/x``, or a path through a symbolic link already in ``dest``)
    raises :class:`~dlcore.errors.ModelError` ``"<archive> holds a file outside its folder (<member>);
    refused"`` and nothing is extracted (zipfile would silently rewrite such names instead).

    An archive that cannot be read (not a zip, truncated, damaged compressed data) raises
    :class:`zipfile.BadZipFile`, and a file that cannot be opened :class:`OSError`: the caller words that for
    its users (what to download again), and removes ``dest`` if extraction stopped half-way."""
    if not isinstance(archive, zipfile.ZipFile):
        with zipfile.ZipFile(archive) as opened:
            safe_extract(opened, dest)
        return
    dest = Path(dest)
    for member in archive.namelist():
        if not inside(dest / member, dest):
            raise ModelError(f"{archive.filename} holds a file outside its folder ({member}); refused")
    try:
        archive.extractall(dest)
    except (zlib.error, EOFError) as exc:  # damaged deflate data: the same problem as a bad CRC
        raise zipfile.BadZipFile(f"damaged compressed data ({exc})") from exc


def _fetch(source: str, work: Path, subdir: str | None) -> tuple[Path, dict]:
    """Unpack ``source`` under ``work``; returns the package folder and what to record about it."""
    path = Path(source).expanduser()
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            safe_extract(path, work / "unpacked")
        except zipfile.BadZipFile as exc:
            raise ModelError(f"{path} is not a readable zip file: {exc}") from exc
        return _find_package(work / "unpacked", subdir), {"type": "zip", "source": str(path.resolve())}
    git = _split_git(source)
    if git is not None:
        url, commit = git
        clone = work / "clone"
        _git("clone", "--quiet", "--no-checkout", url, str(clone))
        _git("checkout", "--quiet", commit or "HEAD", cwd=clone)
        pinned = _git("rev-parse", "HEAD", cwd=clone)
        if commit is None:
            log.warning("installing %s at its current HEAD %s; pin a commit with URL@COMMIT", url, pinned[:12])
        folder = _find_package(clone, subdir)
        return folder, {"type": "git", "source": url, "requested": commit, "commit": pinned,
                        "subdir": str(folder.relative_to(clone)) if folder != clone else ""}
    if path.is_dir():
        return _find_package(path, subdir), {"type": "folder", "source": str(path.resolve())}
    raise ModelError(f"cannot install from {source!r}: give a package folder, a .zip, or a git URL "
                     "(URL@COMMIT pins a commit)")


def install(source: str | Path, config=None, *, name: str | None = None, subdir: str | None = None,
            force: bool = False) -> ModelRecord:
    """Install the package at ``source`` into the registry after validating it.

    Parameters
    ----------
    source
        A package folder, a zip file, or a git repository URL (``https://...``, ``file://...``,
        ``git+...``, ``user@host:repo.git``, or a local repository path), optionally ``@COMMIT``.
    config
        dlcore configuration (``models_dir``); default: this machine's.
    name
        Registry name; default: from the rdf's name.
    subdir
        The package's folder inside a repository or zip holding several.
    force
        Replace an installed model of the same name.

    Raises
    ------
    ModelError
        When the source cannot be read, or the package fails validation (the reason is given).
    """
    from dlcore import __version__
    from dlcore.models.package import sha256_file

    root = Path(_config(config).models_dir)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    try:
        folder, origin = _fetch(str(source), work, subdir)
        report = validate_package(folder)
        if not report.ok:
            raise ModelError(f"refused {source}: {report.reason()}")
        target_name = registry_name(name or report.name or folder.name)
        dest = root / target_name
        if dest.exists() and not force:
            raise ModelError(f"a model called {target_name!r} is installed already; remove it first or use --force")
        staged = work / "package"
        outside = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink() and not inside(p, folder)]
        if outside:
            raise ModelError(f"refused {source}: {', '.join(sorted(outside))} link(s) to files outside the package; "
                             "copy the files into the package instead")
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".git"))
        files = {str(p.relative_to(staged)): sha256_file(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        (staged / "install.json").write_text(json.dumps({
            **origin, "installed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dlcore_version": __version__, "validation": report.checks, "sha256": files}, indent=2))
        old = None
        if dest.exists():
            old = work / "replaced"
            dest.rename(old)
        staged.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("installed %s from %s", dest, source)
    return _record(dest)


def remove(name: str, config=None) -> Path:
    """Delete the installed model ``name``; returns the folder removed."""
    record = find_model(name, config)
    trash = record.path.with_name(f".removing-{record.path.name}")
    record.path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return record.path
