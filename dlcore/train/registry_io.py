"""Reading what training needs from packages in a registry folder (rdf.yaml, weights), and versions.

Kept minimal and independent of :mod:`dlcore.models.registry`: a package is a folder holding an
``rdf.yaml`` (bioimage.io format 0.5) with ``pytorch_state_dict`` weights.
"""
from __future__ import annotations

import contextlib
import fcntl
import re
from pathlib import Path

from dlcore.errors import ModelError


def read_rdf(folder: Path) -> dict:
    """The parsed ``rdf.yaml`` of a package folder."""
    import yaml

    path = Path(folder) / "rdf.yaml"
    if not path.is_file():
        raise ModelError(f"{folder} is not a model package (no rdf.yaml)")
    return yaml.safe_load(path.read_text())


def packages(registry: Path) -> list[tuple[Path, dict]]:
    """Every package folder of the registry with its rdf."""
    registry = Path(registry)
    if not registry.is_dir():
        return []
    return [(p, read_rdf(p)) for p in sorted(registry.iterdir()) if (p / "rdf.yaml").is_file()]


def _version_key(rdf: dict) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", str(rdf.get("version", "0"))))


def _base_name(folder: Path, rdf: dict) -> str:
    return str((rdf.get("config") or {}).get("dlcore", {}).get("name") or re.sub(r"-v\d+$", "", folder.name))


def find_package(name: str, registry: Path) -> Path:
    """The folder of model ``name``: a package folder's absolute path, an exact folder name in
    ``registry``, else the highest version with that name."""
    registry = Path(registry)
    if Path(name).is_absolute() and (Path(name) / "rdf.yaml").is_file():
        return Path(name)
    if (registry / name / "rdf.yaml").is_file():
        return registry / name
    found = [(p, r) for p, r in packages(registry) if _base_name(p, r) == name or r.get("name") == name]
    if not found:
        names = ", ".join(p.name for p, _ in packages(registry)) or "none"
        raise ModelError(f"no model {name!r} in the registry {registry}; installed: {names}")
    return max(found, key=lambda pr: _version_key(pr[1]))[0]


def next_version(name: str, registry: Path) -> tuple[str, str]:
    """``(version, folder name)`` for a new package of ``name``: ``1.0.0`` in ``name/`` when new,
    else the next major version in ``name-vN/``."""
    existing = [r for p, r in packages(registry) if _base_name(p, r) == name]
    if not existing and not (Path(registry) / name).exists():
        return "1.0.0", name
    major = max([_version_key(r)[:1] or (1,) for r in existing] or [(1,)])[0] + 1
    while (Path(registry) / f"{name}-v{major}").exists():
        major += 1
    return f"{major}.0.0", f"{name}-v{major}"


def state_dict_entry(rdf: dict, folder: Path) -> tuple[str, dict, Path]:
    """``(callable name, kwargs, weights file)`` of the package's pytorch_state_dict weights."""
    try:
        entry = rdf["weights"]["pytorch_state_dict"]
    except (KeyError, TypeError):
        raise ModelError(f"{folder}: rdf.yaml has no pytorch_state_dict weights to start from") from None
    arch = entry.get("architecture", {})
    callable_name = arch.get("callable") or str(arch.get("import_from", "")).rsplit(".", 1)[-1]
    return callable_name, dict(arch.get("kwargs") or {}), Path(folder) / entry["source"]


@contextlib.contextmanager
def registry_lock(registry: Path):
    """Hold the registry's lock (``.dlcore-registry.lock``, an exclusive ``flock``) while choosing a new
    version's folder and writing it: two trainings of the same name, on one node or on two nodes sharing
    the registry, then never pick the same version."""
    registry = Path(registry)
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".dlcore-registry.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
