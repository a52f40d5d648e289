"""``dlcore train --task pixels``: the pixel classifier's options and command."""
from __future__ import annotations

from dlcore.errors import ParameterError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ParameterError(f"--scales {text!r} must be numbers separated by commas, e.g. 0.7,1.6,3.5,5") from None


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if not text else tuple(v.strip() for v in text.split(",") if v.strip())


def add_pixel_arguments(parser) -> None:
    """The options of ``--task pixels`` (a group of ``dlcore train``'s parser)."""
    from dlcore.pixels.features import COLOUR_SPACES, DEFAULT_SCALES, FEATURES
    from dlcore.pixels.forest import ForestSettings

    defaults = ForestSettings()
    g = parser.add_argument_group(
        "pixel classification (--task pixels)",
        "DATASET holds images/ and labels/ (labels/NAME.geojson from QuPath, or labels/NAME.png painted with "
        "0 = unlabelled and 1..n = the classes)")
    g.add_argument("--classes", help="class names in label-value order, comma-separated (required for label "
                                     "images; GeoJSON: default the annotations' classes)")
    g.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES),
                   help="feature scales, sigmas in working pixels (ilastik offers 0.3,0.7,1,1.6,3.5,5,10)")
    g.add_argument("--features", default=",".join(FEATURES), help=f"feature kinds among {', '.join(FEATURES)}")
    g.add_argument("--colour", default="raw", choices=COLOUR_SPACES,
                   help="raw channels, optical density (od) or H/E/DAB colour deconvolution (hed) of 8-bit RGB")
    g.add_argument("--trees", type=int, default=defaults.n_trees, help="random forest size")
    g.add_argument("--max-depth", type=int, default=defaults.max_depth, help="deepest tree (0: unlimited)")
    g.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of each class's strokes held out for the held-out accuracy (0: none)")
    g.add_argument("--working-mpp", type=float, help="read the images at this µm/px (default: their own pixels)")
    g.add_argument("--line-width", type=float, help="width in working pixels of GeoJSON lines (default 3)")


def train_pixels(args, *, reproduce: str) -> int:
    """Run ``dlcore train --task pixels``: read the labels, train, register the package, print the figures."""
    import dataclasses

    from dlcore.config import load_config
    from dlcore.pixels.features import FeatureSpec, full_scale
    from dlcore.pixels.forest import ForestSettings
    from dlcore.pixels.local_data import load_pixel_folder
    from dlcore.pixels.package import register_pixel_classifier
    from dlcore.pixels.training import PixelTrainingOptions, train_pixel_classifier
    from dlcore.progress import TqdmProgress

    from dlcore.pixels.package import check_model_name

    check_model_name(args.name, what="--name")
    first = FeatureSpec(scales=_floats(args.scales), features=_names(args.features) or ())
    data = load_pixel_folder(args.dataset, classes=_names(args.classes), mpp=args.working_mpp,
                             margin=first.radius(), line_width=args.line_width)
    spec = dataclasses.replace(first, colour=args.colour, max_value=full_scale(data.dtype))
    options = PixelTrainingOptions(
        features=spec, forest=ForestSettings(n_trees=args.trees, max_depth=args.max_depth or None, seed=args.seed),
        holdout_fraction=args.holdout, threads=args.threads)
    progress = TqdmProgress()
    try:
        trained = train_pixel_classifier(data.images, data.classes, options=options, channel_names=data.channel_names,
                                         progress=progress)
    finally:
        progress.close()
    mpp = data.mpp if data.mpp is not None else args.mpp
    folder = register_pixel_classifier(
        trained, args.registry or load_config().trained_dir, name=args.name, example=data.images[0].image, mpp=mpp,
        description=args.description, training_data=args.training_data or f"local labels in {args.dataset}",
        reproduce=reproduce)
    m = trained.metrics
    print(f"✓ {folder}")
    print("  labels: " + ", ".join(f"{c} {v['pixels']} px / {v['strokes']} strokes" for c, v in trained.label_counts.items()))
    if data.conflicting_pixels:
        print(f"  {data.conflicting_pixels} pixels claimed by two classes were left unlabelled")
    held = m["heldout_strokes"]
    print(f"  out-of-bag accuracy {m['oob_accuracy']:.3f}"
          + (f"; held-out strokes: accuracy {held['accuracy']:.3f}, balanced {held['balanced_accuracy']:.3f}" if held else ""))
    print("  top features: " + ", ".join(f"{n} {v:.3f}" for n, v in trained.importance[:5]))
    print(f"  trained in {sum(trained.seconds.values()):.1f} s (features {trained.seconds['features']:.1f} s)")
    for warning in trained.warnings:
        print(f"  ! {warning}")
    return 0
