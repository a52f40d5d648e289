"""TIAToolbox peer for BENCHMARKS.md: dlcore's ``nuclei-ihc-unet`` network run by TIAToolbox 2.1.3.

A benchmark peer, never a dependency: it does not import dlcore and dlcore never imports it. It runs
the TorchScript network of ``models/nuclei-ihc-unet/`` the way a TIAToolbox user would: a
``ModelABC`` subclass (``preproc`` scales uint8 RGB to 0..1, ``infer_batch`` runs the network and a
per-channel sigmoid, as rdf.yaml's ``output_activation: sigmoid`` says) run by TIAToolbox's own
``SemanticSegmentor`` in WSI mode with an ``IOSegmentorConfig``: 0.5 um/px, input patch 576 px, stride
512, batch 8, TIAToolbox's default tissue mask. The result is TIAToolbox's stitched probability map
(channels: foreground, boundary; no watershed), saved as zarr under ``--save-dir``.

Geometry: with ``--output-patch 512`` (default) ``infer_batch`` keeps the central 512 px of each
576 px prediction and TIAToolbox places input windows at ``core - 32``: the same reads and cores as
dlcore's tile grid (tile 512, halo 32). ``--output-patch 576`` keeps the whole prediction: windows
start at the cores (no halo in front) and TIAToolbox averages the 64 px overlaps. Left unequal
either way: TIAToolbox pads outside the slide with white (dlcore mirrors), keeps a patch when its
input window touches its own tissue mask (Otsu at 1.25x), and writes zeros where it ran no patch.

Its venv (the peer's own, not dlcore's)::

    python3.11 -m venv /tmp/tia-venv && /tmp/tia-venv/bin/pip install torch==2.9.1 torchvision==0.24.1 tiatoolbox==2.1.3

Command (from the repository root)::

    /tmp/tia-venv/bin/python tools/tiatoolbox_peer.py /tmp/demo-output/demo-slide.ome.tif --threads 2
    # quick check on the top-left 1536x1024 px, comparing one patch with torch on tifffile pixels:
    /tmp/tia-venv/bin/python tools/tiatoolbox_peer.py /tmp/demo-output/demo-slide.ome.tif --crop 1536x1024 --check

The last line printed is one JSON object: peer, patches, seconds (wall time of ``run()``), threads,
output_shape.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr
from tiatoolbox.models.engine.io_config import IOSegmentorConfig
from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
from tiatoolbox.models.models_abc import ModelABC
from tiatoolbox.wsicore.wsireader import WSIReader

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "nuclei-ihc-unet"
MPP, PATCH, STRIDE = 0.5, 576, 512


class NucleiUNet(ModelABC):
    """The TorchScript U-Net as a TIAToolbox model: NHWC patches in, NHWC sigmoid probabilities out."""

    def __init__(self, weights: Path, crop: int) -> None:
        super().__init__()
        self.net = torch.jit.load(str(weights), map_location="cpu").eval()
        self.crop = crop  # pixels dropped on each side of a prediction (the halo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @staticmethod
    def preproc(image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32) / 255.0  # rdf.yaml: scale_0_1, max_value 255

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
        model.eval()
        c = getattr(model, "module", model).crop
        x = batch_data.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
        with torch.inference_mode():
            p = torch.sigmoid(model(x))
        if c:
            p = p[:, :, c:-c, c:-c]
        return p.permute(0, 2, 3, 1).cpu().numpy()

    @staticmethod
    def postproc(image):  # the engine's "predictions": foreground mask, no watershed
        return (image[..., 0] > 0.5).astype(np.uint8)


def read_level0(path: str, x: int, y: int, w: int, h: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Level-0 pixels of ``path`` in [x, x+w) x [y, y+h), white (255) outside the image (as TIAToolbox
    pads) or outside its top-left ``size`` (width, height) when given."""
    with tifffile.TiffFile(path) as tf:
        z = zarr.open(tf.series[0].aszarr(level=0), mode="r")
        width, height = size or (z.shape[1], z.shape[0])
        out = np.full((h, w, z.shape[2]), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width, z.shape[1]), min(y + h, height, z.shape[0])
        out[y0 - y:y1 - y, x0 - x:x1 - x] = z[y0:y1, x0:x1]
    return out


def write_crop(slide: str, width: int, height: int, mpp: float, path: Path) -> None:
    """The top-left ``width x height`` of level 0 as a one-level OME-TIFF with the same pixel size."""
    tifffile.imwrite(path, read_level0(slide, 0, 0, width, height), photometric="rgb", tile=(512, 512),
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                     metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})


def check(engine: SemanticSegmentor, model: NucleiUNet, slide: str, size, probs: zarr.Array) -> None:
    """First patch: the stitched map vs torch run directly on the same window of ``slide`` (the original,
    not the crop) read with tifffile."""
    ds = engine.dataloader.dataset
    (ix0, iy0, ix1, iy1), (ox0, oy0, _, _) = ds.inputs[0], ds.outputs[0]
    raw = read_level0(slide, int(ix0), int(iy0), int(ix1 - ix0), int(iy1 - iy0), size)
    with torch.inference_mode():
        ref = torch.sigmoid(model.net(torch.from_numpy(raw / np.float32(255)).permute(2, 0, 1)[None]))
    ref = ref[0].permute(1, 2, 0).numpy()
    # the part of this patch's output no other patch writes (576 mode: 64 px overlaps are averaged)
    a = PATCH - 2 * model.crop - STRIDE
    ry, rx = oy0 - iy0, ox0 - ix0  # output origin in the input window
    ref = ref[ry + a:ry + STRIDE, rx + a:rx + STRIDE]
    got = probs[oy0 + a:oy0 + STRIDE, ox0 + a:ox0 + STRIDE]
    print(f"check: patch 0 input window {[int(v) for v in ds.inputs[0]]}, output {[int(v) for v in ds.outputs[0]]}; "
          f"max |map - torch(tifffile pixels)| = {np.abs(got - ref).max():.2e} over {got.shape[:2]}")
    print(f"check: map min {float(probs[:].min()):.4f} max {float(probs[:].max()):.4f}, channels {probs.shape[-1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--num-workers", type=int, default=0, help="TIAToolbox DataLoader workers (default 0)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output-patch", type=int, choices=(512, 576), default=512,
                    help="512: keep the 512 px core of each prediction (dlcore's grid); 576: keep it all")
    ap.add_argument("--save-dir", help="where TIAToolbox saves (must not exist; default: a temp dir, removed)")
    ap.add_argument("--crop", help="WIDTHxHEIGHT: run on the top-left region of level 0 only")
    ap.add_argument("--check", action="store_true", help="compare patch 0 with torch on tifffile pixels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="tia-peer-"))
    save_dir = Path(args.save_dir) if args.save_dir else tmp / "out"
    try:
        slide, size = args.slide, None
        if args.crop:
            size = w, h = tuple(int(v) for v in args.crop.lower().split("x"))
            mpp = float(np.mean(WSIReader.open(slide).info.mpp))
            slide = str(tmp / "crop.ome.tif")
            write_crop(args.slide, w, h, mpp, Path(slide))

        model = NucleiUNet(MODEL_DIR / "weights_torchscript.pt", crop=(PATCH - args.output_patch) // 2)
        ioconfig = IOSegmentorConfig(
            input_resolutions=[{"units": "mpp", "resolution": MPP}],
            output_resolutions=[{"units": "mpp", "resolution": MPP}],
            patch_input_shape=(PATCH, PATCH),
            patch_output_shape=(args.output_patch, args.output_patch),
            stride_shape=(STRIDE, STRIDE),
            save_resolution={"units": "mpp", "resolution": MPP},
        )
        engine = SemanticSegmentor(model=model, batch_size=args.batch_size, num_workers=args.num_workers,
                                   device=args.device, verbose=False)
        t0 = time.perf_counter()
        out = engine.run(images=[Path(slide)], patch_mode=False, ioconfig=ioconfig, save_dir=save_dir,
                         output_type="zarr", return_probabilities=True)
        seconds = time.perf_counter() - t0

        ds = engine.dataloader.dataset
        patches = len(ds.inputs)
        probs = zarr.open(str(out[Path(slide)]), mode="r")["probabilities"]
        print(f"TIAToolbox ran {patches} of {len(ds.full_outputs)} grid patches (its tissue mask dropped "
              f"{len(ds.full_outputs) - patches}); {seconds / patches:.3f} s/patch; map {out[Path(slide)]}")
        if args.check:
            check(engine, model, args.slide, size, probs)
        print(json.dumps({"peer": "tiatoolbox 2.1.3", "patches": patches, "seconds": round(seconds, 2),
                          "threads": args.threads, "output_shape": list(probs.shape)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the crop, and the output unless --save-dir


if __name__ == "__main__":
    main()
