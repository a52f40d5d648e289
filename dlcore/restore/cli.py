"""``dlcore train DATASET --task n2v|care|translate``: the prediction models' options and command."""
from __future__ import annotations

from dlcore.errors import ParameterError

TASKS = ("n2v", "care", "translate")
DEFAULT_NAMES = {"n2v": "denoised", "care": "restored", "translate": "predicted"}


def add_restore_arguments(parser) -> None:
    """The options of ``--task n2v|care|translate`` (a group of ``dlcore train``'s parser)."""
    from dlcore.restore.losses import LOSSES

    g = parser.add_argument_group(
        "prediction models (--task n2v, care, translate)",
        "n2v: DATASET is a folder of noisy images (PNG/TIFF). care/translate: DATASET holds low/ + high/ or "
        "source/ + target/ (pairs matched by file name, same size). Held out by image, or by vertical strips "
        "of a single image. --epochs, --steps-per-epoch, --batch-size, --lr, --patch-size, --val-fraction, "
        "--test-fraction, --patience, --seed, --mpp, --no-augment and --threads apply.")
    g.add_argument("--loss", choices=LOSSES, help="training loss (default: n2v mse, care l1, translate l1+ssim)")
    g.add_argument("--source-dir", help="care/translate: the input images' folder inside DATASET (with --target-dir)")
    g.add_argument("--target-dir", help="care/translate: the target images' folder inside DATASET")
    g.add_argument("--target-normalization", choices=("percentile", "none"), default="percentile",
                   help="care/translate: normalise each target by its 1st/99.8th percentiles, or keep its values "
                        "(targets already on a 0-1 scale)")
    g.add_argument("--mask-fraction", type=float, default=0.002,
                   help="n2v: fraction of each patch's pixels masked (Noise2Void: 0.002)")
    g.add_argument("--output-names", help="names of the predicted channels, comma-separated (default: denoised, "
                                          "restored or predicted)")


def _output_names(args, n: int) -> list[str]:
    if args.output_names:
        names = [v.strip() for v in args.output_names.split(",") if v.strip()]
        if len(names) != n:
            raise ParameterError(f"--output-names gives {len(names)} name(s); the model predicts {n} channel(s)")
        return names
    base = DEFAULT_NAMES[args.task]
    return [base] if n == 1 else [f"{base}_{i}" for i in range(n)]


def train_restore(args, *, reproduce: str) -> int:
    """Run ``dlcore train --task n2v|care|translate``: read, train, evaluate, register, print the figures."""
    import time

    from dlcore.config import load_config
    from dlcore.progress import TqdmProgress
    from dlcore.restore.data import load_training_images
    from dlcore.restore.metrics import evaluate
    from dlcore.restore.package import check_model_name, register_image_model
    from dlcore.restore.training import ImageTrainingOptions, heldout_loss, train_image_model

    check_model_name(args.name, what="--name")
    if args.base_model or args.freeze or args.k_folds > 1:
        raise ParameterError(f"--task {args.task} trains from scratch: --base-model, --freeze and --k-folds are for "
                             "semantic, instances and classification")
    images = load_training_images(args.dataset, mode=args.task, source_dir=args.source_dir, target_dir=args.target_dir)
    options = ImageTrainingOptions(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr,
        patch_size=args.patch_size, loss=args.loss, target_normalization=args.target_normalization,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, patience=args.patience, seed=args.seed,
        threads=args.threads, augment=not args.no_augment, mask_fraction=args.mask_fraction)
    started = time.monotonic()
    progress = TqdmProgress()
    try:
        trained = train_image_model(images, mode=args.task, options=options, progress=progress)
    finally:
        progress.close()
    evaluation = evaluate(trained) if args.task != "n2v" and trained.split.test else None
    names = _output_names(args, trained.out_channels)
    folder = register_image_model(
        trained, args.registry or load_config().trained_dir, name=args.name, example=images[0].source,
        output_channels=names, evaluation=evaluation, mpp=args.mpp, description=args.description,
        training_data=args.training_data or f"local images in {args.dataset} ({len(images)} image(s))",
        reproduce=reproduce)
    h = trained.history
    split = trained.split.describe()
    print(f"✓ {folder}")
    print(f"  split: {split['method']}; train {split['train']['pixels']} px, validation {split['val']['pixels']} px, "
          f"test {split['test']['pixels']} px")
    print(f"  {h['epochs_run']} epochs (kept {h['best_epoch'] + 1}), loss {trained.loss}, "
          f"{time.monotonic() - started:.0f} s")
    if evaluation is not None:
        print("  held-out test (never trained on):   PSNR dB   SSIM  Pearson r  NRMSE")
        for predictor, m in evaluation.summary.items():
            print(f"    {predictor:<32} {m['psnr']:7.2f} {m['ssim']:6.3f} {m['pearson_r']:9.3f} {m['nrmse']:6.3f}")
    elif trained.split.test:
        print(f"  held-out masked-pixel loss: {heldout_loss(trained):.5f} (no clean targets: run "
              "`python -m dlcore.train.recipes denoise-n2v` for Noise2Void's PSNR gain on known noise)")
    else:
        print("  no held-out test images (--test-fraction 0)")
    print(f"  QC report: {folder / 'report'}")
    return 0


__all__ = ["TASKS", "add_restore_arguments", "train_restore"]
