"""Reading a bioimage.io package into what dlcore runs, and running its network on batches.

:func:`read_spec` turns an rdf.yaml (any 0.4 / 0.5 format, upgraded by bioimageio.spec) into a
:class:`ModelSpec` of plain values; :class:`Network` loads its torchscript or pytorch_state_dict
weights (SHA-256 checked) on the chosen device and maps raw ``(B, Y, X, C)`` batches to
``(B, C, Y, X)`` (or ``(B, C)``) probabilities: pre-processing, the network, post-processing and the
output activation.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError
from dlcore.models.device import DeviceChoice, choose_device
from dlcore.models.package import inside, sha256_file
from dlcore.models.processing import Processing
from dlcore.models.spec import check_dlcore_config, foreign_config, resolve_activation

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("torchscript", "pytorch_state_dict")
_INTERNAL = ("batch", "channel", "y", "x")


@dataclass(frozen=True)
class ModelSpec:
    """Everything dlcore needs from a package's rdf.yaml, as plain values.

    ``input_axes`` / ``output_axes`` are the tensors' axis ids in the network's order; ``sizes`` maps
    ``y`` and ``x`` to ``(min, step)`` (step 0: a fixed size); ``weights`` maps a format to
    ``{"path", "sha256", "architecture"}``; ``dlcore`` is the completed ``config.dlcore`` block (defaults
    for packages without one, ``foreign`` True).
    """

    name: str
    version: str
    description: str
    folder: Path
    input_axes: tuple[str, ...]
    in_channels: int
    sizes: dict
    preprocessing: list
    output_axes: tuple[str, ...]
    out_channels: int
    out_channel_names: tuple[str, ...]
    postprocessing: list
    weights: dict
    dlcore: dict
    foreign: bool
    test_input: Path | None
    test_output: Path | None
    tolerance: dict = field(default_factory=dict)

    def valid_size(self, n: int) -> int:
        """The smallest spatial size >= ``n`` the network accepts (the larger of y and x rules)."""
        best = 0
        for axis in ("y", "x"):
            low, step = self.sizes[axis]
            if step == 0:
                size = low
            else:
                size = low if n <= low else low + -(-(n - low) // step) * step
            best = max(best, size)
        return best


def _file(folder: Path, source) -> Path:
    """The package file ``source`` names; raises ModelError unless it lies inside ``folder`` (an absolute
    path, ``..`` or a symbolic link out of the package would read, or run, a file nobody checked)."""
    text = str(source)
    if "://" in text:
        raise ModelError(f"the package refers to a remote file {text}; dlcore runs local packages only "
                         "(download it and refer to it by a relative path)")
    path = Path(text)
    path = path if path.is_absolute() else folder / path
    if not inside(path, folder):
        raise ModelError(f"the package in {folder} refers to {text}, which lies outside its folder; a package's "
                         "rdf.yaml may name only files inside the package (relative paths, no '..', no links out)")
    return path


def load_descr(rdf_path: Path, *, io_checks: bool = False):
    """The bioimageio.spec description of a package (upgraded to the latest format).

    Raises ModelError with bioimageio.spec's reason when it is invalid.
    """
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    descr = load_description(rdf_path, format_version="latest", perform_io_checks=io_checks)
    if isinstance(descr, InvalidDescr):
        summary = descr.validation_summary
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
        raise ModelError(f"{rdf_path} is not a valid bioimage.io description: {'; '.join(errors[:8]) or summary.status}")
    if getattr(descr, "type", None) != "model":
        raise ModelError(f"{rdf_path} describes a {getattr(descr, 'type', '?')}, not a model")
    return descr


def spec_from_descr(descr, folder: Path) -> ModelSpec:
    """A :class:`ModelSpec` from a loaded bioimageio.spec ``ModelDescr`` (format 0.5)."""
    name = str(descr.name)
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ModelError(f"model {name!r} has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                         "dlcore runs models with one image input and one output")
    inp, out = descr.inputs[0], descr.outputs[0]
    input_axes = tuple(str(a.id) for a in inp.axes)
    kinds = {str(a.id): a.type for a in inp.axes}
    if sorted(k for k in kinds.values() if k == "space") != ["space", "space"] or any(
            k not in ("batch", "channel", "space") for k in kinds.values()) or not {"y", "x"} <= set(kinds):
        raise ModelError(f"model {name!r} takes a {'/'.join(input_axes)} input; dlcore runs 2-D image models "
                         "(axes batch, channel, y, x in any order)")
    in_channels = next((len(a.channel_names) for a in inp.axes if a.type == "channel"), 1)
    sizes = {}
    for a in inp.axes:
        if a.type != "space":
            continue
        size = a.size
        if isinstance(size, int):
            sizes[str(a.id)] = (size, 0)
        elif hasattr(size, "min") and hasattr(size, "step"):
            sizes[str(a.id)] = (int(size.min), int(size.step))
        else:
            raise ModelError(f"model {name!r}: input axis {a.id} has a size dlcore cannot choose ({size})")
    output_axes = tuple(str(a.id) for a in out.axes)
    out_kinds = [a.type for a in out.axes]
    if any(k not in ("batch", "channel", "space") for k in out_kinds):
        raise ModelError(f"model {name!r} returns a {'/'.join(output_axes)} output; dlcore reads batch, channel, y, x")
    out_names = next((tuple(str(c) for c in a.channel_names) for a in out.axes if a.type == "channel"), ("output",))
    weights = {}
    for fmt in WEIGHT_FORMATS:
        entry = getattr(descr.weights, fmt, None)
        if entry is None:
            continue
        record = {"path": _file(folder, entry.source), "sha256": str(entry.sha256) if entry.sha256 else None}
        if fmt == "pytorch_state_dict":
            arch = entry.architecture
            record["architecture"] = {
                "callable": str(arch.callable), "kwargs": dict(arch.kwargs),
                "source": _file(folder, arch.source) if hasattr(arch, "source") else None,
                "sha256": str(arch.sha256) if getattr(arch, "sha256", None) else None,
                "import_from": getattr(arch, "import_from", None),
            }
        weights[fmt] = record
    if not weights:
        formats = [f for f in ("onnx", "keras_hdf5", "tensorflow_saved_model_bundle") if getattr(descr.weights, f, None)]
        raise ModelError(f"model {name!r} has no torchscript or pytorch_state_dict weights (it has {', '.join(formats)}); "
                         "dlcore runs PyTorch weights only")
    extra = descr.config.model_extra or {}
    foreign = "dlcore" not in extra
    if foreign:
        n_out = len(out_names)
        dlcore = foreign_config(n_out, list(out_names))
        log.warning("model %r has no config.dlcore block: it runs as semantic segmentation of its %d output "
                    "channel(s) at the slide's native resolution with default tiling", name, n_out)
    else:
        dlcore = check_dlcore_config(dict(extra["dlcore"]), where=f"{name}: config.dlcore")
    tolerance = {}
    tol = list(getattr(descr.config.bioimageio, "reproducibility_tolerance", []) or [])
    if tol:
        t = tol[0]
        tolerance = {"rtol": float(getattr(t, "relative_tolerance", 1e-3)), "atol": float(getattr(t, "absolute_tolerance", 1e-4)),
                     "mismatched_per_million": float(getattr(t, "mismatched_elements_per_million", 100))}
    return ModelSpec(
        name=name, version=str(descr.version or ""), description=str(descr.description), folder=folder,
        input_axes=input_axes, in_channels=in_channels, sizes=sizes,
        preprocessing=[s.model_dump(mode="json") for s in inp.preprocessing],
        output_axes=output_axes, out_channels=len(out_names), out_channel_names=out_names,
        postprocessing=[s.model_dump(mode="json") for s in out.postprocessing],
        weights=weights, dlcore=dlcore, foreign=foreign,
        test_input=_file(folder, inp.test_tensor.source) if inp.test_tensor else None,
        test_output=_file(folder, out.test_tensor.source) if out.test_tensor else None,
        tolerance=tolerance or {"rtol": 1e-3, "atol": 1e-4, "mismatched_per_million": 100.0},
    )


def read_spec(package: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` of the package folder (or rdf.yaml) ``package``."""
    path = Path(package)
    rdf = path if path.is_file() else next((path / n for n in ("rdf.yaml", "bioimageio.yaml") if (path / n).is_file()), None)
    if rdf is None:
        raise ModelError(f"{path} holds no rdf.yaml; a model package is a folder with an rdf.yaml")
    return spec_from_descr(load_descr(rdf), rdf.parent)


def check_sha256(path: Path, expected: str | None, what: str) -> None:
    """Raise ModelError when ``path`` is missing or its SHA-256 differs from ``expected`` (when given)."""
    if not path.is_file():
        raise ModelError(f"{what} {path.name} is missing from the package")
    if expected and sha256_file(path) != expected:
        raise ModelError(f"{what} {path.name} does not match the sha256 in rdf.yaml (corrupt or tampered file); "
                         "reinstall the model")


def _import_architecture(arch: dict, model_name: str):
    if arch.get("source") is not None:
        check_sha256(arch["source"], arch.get("sha256"), "architecture source")
        module_name = f"_dlcore_arch_{abs(hash(str(arch['source'])))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, arch["source"])
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(arch["import_from"])
        except ImportError as exc:
            raise ModelError(f"model {model_name!r} needs {arch['import_from']} for its architecture: {exc}") from exc
    factory = getattr(module, arch["callable"], None)
    if factory is None:
        raise ModelError(f"model {model_name!r}: the architecture has no {arch['callable']!r}")
    return factory


def load_torch_module(spec: ModelSpec, weights_format: str | None = None):
    """The network of ``spec`` as a CPU torch module in eval mode, and the weights format used.

    ``weights_format`` None tries torchscript, then pytorch_state_dict.
    """
    import torch

    order = [weights_format] if weights_format else list(WEIGHT_FORMATS)
    available = [f for f in order if f in spec.weights]
    if not available:
        raise ModelError(f"model {spec.name!r} has no {weights_format} weights; it has {', '.join(spec.weights)}")
    fmt = available[0]
    entry = spec.weights[fmt]
    check_sha256(entry["path"], entry["sha256"], f"{fmt} weights")
    try:
        if fmt == "torchscript":
            module = torch.jit.load(str(entry["path"]), map_location="cpu")
        else:
            factory = _import_architecture(entry["architecture"], spec.name)
            module = factory(**entry["architecture"]["kwargs"])
            state = torch.load(str(entry["path"]), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types; say which file failed
        raise ModelError(f"cannot load the {fmt} weights of model {spec.name!r}: {exc}") from exc
    return module.eval(), fmt


@dataclass
class Network:
    """A package's network ready for batches on the chosen device.

    Call it with a raw ``(B, Y, X, C)`` batch (Y, X valid sizes, see :meth:`ModelSpec.valid_size`); it
    returns float32 probabilities ``(B, C, Y, X)`` (or ``(B, C)`` for a classifier).
    """

    spec: ModelSpec
    module: object
    weights_format: str
    device: DeviceChoice
    pre: Processing
    post: Processing
    activation: str

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str = "auto", weights_format: str | None = None) -> "Network":
        """Load the network of ``spec`` on ``device`` (``auto``: CUDA when present)."""
        import torch

        choice = choose_device(device)
        module, fmt = load_torch_module(spec, weights_format)
        module = module.to(choice.torch_device())
        if choice.channels_last:
            module = module.to(memory_format=torch.channels_last)
        out_internal = _output_internal(spec)
        net_act = "none"
        if fmt == "pytorch_state_dict":
            net_act = spec.weights[fmt]["architecture"]["kwargs"].get("final_activation", "none")
        return cls(spec=spec, module=module, weights_format=fmt, device=choice,
                   pre=Processing(spec.preprocessing, _INTERNAL), post=Processing(spec.postprocessing, out_internal),
                   activation=resolve_activation(spec.dlcore, spec.out_channels, net_act))

    def fit(self, samples: list[np.ndarray]) -> "Network":
        """A copy whose data-dependent pre-processing uses statistics of the ``(Y, X, C)`` samples."""
        if not self.pre.data_dependent or not samples:
            return self
        tensors = [np.moveaxis(np.asarray(s, np.float32), -1, 0)[None] for s in samples]
        return dataclasses.replace(self, pre=self.pre.fit(tensors))

    def raw_outputs(self, batch: np.ndarray) -> np.ndarray:
        """The network's output for a raw ``(B, C, Y, X)`` float32 batch, in the internal axis order."""
        if "batch" not in self.spec.input_axes and batch.shape[0] > 1:
            return np.concatenate([self.raw_outputs(batch[i:i + 1]) for i in range(batch.shape[0])])
        x = self.pre(batch).astype(np.float32)
        return _to_axes(self._forward(_to_axes(x, _INTERNAL, self.spec.input_axes)), self.spec.output_axes,
                        _output_internal(self.spec))

    def _forward(self, x: np.ndarray) -> np.ndarray:
        from dlcore.models.device import CPU_FORWARD_BATCH

        if not self.device.is_cuda and self.spec.input_axes[0] == "batch" and x.shape[0] > CPU_FORWARD_BATCH:
            return np.concatenate([self._forward_once(x[i:i + CPU_FORWARD_BATCH])
                                   for i in range(0, x.shape[0], CPU_FORWARD_BATCH)])
        return self._forward_once(x)

    def _forward_once(self, x: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(x))
        dev = self.device
        if dev.is_cuda:
            tensor = tensor.pin_memory().to(dev.torch_device(), non_blocking=True)
            if dev.channels_last and tensor.ndim == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if dev.autocast_dtype:
                with torch.autocast("cuda", dtype=getattr(torch, dev.autocast_dtype)):
                    out = self.module(tensor)
            else:
                out = self.module(tensor)
        return out.float().cpu().numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.moveaxis(np.asarray(batch), -1, 1).astype(np.float32)
        return _activate(self.post(self.raw_outputs(x)), self.activation)


def _output_internal(spec: ModelSpec) -> tuple[str, ...]:
    """Internal axis order of the output: batch, channel, then y, x when the output is an image."""
    return ("batch", "channel", *(a for a in ("y", "x") if a in spec.output_axes))


def _to_axes(x: np.ndarray, src: tuple[str, ...], dst: tuple[str, ...]) -> np.ndarray:
    """Reorder (and add or drop singleton) axes from ``src`` ids to ``dst`` ids."""
    for axis in dst:
        if axis not in src:
            x = x[None]
            src = (axis, *src)
    for axis in [a for a in src if a not in dst]:
        i = src.index(axis)
        if x.shape[i] != 1:
            raise ModelError(f"cannot drop axis {axis!r} of size {x.shape[i]}")
        x = np.take(x, 0, axis=i)
        src = tuple(a for a in src if a != axis)
    return np.transpose(x, [src.index(a) for a in dst])


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return x
