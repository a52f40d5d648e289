"""``omero dl``: batch runs from a terminal, through the same workflow as the scripts.

Examples::

    omero dl run nuclei-classical Image:1 Dataset:2 --param sigma=2.5
    omero dl run my-unet Project:3 --whole-image
    omero dl models

omero-py loads CLI plugins from every ``omero/plugins/`` folder on ``sys.path``; dlcore ships the
shim ``omero/plugins/dl.py`` that registers :class:`DlControl`.
"""
from __future__ import annotations

import sys
from collections import defaultdict

from omero.cli import BaseControl

from dlcore.errors import DlcoreError, ParameterError

HELP = """Run dlcore models and pipelines on OMERO images (results are written onto the images)

Examples:
    omero dl run nuclei-classical Image:1 Dataset:2
    omero dl run nuclei-classical Image:1 --param sigma=2.5 --param min_size=40
    omero dl models
"""


def parse_targets(targets: list[str]) -> dict[str, list[int]]:
    """``["Image:1", "Dataset:2", "3"]`` -> ``{"Image": [1, 3], "Dataset": [2]}`` (a bare id is an Image)."""
    from dlcore.omero.workflows import DATA_TYPES

    out: dict[str, list[int]] = defaultdict(list)
    for target in targets:
        kind, _, oid = target.rpartition(":")
        kind = kind or "Image"
        if kind not in DATA_TYPES or not oid.isdigit():
            raise ParameterError(f"{target!r} is not Image:ID, Dataset:ID or Project:ID (e.g. Image:123)")
        out[kind].append(int(oid))
    return dict(out)


class DlControl(BaseControl):
    """The ``omero dl`` command."""

    def _configure(self, parser):
        from dlcore.qc.run import QC_MODES

        parser.add_login_arguments()
        sub = parser.sub()
        run = parser.add(sub, self.run, "Run a model or pipeline on Images, Datasets or Projects")
        run.add_argument("model", help="model or pipeline name (see `omero dl models`)")
        run.add_argument("targets", nargs="+", help="Image:ID, Dataset:ID or Project:ID")
        run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a model parameter")
        run.add_argument("--whole-image", action="store_true", help="analyse the whole image, not only tissue")
        run.add_argument("--mpp", type=float, help="pixel size in µm for images without one")
        run.add_argument("--max-rois", type=int, help="most ROIs per image (default: the configuration's roi_cap)")
        run.add_argument("--qc", choices=QC_MODES, default="off",
                         help="slide quality control first: flag (report artefacts) or exclude (also leave them out)")
        parser.add(sub, self.models, "List the models and pipelines installed here")

    def run(self, args):
        from omero.gateway import BlitzGateway

        client = self.ctx.conn(args)
        conn = BlitzGateway(client_obj=client)
        code, text = run_targets(conn, args.model, args.targets, args.param, whole_image=args.whole_image,
                                 mpp=args.mpp, max_rois=args.max_rois, qc=args.qc)
        self.ctx.out(text)
        if code:
            self.ctx.die(code, "some images failed (see above)" if code == 1 else "nothing was run")

    def models(self, args):
        from dlcore.omero.scripts import models_text

        self.ctx.out(models_text())


def run_targets(conn, model: str, targets: list[str], param_pairs: list[str], *, whole_image: bool = False,
                mpp: float | None = None, max_rois: int | None = None, qc: str = "off") -> tuple[int, str]:
    """Run ``model`` on the targets; return (exit code, text): 0 all done, 1 some failed, 2 nothing ran."""
    from dlcore.omero.scripts import parse_parameters
    from dlcore.omero.workflows import run_on_objects, summary_message
    from dlcore.progress import LineProgress

    try:
        params = parse_parameters(",".join(param_pairs))
        reports = []
        for data_type, ids in parse_targets(targets).items():
            reports += run_on_objects(conn, model, data_type, ids, params, detect_tissue=not whole_image, mpp=mpp,
                                      roi_cap=max_rois, qc=qc,
                                      progress=lambda label: LineProgress(label, stream=sys.stderr))
    except DlcoreError as exc:
        return 2, f"Nothing was written: {exc}"
    return (0 if all(r.ok for r in reports) else 1), summary_message(reports)
