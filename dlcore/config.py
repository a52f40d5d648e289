"""dlcore's configuration: where it is read from and what it holds.

OMERO's processor passes only a whitelist of environment variables to a script, so a node's
configuration lives in a file at a known path.  The first of these that exists is read:

1. the file named by ``$DLCORE_CONFIG`` (handy on the command line and in tests);
2. ``/etc/dlcore/dlcore.toml`` (what the Ansible role writes on processor nodes);
3. ``~/.config/dlcore/dlcore.toml``.

With none, the defaults below apply.  The file is TOML::

    [dlcore]
    models_dir = "/opt/dlcore/models"   # the model registry (shipped and sysadmin-installed models)
    trained_models_dir = ""             # where Train_Model writes, shared by every node ("" = models_dir)
    device = "auto"                     # auto | cpu | cuda | cuda:N
    batch_size = 8                      # tiles per inference batch
    reader_threads = 2                  # tile prefetch threads
    workers = 0                         # worker processes for the tiles' CPU work (0: from the cores)
    torch_threads = 0                   # torch CPU threads for a model on the CPU (0: half the cores)
    slides_at_once = 1                  # slides of one `dlcore run` analysed side by side
    roi_cap = 5000                      # most ROIs written to OMERO per image and run
    work_dir = ""                       # scratch space and run checkpoints ("" = system temp)
    export_dir = ""                     # where Export_Annotated_Dataset writes large exports ("" = not offered)
    field_python = ""                   # the field-models environment's python (TIAToolbox, Cellpose models)
    checkpoint_every_s = 20             # seconds between a run's checkpoints (a kill loses at most this)

    [processor]
    gpu_slots_per_gpu = 1               # concurrent deep-learning jobs per GPU
    queue_length = 4                    # jobs a node takes to wait for a busy GPU (0: decline)
    gpu_nodes = ["gpu1", "gpu2"]        # nodes with GPUs; others then decline DL jobs
    dl_script_folders = ["Deep_Learning"]

Unknown keys are an error (a typo must not be silently ignored).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dlcore.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/dlcore/dlcore.toml")
USER_CONFIG = Path.home() / ".config" / "dlcore" / "dlcore.toml"
_DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _default_models_dir() -> Path:
    """The repository's ``models/`` when running from a checkout, else a per-user folder."""
    checkout_models = Path(__file__).resolve().parent.parent / "models"
    if checkout_models.is_dir():
        return checkout_models
    return Path.home() / ".local" / "share" / "dlcore" / "models"


@dataclass(frozen=True)
class ProcessorConfig:
    """How an OMERO processor node shares its GPUs between deep-learning jobs."""

    gpu_slots_per_gpu: int = 1
    queue_length: int = 4
    gpu_nodes: tuple[str, ...] = ()
    dl_script_folders: tuple[str, ...] = ("Deep_Learning",)


@dataclass(frozen=True)
class Config:
    """dlcore's settings on this machine (see the module docstring for the file format)."""

    models_dir: Path = field(default_factory=_default_models_dir)
    trained_models_dir: Path | None = None  # None: models_dir
    device: str = "auto"
    batch_size: int = 8
    reader_threads: int = 2
    workers: int = 0
    torch_threads: int = 0
    slides_at_once: int = 1
    roi_cap: int = 5000
    work_dir: Path | None = None
    export_dir: Path | None = None  # None: exports to a folder on the node are refused (attach a zip instead)
    field_python: Path | None = None  # None: TIAToolbox / Cellpose models are refused (tools/install_field_env.sh)
    checkpoint_every_s: float = 20.0
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    source: Path | None = None  # the file these settings came from, None for defaults

    @property
    def trained_dir(self) -> Path:
        """Where trained models are written: ``trained_models_dir``, else ``models_dir``.

        With several processor nodes this must be one folder every node mounts (a shared filesystem):
        a model trained on one node is then run by any other.
        """
        return Path(self.trained_models_dir or self.models_dir)

    @property
    def model_roots(self) -> tuple[Path, ...]:
        """The registry's folders, in lookup order: ``models_dir``, then ``trained_models_dir``."""
        roots = [Path(self.models_dir)]
        if self.trained_models_dir and Path(self.trained_models_dir) != roots[0]:
            roots.append(Path(self.trained_models_dir))
        return tuple(roots)

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        if not (self.device in _DEVICE_CHOICES or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r}{where} is not one of auto, cpu, cuda, cuda:N")
        for name in ("batch_size", "reader_threads", "slides_at_once"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}{where} must be at least 1")
        for name in ("workers", "torch_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}{where} must be 0 (decided from the cores) or more")
        if not self.checkpoint_every_s >= 0:
            raise ConfigError(f"checkpoint_every_s={self.checkpoint_every_s}{where} must be 0 (after every tile) or more")
        if self.roi_cap < 0:
            raise ConfigError(f"roi_cap={self.roi_cap}{where} must be 0 (no ROIs) or more")
        if self.processor.gpu_slots_per_gpu < 1:
            raise ConfigError(f"processor.gpu_slots_per_gpu{where} must be at least 1")
        if self.processor.queue_length < 0:
            raise ConfigError(f"processor.queue_length{where} must be 0 (no queue) or more")


def config_path() -> Path | None:
    """The configuration file that :func:`load_config` reads, or None when there is none."""
    env = os.environ.get("DLCORE_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"DLCORE_CONFIG={env} does not name a file; create it or unset DLCORE_CONFIG")
        return path
    for path in (SYSTEM_CONFIG, USER_CONFIG):
        if path.is_file():
            return path
    return None


def _check_keys(table: dict, allowed: set[str], section: str, path: Path) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in [{section}] of {path}; allowed: {sorted(allowed)}"
        )


def parse_config(text: str, *, path: Path) -> Config:
    """Parse the TOML text of a configuration file into a :class:`Config`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    _check_keys(data, {"dlcore", "processor"}, "top level", path)
    main = dict(data.get("dlcore", {}))
    proc = dict(data.get("processor", {}))
    _check_keys(main, {f.name for f in dataclasses.fields(Config)} - {"processor", "source"}, "dlcore", path)
    _check_keys(proc, {f.name for f in dataclasses.fields(ProcessorConfig)}, "processor", path)
    if "models_dir" in main:
        main["models_dir"] = Path(main["models_dir"]).expanduser()
    if "trained_models_dir" in main:
        main["trained_models_dir"] = Path(main["trained_models_dir"]).expanduser() if main["trained_models_dir"] else None
    if "work_dir" in main:
        main["work_dir"] = Path(main["work_dir"]).expanduser() if main["work_dir"] else None
    for key in ("export_dir", "field_python"):
        if key in main:
            main[key] = Path(main[key]).expanduser() if main[key] else None
    for key in ("gpu_nodes", "dl_script_folders"):
        if key in proc:
            proc[key] = tuple(proc[key])
    try:
        return Config(**main, processor=ProcessorConfig(**proc), source=path)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_config() -> Config:
    """Read this machine's configuration (see the module docstring for where from).

    ``$DLCORE_MODELS`` overrides ``models_dir`` when set.
    """
    path = config_path()
    config = parse_config(path.read_text(), path=path) if path else Config()
    models_env = os.environ.get("DLCORE_MODELS")
    if models_env:
        config = dataclasses.replace(config, models_dir=Path(models_env).expanduser())
    return config
