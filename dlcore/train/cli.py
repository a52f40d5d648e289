"""The ``dlcore train`` and ``dlcore export-dataset`` commands (registered by :func:`register_cli`)."""
from __future__ import annotations

from pathlib import Path


def register_cli(subparsers) -> None:
    """Add ``train`` and ``export-dataset`` to the ``dlcore`` command's subparsers."""
    from dlcore.cli import HelpFormatter

    p = subparsers.add_parser(
        "train", help="train a model on an annotated dataset and add it to the registry",
        description="Train a semantic, instance or classification model on a local annotated dataset "
                    "(images/ + labels/, class folders, or a folder written by `dlcore export-dataset`), a "
                    "pixel classifier from sparse labels, or a prediction model (denoising, restoration, "
                    "translation) from noisy images or image pairs. "
                    "Splits are by image (groups.csv can group images); the held-out test metrics, a QC "
                    "report and the training provenance go into the new package's card.",
        formatter_class=HelpFormatter)
    p.add_argument("dataset", type=Path, help="dataset folder")
    p.add_argument("--task", choices=("semantic", "instances", "classification", "pixels", "n2v", "care", "translate"),
                   required=True,
                   help="pixels: a random-forest pixel classifier from sparse labels (scribbles, GeoJSON "
                        "annotations or a painted label image); trains in seconds, no GPU. n2v, care, translate: "
                        "prediction models (Noise2Void denoising from noisy images alone, restoration from "
                        "low/high pairs, image translation from source/target pairs)")
    p.add_argument("--name", required=True, help="model name in the registry (a new version if it exists)")
    p.add_argument("--base-model", help="start from this registered model (transfer learning)")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N encoder stages of the base model")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patch-size", type=int, default=128, help="training tile / patch side, pixels")
    p.add_argument("--k-folds", type=int, default=1, help="k > 1: k-fold cross-validation before the final training")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without validation improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp", type=float, help="pixel size of the dataset's images in µm")
    p.add_argument("--no-augment", action="store_true", help="no flips, rotations, colour jitter or blur")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--registry", type=Path, help="registry folder (default: the configured models_dir)")
    p.add_argument("--description", default="", help="one line for the model card")
    p.add_argument("--training-data", default="", help="what the images and annotations are (for the card)")
    from dlcore.pixels.cli import add_pixel_arguments

    add_pixel_arguments(p)
    from dlcore.restore.cli import add_restore_arguments

    add_restore_arguments(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "export-dataset", help="write an annotated dataset as OME-TIFF or OME-Zarr images/labels + dataset.json",
        description="Export a local annotated dataset to the archive-ready layout: images/*.ome.tif, "
                    "labels/*.ome.tif (or OME-Zarr), dataset.json, samples.csv, a README, and the BioImage "
                    "Archive's MIFA/REMBI metadata and file list. Pixel size, channel names, stain and "
                    "objective magnification are carried over from the images (or given here).")
    p.add_argument("dataset", type=Path, help="dataset folder (images/ + labels/, or class folders)")
    p.add_argument("out", type=Path, help="new, empty output folder")
    p.add_argument("--task", choices=("semantic", "instances", "classification"))
    p.add_argument("--mpp", type=float, help="pixel size of the images in µm (default: what each image file records)")
    p.add_argument("--stain", help="the images' stain, e.g. 'H&E' (default: a 'stain' key-value in each OME-TIFF)")
    p.add_argument("--magnification", type=float,
                   help="nominal objective magnification, e.g. 40 (default: the objective each OME-TIFF or SVS records)")
    p.add_argument("--description", default="", help="what the dataset is (goes into README.md and dataset.json)")
    p.add_argument("--format", choices=("ome-tiff", "ome-zarr"), default="ome-tiff",
                   help="ome-zarr: images/<id>.ome.zarr (NGFF 0.4, pixel size in µm, channel names), each mask an "
                        "image-label under the image's labels/ group")
    p.add_argument("--metadata", type=Path,
                   help="the facility's archive metadata (YAML: study, biosample, specimen, image_acquisition, "
                        "annotation; MIFA/REMBI field names); without it, or with fields missing, the export is "
                        "written but not submission-ready, and archive.example.yaml in it shows what to fill")
    p.set_defaults(func=cmd_export_dataset)


def cmd_train(args) -> int:
    """Run ``dlcore train``."""
    if args.task == "pixels":
        from dlcore.pixels.cli import train_pixels

        return train_pixels(args, reproduce=_reproduce(args))
    if args.task in ("n2v", "care", "translate"):
        from dlcore.restore.cli import train_restore

        return train_restore(args, reproduce=_reproduce(args))
    from dlcore.config import load_config
    from dlcore.progress import TqdmProgress
    from dlcore.train.api import TrainSpec, train_model
    from dlcore.train.augment import AugmentSpec
    from dlcore.train.data import load_folder
    from dlcore.train.evaluate import headline

    dataset = load_folder(args.dataset, task=args.task, mpp=args.mpp)
    spec = TrainSpec(task=dataset.task, name=args.name, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                     batch_size=args.batch_size, lr=args.lr, patch_size=args.patch_size, freeze_stages=args.freeze,
                     k_folds=args.k_folds, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                     patience=args.patience, seed=args.seed, threads=args.threads,
                     augment=AugmentSpec.none() if args.no_augment else AugmentSpec(),
                     description=args.description, training_data=args.training_data or f"local dataset {args.dataset}",
                     reproduce=_reproduce(args))
    progress = TqdmProgress()
    try:
        result = train_model(dataset, spec=spec, out_registry=args.registry or load_config().models_dir,
                             base_model=args.base_model, progress=progress)
    finally:
        progress.close()
    print(f"✓ {result.package_path} ({result.metrics['version']})\n  report {result.report_path}")
    if result.metrics["test"]:
        print("  held-out test: " + ", ".join(f"{k} {v:.3f}" for k, v in headline(result.metrics["test"], spec.task).items()
                                              if isinstance(v, float)))
    return 0


def _reproduce(args) -> str:
    skip = {"func", "command", "verbose", "registry"}
    parts = ["dlcore train", str(args.dataset)]
    for key, value in vars(args).items():
        if key in skip or key == "dataset" or value in (None, False, ""):
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def cmd_export_dataset(args) -> int:
    """Run ``dlcore export-dataset``."""
    from dlcore.train.archive_metadata import load_archive_metadata, readiness
    from dlcore.train.data import count_objects, export_dataset, load_folder
    from dlcore.train.task_inference import summarize_classes

    archive = load_archive_metadata(getattr(args, "metadata", None), source=args.dataset)  # before any writing
    dataset = load_folder(args.dataset, task=args.task, mpp=args.mpp, stain=getattr(args, "stain", None),
                          magnification=getattr(args, "magnification", None),
                          explain=lambda line: print(f"task: {line}"))
    out = export_dataset(dataset, args.out, description=args.description, archive=archive,
                         image_format=getattr(args, "format", "ome-tiff"))
    print(f"✓ {out}: {len(dataset.samples)} {dataset.task} samples, "
          f"{summarize_classes(dataset.task, dataset.classes, ids=count_objects(dataset))}")
    verdict = readiness(out)
    if verdict["submission_ready"]:
        print("archive: submission-ready (mifa.json, rembi.json, file_list.tsv complete)")
    else:
        print(f"archive: NOT submission-ready, {len(verdict['missing'])} required field(s) missing: "
              f"{', '.join(verdict['missing'])}\n  fill them in a YAML (template: {out / 'archive.example.yaml'}) "
              "and export again with --metadata")
    return 0


__all__ = ["register_cli", "cmd_train", "cmd_export_dataset"]
