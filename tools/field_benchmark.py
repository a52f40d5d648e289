"""Imported field models (``dlcore models import``) side by side with the same model run by its own tool.

The references are what an InstanSeg or a StarDist user writes for a whole image: read it into memory
and hand it to the tool's own large-image path, which normalises the whole image once, cuts it into
overlapping tiles and stitches their objects.  dlcore runs the same weights with ``dlcore run``: tiles
streamed from the file, normalised with the slide's statistics from sample windows, objects stitched
by ownership, labels written as a pyramidal OME-TIFF with objects.csv and objects.geojson beside them.

    python tools/field_benchmark.py prepare OUT                          # slides, weights, registry
    python tools/field_benchmark.py instanseg-own SLIDE MODEL.pt OUT.tif  # InstanSeg's own path (time it)
    TFVENV/bin/python tools/field_benchmark.py stardist-own SLIDE FOLDER OUT.tif  # StarDist + TensorFlow
    DLCORE_CONFIG=OUT/dlcore.toml dlcore run instanseg-random SLIDE -o RUNS --no-tissue-detection \\
        --param window_size=8 --param peak_distance=8                    # dlcore, InstanSeg (time it)
    DLCORE_CONFIG=OUT/dlcore.toml dlcore run stardist-random SLIDE -o RUNS --no-tissue-detection
    python tools/field_benchmark.py compare RUNS/SLIDE/MODEL/labels.ome.tif OUT.tif   # counts, F1
    FIELDVENV/bin/python tools/field_benchmark.py tiatoolbox-own SLIDE WEIGHTS.pth OUTDIR  # TIAToolbox's engine
    FIELDVENV/bin/python tools/field_benchmark.py cellpose-own SLIDE OUT/cellpose_nuclei_random.pth OUT.tif
    DLCORE_CONFIG=OUT/dlcore.toml dlcore run cellpose-random SLIDE -o RUNS --no-tissue-detection   # Cellpose
    DLCORE_CONFIG=OUT/dlcore.toml dlcore run hovernet-random SLIDE -o RUNS --no-tissue-detection   # HoVer-Net
    FIELDVENV/bin/python tools/field_benchmark.py tiatoolbox-classifier-own SLIDE OUT/resnet18-kather100k.pth OUTDIR
    DLCORE_CONFIG=OUT/dlcore.toml dlcore run kather-random SLIDE -o RUNS           # the Kather patch classifier

(``FIELDVENV`` is the field-models environment, torch with tiatoolbox and cellpose; ``prepare`` finds its
Python in ``--field-python`` or ``DLCORE_FIELD_PYTHON`` and writes it into ``OUT/dlcore.toml`` as
``field_python``, which ``dlcore run`` needs for the TIAToolbox and Cellpose models.)

``prepare`` writes H&E-like slides (pink eosin, dark purple round "nuclei", made tile by tile with
``he_like_image`` from ``tests/field_weights.py``) as tiled pyramidal OME-TIFFs at 0.5 µm/px, one per
side (``--sides``, default 1024 and 2048), a random InstanSeg TorchScript
(``tests/instanseg_weights.py``, seed bias 4 so that it finds seeds) and a random StarDist 2D folder
(``tests/field_weights.py``), imports both into ``OUT/models`` (``instanseg-random``,
``stardist-random``) and writes ``OUT/dlcore.toml`` naming that registry.  With the field-models Python it
also writes ``OUT/cellpose_nuclei_random.pth`` (``tests/cellpose_weights.py --nuclei --diam-mean 12``: a
Cellpose 3 CPnet file whose hand-set weights find the slides' dark nuclei, 12 px across) and imports it as
``cellpose-random`` at 0.5 µm/px, and ``OUT/resnet18-kather100k.pth`` (TIAToolbox's Kather-100K
``CNNModel``, randomly initialised by ``tests/tiatoolbox_weights.py``) imported as ``kather-random``;
``--tiatoolbox-sides 1024`` then adds ``he-1024-0.25mpp.ome.tif`` (the
same image at 0.25 µm/px, HoVer-Net's resolution) and ``OUT/hovernet_fast-pannuke.pth``
(``tests/tiatoolbox_weights.py hovernet_fast-pannuke --nuclei``) imported as ``hovernet-random``.  It adds
``tests/`` to ``sys.path`` to reuse those helpers, so run it from a source checkout.  The weights are random
(or hand-set): the comparison shows that tiling and normalisation agree and what each costs, not accuracy.

``instanseg-own`` is ``InstanSeg(torch.jit.load(MODEL.pt), device="cpu").eval_medium_image`` on the
image read with tifffile (``eval_whole_slide_image`` needs tiffslide, which dlcore does not install):
tiles of 512 px, InstanSeg's 100 px overlap, percentiles 0.1/99.9 per channel of the whole image,
``window_size=8, peak_distance=8`` as given to dlcore.  ``stardist-own`` is ``StarDist2D(None, ...)``
then ``predict_instances_big`` on ``normalize(img, 1, 99.8, axis=(0, 1))`` with blocks of 608 px (dlcore's
512 px tiles and 48 px halos), context 48 and overlap 32.  It needs TensorFlow, which is not in dlcore's
environment; make one beside it::

    python -m venv tfvenv && tfvenv/bin/pip install tensorflow-cpu stardist tifffile

(this file then only needs numpy, tifffile and stardist: dlcore is not imported by that subcommand).

``cellpose-own`` is ``models.CellposeModel(gpu=False, pretrained_model=MODEL, mkldnn=False).eval`` on the
whole image read with tifffile, with the arguments dlcore's Cellpose runtime gives each window:
``channels=[0, 0]`` (greyscale, the mean of R, G and B), ``normalize={"percentile": [1, 99]}`` (over the whole
image; dlcore computes the same percentiles once per slide from sample windows and passes
``normalize=False``), ``diameter=12`` (the file's ``diam_mean``, so no rescaling), ``flow_threshold=0.4``,
``cellprob_threshold=0``, ``min_size=15`` and Cellpose's own block tiling (``bsize=224``,
``tile_overlap=0.1``, batch 8).  The one difference from a call with Cellpose's defaults is
``mkldnn=False``, as dlcore loads the model (``--mkldnn`` restores Cellpose's default).  Cellpose then tiles
the whole image into its 224 px blocks and runs its flow dynamics over the whole image; dlcore gives it one
640 px window (512 px tile, 64 px halo) at a time.  ``tiatoolbox-own`` and ``cellpose-own`` import only
numpy, tifffile and the tool (no dlcore): run them with the field-models Python.

``compare`` prints the object count of each label image and the F1 of objects matched one to one at
IoU >= 0.5.  dlcore normalises once per slide from sample windows, the own tools once per whole image
from all of its pixels: for an image this size the statistics are nearly the same, and what is left
is the tiling (tile and overlap sizes, how objects across a seam are kept).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MPP = 0.5
INSTANSEG_PARAMS = {"window_size": 8, "peak_distance": 8}
INSTANSEG_NAME = "instanseg-random"
STARDIST_NAME = "stardist-random"
CELLPOSE_NAME = "cellpose-random"
CELLPOSE_DIAMETER = 12.0  # he_like_image's nuclei: radius 6 px
# the eval arguments dlcore's Cellpose runtime gives (dlcore.fieldmodels.cellpose_runtime: inspect and predict)
CELLPOSE_EVAL = {"channels": [0, 0], "flow_threshold": 0.4, "cellprob_threshold": 0.0, "min_size": 15,
                 "tile_overlap": 0.1, "bsize": 224}
HOVERNET_NAME = "hovernet-random"
HOVERNET_ENTRY = "hovernet_fast-pannuke"
HOVERNET_MPP = 0.25
CLASSIFIER_NAME = "kather-random"
CLASSIFIER_ENTRY = "resnet18-kather100k"


# --------------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------------

def he_slide(side: int, *, cell: int = 256, nuclei_per_cell: int = 40, seed: int = 0) -> np.ndarray:
    """A ``(side, side, 3)`` uint8 H&E-like image: ``he_like_image`` cells of ``cell`` px, each with its
    own seed (``he_like_image`` places nuclei by rejection, too slow for thousands at once)."""
    from field_weights import he_like_image

    image = np.empty((side, side, 3), np.uint8)
    n = -(-side // cell)
    for i in range(n):
        for j in range(n):
            block = he_like_image(cell, n_nuclei=nuclei_per_cell, seed=seed * 100003 + i * n + j)
            h, w = min(cell, side - i * cell), min(cell, side - j * cell)
            image[i * cell:i * cell + h, j * cell:j * cell + w] = block[:h, :w]
    return image


def write_pyramid(path: Path, image: np.ndarray, mpp: float = MPP, tile: int = 256) -> Path:
    """A tiled pyramidal OME-TIFF (levels halved down to about 256 px, as sub-IFDs) at ``mpp`` µm/px."""
    import tifffile

    levels = [image]
    while min(levels[-1].shape[:2]) > 2 * tile:
        prev = levels[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        levels.append(prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    options = dict(photometric="rgb", tile=(tile, tile), compression="zlib")
    with tifffile.TiffWriter(path, bigtiff=False, ome=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                  metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    return path


def prepare(out: Path, sides=(1024, 2048), field_python: str | None = None, tiatoolbox_sides=()) -> None:
    """Slides, random weights and a registry (module docstring).  With ``field_python`` (the field-models
    environment's Python) also the Cellpose weights (``cellpose-random``), the Kather patch classifier
    (``kather-random``) and, for ``tiatoolbox_sides``, slides at 0.25 µm/px and the HoVer-Net stand-in
    (``hovernet-random``)."""
    import subprocess

    sys.path.insert(0, str(ROOT / "tests"))
    from field_weights import write_stardist_folder
    from instanseg_weights import write_instanseg_torchscript

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for side in sides:
        print(write_pyramid(out / f"he-{side}.ome.tif", he_slide(side, seed=side)))
    pt = write_instanseg_torchscript(out / "instanseg.pt", pixel_size=MPP, seed_bias=4.0)
    folder = write_stardist_folder(out / "stardist" / "2D_versatile_he")
    print(pt, folder, sep="\n")
    config = out / "dlcore.toml"
    field = f'field_python = "{field_python}"\n' if field_python else ""
    config.write_text(f'[dlcore]\nmodels_dir = "{out / "models"}"\ndevice = "cpu"\n{field}')
    os.environ["DLCORE_CONFIG"] = str(config)
    imports = [["models", "import", "instanseg", str(pt), "--name", INSTANSEG_NAME, "--licence", "Apache-2.0",
                "--source", "random InstanSeg network (benchmark)", "--training-data", "none: random weights"],
               ["models", "import", "stardist", str(folder), "--name", STARDIST_NAME, "--mpp", str(MPP)]]
    if field_python:
        os.environ["DLCORE_FIELD_PYTHON"] = field_python
        # the hand-set CPnet of tests/cellpose_weights.py: Cellpose's file format, finds dark round nuclei
        model = out / "cellpose_nuclei_random.pth"
        subprocess.run([field_python, str(ROOT / "tests" / "cellpose_weights.py"), str(model), "--nuclei",
                        "--diam-mean", str(CELLPOSE_DIAMETER)], check=True)
        imports.append(["models", "import", "cellpose", str(model), "--name", CELLPOSE_NAME, "--mpp", str(MPP),
                        "--licence", "BSD-3-Clause", "--source", "hand-set Cellpose CPnet (benchmark)",
                        "--training-data", "none: hand-set weights"])
        # TIAToolbox's Kather-100K ResNet-18 (CNNModel) with its own random initialisation
        classifier = out / f"{CLASSIFIER_ENTRY}.pth"
        subprocess.run([field_python, str(ROOT / "tests" / "tiatoolbox_weights.py"), CLASSIFIER_ENTRY,
                        str(classifier)], check=True)
        imports.append(["models", "import", "tiatoolbox", str(classifier), "--name", CLASSIFIER_NAME, "--licence",
                        "BSD-3-Clause", "--source", "random TIAToolbox CNNModel (benchmark)",
                        "--training-data", "none: random weights"])
        if tiatoolbox_sides:
            for side in tiatoolbox_sides:
                print(write_pyramid(out / f"he-{side}-{HOVERNET_MPP}mpp.ome.tif", he_slide(side, seed=side),
                                    mpp=HOVERNET_MPP))
            weights = out / f"{HOVERNET_ENTRY}.pth"
            subprocess.run([field_python, str(ROOT / "tests" / "tiatoolbox_weights.py"), HOVERNET_ENTRY, str(weights),
                            "--nuclei"], check=True)
            imports.append(["models", "import", "tiatoolbox", str(weights), "--name", HOVERNET_NAME, "--licence",
                            "BSD-3-Clause", "--source", "random HoVer-Net with fitted read-outs (benchmark)",
                            "--training-data", "none: random weights"])
    elif tiatoolbox_sides:
        raise SystemExit("--tiatoolbox-sides needs the field-models Python (--field-python or DLCORE_FIELD_PYTHON)")
    from dlcore.cli import main

    for argv in imports:
        if main(argv + ["--force"]) != 0:
            raise SystemExit(f"import failed: {' '.join(argv)}")
    print(f"DLCORE_CONFIG={config}")


# --------------------------------------------------------------------------------------------------
# the own tools
# --------------------------------------------------------------------------------------------------

def _read(slide: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(slide)  # level 0 of the first series: (Y, X, 3) uint8


def instanseg_own(slide: Path, model: Path, out: Path, tile_size: int = 512, batch_size: int = 1) -> None:
    """InstanSeg's own medium-image path over the whole image; labels (int32) to ``out``."""
    import tifffile
    import torch
    from instanseg import InstanSeg

    start = time.perf_counter()
    image = _read(slide)
    instanseg = InstanSeg(torch.jit.load(str(model)), device="cpu", verbosity=0)
    labels = instanseg.eval_medium_image(image, pixel_size=MPP, tile_size=tile_size, batch_size=batch_size,
                                         return_image_tensor=False, target="nuclei", **INSTANSEG_PARAMS)
    labels = labels.squeeze().cpu().numpy().astype(np.int32)
    tifffile.imwrite(out, labels, compression="zlib")
    print(f"instanseg-own: {labels.max()} label max, {len(np.unique(labels)) - 1} objects, "
          f"{time.perf_counter() - start:.1f} s")


def stardist_own(slide: Path, folder: Path, out: Path, block_size: int = 608, min_overlap: int = 32,
                 context: int = 48) -> None:
    """StarDist's own big-image path (TensorFlow) over the whole image; labels (int32) to ``out``."""
    import tifffile
    from csbdeep.utils import normalize
    from stardist.models import StarDist2D

    start = time.perf_counter()
    image = _read(slide)
    model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    block_size = min(block_size, min(image.shape[:2]) // 16 * 16)  # StarDist wants a block within the image
    labels, _ = model.predict_instances_big(normalize(image, 1, 99.8, axis=(0, 1)), axes="YXC",
                                            block_size=block_size, min_overlap=min_overlap, context=context,
                                            show_progress=False)
    labels = np.asarray(labels, np.int32)
    tifffile.imwrite(out, labels, compression="zlib")
    print(f"stardist-own: {len(np.unique(labels)) - 1} objects, {time.perf_counter() - start:.1f} s")


def cellpose_own(slide: Path, model: Path, out: Path, diameter: float = CELLPOSE_DIAMETER, mkldnn: bool = False,
                 batch_size: int = 8) -> None:
    """Cellpose 3's own whole-image path: ``CellposeModel(pretrained_model=MODEL).eval`` on the whole image
    (greyscale, 1/99 percentiles of the whole image, Cellpose's own 224 px blocks with 10 % overlap, flow
    dynamics over the whole image) with the arguments dlcore's runtime gives; labels (int32) to ``out``.
    Run it with the field-models environment's Python (cellpose and torch are not in dlcore's)."""
    import tifffile
    from cellpose import models

    start = time.perf_counter()
    image = _read(slide)
    # a file path, never a name: nothing is downloaded; mkldnn=False as dlcore loads it (Cellpose's default: True)
    model = models.CellposeModel(gpu=False, pretrained_model=str(model), mkldnn=mkldnn)
    masks, _, _ = model.eval(image, batch_size=batch_size, diameter=diameter, normalize={"percentile": [1.0, 99.0]},
                             invert=False, **CELLPOSE_EVAL)
    labels = np.asarray(masks, np.int32)
    tifffile.imwrite(out, labels, compression="zlib")
    print(f"cellpose-own: {len(np.unique(labels)) - 1} objects, {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------------

def match_f1(reference: np.ndarray, test: np.ndarray, iou: float = 0.5) -> tuple[float, int, int, int]:
    """F1 of objects matched one to one at IoU >= ``iou``: (F1, matched, reference count, test count)."""
    reference = np.asarray(reference, np.int64).ravel()
    test = np.asarray(test, np.int64).ravel()
    ref_ids, ref_area = np.unique(reference, return_counts=True)
    test_ids, test_area = np.unique(test, return_counts=True)
    ref_area, test_area = dict(zip(ref_ids, ref_area)), dict(zip(test_ids, test_area))
    n_ref, n_test = int((ref_ids > 0).sum()), int((test_ids > 0).sum())
    both = (reference > 0) & (test > 0)
    pairs, inter = np.unique(reference[both] * (int(test.max()) + 1) + test[both], return_counts=True)
    matched_ref, matched_test = set(), set()
    for key, n in zip(pairs, inter):
        r, t = divmod(int(key), int(test.max()) + 1)
        if n / (ref_area[r] + test_area[t] - n) >= iou and r not in matched_ref and t not in matched_test:
            matched_ref.add(r)
            matched_test.add(t)
    tp = len(matched_ref)
    f1 = 2 * tp / (n_ref + n_test) if n_ref + n_test else 1.0
    return f1, tp, n_ref, n_test


def compare(dlcore_labels: Path, own_labels: Path) -> None:
    import tifffile

    ours = tifffile.imread(dlcore_labels, level=0, series=0) if str(dlcore_labels).endswith(".ome.tif") \
        else tifffile.imread(dlcore_labels)
    theirs = tifffile.imread(own_labels)
    ours, theirs = np.squeeze(ours), np.squeeze(theirs)
    if ours.shape != theirs.shape:
        raise SystemExit(f"shapes differ: dlcore {ours.shape}, own tool {theirs.shape}")
    f1, tp, n_ours, n_theirs = match_f1(ours, theirs)
    print(f"dlcore {n_ours} objects, own tool {n_theirs} objects, {tp} matched at IoU >= 0.5, F1 {f1:.3f}")


def tiatoolbox_own(slide: Path, weights: Path, out: Path, entry: str = "hovernet_fast-pannuke") -> None:
    """TIAToolbox's own engine over the slide file: ``MultiTaskSegmentor`` with the pretrained entry's
    architecture and IO configuration, the weights loaded from ``weights`` (no download), zarr output in
    ``out``; prints the objects it found and the time.  Run it with the field-models environment's Python."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import shutil

    import zarr
    from tiatoolbox.models.architecture import get_pretrained_model
    from tiatoolbox.models.engine.multi_task_segmentor import MultiTaskSegmentor

    start = time.perf_counter()
    model, ioconfig = get_pretrained_model(entry, pretrained_weights=str(weights))
    shutil.rmtree(out, ignore_errors=True)
    engine = MultiTaskSegmentor(model=model, batch_size=8, num_workers=0, device="cpu", verbose=False)
    result = engine.run(images=[slide], patch_mode=False, ioconfig=ioconfig, save_dir=out, overwrite=True,
                        output_type="zarr", device="cpu")
    store = zarr.open(str(next(iter(result.values()))), mode="r")
    boxes = next((store[k] for k in ("box", "nuclei_segmentation/box") if k in store), None)
    print(f"tiatoolbox-own: {0 if boxes is None else boxes.shape[0]} objects, {time.perf_counter() - start:.1f} s")


def tiatoolbox_classifier_own(slide: Path, weights: Path, out: Path, entry: str = CLASSIFIER_ENTRY) -> None:
    """TIAToolbox's own patch classification of a whole slide: ``PatchPredictor`` with the pretrained
    entry's architecture and IO configuration (224 px patches at its resolution, stride = patch), the
    weights from ``weights`` (no download), its own tissue mask (``run`` makes one when none is given),
    probabilities saved as zarr in ``out``; prints the patches it classified and the time.  Run it with
    the field-models environment's Python."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import shutil

    import zarr
    from tiatoolbox.models.engine.patch_predictor import PatchPredictor

    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    predictor = PatchPredictor(model=entry, weights=str(weights), batch_size=8, num_workers=0, device="cpu",
                               verbose=False)
    result = predictor.run(images=[slide], patch_mode=False, save_dir=out, overwrite=True, output_type="zarr",
                           return_probabilities=True, device="cpu")
    store = zarr.open(str(next(iter(result.values()))), mode="r")
    print(f"tiatoolbox-classifier-own: {store['probabilities'].shape[0]} patches classified, "
          f"{time.perf_counter() - start:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="slides, random weights, a registry with both imported")
    p.add_argument("out", type=Path)
    p.add_argument("--sides", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--field-python", default=os.environ.get("DLCORE_FIELD_PYTHON"),
                   help="the field-models environment's Python (default: DLCORE_FIELD_PYTHON); with it, also the "
                        f"Cellpose weights, imported as {CELLPOSE_NAME}")
    p.add_argument("--tiatoolbox-sides", type=int, nargs="*", default=[],
                   help=f"also slides of these sides at {HOVERNET_MPP} µm/px and the HoVer-Net stand-in, imported as "
                        f"{HOVERNET_NAME} (needs the field-models Python)")
    p = sub.add_parser("instanseg-own", help="InstanSeg's own eval_medium_image over the whole image")
    p.add_argument("slide", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p = sub.add_parser("stardist-own", help="StarDist's own predict_instances_big (needs TensorFlow)")
    p.add_argument("slide", type=Path)
    p.add_argument("model", type=Path, help="the model folder (config.json, thresholds.json, weights_best.h5)")
    p.add_argument("out", type=Path)
    p.add_argument("--block-size", type=int, default=608)
    p.add_argument("--min-overlap", type=int, default=32)
    p.add_argument("--context", type=int, default=48)
    p = sub.add_parser("tiatoolbox-own", help="TIAToolbox's own engine (run with the field-models Python)")
    p.add_argument("slide", type=Path)
    p.add_argument("weights", type=Path, help="a TIAToolbox weights file (.pth state dict)")
    p.add_argument("out", type=Path, help="the engine's save folder (replaced)")
    p.add_argument("--entry", default="hovernet_fast-pannuke", help="TIAToolbox's pretrained entry")
    p = sub.add_parser("tiatoolbox-classifier-own",
                       help="TIAToolbox's PatchPredictor over the slide (run with the field-models Python)")
    p.add_argument("slide", type=Path)
    p.add_argument("weights", type=Path, help="a TIAToolbox CNNModel weights file (.pth state dict)")
    p.add_argument("out", type=Path, help="the engine's save folder (replaced)")
    p.add_argument("--entry", default=CLASSIFIER_ENTRY, help="TIAToolbox's pretrained entry")
    p = sub.add_parser("cellpose-own",
                       help="Cellpose's own eval over the whole image (run with the field-models Python)")
    p.add_argument("slide", type=Path)
    p.add_argument("model", type=Path, help="a Cellpose 3 model file (CPnet state dict)")
    p.add_argument("out", type=Path)
    p.add_argument("--diameter", type=float, default=CELLPOSE_DIAMETER)
    p.add_argument("--mkldnn", action="store_true", help="Cellpose's default; dlcore loads models without it")
    p.add_argument("--batch-size", type=int, default=8)
    p = sub.add_parser("compare", help="object counts and F1 at IoU 0.5 of two label images")
    p.add_argument("dlcore_labels", type=Path)
    p.add_argument("own_labels", type=Path)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, tuple(args.sides), args.field_python, tuple(args.tiatoolbox_sides))
    elif args.command == "cellpose-own":
        cellpose_own(args.slide, args.model.resolve(), args.out, args.diameter, args.mkldnn, args.batch_size)
    elif args.command == "instanseg-own":
        instanseg_own(args.slide, args.model, args.out, args.tile_size, args.batch_size)
    elif args.command == "tiatoolbox-own":
        tiatoolbox_own(args.slide.resolve(), args.weights.resolve(), args.out.resolve(), args.entry)
    elif args.command == "tiatoolbox-classifier-own":
        tiatoolbox_classifier_own(args.slide.resolve(), args.weights.resolve(), args.out.resolve(), args.entry)
    elif args.command == "stardist-own":
        stardist_own(args.slide, args.model.resolve(), args.out, args.block_size, args.min_overlap, args.context)
    else:
        compare(args.dlcore_labels, args.own_labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
