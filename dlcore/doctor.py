"""``dlcore doctor``: checks that a machine can run dlcore's jobs, and says what to fix.

Each check returns a :class:`CheckResult`; :func:`run_checks` runs them all and
:func:`register_cli` adds the ``doctor`` subcommand to dlcore's command line.  The checks:

* ``configuration``: dlcore's configuration file is readable and valid;
* ``gpu``: CUDA GPUs visible to this process (found without torch, see :mod:`dlcore.gpus`);
* ``torch``: torch imports, its version and CUDA build, and whether it sees the GPUs;
* ``models``: every package in the model registry has a parseable ``rdf.yaml`` with a name and
  weights whose files exist;
* ``processor extension``: the ``.pth`` hook that makes an OMERO node serve dlcore's processor
  is installed in this environment and loads (only with ``--processor``);
* ``omero``: the OMERO server answers on its port and, with credentials, accepts a login.

A missing GPU fails only with ``--expect-gpu`` (what GPU nodes pass).  Heavy modules (torch,
omero) are imported inside the checks, so importing this module stays light.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dlcore.config import Config, load_config
from dlcore.errors import DlcoreError
from dlcore.gpus import GpuInventory, detect_gpus

OMERO_PORT = 4064
HOOK_FILE = "dlcore-processor.pth"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        What was checked.
    ok : bool
        Whether it passed.
    detail : str
        What was found.
    fix : str
        What to do when it failed ("" when it passed).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_configuration() -> tuple[CheckResult, Config]:
    """Read dlcore's configuration; on failure, report it and go on with the defaults."""
    try:
        config = load_config()
    except DlcoreError as exc:
        return CheckResult("configuration", False, str(exc), "correct the file named above"), Config()
    if config.source is None:
        return CheckResult("configuration", True, "no configuration file; built-in defaults apply"), config
    return CheckResult("configuration", True, f"read from {config.source}"), config


def check_gpu(gpus: GpuInventory, *, expect_gpu: bool) -> CheckResult:
    """Whether CUDA GPUs are visible (a failure only when ``expect_gpu``)."""
    if gpus.count:
        return CheckResult("gpu", True, f"{gpus.count} CUDA GPU(s) visible: {', '.join(gpus.ids)} (from {gpus.source})")
    if gpus.source == "CUDA_VISIBLE_DEVICES":
        detail = "no CUDA GPU visible (CUDA_VISIBLE_DEVICES hides them all)"
    else:
        detail = "no CUDA GPU visible (neither nvidia-smi nor /proc/driver/nvidia lists one)"
    if not expect_gpu:
        return CheckResult("gpu", True, detail + "; not required here")
    return CheckResult(
        "gpu", False, detail,
        "install or load the NVIDIA driver (nvidia-smi must list the GPUs) and make sure "
        "CUDA_VISIBLE_DEVICES is unset or names them",
    )


def check_torch(gpus: GpuInventory, *, expect_gpu: bool) -> CheckResult:
    """torch's version and CUDA build, and whether it can use the visible GPUs."""
    try:
        import torch
    except ImportError as exc:
        return CheckResult("torch", False, f"torch does not import: {exc}",
                           "install torch in this environment (pip install torch, CUDA build on GPU nodes)")
    cuda_build = torch.version.cuda
    if cuda_build is None:
        detail = f"torch {torch.__version__}, CPU-only build"
        if expect_gpu or gpus.count:
            return CheckResult(
                "torch", False, detail + f" but {gpus.count} GPU(s) are here" if gpus.count else detail,
                "install torch's CUDA build matching the driver, e.g. "
                "pip install torch --index-url https://download.pytorch.org/whl/cu128",
            )
        return CheckResult("torch", True, detail)
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    detail = f"torch {torch.__version__}, CUDA {cuda_build}, sees {count} GPU(s)"
    if (expect_gpu or gpus.count) and count == 0:
        return CheckResult(
            "torch", False, detail,
            f"torch was built for CUDA {cuda_build}; the driver must support it (nvidia-smi shows the "
            "highest CUDA version it supports); install a matching torch build or upgrade the driver",
        )
    if gpus.count and count != gpus.count:
        return CheckResult("torch", False, detail + f", but {gpus.count} are visible to the system",
                           "check CUDA_VISIBLE_DEVICES and the driver (nvidia-smi)")
    return CheckResult("torch", True, detail)


def _weights_problems(rdf: dict, model_dir: Path) -> list[str]:
    weights = rdf.get("weights")
    if not isinstance(weights, dict) or not weights:
        return ["no weights entries"]
    problems = []
    for fmt, entry in weights.items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if not source:
            problems.append(f"weights {fmt} has no source")
        elif "://" in str(source):
            problems.append(f"weights {fmt} is remote ({source}); models must be local")
        elif not (model_dir / str(source)).is_file():
            problems.append(f"weights {fmt} file {source} is missing")
    return problems


def model_problems(model_dir: Path) -> list[str]:
    """What is wrong with one bioimage.io package folder (empty when it looks valid)."""
    import yaml

    rdf_path = model_dir / "rdf.yaml"
    if not rdf_path.is_file():
        return ["no rdf.yaml"]
    try:
        rdf = yaml.safe_load(rdf_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return [f"rdf.yaml does not parse: {str(exc).splitlines()[0]}"]
    if not isinstance(rdf, dict):
        return ["rdf.yaml is not a mapping"]
    problems = [] if rdf.get("name") else ["rdf.yaml has no name"]
    problems += _weights_problems(rdf, model_dir)
    if not problems:  # the full check: bioimageio.spec, sha256 of the weights, test tensors reproduced
        from dlcore.models.registry import validate_package

        problems += validate_package(model_dir).problems
    return problems


def check_models(models_dir: Path) -> CheckResult:
    """Every folder of the registry is a bioimage.io package with local weights."""
    fix_dir = f"clone the model registry into {models_dir} or set models_dir in dlcore.toml"
    if not models_dir.is_dir():
        return CheckResult("models", False, f"{models_dir} does not exist", fix_dir)
    folders = sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return CheckResult("models", False, f"no model folders in {models_dir}", fix_dir)
    bad = {folder.name: problems for folder in folders if (problems := model_problems(folder))}
    if bad:
        listed = "; ".join(f"{name}: {', '.join(problems)}" for name, problems in bad.items())
        return CheckResult(
            "models", False, f"{len(bad)} of {len(folders)} model(s) invalid in {models_dir}: {listed}",
            "fix or remove those folders (check out the registry's pinned commit again: git status, git checkout .)",
        )
    return CheckResult("models", True, f"{len(folders)} model(s) valid in {models_dir}")


def check_processor_extension(site_dirs: list[str] | None = None) -> CheckResult:
    """The .pth hook is installed here and dlcore's processor class loads (imports omero)."""
    import site

    dirs = site_dirs if site_dirs is not None else site.getsitepackages()
    hooks = [Path(d) / HOOK_FILE for d in dirs if (Path(d) / HOOK_FILE).is_file()]
    if not hooks:
        return CheckResult(
            "processor extension", False, f"{HOOK_FILE} not found in {', '.join(dirs)}",
            "run the dlcore_processor Ansible role (dlcore_processor_extension: true) on this node",
        )
    try:
        from dlcore.processor.server import DlcoreProcessorI  # noqa: F401
    except Exception as exc:  # an import error here is exactly what to report
        return CheckResult("processor extension", False, f"{hooks[0]} present but dlcore's processor does not load: {exc}",
                           "install omero-py and zeroc-ice in this environment (the Ansible role does)")
    return CheckResult("processor extension", True, f"{hooks[0]} installed; runProcessor.py serves DlcoreProcessorI")


def check_omero(host: str, port: int, *, user: str | None = None, password: str | None = None,
                timeout: float = 5.0) -> CheckResult:
    """OMERO answers on ``host:port`` and, with credentials, a session can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return CheckResult(
            "omero", False, f"cannot connect to {host}:{port}: {exc}",
            f"check that OMERO runs on {host} (omero admin status) and that port {port} is open from this node",
        )
    if not (user and password):
        return CheckResult("omero", True, f"{host}:{port} accepts connections (no login tried: no credentials)")
    try:
        import omero
        import omero.clients  # noqa: F401
    except ImportError as exc:
        return CheckResult("omero", False, f"{host}:{port} reachable, but omero-py does not import: {exc}",
                           "install omero-py and zeroc-ice in this environment")
    client = omero.client(host=host, port=port)
    try:
        client.createSession(user, password)
        version = client.sf.getConfigService().getVersion()
    except Exception as exc:  # Ice and OMERO raise many types; all mean "no login"
        return CheckResult("omero", False, f"{host}:{port} reachable, login as {user} failed: {exc}",
                           "check the user name and password, and that the server is fully started")
    finally:
        client.closeSession()
    return CheckResult("omero", True, f"logged in to OMERO {version} at {host}:{port} as {user}")


def run_checks(
    config: Config | None = None,
    *,
    expect_gpu: bool = False,
    processor: bool = False,
    omero_host: str | None = None,
    omero_port: int = OMERO_PORT,
    omero_user: str | None = None,
    omero_password: str | None = None,
    timeout: float = 5.0,
    gpus: GpuInventory | None = None,
) -> list[CheckResult]:
    """Run every check of this machine.

    Parameters
    ----------
    config : Config, optional
        dlcore's configuration; read from its file (and checked) when omitted.
    expect_gpu : bool
        Whether a missing GPU (or a torch that cannot use one) is a failure.
    processor : bool
        Whether this is an OMERO processor node (checks the processor extension).
    omero_host : str, optional
        OMERO server to reach; no OMERO check when omitted.
    omero_port : int
        Its port (4064).
    omero_user, omero_password : str, optional
        Credentials for a test login.
    timeout : float
        Seconds to wait for the TCP connection.
    gpus : GpuInventory, optional
        The GPUs (default: :func:`dlcore.gpus.detect_gpus`).

    Returns
    -------
    list of CheckResult
    """
    results = []
    if config is None:
        result, config = check_configuration()
        results.append(result)
    else:
        results.append(CheckResult("configuration", True, f"given ({config.source or 'defaults'})"))
    gpus = detect_gpus() if gpus is None else gpus
    results.append(check_gpu(gpus, expect_gpu=expect_gpu))
    results.append(check_torch(gpus, expect_gpu=expect_gpu))
    results.append(check_models(config.models_dir))
    if processor:
        results.append(check_processor_extension())
    if omero_host:
        results.append(check_omero(omero_host, omero_port, user=omero_user, password=omero_password, timeout=timeout))
    return results


def format_results(results: list[CheckResult]) -> str:
    """The human-readable report: one line per check, and the fix under each failure."""
    lines = []
    for result in results:
        lines.append(f"[{' OK ' if result.ok else 'FAIL'}] {result.name}: {result.detail}")
        if not result.ok and result.fix:
            lines.append(f"       fix: {result.fix}")
    failed = sum(not r.ok for r in results)
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    results = run_checks(
        expect_gpu=args.expect_gpu, processor=args.processor, omero_host=args.omero_host,
        omero_port=args.omero_port, omero_user=args.omero_user,
        omero_password=os.environ.get("OMERO_PASSWORD") if args.omero_user else None,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(format_results(results))
    return 0 if all(r.ok for r in results) else 1


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``doctor`` subcommand; its ``func(args)`` returns 0 when every check passes, else 1."""
    parser = subparsers.add_parser(
        "doctor", help="check this machine (GPU, torch, models, configuration, OMERO) and say what to fix",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--expect-gpu", action="store_true", help="fail when no CUDA GPU is usable (GPU nodes)")
    parser.add_argument("--processor", action="store_true",
                        help="this is an OMERO processor node: check dlcore's processor extension")
    parser.add_argument("--omero-host", default=os.environ.get("OMERO_HOST"),
                        help="OMERO server to reach (default $OMERO_HOST; no OMERO check without one)")
    parser.add_argument("--omero-port", type=int, default=OMERO_PORT, help="OMERO port (default 4064)")
    parser.add_argument("--omero-user", default=os.environ.get("OMERO_USER"),
                        help="log in as this user (password from $OMERO_PASSWORD)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for OMERO (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=_main)
    return parser


if __name__ == "__main__":  # python -m dlcore.doctor, until the CLI dispatches to it
    _parser = argparse.ArgumentParser(prog="dlcore")
    register_cli(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args(["doctor", *sys.argv[1:]])
    sys.exit(_args.func(_args))
