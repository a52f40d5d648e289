"""Writing a trained network as a bioimage.io model package (rdf.yaml format 0.5).

:func:`write_package` produces one folder::

    <out_dir>/
      rdf.yaml                 bioimage.io description; dlcore's settings in config.dlcore
      architecture.py          the network's source (a copy of dlcore/models/architectures.py)
      weights.pt               pytorch_state_dict weights
      weights_torchscript.pt   torchscript weights (runs without the source)
      test_input.npy           raw input (batch, channel, y, x), float32, before pre-processing
      test_output.npy          what the network returns for it (computed here, by running it)
      cover.png                the cover image
      README.md                the model card: training data, metrics, limits, validation

and validates it with bioimageio.spec before it is moved into place (nothing half-written is left
behind).  The ``config.dlcore`` block is described in :mod:`dlcore.models.spec`.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError
from dlcore.models.processing import Processing
from dlcore.models.spec import check_dlcore_config, identifier, normalization_to_preprocessing, resolve_activation

log = logging.getLogger(__name__)

# 0.5.4: the oldest 0.5 release with every field written here, so that tools pinned to an older
# bioimageio.spec read our packages too (newer libraries upgrade it on load).
FORMAT_VERSION = "0.5.4"
INPUT_ID = "input"
OUTPUT_ID = "output"
UNET_CITATION = {"text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image "
                         "Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside ``folder``."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_digest(entry: dict) -> str:
    """The sha256 of a weights entry (``{"path", "sha256"}``): the one its rdf.yaml states, else the
    file's own, computed (once per file size and modification time).  A run's identity (its checkpoint)
    holds it, so weights changed in place are never mixed into a resumed run."""
    if entry.get("sha256"):
        return str(entry["sha256"])
    stat = Path(entry["path"]).stat()
    return _digest_of(str(entry["path"]), stat.st_size, stat.st_mtime_ns)


@contextlib.contextmanager
def staged_package(out_dir: Path, extra_files: dict[str, str] | None = None):
    """A hidden folder beside ``out_dir`` to write a package into: when the block ends without error,
    ``extra_files`` (name -> text) are written into it and it is renamed to ``out_dir``; otherwise it is
    removed.  So a package is never visible half-written, nor without its extra files."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        for file_name, text in (extra_files or {}).items():
            (staging / file_name).write_text(text)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def image_to_tensor(image: np.ndarray) -> np.ndarray:
    """A ``(Y, X, C)`` (or ``(Y, X)``) image as a ``(1, C, Y, X)`` float32 tensor (values unchanged)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ModelError(f"test_input must be a (Y, X, C) image, got shape {image.shape}")
    return np.ascontiguousarray(np.moveaxis(image, -1, 0)[None].astype(np.float32))


def _expected_outputs(cfg: dict) -> tuple[int, ...]:
    n = len(cfg["classes"])
    if cfg["kind"] == "semantic":
        return (1,) if n == 1 else (n + 1,)
    if cfg["kind"] == "patch_classification":
        return (n,)
    return (2, 3) if cfg["postprocess"]["type"] == "fg_boundary_watershed" else (1, 2)


def _check_model(model, cfg: dict, x: np.ndarray, out: np.ndarray) -> None:
    kind = cfg["kind"]
    expected = _expected_outputs(cfg)
    if out.shape[1] not in expected:
        raise ModelError(f"a {kind} model with classes {cfg['classes']} must have {' or '.join(map(str, expected))} "
                         f"output channels; this one has {out.shape[1]}")
    if kind == "patch_classification":
        if out.ndim != 2:
            raise ModelError(f"a patch classifier must return (batch, classes), got shape {out.shape}")
        if x.shape[2] != cfg["patch_size"] or x.shape[3] != cfg["patch_size"]:
            raise ModelError(f"test_input must be one {cfg['patch_size']}x{cfg['patch_size']} patch, got {x.shape[2:]}")
    elif out.shape[2:] != x.shape[2:]:
        raise ModelError(f"the model's output {out.shape[2:]} must have the input's Y, X {x.shape[2:]}")
    divisor = int(getattr(model, "divisor", 1))
    if kind != "patch_classification" and cfg["tile_size"] % divisor:
        raise ModelError(f"tile_size={cfg['tile_size']} must be a multiple of the network's divisor {divisor}")


def _run(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).float().numpy()


def _save_cover(cover, folder: Path) -> str:
    if isinstance(cover, (str, Path)):
        cover = Path(cover)
        if cover.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif", ".svg"):
            raise ModelError(f"cover {cover} must be a PNG, JPEG, GIF or SVG file")
        name = f"cover{cover.suffix.lower()}"
        shutil.copyfile(cover, folder / name)
        return name
    from PIL import Image

    array = np.asarray(cover)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    Image.fromarray(array).save(folder / "cover.png")
    return "cover.png"


def _card(name: str, description: str, card_markdown: str, cfg: dict, training_data: dict | None,
          metrics: dict | None) -> str:
    parts = [card_markdown.strip() or f"# {name}\n\n{description}"]
    if training_data and "training data" not in card_markdown.lower():
        parts.append("## Training data\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in training_data.items()))
    if "validation" not in card_markdown.lower():
        body = ("\n".join(f"- **{k}**: {v}" for k, v in metrics.items()) if metrics
                else "No held-out evaluation was recorded for this model.")
        parts.append("## Validation\n\n" + body)
    settings = {k: cfg[k] for k in ("kind", "mpp", "tile_size", "halo", "normalization", "classes") if k in cfg}
    parts.append("## Running it in dlcore\n\n`dlcore run " + name + " SLIDE -o OUT` with these settings "
                 "(from `config.dlcore` in rdf.yaml):\n\n```json\n" + json.dumps(settings, indent=2) + "\n```")
    return "\n\n".join(parts) + "\n"


def write_package(
    out_dir: str | Path,
    *,
    name: str,
    description: str,
    model,
    architecture: tuple[str, dict],
    dlcore_config: dict,
    test_input: np.ndarray,
    cover: np.ndarray | Path,
    card_markdown: str,
    authors: Sequence[str | dict],
    tags: Sequence[str],
    version: str = "0.1.0",
    training_data: dict | None = None,
    metrics: dict | None = None,
    license: str = "CC-BY-4.0",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as a validated bioimage.io package folder; returns the folder.

    Parameters
    ----------
    out_dir
        The package folder to create (must not exist; its parent is created).  By convention
        ``models/<name>/``.
    name
        Model name (the registry's key; letters, digits, ``-`` and ``_``).
    description
        One line saying what the model does.
    model
        The trained ``torch.nn.Module``; an instance of ``architecture``'s class.
    architecture
        ``(callable_name, kwargs)``: a class in :mod:`dlcore.models.architectures` (e.g.
        ``("UNet2D", {"in_channels": 3, "out_channels": 3, "channels": [16, 32, 64]})``) and its JSON
        constructor arguments.
    dlcore_config
        The ``config.dlcore`` block (see :mod:`dlcore.models.spec`).
    test_input
        A raw ``(Y, X, C)`` image as dlcore reads it from a slide (uint8 RGB, say), Y and X a multiple of
        the network's divisor; for a patch classifier one ``patch_size`` square patch.  The test output
        is computed here by running the model on it.
    cover
        The cover picture: an RGB array or an image file.
    card_markdown
        The model card (Markdown): what it was trained on, how well it does, its limits.  A
        ``Validation`` section with ``metrics`` and a ``Training data`` section are added when missing.
    authors
        Names, or dicts with ``name`` (and ``affiliation``, ``github_user``, ``orcid``).
    tags
        Keywords (e.g. ``["nuclei", "instance-segmentation", "he", "pytorch"]``).
    version, license
        Package version and SPDX licence id.
    training_data, metrics
        Free-form records (stored in ``config.dlcore`` and written into the card).

    extra_files
        ``{file name: text}`` written into the package before it appears under ``out_dir`` (e.g.
        ``owner.json``), so the package is never visible without them.
    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ModelError
        When the settings do not fit the model, or bioimageio.spec rejects the package (with its reason).
    """
    import torch

    from dlcore.models import architectures

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ModelError(f"{out_dir} already exists; remove it or choose another folder")
    cfg = check_dlcore_config(dict(dlcore_config))
    callable_name, kwargs = architecture
    factory = getattr(architectures, callable_name, None)
    if factory is None or not isinstance(model, factory):
        raise ModelError(f"architecture {callable_name!r} must name the class of `model` in dlcore.models.architectures "
                         f"(the model is a {type(model).__name__})")
    kwargs = json.loads(json.dumps(dict(kwargs)))  # JSON values only: they go into rdf.yaml
    rebuilt = factory(**kwargs)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except RuntimeError as exc:
        raise ModelError(f"the architecture kwargs {kwargs} do not match the model's weights: {exc}") from exc

    model = model.to("cpu").eval()
    raw = image_to_tensor(test_input)
    pre_steps = normalization_to_preprocessing(cfg["normalization"], raw.shape[1])
    pre = Processing(pre_steps, ("batch", "channel", "y", "x"))
    output = _run(model, pre(raw).astype(np.float32))
    _check_model(model, cfg, raw, output)
    cfg["output_activation"] = resolve_activation(cfg, output.shape[1], kwargs.get("final_activation", "none"))
    cfg["training_data"] = training_data or {}
    cfg["metrics"] = metrics or {}

    with staged_package(out_dir, extra_files) as staging:
        shutil.copyfile(inspect.getsourcefile(architectures), staging / "architecture.py")
        torch.save(model.state_dict(), staging / "weights.pt")
        try:
            scripted = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - some modules cannot be scripted; tracing fixes the input size only
            scripted = torch.jit.trace(model, torch.from_numpy(pre(raw).astype(np.float32)))
        scripted.save(str(staging / "weights_torchscript.pt"))
        ts_out = _run(torch.jit.load(str(staging / "weights_torchscript.pt")), pre(raw).astype(np.float32))
        if not np.allclose(ts_out, output, rtol=1e-4, atol=1e-5):
            raise ModelError("the torchscript export does not reproduce the model's output")
        np.save(staging / "test_input.npy", raw)
        np.save(staging / "test_output.npy", output.astype(np.float32))
        cover_name = _save_cover(cover, staging)
        (staging / "README.md").write_text(_card(name, description, card_markdown, cfg, training_data, metrics))
        rdf = _rdf(name=name, description=description, cfg=cfg, raw=raw, output=output, pre_steps=pre_steps,
                   divisor=int(getattr(model, "divisor", 1)), callable_name=callable_name, kwargs=kwargs,
                   cover_name=cover_name, authors=authors, tags=tags, version=version, license=license,
                   folder=staging, n_params=sum(p.numel() for p in model.parameters()))
        _validate_and_write(rdf, staging)
    log.info("wrote model package %s", out_dir)
    return out_dir


def _authors(authors: Sequence[str | dict]) -> list[dict]:
    out = [{"name": a} if isinstance(a, str) else dict(a) for a in authors]
    if not out:
        raise ModelError("a model package needs at least one author")
    return out


def _rdf(*, name, description, cfg, raw, output, pre_steps, divisor, callable_name, kwargs, cover_name, authors,
         tags, version, license, folder: Path, n_params: int) -> dict:
    import torch

    n_in = raw.shape[1]
    in_names = ["red", "green", "blue"] if n_in == 3 else [f"channel{i}" for i in range(n_in)]
    kind = cfg["kind"]
    if kind == "patch_classification":
        patch = cfg["patch_size"]
        space_in = [{"type": "space", "id": a, "size": patch, "unit": "micrometer", "scale": cfg["mpp"] or 1.0}
                    for a in ("y", "x")]
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": [identifier(c) for c in cfg["classes"]]}]
    else:
        space_in = [{"type": "space", "id": a, "size": {"min": divisor, "step": divisor}, "unit": "micrometer",
                     "scale": cfg["mpp"] or 1.0} for a in ("y", "x")]
        out_names = _output_channel_names(cfg, output.shape[1])
        out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": out_names}] + [
            {"type": "space", "id": a, "size": {"tensor_id": INPUT_ID, "axis_id": a}, "unit": "micrometer",
             "scale": cfg["mpp"] or 1.0} for a in ("y", "x")]
    if not cfg["mpp"]:
        for axis in space_in + out_axes:
            axis.pop("unit", None)
            axis.pop("scale", None)
    files = {f: sha256_file(folder / f) for f in ("weights.pt", "weights_torchscript.pt", "architecture.py",
                                                  "test_input.npy", "test_output.npy")}
    torch_version = torch.__version__.split("+")[0]

    rdf = {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "version": version,
        "authors": _authors(authors),
        "license": license,
        "tags": list(tags),
        "documentation": "README.md",
        "covers": [cover_name],
        "inputs": [{
            "id": INPUT_ID,
            "description": "raw image as read from the slide at the working resolution (before pre-processing)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": in_names}, *space_in],
            "test_tensor": {"source": "test_input.npy", "sha256": files["test_input.npy"]},
            "data": {"type": "float32"},
            "preprocessing": pre_steps,
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": _output_description(cfg),
            "axes": out_axes,
            "test_tensor": {"source": "test_output.npy", "sha256": files["test_output.npy"]},
            "data": {"type": "float32"},
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt", "sha256": files["weights.pt"], "pytorch_version": torch_version,
                "architecture": {"source": "architecture.py", "sha256": files["architecture.py"],
                                 "callable": callable_name, "kwargs": kwargs},
            },
            "torchscript": {"source": "weights_torchscript.pt", "sha256": files["weights_torchscript.pt"],
                            "pytorch_version": torch_version, "parent": "pytorch_state_dict"},
        },
        "config": {
            "bioimageio": {"reproducibility_tolerance": [{"relative_tolerance": 1e-3, "absolute_tolerance": 1e-4,
                                                          "mismatched_elements_per_million": 100}],
                           "model_parameter_count": int(n_params),
                           "task": {"semantic": "semantic segmentation", "instances": "instance segmentation",
                                    "patch_classification": "classification"}[kind]},
            "dlcore": cfg,
        },
    }
    if callable_name == "UNet2D":
        rdf["cite"] = [UNET_CITATION]
    return rdf


def _output_channel_names(cfg: dict, n: int) -> list[str]:
    if cfg["kind"] == "semantic":
        names = cfg["classes"] if n == 1 else ["background", *cfg["classes"]]
    elif cfg["postprocess"]["type"] == "fg_boundary_watershed":
        names = ["foreground", "boundary"] if n == 2 else ["background", "foreground", "boundary"]
    else:
        names = ["distance"] if n == 1 else ["foreground", "distance"]
    return [identifier(c) for c in names]


def _output_description(cfg: dict) -> str:
    act = cfg["output_activation"]
    return {"semantic": f"class scores ({act} gives probabilities); dlcore takes the arg-max",
            "instances": f"pixel maps for {cfg.get('postprocess', {}).get('type')} ({act} gives probabilities)",
            "patch_classification": f"class scores of the patch ({act} gives probabilities)"}[cfg["kind"]]


def _validate_and_write(rdf: dict, folder: Path) -> None:
    """Validate ``rdf`` with bioimageio.spec (files checked in ``folder``) and write rdf.yaml."""
    from bioimageio.spec import ValidationContext, build_description
    from bioimageio.spec.common import InvalidDescr

    import yaml

    with ValidationContext(root=folder, perform_io_checks=True, file_name="rdf.yaml"):
        descr = build_description(rdf)
    if isinstance(descr, InvalidDescr):
        raise ModelError(f"bioimageio.spec rejects the package: {_reason(descr)}")
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))


def _reason(descr) -> str:
    summary = descr.validation_summary
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return "; ".join(errors[:8]) or summary.status
