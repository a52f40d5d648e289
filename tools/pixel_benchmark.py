"""Pixel classification side by side with scikit-image's trainable segmentation (issue 13).

The reference: ``skimage.feature.multiscale_basic_features`` + a scikit-learn random forest through
``skimage.future.fit_segmenter`` / ``predict_segmenter``, set up as scikit-image's own gallery example
("Trainable segmentation using local features and random forests": sigma 1 to 16, intensity, edges and
texture, ``RandomForestClassifier(n_estimators=50, max_depth=10, max_samples=0.05)``).

``accuracy``: the same images and the same sparse strokes for both; pixel accuracy on held-out labelled
pixels, over several seeds of stroke placement:

- ``dsb-nuclei``: stardist's copy of a real fluorescence field of the 2018 Data Science Bowl with its
  real annotation (mask2d.tif).  Strokes are short lines through 15 nuclei and 15 background spots of
  the image's top half (drawn from the true mask, as a user would scribble on what they see); accuracy
  is on every pixel of the bottom half (dense truth, never near a stroke).  Two tasks: nucleus vs
  background, and nucleus interior / nucleus boundary (2 px) / background.
- ``ihc-scribbles``: the IHC section with the demo's 36 strokes (:mod:`dlcore.pixels.demo`, placed by
  colour deconvolution, not by hand); a third of each class's strokes held out, three splits.

``prepare OUT`` writes what the speed comparison runs on: an all-tissue IHC mosaic slide per size, the
demo scribbles, a dlcore model (``OUT/registry``) and the scikit-image classifier (``OUT/skimage.joblib``,
the peer's own format), both trained on the same scribbles.  ``skimage-apply IMAGE CLASSIFIER`` applies
the reference to a whole image as scikit-image does (features of the whole image in memory).  Time
``skimage-apply`` against ``dlcore run`` on the same mosaic with a paired timer (BENCHMARKS.md says how).

    python tools/pixel_benchmark.py accuracy
    python tools/pixel_benchmark.py prepare /tmp/pxbench
    python tools/pixel_benchmark.py train-speed     # about 50,000 labelled pixels, default settings
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

SKIMAGE_FEATURES = dict(intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16)
SKIMAGE_FOREST = dict(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05)


# -- the two classifiers -------------------------------------------------------------------------
def skimage_fit_predict(train_image: np.ndarray, labels: np.ndarray, test_image: np.ndarray) -> np.ndarray:
    """scikit-image's gallery recipe: classes 1..n for every pixel of ``test_image``."""
    from skimage import feature, future
    from sklearn.ensemble import RandomForestClassifier

    multichannel = train_image.ndim == 3
    features = partial(feature.multiscale_basic_features, channel_axis=-1 if multichannel else None, **SKIMAGE_FEATURES)
    clf = future.fit_segmenter(labels, features(train_image), RandomForestClassifier(random_state=0, **SKIMAGE_FOREST))
    return future.predict_segmenter(features(test_image), clf)


def dlcore_fit_predict(train_image: np.ndarray, labels: np.ndarray, test_image: np.ndarray, classes,
                       trees: int | None = None) -> np.ndarray:
    """dlcore's defaults (:mod:`dlcore.pixels`; ``trees`` overrides the forest's size): classes 1..n for
    every pixel of ``test_image``."""
    from dlcore.pixels.features import FeatureSpec, compute_features, full_scale, pixel_rows
    from dlcore.pixels.forest import CompiledForest, ForestSettings
    from dlcore.pixels.training import LabelledImage, PixelTrainingOptions, train_pixel_classifier

    forest = ForestSettings(**({"n_trees": trees} if trees else {}))
    options = PixelTrainingOptions(features=FeatureSpec(max_value=full_scale(train_image.dtype)), forest=forest,
                                   holdout_fraction=0)
    image = train_image if train_image.ndim == 3 else train_image[..., None]
    trained = train_pixel_classifier([LabelledImage("train", image, labels)], classes, options=options)
    test = test_image if test_image.ndim == 3 else test_image[..., None]
    probs = CompiledForest(trained.forest).predict_proba(pixel_rows(compute_features(test, trained.features)))
    return probs.argmax(axis=1).reshape(test.shape[:2]) + 1


def contenders(classes) -> list:
    """``(name, fit_predict)``: the reference, dlcore as shipped, and dlcore with ilastik's 100 trees."""
    return [("skimage", skimage_fit_predict), ("dlcore", partial(dlcore_fit_predict, classes=classes)),
            ("dlcore 100 trees", partial(dlcore_fit_predict, classes=classes, trees=100))]


# -- data ------------------------------------------------------------------------------------------
def _line_mask(shape, y, x, angle, length=9, width=3):
    import cv2

    canvas = np.zeros(shape, np.uint8)
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    cv2.line(canvas, (int(round(x - dx)), int(round(y - dy))), (int(round(x + dx)), int(round(y + dy))), 1, width)
    return canvas.astype(bool)


def dsb_strokes(truth: np.ndarray, rows: slice, seed: int, n: int = 15) -> np.ndarray:
    """Sparse labels in ``rows``: short lines through ``n`` nuclei (label 2 or, with boundaries in
    ``truth``, its class) and ``n`` background spots, each line kept inside its class."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(truth.shape, np.int32)
    for k in np.unique(truth):
        ys, xs = np.nonzero(truth[rows] == k)
        ys = ys + rows.start
        placed = 0
        for i in rng.permutation(len(ys)):
            line = _line_mask(truth.shape, ys[i], xs[i], rng.uniform(0, np.pi), length=9 if k != 3 else 5,
                              width=3 if k != 3 else 1)
            if (truth[line] == k).mean() < 0.95 or labels[line].any():
                continue
            labels[line & (truth == k)] = k
            placed += 1
            if placed == n:
                break
    return labels


def dsb_task(boundaries: bool):
    """The DSB field (uint16) and its truth: 1 background, 2 nucleus (, 3 boundary)."""
    from skimage.segmentation import find_boundaries
    from stardist.data import test_image_nuclei_2d

    image, mask = test_image_nuclei_2d(return_mask=True)
    truth = np.where(mask > 0, 2, 1).astype(np.int32)
    if boundaries:
        truth[find_boundaries(mask, mode="inner") & (mask > 0)] = 3
    return image, truth


def accuracy(seeds: int = 3) -> dict:
    """Held-out pixel accuracy of both classifiers (see the module docstring)."""
    results = {}
    for name, boundaries in (("dsb-nuclei 2 classes", False), ("dsb-nuclei 3 classes (with boundaries)", True)):
        image, truth = dsb_task(boundaries)
        half = image.shape[0] // 2
        classes = ("background", "nucleus", "boundary")[: int(truth.max())]
        runs = {tool: [] for tool, _ in contenders(classes)}
        for seed in range(seeds):
            labels = dsb_strokes(truth, slice(0, half), seed)
            test = truth[half:]
            for tool, predict in contenders(classes):
                pred = predict(image, labels, image)[half:]
                runs[tool].append(float((pred == test).mean()))
        results[name] = {tool: {"mean": round(float(np.mean(v)), 4), "runs": [round(x, 4) for x in v]}
                         for tool, v in runs.items()}
        results[name]["labelled_pixels"] = int((labels > 0).sum())
    results["ihc-scribbles (held-out strokes)"] = ihc_accuracy()
    return results


def ihc_accuracy(splits: int = 3) -> dict:
    """The demo scribbles on the IHC section: a third of each class's strokes held out, ``splits`` times."""
    from skimage import data

    from dlcore.pixels.demo import CLASSES, place_strokes
    from dlcore.pixels.scribbles import rasterize, strokes_from_geojson

    image = data.immunohistochemistry()
    strokes = strokes_from_geojson(place_strokes(image))
    runs = {tool: [] for tool, _ in contenders(CLASSES)}
    for split in range(splits):
        train, held = [], []
        for c in CLASSES:
            mine = [s for s in strokes if s.label == c]
            out = set(range(split, len(mine), splits))
            held += [s for i, s in enumerate(mine) if i in out]
            train += [s for i, s in enumerate(mine) if i not in out]
        train_labels, _ = rasterize(train, image.shape[:2], CLASSES)
        held_labels, _ = rasterize(held, image.shape[:2], CLASSES)
        for tool, predict in contenders(CLASSES):
            pred = predict(image, train_labels, image)
            runs[tool].append(float((pred[held_labels > 0] == held_labels[held_labels > 0]).mean()))
    return {tool: {"mean": round(float(np.mean(v)), 4), "runs": [round(x, 4) for x in v]} for tool, v in runs.items()}


# -- speed -----------------------------------------------------------------------------------------
def write_mosaic(path: Path, side: int) -> Path:
    """An all-tissue ``side`` x ``side`` IHC mosaic (flipped copies of the section), pyramidal OME-TIFF, 0.5 µm/px."""
    import tifffile
    from skimage import data

    base = data.immunohistochemistry()
    tiles = [base, base[::-1], base[:, ::-1], base[::-1, ::-1]]
    n = -(-side // base.shape[0])
    rows = [np.concatenate([tiles[(r + c) % 4] for c in range(n)], axis=1) for r in range(n)]
    image = np.concatenate(rows, axis=0)[:side, :side]
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        levels = [image[:: 2 ** i, :: 2 ** i] for i in range(3)]
        tif.write(levels[0], subifds=len(levels) - 1, tile=(256, 256), photometric="rgb", compression="zlib",
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        for level in levels[1:]:
            tif.write(level, subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
    return path


def prepare(out: Path, sides=(2048, 4096)) -> None:
    """The mosaics, the demo scribbles, the dlcore model and the scikit-image classifier (see the docstring)."""
    import subprocess

    import joblib
    from skimage import data, feature, future
    from sklearn.ensemble import RandomForestClassifier

    from dlcore.pixels.demo import CLASSES, write_scribble_demo
    from dlcore.pixels.scribbles import rasterize, read_geojson

    out.mkdir(parents=True, exist_ok=True)
    for side in sides:
        write_mosaic(out / f"mosaic-{side}.ome.tif", side)
    folder = write_scribble_demo(out / "pixel-training")
    registry = out / "registry"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlcore.cli", "train", str(folder), "--task", "pixels", "--name", "ihc-dab",
                    "--registry", str(registry)], check=True)
    print(f"dlcore train: {time.perf_counter() - started:.1f} s (whole command)")
    image = data.immunohistochemistry()
    labels, _ = rasterize(read_geojson(folder / "labels" / "ihc-section.geojson"), image.shape[:2], CLASSES)
    started = time.perf_counter()
    features = feature.multiscale_basic_features(image, channel_axis=-1, **SKIMAGE_FEATURES)
    clf = future.fit_segmenter(labels, features, RandomForestClassifier(random_state=0, **SKIMAGE_FOREST))
    print(f"skimage fit_segmenter: {time.perf_counter() - started:.1f} s")
    joblib.dump(clf, out / "skimage.joblib")


def skimage_apply(image_path: Path, classifier: Path) -> None:
    """The reference over a whole image: its features in memory, then predict_segmenter; prints the time."""
    import joblib
    import tifffile
    from skimage import feature, future

    started = time.perf_counter()
    image = tifffile.imread(image_path, level=0)
    clf = joblib.load(classifier)
    result = future.predict_segmenter(feature.multiscale_basic_features(image, channel_axis=-1, **SKIMAGE_FEATURES), clf)
    print(json.dumps({"pixels": int(result.size), "seconds": round(time.perf_counter() - started, 2),
                      "classes": np.bincount(result.ravel()).tolist()}))


def train_speed(target: int = 50_000) -> None:
    """Train on about ``target`` labelled pixels of the IHC section (the confident regions of the demo's
    colour deconvolution, whole regions dropped at random down to the target) with the defaults; prints
    the labelled pixels and the seconds of each stage."""
    import cv2
    from skimage import data

    from dlcore.pixels.demo import CLASSES, confident_regions
    from dlcore.pixels.training import LabelledImage, train_pixel_classifier

    image = data.immunohistochemistry()
    labels = np.zeros(image.shape[:2], np.int32)
    for k, mask in enumerate(confident_regions(image).values(), start=1):
        labels[mask & (labels == 0)] = k
    rng = np.random.default_rng(0)
    n, regions = cv2.connectedComponents((labels > 0).astype(np.uint8))
    order = rng.permutation(np.arange(1, n))
    sizes = np.bincount(regions.ravel(), minlength=n)
    keep = order[np.cumsum(sizes[order]) <= target]
    labels[~np.isin(regions, keep)] = 0
    started = time.perf_counter()
    trained = train_pixel_classifier([LabelledImage("ihc", image, labels)], CLASSES)
    print(json.dumps({"labelled_pixels": int((labels > 0).sum()), "seconds": round(time.perf_counter() - started, 2),
                      "stages": trained.seconds, "oob_accuracy": round(trained.metrics["oob_accuracy"], 4),
                      "heldout_accuracy": round(trained.metrics["heldout_strokes"]["accuracy"], 4)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("accuracy")
    p.add_argument("--seeds", type=int, default=3)
    sub.add_parser("train-speed")
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p = sub.add_parser("skimage-apply")
    p.add_argument("image", type=Path)
    p.add_argument("classifier", type=Path)
    args = parser.parse_args(argv)
    if args.command == "accuracy":
        print(json.dumps(accuracy(args.seeds), indent=1))
    elif args.command == "train-speed":
        train_speed()
    elif args.command == "prepare":
        prepare(args.out)
    else:
        skimage_apply(args.image, args.classifier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
