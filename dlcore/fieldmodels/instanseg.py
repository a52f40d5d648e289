"""InstanSeg models (Goldsborough et al. 2024) as their model zoo ships them: TorchScript.

InstanSeg exports a whole model, backbone and post-processing (seeds, pixel embedding, flood fill),
as one TorchScript module (``InstanSeg_Torchscript``) whose forward maps a normalised
``(B, C, H, W)`` float32 image to ``(B, K, H, W)`` instance labels (K = 1 nuclei, or 2 nuclei + cells);
the zoo wraps ``instanseg.pt`` in a bioimage.io package (rdf.yaml, test tensors).  The module carries
the pixel size it was trained at (``pixel_size``) and whether it segments cells too
(``cells_and_nuclei``); normalisation and rescaling are the caller's: InstanSeg normalises each channel
by its 0.1 and 99.9 percentiles, which dlcore computes once per slide (:meth:`InstanSegNetwork.fit`)
and reads the slide at the model's pixel size.

Importing takes ``instanseg.pt`` itself, the zoo's zip, or its unzipped folder; the licence, authors and
training data of a zoo package come from its rdf.yaml.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcore.errors import ModelError
from dlcore.fieldmodels.base import Inspected, Publisher
from dlcore.models.registry import safe_extract

NAME = "instanseg"
TORCHSCRIPT = "instanseg.pt"
PERCENTILES = (0.1, 99.9)
EPSILON = 1e-3
BATCH_SIZE = 2  # windows per batch: InstanSeg's post-processing holds ~0.6 GiB per 640 px window (BENCHMARKS.md)
# InstanSeg_Torchscript.forward's keyword arguments a user may set (--param NAME=VALUE)
PARAMETERS = {"min_size": int, "mask_threshold": float, "peak_distance": int, "seed_threshold": float,
              "overlap_threshold": float, "mean_threshold": float, "fg_threshold": float, "window_size": int,
              "cleanup_fragments": bool}
TARGETS = ("nuclei", "cells")


def _load_module(path: Path):
    """``torch.jit.load`` of an InstanSeg TorchScript file, refused clearly when it is not one."""
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError/ValueError for truncated or foreign files
        raise ModelError(f"{path} cannot be loaded as TorchScript ({str(exc).splitlines()[0][:200]}); the file is "
                         "truncated, damaged or not an InstanSeg model: copy instanseg.pt again from the model's "
                         "zip") from exc
    kind = getattr(module, "original_name", "")
    if kind != "InstanSeg_Torchscript" or not all(hasattr(module, a) for a in ("pixel_size", "fcn")):
        raise ModelError(f"{path} is TorchScript but not an InstanSeg model (its module is {kind or 'unnamed'}, "
                         "InstanSeg's is InstanSeg_Torchscript); import it as the kind it is")
    return module.eval()


def _input_channels(module) -> int | None:
    """Channels of the backbone's first convolution (None for channel-invariant fluorescence models)."""
    if any("AdaptorNet" in k for k in module.fcn.state_dict()):
        return None
    first = next((v for v in module.fcn.state_dict().values() if v.ndim == 4), None)
    return int(first.shape[1]) if first is not None else None


def _unpacked(path: Path) -> tuple[Path, dict]:
    """The TorchScript file and the zoo rdf.yaml (as a dict, {} if none) of a .pt, a zip or a folder."""
    import yaml

    if path.is_file() and zipfile.is_zipfile(path) and not path.name.endswith(".pt"):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith(TORCHSCRIPT) for n in names):
                raise ModelError(f"{path} holds no {TORCHSCRIPT}; is it an InstanSeg model zip?")
            folder = Path(tempfile.mkdtemp(prefix="dlcore-instanseg-"))
            try:
                safe_extract(archive, folder)
            except zipfile.BadZipFile as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise ModelError(f"{path} is not a readable zip ({exc}); download it again") from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        path = folder
    if path.is_dir():
        found = sorted(path.rglob(TORCHSCRIPT))
        if not found:
            raise ModelError(f"{path} holds no {TORCHSCRIPT}; give the InstanSeg TorchScript file or the model's zip")
        rdf_path = next((p for p in (found[0].parent / "rdf.yaml", found[0].parent / "bioimageio.yaml") if p.is_file()),
                        None)
        rdf = yaml.safe_load(rdf_path.read_text()) if rdf_path else {}
        return found[0], rdf if isinstance(rdf, dict) else {}
    if not path.is_file():
        raise ModelError(f"no such file: {path}")
    return path, {}


def _publisher(rdf: dict) -> Publisher | None:
    """Source, training data and licence as the zoo package's rdf.yaml states them."""
    if not rdf:
        return None
    authors = ", ".join(str(a.get("name")) for a in rdf.get("authors") or () if isinstance(a, dict))
    cites = "; ".join(str(c.get("text", "")) + (f" ({c['doi']})" if c.get("doi") else "")
                      for c in rdf.get("cite") or () if isinstance(c, dict))
    data = rdf.get("training_data")
    data = data.get("id") or data.get("source") if isinstance(data, dict) else data
    return Publisher(source=f"InstanSeg model zoo: {rdf.get('name', '?')} {rdf.get('version', '')}".strip()
                     + (f" by {authors}" if authors else "") + "; https://github.com/instanseg/instanseg",
                     training_data=str(data or rdf.get("description") or "not stated in the package"),
                     licence=str(rdf.get("license") or "not stated in the package"), citation=cites,
                     authors=tuple(str(a.get("name")) for a in rdf.get("authors") or () if isinstance(a, dict)))


class InstanSegKind:
    """Imports and loads InstanSeg TorchScript models (see the module docstring)."""

    name = NAME

    def inspect(self, path: Path) -> Inspected:
        """Check ``path`` (``instanseg.pt``, the zoo zip, or its folder) and say what it is."""
        torchscript, rdf = _unpacked(Path(path))
        scratch = next((p for p in torchscript.parents if p.name.startswith("dlcore-instanseg-")), None)
        try:
            module = _load_module(torchscript)
        except ModelError:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        pixel_size = float(module.pixel_size)
        mpp = None if math.isnan(pixel_size) or pixel_size <= 0 else pixel_size
        channels = _input_channels(module)
        cells = bool(getattr(module, "cells_and_nuclei", False))
        runtime = {"target": "nuclei", "cells_and_nuclei": cells, "channel_invariant": channels is None,
                   "batch_size": BATCH_SIZE,
                   "normalization": {"percentiles": list(PERCENTILES), "per_channel": True, "epsilon": EPSILON},
                   "parameters": {}}
        name = str(rdf.get("name") or "instanseg").replace(" ", "-")
        return Inspected(kind=NAME, files={TORCHSCRIPT: torchscript}, weights_file=TORCHSCRIPT,
                         weights_format="torchscript", in_channels=channels or 3, mpp=mpp,
                         classes=("nucleus",), tile_size=512, halo=64, runtime=runtime, publisher=_publisher(rdf),
                         description=str(rdf.get("description") or f"InstanSeg {'nuclei and cells' if cells else 'nuclei'}"
                                         f" model{f' at {mpp} µm/px' if mpp else ''}"),
                         default_name=name, scratch=scratch)

    def load(self, folder: Path, cfg: dict, device: str = "cpu") -> "InstanSegNetwork":
        """The network of an installed package: its ``instanseg.pt`` on ``device``."""
        module = _load_module(Path(folder) / TORCHSCRIPT)
        runtime = cfg.get("runtime") or {}
        if str(device).startswith("cuda"):
            module = module.to(device)
        return InstanSegNetwork(module=module, device=str(device), target=runtime.get("target", "nuclei"),
                                cells_and_nuclei=bool(runtime.get("cells_and_nuclei")),
                                parameters=dict(runtime.get("parameters") or {}))


def check_parameters(params: dict) -> dict:
    """``params`` converted to the types InstanSeg's forward takes; ModelError naming an unknown one."""
    out = {}
    for key, value in params.items():
        if key == "target":
            if value not in TARGETS:
                raise ModelError(f"target={value!r} must be one of {TARGETS}")
            continue
        if key not in PARAMETERS:
            raise ModelError(f"InstanSeg has no parameter {key!r}; its parameters: target, {', '.join(PARAMETERS)}")
        kind = PARAMETERS[key]
        try:
            out[key] = (str(value).lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"InstanSeg parameter {key}={value!r} must be a {kind.__name__}") from exc
    return out


@dataclass(frozen=True)
class InstanSegNetwork:
    """A loaded InstanSeg module with its per-slide normalisation (see :class:`~dlcore.fieldmodels.base.FieldNetwork`)."""

    module: object = field(repr=False)
    device: str = "cpu"
    target: str = "nuclei"
    cells_and_nuclei: bool = False
    parameters: dict = field(default_factory=dict)
    low: np.ndarray | None = None    # per-channel 0.1 percentile of the slide (None: per window)
    high: np.ndarray | None = None

    def fit(self, samples: list[np.ndarray]) -> "InstanSegNetwork":
        """Per-channel percentiles of all the sample windows together: one normalisation per slide."""
        if not samples:
            return self
        pixels = np.concatenate([np.asarray(s, np.float32).reshape(-1, s.shape[-1]) for s in samples])
        low, high = np.percentile(pixels, PERCENTILES, axis=0)
        return dataclasses.replace(self, low=low.astype(np.float32), high=high.astype(np.float32))

    def with_parameters(self, params: dict) -> "InstanSegNetwork":
        """A copy with InstanSeg forward arguments (and ``target``) set."""
        target = params.get("target", self.target)
        if target == "cells" and not self.cells_and_nuclei:
            raise ModelError("target='cells': this InstanSeg model segments nuclei only")
        return dataclasses.replace(self, target=target, parameters={**self.parameters, **check_parameters(params)})

    def _normalised(self, window: np.ndarray) -> np.ndarray:
        x = np.asarray(window, np.float32)
        low, high = self.low, self.high
        if low is None:
            low, high = np.percentile(x.reshape(-1, x.shape[-1]), PERCENTILES, axis=0)
        return ((x - low) / np.maximum(high - low, EPSILON)).astype(np.float32)

    def predict(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Instance labels of each window (int32, the window's size); windows of one size run as one batch."""
        import torch

        out: list[np.ndarray | None] = [None] * len(windows)
        by_shape: dict[tuple, list[int]] = {}
        for index, window in enumerate(windows):
            by_shape.setdefault(window.shape, []).append(index)
        channel = 1 if self.target == "cells" else 0
        target = torch.tensor([0, 1] if self.target == "cells" else [1, 0]) if self.cells_and_nuclei else None
        for indices in by_shape.values():
            batch = np.stack([np.moveaxis(self._normalised(windows[i]), -1, 0) for i in indices])
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)  # forward clamps x in place: ours
            kwargs = dict(self.parameters)
            if target is not None:
                kwargs["target_segmentation"] = target
            with torch.no_grad():
                labels = self.module(x, **kwargs)
            labels = labels.cpu().numpy()
            for j, index in enumerate(indices):
                out[index] = labels[j, min(channel, labels.shape[1] - 1)].astype(np.int32)
        return out  # type: ignore[return-value]

    def describe(self) -> dict:
        return {"normalization": {"percentiles": list(PERCENTILES), "per_channel": True,
                                  "low": None if self.low is None else [float(v) for v in self.low],
                                  "high": None if self.high is None else [float(v) for v in self.high],
                                  "scope": "slide" if self.low is not None else "window"},
                "target": self.target, "parameters": self.parameters, "device": self.device}


KIND = InstanSegKind()
