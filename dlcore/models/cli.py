"""The ``dlcore models`` command: list, show, validate, install, import and remove model packages.

Registered by :mod:`dlcore.cli` through :func:`register_cli`; it replaces the built-in minimal
``models`` command, so ``list`` shows the built-in tasks too.  Exit codes: 0 success, 1 failure (the
message says why).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from dlcore.errors import DlcoreError

EXIT_OK, EXIT_FAILED = 0, 1


def register_cli(subparsers) -> None:
    """Add the ``models`` command and its sub-commands to ``subparsers``."""
    p = subparsers.add_parser("models", help="list, show, validate, install and remove models",
                              description="The model registry: bioimage.io packages in the configured models_dir.")
    p.set_defaults(func=cmd_list)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    q = sub.add_parser("list", help="built-in tasks and installed models")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)
    q = sub.add_parser("show", help="a model's settings, parameters, origin and card")
    q.add_argument("name")
    q.set_defaults(func=cmd_show)
    q = sub.add_parser("validate", help="check a package: bioimageio.spec, sha256, test tensors")
    q.add_argument("path", type=Path, help="package folder or rdf.yaml")
    q.set_defaults(func=cmd_validate)
    q = sub.add_parser("install", help="install a package from a folder, a zip or a git URL[@COMMIT]")
    q.add_argument("source", help="folder, .zip, or git URL (https://..., file://..., git+..., a local repo) @COMMIT")
    q.add_argument("--name", help="registry name (default: from the package)")
    q.add_argument("--subdir", help="the package's folder inside a repository or zip with several")
    q.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    q.set_defaults(func=cmd_install)
    q = sub.add_parser("import", help="register a published model's weights file (InstanSeg, StarDist, ...)",
                       description="Turn a weights file of a known kind, which the site already has (downloaded "
                                   "once, copied from a collaborator), into a registry package: the file is checked "
                                   "(complete, intact, of that kind), packaged with a card naming its source, "
                                   "training data, licence and sha256, run once on a test image, and installed. "
                                   "Nothing is downloaded.")
    q.add_argument("kind", help="instanseg (instanseg.pt or the model zoo's zip), stardist (the model folder "
                                "with config.json, thresholds.json, weights_best.h5, or its zip), tiatoolbox (a "
                                "TIAToolbox .pth: HoVer-Net, HoVer-Net+, MicroNet, its patch classifiers) or "
                                "cellpose (a Cellpose 3 model file); the last two need field_python")
    q.add_argument("weights", type=Path, help="the weights file or folder")
    q.add_argument("--name", help="registry name (default: from the file)")
    q.add_argument("--mpp", type=float, help="pixel size in µm the model was trained at, when the file does not say")
    q.add_argument("--licence", "--license", dest="licence", default="",
                   help="the licence as the publisher states it (SPDX id), when the file does not say")
    q.add_argument("--source", default="", help="where the weights come from (publication, URL), for the card")
    q.add_argument("--training-data", default="", help="what the publisher says it was trained on, for the card")
    q.add_argument("--task", choices=("instances", "semantic"),
                   help="what to import the model for, when its weights give more than one thing: HoVer-Net+ "
                        "gives nuclei (instances, the default) and tissue layers (semantic)")
    q.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    q.set_defaults(func=cmd_import)
    q = sub.add_parser("remove", help="remove an installed model")
    q.add_argument("name")
    q.set_defaults(func=cmd_remove)


def _guard(func):
    def run(args) -> int:
        try:
            return func(args)
        except DlcoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    run.__doc__ = func.__doc__
    return run


@_guard
def cmd_list(args) -> int:
    """Print built-in tasks and installed models."""
    from dlcore.config import load_config
    from dlcore.models.registry import list_models
    from dlcore.tasks import AUTO_DESCRIPTIONS, AUTO_TASKS, builtin_task_names, task_parameters

    config = load_config()
    models = list_models(config)
    if getattr(args, "json", False):
        print(json.dumps({"automatic": list(AUTO_TASKS), "builtin": builtin_task_names(), "models_dir": str(config.models_dir), "models": [
            {"name": m.name, "version": m.version, "kind": m.kind, "description": m.description, "path": str(m.path),
             "commit": m.install.get("commit")} for m in models]}, indent=2))
        return EXIT_OK
    print("automatic tasks:")
    for name in AUTO_TASKS:
        print(f"  {name}\n      {AUTO_DESCRIPTIONS[name]}")
    print("built-in tasks:")
    for name in builtin_task_names():
        fields = task_parameters(name)
        params = ", ".join(f"{n}={f.default!r}" for n, f in fields.items() if f.default is not dataclasses.MISSING)
        print(f"  {name}\n      parameters: {params}")
    print(f"installed models ({config.models_dir}):")
    if not models:
        print("  none (install one with `dlcore models install SOURCE`)")
    for m in models:
        origin = f" [{m.install.get('type')} {m.install.get('commit', '')[:12]}]".replace(" ]", "]") if m.install else ""
        print(f"  {m.name} {m.version} ({m.kind}){origin}\n      {m.description}")
    return EXIT_OK


@_guard
def cmd_show(args) -> int:
    """Print one model's settings, parameters, origin and card."""
    from dlcore.models.registry import _read_yaml, _rdf_path, find_model

    record = find_model(args.name)
    rdf = _read_yaml(_rdf_path(record.path))
    dl = (rdf.get("config") or {}).get("dlcore")
    print(f"{record.name} {record.version}\n  {record.description}\n  path: {record.path}")
    print(f"  kind: {record.kind}")
    if dl:
        for key in ("mpp", "tile_size", "halo", "normalization", "classes", "postprocess", "patch_size", "features",
                    "runtime", "source"):
            if key in dl:
                print(f"  {key}: {json.dumps(dl[key])}")
    else:
        print("  no config.dlcore: runs as semantic segmentation with defaults")
    weights = ", ".join((rdf.get("weights") or {}).keys())
    print(f"  weights: {weights}")
    if record.install:
        origin = {k: record.install.get(k) for k in ("type", "source", "commit", "installed") if record.install.get(k)}
        print("  installed from: " + ", ".join(f"{k}={v}" for k, v in origin.items()))
    print("\n" + record.card_text())
    return EXIT_OK


@_guard
def cmd_validate(args) -> int:
    """Validate a package folder and print every check."""
    from dlcore.models.registry import validate_package

    report = validate_package(args.path)
    for check in report.checks:
        print(f"✓ {check}")
    for problem in report.problems:
        print(f"✗ {problem}", file=sys.stderr)
    print(f"{args.path}: {'valid' if report.ok else 'INVALID'}")
    return EXIT_OK if report.ok else EXIT_FAILED


@_guard
def cmd_install(args) -> int:
    """Install a package (validated first)."""
    from dlcore.models.registry import install

    record = install(args.source, name=args.name, subdir=args.subdir, force=args.force)
    commit = record.install.get("commit")
    print(f"✓ installed {record.name} {record.version} into {record.path}" + (f" (commit {commit})" if commit else ""))
    return EXIT_OK


@_guard
def cmd_import(args) -> int:
    """Import a field model's weights into the registry."""
    from dlcore.fieldmodels.base import Publisher
    from dlcore.fieldmodels.package import import_model

    given = None
    if args.licence or args.source or args.training_data:
        given = Publisher(source=args.source, training_data=args.training_data, licence=args.licence)
    print(f"checking {args.weights} as a {args.kind} model ...")
    record = import_model(args.kind, args.weights, name=args.name, mpp=args.mpp, publisher=given, force=args.force,
                          task=args.task)
    checks = record.install.get("validation") or []
    print(f"✓ imported {record.name} {record.version} into {record.path}\n  "
          + "\n  ".join(checks) + f"\n  run it with: dlcore run {record.name} SLIDE -o OUT")
    return EXIT_OK


@_guard
def cmd_remove(args) -> int:
    """Remove an installed model."""
    from dlcore.models.registry import remove

    path = remove(args.name)
    print(f"✓ removed {args.name} ({path})")
    return EXIT_OK
