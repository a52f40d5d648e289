"""The ``dlcore annotate-from-marker`` command (registered by :func:`register_cli`)."""
from __future__ import annotations

import sys
from pathlib import Path

from dlcore.errors import ParameterError


def register_cli(subparsers) -> None:
    """Add ``annotate-from-marker`` to the ``dlcore`` command's subparsers."""
    from dlcore.cli import HelpFormatter
    from dlcore.marker.labels import METHODS, MarkerSpec

    defaults = MarkerSpec()
    p = subparsers.add_parser(
        "annotate-from-marker", help="derive training labels from a marker (IHC stain, fluorescence channel)",
        description="Derive training labels for the routine stain from a marker of the same section: a stain of the "
                    "image (DAB, by colour deconvolution), one of its channels, or a second image of the section "
                    "registered onto it. Writes OUT/images (what the model sees), OUT/labels, classes.txt, "
                    "labels_provenance.json and a README; `dlcore train OUT --task semantic|instances` reads it as "
                    "it is.",
        formatter_class=HelpFormatter)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="routine image file(s)")
    p.add_argument("-o", "--out", type=Path, required=True, help="new (or empty) folder for the training data")
    p.add_argument("--marker", default=defaults.marker,
                   help="dab, hematoxylin, eosin (colour deconvolution), channel:NAME, or image:PATH (a second image "
                        "of the same section, registered first; its marker is --marker-signal)")
    p.add_argument("--marker-signal", default="dab",
                   help="with --marker image:PATH: the marker in that image (dab, hematoxylin, eosin or channel:NAME)")
    p.add_argument("--method", choices=METHODS, default=defaults.method,
                   help="threshold: a positive/background mask; instances: objects split by watershed; "
                        "positive-cells: nuclei of the routine image classed positive/negative by the marker")
    p.add_argument("--threshold", default="otsu", help="otsu, or a value of the smoothed marker signal")
    p.add_argument("--sigma", type=float, default=defaults.sigma, help="smoothing of the marker signal, pixels")
    p.add_argument("--min-size", type=int, default=defaults.min_size, help="remove objects under this many pixels")
    p.add_argument("--min-distance", type=int, default=defaults.min_distance,
                   help="smallest distance between object centres for the watershed (instances), pixels")
    p.add_argument("--positive-by", choices=("mean", "fraction"), default=defaults.positive_by,
                   help="positive-cells: the marker's mean over a cell above the threshold, or a fraction of it")
    p.add_argument("--min-fraction", type=float, default=defaults.min_fraction,
                   help="positive-cells with --positive-by fraction: the share of a cell above the threshold")
    p.add_argument("--cell-expansion", type=int, default=defaults.cell_expansion,
                   help="positive-cells: grow each nucleus by this many pixels before measuring the marker "
                        "(membrane and cytoplasm markers)")
    p.add_argument("--nuclei-channel", default=defaults.nuclei_channel,
                   help="positive-cells: where nuclei are found, hematoxylin or channel:NAME")
    p.add_argument("--region", help="x,y,w,h in full-resolution pixels (needed for images above 25 megapixels)")
    p.add_argument("--input", default=defaults.input,
                   help="what the model will see: hematoxylin (the image as if stained with haematoxylin alone), "
                        "rgb, or channel:NAME")
    p.add_argument("--kind", choices=("affine", "rigid", "similarity"), default=defaults.registration_kind,
                   help="registration of a second image")
    p.add_argument("--marker-nuclei-channel",
                   help="with image:PATH of a non-RGB image: its channel that shows nuclei (for registration)")
    p.add_argument("--stain-vectors", choices=("estimate", "reference"), default=defaults.stain_vectors,
                   help="colour deconvolution with the image's own stain vectors or the textbook ones")
    p.add_argument("--pixel-classifier", metavar="NAME[:CLASS]",
                   help="a registered pixel classifier applied to the marker image; its CLASS's probability is the "
                        "marker (threshold 0.5 unless --threshold)")
    p.add_argument("--tile", type=int, metavar="N",
                   help="write every region as N x N tiles, each its own split group for `dlcore train` (a spatial "
                        "split of one section; default: one file per image, and `dlcore train` needs three images)")
    p.add_argument("--mpp", type=float, help="pixel size in µm of images that have none")
    p.set_defaults(func=cmd_annotate_from_marker)


def spec_from_args(args):
    """The :class:`~dlcore.marker.labels.MarkerSpec` and the second image of the command's arguments."""
    from dlcore.marker.labels import MarkerSpec

    marker, marker_image = args.marker, None
    if marker.startswith("image:"):
        marker_image = Path(marker.split(":", 1)[1])
        if not str(marker_image).strip():
            raise ParameterError("--marker image:PATH names no file; e.g. --marker image:restained-dab.tif")
        marker = args.marker_signal
    text = str(args.threshold).strip().lower()
    if text == "otsu":
        threshold = None
    else:
        try:
            threshold = float(text)
        except ValueError:
            raise ParameterError(f"--threshold {args.threshold!r} must be otsu or a number") from None
    classifier, cls = None, None
    if args.pixel_classifier:
        classifier, _, cls = args.pixel_classifier.partition(":")
        cls = cls or None
    spec = MarkerSpec(marker=marker, method=args.method, threshold=threshold, sigma=args.sigma,
                      min_size=args.min_size, min_distance=args.min_distance, positive_by=args.positive_by,
                      min_fraction=args.min_fraction, cell_expansion=args.cell_expansion,
                      nuclei_channel=args.nuclei_channel, input=args.input, stain_vectors=args.stain_vectors,
                      pixel_classifier=classifier, classifier_class=cls, registration_kind=args.kind,
                      marker_nuclei_channel=args.marker_nuclei_channel)
    return spec, marker_image


def cmd_annotate_from_marker(args) -> int:
    """Run ``dlcore annotate-from-marker``."""
    from dlcore.marker.dataset import labels_from_marker
    from dlcore.marker.labels import parse_region
    from dlcore.progress import TqdmProgress

    spec, marker_image = spec_from_args(args)
    region = parse_region(args.region)
    progress = TqdmProgress()
    try:
        out = labels_from_marker(args.images, args.out, spec=spec, marker_image=marker_image, region=region,
                                 mpp=args.mpp, tile=args.tile, progress=progress)
    finally:
        progress.close()
    files = out["provenance"]["counts"]["files"]
    print(f"✓ {out['folder']}: {len(out['results'])} image(s)" + (f" in {files} tiles" if args.tile else "")
          + f", task {spec.task}, classes {', '.join(spec.classes)}")
    for r in out["results"]:
        p = r.provenance
        print(f"  {r.name}: threshold {r.threshold:.4g} ({p['threshold']['how']}); " + _counts_text(p["counts"]))
        if p.get("registration"):
            reg = p["registration"]
            print(f"    registered ({reg['kind']}): residual {reg['residual_px']} px, 90th percentile "
                  f"{reg['residual_p90_px']} px, on {reg['patches']} patches; the marker covers "
                  f"{100 * p['marker_coverage']:.1f} % of the region")
        if p.get("warning"):
            print(f"    ! {p['warning']}", file=sys.stderr)
    print(f"  check the labels in {out['folder'] / 'overview'}, then train:\n"
          f"  dlcore train {out['folder']} --task {spec.task} --name NAME")
    if files < 3:
        print(f"  (training splits by file: {files} is too few for train/validation/test; give more images, or cut "
              "them into tiles with --tile N)")
    return 0


def _counts_text(counts: dict) -> str:
    parts = []
    if "pixels_per_class" in counts:
        total = max(1, counts["pixels"])
        parts.append(", ".join(f"{c} {100 * n / total:.1f} %" for c, n in counts["pixels_per_class"].items()))
    if "objects" in counts:
        parts.append(f"{counts['objects']} objects" + "".join(
            f", {counts[k]} {k.removesuffix('_objects')}" for k in counts if k.endswith("_objects")
            and k != "objects" and len([c for c in counts if c.endswith('_objects')]) > 1))
    return "; ".join(parts)


__all__ = ["register_cli", "cmd_annotate_from_marker", "spec_from_args"]
