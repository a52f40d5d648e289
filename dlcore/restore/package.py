"""A trained prediction network as a versioned bioimage.io model package (``kind: image_prediction``).

:func:`register_image_model` writes one folder into a registry (``name/`` first, then ``name-vN/``,
under the registry's lock, as :mod:`dlcore.pixels.package` does)::

    <registry>/<name>[-vN]/
      rdf.yaml                 bioimage.io model (format 0.5); dlcore's settings in config.dlcore
      architecture.py          the network's source (dlcore/models/architectures.py)
      weights.pt               pytorch_state_dict weights
      weights_torchscript.pt   torchscript weights (runs without the source)
      test_input.npy           the network's raw input (1, C, Y, X), float32, before normalisation
      test_output.npy          its output after the rdf's post-processing (computed here)
      cover.png, README.md     the cover (input | prediction) and the model card
      report/                  QC: metrics.csv, error_map_N.png, learning_curves.png, qc.json

The rdf declares what other tools need to run the network alone: the input's per-channel percentile
normalisation (``scale_range``) and, for a fixed output scale, a ``scale_linear`` post-processing step.
Undoing the input's own normalisation (Noise2Void, CARE: ``output_scale: input_percentiles``) has no
bioimage.io step; the output description says so.  ``config.dlcore`` is described in
:mod:`dlcore.restore.config`.  The folder is written beside its destination and renamed into place
only once bioimageio.spec accepted it and its torchscript export reproduced the network (nothing
half-written is ever visible).
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError, ParameterError
from dlcore.restore.config import KIND
from dlcore.restore.data import EPS

log = logging.getLogger(__name__)

TEST_SIDE = 128
REPRODUCIBILITY = {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-4, "mismatched_elements_per_million": 100}
N2V_CITATION = {"text": "Krull, Buchholz and Jug. Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
                "doi": "10.1109/CVPR.2019.00223"}
CARE_CITATION = {"text": "Weigert et al. Content-aware image restoration: pushing the limits of fluorescence "
                         "microscopy. Nature Methods 15, 2018.", "doi": "10.1038/s41592-018-0216-7"}
MODE_TASK = {"n2v": "denoising", "care": "image restoration", "translate": "image-to-image translation"}


def check_model_name(name: str, *, what: str = "the model name") -> str:
    """``name`` when it can be a bioimage.io model name and a registry folder (5 to 64 letters, digits,
    ``-`` or ``_``); else ParameterError, before any training time is spent."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{5,64}", name or ""):
        raise ParameterError(f"{what} {name!r}: give the model a name of 5 to 64 letters, digits, '-' or '_', without "
                             "spaces (a bioimage.io model name), e.g. 'ihc-dab-from-haematoxylin'")
    return name


def output_scale(trained) -> tuple[dict, list[float] | None]:
    """``(output_scale, value_range)`` of a trained model (see :mod:`dlcore.restore.config`)."""
    if trained.mode in ("n2v", "care") and trained.in_channels == trained.out_channels:
        scale = {"type": "input_percentiles"}
        low, high = None, None
    else:
        percentile = trained.options.target_normalization == "percentile"
        low = [float(v) for v in trained.target_low]
        high = [float(h) + (EPS if percentile else 0.0) for h in trained.target_high]
        scale = {"type": "fixed", "low": low, "high": high}
    value_range = None
    if trained.options.final_activation == "sigmoid" and low is not None and len(low) == 1:
        value_range = [low[0], high[0]]
    return scale, value_range


def _test_crop(image: np.ndarray, divisor: int) -> np.ndarray:
    """A central square of at most ``TEST_SIDE`` pixels whose side is a multiple of ``divisor``."""
    h, w = image.shape[:2]
    side = min(TEST_SIDE, h, w) // divisor * divisor
    if side < divisor:
        raise ModelError(f"the example image ({w}x{h}) is smaller than the network's divisor {divisor}")
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image[y0:y0 + side, x0:x0 + side]


def _postprocessing(scale: dict, n_out: int) -> list[dict]:
    if scale["type"] != "fixed":
        return []
    gain = [h - lo for lo, h in zip(scale["low"], scale["high"])]
    if all(abs(g - 1.0) < 1e-9 for g in gain) and all(lo == 0 for lo in scale["low"]):
        return []
    if n_out == 1:
        return [{"id": "scale_linear", "kwargs": {"gain": gain[0], "offset": scale["low"][0]}}]
    return [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain, "offset": list(scale["low"])}}]


def _to_u8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _cover(source: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The normalised input (first channel) beside the prediction (first channel), grey, RGB uint8."""
    side = np.concatenate([_to_u8(source[0]), np.full((source.shape[1], 4), 255, np.uint8), _to_u8(output[0])], axis=1)
    return np.repeat(side[..., None], 3, axis=2)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "inf" if np.isinf(value) else "n/a" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def card(name: str, description: str, trained, cfg: dict, *, evaluation, training_data: str, reproduce: str,
         limits: str, notes: str, qc_files: Sequence[str]) -> str:
    """The model card: what it does, what it learned from, its held-out figures beside trivial baselines."""
    split = trained.split.describe()
    h = trained.history
    o = trained.options
    lines = [f"# {name}", "", description, "",
             f"A network for {MODE_TASK[trained.mode]} (mode {trained.mode}) trained in dlcore on PyTorch with "
             "dlcore's own U-Net "
             f"(`UNet2D`, widths {list(o.channels)}, {o.norm} normalisation, final activation {o.final_activation}). "
             "CAREamics was not used: it requires torchvision <= 0.26 (pinning torch 2.11) plus lightning and "
             "bioimageio.core.", "",
             "## Training data", "", training_data or "Not stated.", "",
             f"- **split**: {split['method']}; training {split['train']['pixels']} px "
             f"({', '.join(split['train']['images'][:6])}), validation (early stopping) {split['val']['pixels']} px "
             f"({', '.join(split['val']['images'][:6]) or 'none'}), held-out test {split['test']['pixels']} px "
             f"({', '.join(split['test']['images'][:6]) or 'none'}) — never in a training patch",
             f"- **input**: {json.dumps(cfg['input_transform'])}, {cfg['input_channels']} channel(s), trained on "
             f"{cfg['input_dtype']} images; normalised per channel by the slide's {cfg['normalization'].get('low', 1)} "
             f"and {cfg['normalization'].get('high', 99.8)} percentiles",
             f"- **output**: {', '.join(cfg['output_channels'])}; scale {json.dumps(cfg['output_scale'])}; "
             f"value range {cfg['value_range']}",
             "", "## Training", "",
             f"- {h['epochs_run']} epochs of {o.steps_per_epoch} steps x batch {o.batch_size}, {o.patch_size} px patches"
             f"{' (flips, 90-degree rotations)' if o.augment else ''}, Adam lr {o.lr:g} with cosine decay, loss "
             f"{trained.loss}; kept epoch {h['best_epoch'] + 1} (best validation loss"
             f"{', stopped early' if h['stopped_early'] else ''})",
             f"- training time: {h['seconds']:.0f} s on CPU ({o.threads} threads)"]
    if trained.mode == "n2v":
        lines.append(f"- Noise2Void masking: {o.mask_fraction:.2%} of the pixels per patch, stratified, each replaced "
                     f"by a random other pixel of its {o.mask_neighbourhood} x {o.mask_neighbourhood} neighbourhood")
    lines += ["", "## Validation", ""]
    if evaluation is not None:
        rng = "each target's own max - min" if evaluation.data_range is None else f"{evaluation.data_range:g}"
        lines += [f"On the held-out test data only (never trained on, never used for early stopping); PSNR peak and "
                  f"SSIM range {rng}; SSIM with Gaussian weights (sigma 1.5); NRMSE = RMSE / target range. The baselines "
                  "are fitted on the training pixels: they say what the figures mean.", "",
                  "| predictor | PSNR (dB) | SSIM | Pearson r | NRMSE | MAE |", "|---|---:|---:|---:|---:|---:|"]
        for predictor, m in evaluation.summary.items():
            label = f"**{predictor}**" if predictor == "model" else predictor
            lines.append(f"| {label} | {_fmt(m['psnr'])} | {_fmt(m['ssim'])} | {_fmt(m['pearson_r'])} | "
                         f"{_fmt(m['nrmse'])} | {_fmt(m['mae'])} |")
    else:
        lines.append("No clean targets: the held-out figure is the masked-pixel loss only "
                     f"({_fmt(cfg['metrics'].get('test_masked_loss'))}). Noise2Void's quality on known noise is "
                     "measured by `python -m dlcore.train.recipes denoise-n2v` (synthetic noise on real tissue).")
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "## QC files", "", "In `report/`: " + ", ".join(f"`{Path(f).name}`" for f in qc_files)
              + " (held-out error maps show input, target, prediction and |prediction - target|).",
              "", "## Limits", "", limits.strip() or "Trained on the data above only; check its output on your own "
              "images before trusting it.", ""]
    if reproduce:
        lines += ["## Reproduce", "", f"`{reproduce}`", ""]
    settings = {k: cfg[k] for k in ("kind", "mode", "mpp", "tile_size", "halo", "output_channels", "value_range",
                                    "output_dtype")}
    lines += ["## Running it in dlcore", "", f"`dlcore run {name} SLIDE -o OUT` writes the predicted image (blended "
              "across tiles); parameters mpp, tile_size, halo (at most tile_size / 2), batch_size, device, "
              "output_dtype (float32, uint16, uint8). Settings from `config.dlcore`:", "",
              "```json", json.dumps(settings, indent=2), "```"]
    return "\n".join(lines).rstrip() + "\n"


def _rdf(*, name, description, version, cfg, trained, files, pre_steps, post_steps, authors, tags, license,
         attachments, n_params, cover_name) -> dict:
    import torch

    from dlcore.models.package import FORMAT_VERSION, UNET_CITATION, _authors
    from dlcore.models.spec import identifier

    divisor = int(getattr(trained.model, "divisor", 1))
    transform = cfg["input_transform"]
    if transform["type"] == "hed":
        in_names = [transform["stain"]]
        in_text = (f"the {transform['stain']} concentration of the 8-bit RGB image by colour deconvolution "
                   "(scikit-image rgb2hed), before normalisation")
    else:
        in_names = [f"channel{i}" for i in range(cfg["input_channels"])]
        in_text = "raw pixel values as read at the working resolution, before normalisation"
    space_in = [{"type": "space", "id": a, "size": {"min": divisor, "step": divisor}} for a in ("y", "x")]
    space_out = [{"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}} for a in ("y", "x")]
    if cfg["mpp"]:
        for axis in space_in + space_out:
            axis.update({"unit": "micrometer", "scale": cfg["mpp"]})
    scale = cfg["output_scale"]
    out_text = (f"predicted {', '.join(cfg['output_channels'])}"
                + (" in the input's normalised units (x * (p99.8 - p1) + p1 of the input restores them)"
                   if scale["type"] == "input_percentiles" else ""))[:128]
    torch_version = torch.__version__.split("+")[0]
    cite = [UNET_CITATION] + {"n2v": [N2V_CITATION], "care": [CARE_CITATION]}.get(trained.mode, [])
    return {
        "type": "model", "format_version": FORMAT_VERSION, "name": name, "description": description,
        "version": version, "authors": _authors(authors), "license": license, "tags": list(tags),
        "documentation": "README.md", "covers": [cover_name], "cite": cite,
        "inputs": [{"id": "input", "description": in_text,
                    "axes": [{"type": "batch"}, {"type": "channel", "channel_names": [identifier(n) for n in in_names]},
                             *space_in],
                    "test_tensor": {"source": "test_input.npy", "sha256": files["test_input.npy"]},
                    "data": {"type": "float32"}, "preprocessing": pre_steps}],
        "outputs": [{"id": "output", "description": out_text,
                     "axes": [{"type": "batch"}, {"type": "channel", "channel_names": [identifier(n) for n in
                                                                                       cfg["output_channels"]]},
                              *space_out],
                     "test_tensor": {"source": "test_output.npy", "sha256": files["test_output.npy"]},
                     "data": {"type": "float32"}, "postprocessing": post_steps}],
        "weights": {
            "pytorch_state_dict": {"source": "weights.pt", "sha256": files["weights.pt"], "pytorch_version": torch_version,
                                   "architecture": {"source": "architecture.py", "sha256": files["architecture.py"],
                                                    "callable": trained.architecture[0],
                                                    "kwargs": dict(trained.architecture[1])}},
            "torchscript": {"source": "weights_torchscript.pt", "sha256": files["weights_torchscript.pt"],
                            "pytorch_version": torch_version, "parent": "pytorch_state_dict"}},
        "attachments": [{"source": a, "sha256": files[a]} for a in attachments],
        "config": {"bioimageio": {"reproducibility_tolerance": [REPRODUCIBILITY], "model_parameter_count": int(n_params),
                                  "task": MODE_TASK[trained.mode]},
                   "dlcore": cfg},
    }


def write_image_package(out_dir: str | Path, trained, *, name: str, example: np.ndarray, output_channels: Sequence[str],
                        evaluation=None, version: str = "1.0.0", description: str = "", mpp: float | None = None,
                        tile_size: int = 512, halo: int = 32, input_transform: dict | None = None,
                        output_dtype: str = "float32", input_dtype: str | None = None, training_data: str = "",
                        reproduce: str = "", limits: str = "", notes: str = "", metrics_extra: dict | None = None,
                        authors: Sequence[str | dict] = ("dlcore",), tags: Sequence[str] = (),
                        license: str = "CC-BY-4.0", extra_files: dict[str, str] | None = None) -> Path:
    """Write ``trained`` (:class:`~dlcore.restore.training.TrainedImageModel`) as a validated package folder.

    Parameters
    ----------
    out_dir
        The package folder to create (must not exist).
    trained
        The trained model.
    name
        The model's name (5 to 64 letters, digits, ``-``, ``_``).
    example
        A ``(Y, X, C)`` network input as dlcore makes it from a slide (after ``input_transform``, before
        normalisation): its centre becomes the test tensors and the cover.
    output_channels
        Names of the predicted channels (one per network output).
    evaluation
        :class:`~dlcore.restore.metrics.Evaluation` of the held-out images (None: Noise2Void without
        clean targets).
    version, description, mpp, tile_size, halo, output_dtype
        Package settings (``halo`` at most ``tile_size // 2``).
    input_transform
        ``{"type": "none"}`` (default) or ``{"type": "hed", "stain": ...}`` (:mod:`dlcore.restore.transforms`).
    input_dtype
        The pixel type of the slides it is for (default: the training inputs'; uint8 for a colour
        deconvolution input, which is made from 8-bit RGB).
    training_data, reproduce, limits, notes
        Text for the card (``notes``: a Markdown section of the recipe's own, e.g. why a figure is high).
    metrics_extra
        More figures for ``config.dlcore.metrics`` (e.g. a synthetic-noise check).
    authors, tags, license
        Package metadata.
    extra_files
        ``{file name: text}`` written into the package before it appears (e.g. owner.json).

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ModelError
        When the settings do not fit the model, or bioimageio.spec rejects the package.
    """
    import torch

    from dlcore.models import architectures
    from dlcore.models.package import _save_cover, _validate_and_write, sha256_file, staged_package
    from dlcore.models.processing import Processing
    from dlcore.models.spec import check_dlcore_config, normalization_to_preprocessing
    from dlcore.restore.inference import forward
    from dlcore.restore.report import write_qc_report
    from dlcore.restore.training import heldout_loss

    check_model_name(name)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ModelError(f"{out_dir} already exists; remove it or choose another name")
    output_channels = [str(c) for c in output_channels]
    if len(output_channels) != trained.out_channels:
        raise ModelError(f"give one output channel name per network output ({trained.out_channels}), got {output_channels}")
    example = np.asarray(example, np.float32)
    if example.ndim == 2:
        example = example[..., None]
    if example.shape[-1] != trained.in_channels:
        raise ModelError(f"the example has {example.shape[-1]} channels; the network takes {trained.in_channels}")
    transform = dict(input_transform or {"type": "none"})
    if input_dtype is None:
        input_dtype = "uint8" if transform["type"] == "hed" else trained.source_dtype
    scale, value_range = output_scale(trained)
    low, high = trained.options.percentiles
    metrics = {"heldout": None if evaluation is None else evaluation.summary,
               "data_range": None if evaluation is None else evaluation.data_range, **(metrics_extra or {})}
    if trained.mode == "n2v":
        metrics["test_masked_loss"] = heldout_loss(trained)
    cfg = {"kind": KIND, "mode": trained.mode, "mpp": mpp, "tile_size": int(tile_size), "halo": int(halo),
           "normalization": {"type": "percentile", "low": float(low), "high": float(high), "per_channel": True},
           "output_activation": "none", "input_channels": trained.in_channels, "input_dtype": input_dtype,
           "input_transform": transform, "output_channels": output_channels,
           "output_scale": scale, "value_range": value_range, "output_dtype": output_dtype,
           "training": {"options": trained.options.as_dict(), "loss": trained.loss, "split": trained.split.describe(),
                        "history": trained.history},
           "training_data": {"description": training_data},
           "metrics": json.loads(json.dumps(metrics, default=float))}
    cfg = check_dlcore_config(cfg, where=f"{name}: config.dlcore")
    divisor = int(getattr(trained.model, "divisor", 1))
    if cfg["tile_size"] % divisor:
        raise ModelError(f"tile_size={tile_size} must be a multiple of the network's divisor {divisor}")

    model = trained.model.to("cpu").eval()
    raw = np.ascontiguousarray(np.moveaxis(_test_crop(example, divisor), -1, 0)[None], dtype=np.float32)
    pre_steps = normalization_to_preprocessing(cfg["normalization"], trained.in_channels)
    post_steps = _postprocessing(scale, trained.out_channels)
    axes = ("batch", "channel", "y", "x")
    pre, post = Processing(pre_steps, axes), Processing(post_steps, axes)
    normalised = pre(raw).astype(np.float32)
    network_out = forward(model, normalised)
    output = post(network_out).astype(np.float32)

    with staged_package(out_dir, extra_files) as staging:
        qc_files = [f"report/{n}" for n in write_qc_report(staging / "report", trained, evaluation, extra=metrics_extra)]
        cfg["qc_files"] = qc_files
        shutil.copyfile(inspect.getsourcefile(architectures), staging / "architecture.py")
        torch.save(model.state_dict(), staging / "weights.pt")
        try:
            scripted = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - some modules cannot be scripted; tracing fixes the input size only
            scripted = torch.jit.trace(model, torch.from_numpy(normalised))
        scripted.save(str(staging / "weights_torchscript.pt"))
        ts_out = forward(torch.jit.load(str(staging / "weights_torchscript.pt")), normalised)
        if not np.allclose(ts_out, network_out, rtol=1e-4, atol=1e-5):
            raise ModelError("the torchscript export does not reproduce the model's output")
        np.save(staging / "test_input.npy", raw)
        np.save(staging / "test_output.npy", output)
        cover_name = _save_cover(_cover(normalised[0], network_out[0]), staging)
        (staging / "README.md").write_text(card(name, description or f"{MODE_TASK[trained.mode]} model trained in dlcore",
                                                trained, cfg, evaluation=evaluation, training_data=training_data,
                                                reproduce=reproduce, limits=limits, notes=notes, qc_files=qc_files))
        names = ("weights.pt", "weights_torchscript.pt", "architecture.py", "test_input.npy", "test_output.npy")
        files = {f: sha256_file(staging / f) for f in (*names, *qc_files)}
        rdf = _rdf(name=name, description=description or f"{MODE_TASK[trained.mode]} model trained in dlcore",
                   version=version, cfg=cfg, trained=trained, files=files, pre_steps=pre_steps, post_steps=post_steps,
                   authors=authors, tags=list(tags) or ["dlcore", trained.mode, "pytorch", "unet"], license=license,
                   attachments=qc_files, n_params=sum(p.numel() for p in model.parameters()), cover_name=cover_name)
        _validate_and_write(rdf, staging)
    log.info("wrote prediction model package %s", out_dir)
    return out_dir


def register_image_model(trained, registry: str | Path, *, name: str, owner: dict | None = None, **kwargs) -> Path:
    """Write ``trained`` into ``registry`` as a new version of ``name`` (``name/`` first, then ``name-vN/``)
    under the registry's lock, so that concurrent trainings never take the same folder.  ``owner``
    (:mod:`dlcore.models.ownership`) is written as owner.json inside the package; other keyword arguments
    go to :func:`write_image_package`.  Returns the package folder."""
    from dlcore.models.ownership import OWNER_FILE
    from dlcore.models.registry import registry_name
    from dlcore.train.registry_io import next_version, registry_lock

    check_model_name(name)
    registry = Path(registry)
    key = registry_name(name)
    with registry_lock(registry):
        version, folder = next_version(key, registry)
        extra = {OWNER_FILE: json.dumps(owner, indent=2)} if owner else None
        return write_image_package(registry / folder, trained, name=key, version=version, extra_files=extra, **kwargs)


__all__ = ["write_image_package", "register_image_model", "check_model_name", "output_scale", "card"]
