"""Results of a run written to a local folder.

Layout: ``<out>/<slide stem>/<run key>/`` holding

- ``labels.ome.tif`` (or ``labels.ome.zarr``): the label image at the working resolution, pyramidal;
- ``objects.csv``: one row per object (level-0 pixel coordinates, areas, mean intensities, class);
- ``objects.geojson``: the objects' outlines as a FeatureCollection QuPath imports (File > Import);
- ``overview.png``: the outlines drawn over a thumbnail;
- ``provenance.json``: dlcore version, task and parameters, input identity, timings, counts.

Everything is written into a hidden ``.partial-*`` folder first and moved into place only when the
run has finished, replacing the previous results of the same run key; a failed run removes its
partial folder, so nothing half-written is ever left behind.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlcore.errors import OutputError
from dlcore.io.sink import RunContext, RunOutputs, object_columns, object_row
from dlcore.objects import ObjectRecord

LABEL_FORMATS = ("ome-tiff", "ome-zarr", "none")  # "none": no label file (the OMERO sink writes its own)


def slide_stem(name: str) -> str:
    """A folder name for a slide: its file name without image suffixes, safe for file systems."""
    stem = re.sub(r"\.(ome\.)?(tiff?|btf|svs|ndpi|mrxs|scn|bif|png|jpe?g|bmp|zarr)$", "", name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "slide"


class LocalFolderSink:
    """Writes a run's results under ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | Path, *, label_format: str = "ome-tiff") -> None:
        if label_format not in LABEL_FORMATS:
            raise OutputError(f"label_format={label_format!r} is not one of {LABEL_FORMATS}")
        self.out_dir = Path(out_dir)
        self.label_format = label_format
        self._partial: Path | None = None
        self._final: Path | None = None
        self._csv = self._csv_writer = self._geojson = None
        self._first_feature = True
        self._context: RunContext | None = None

    def begin(self, context: RunContext) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {self.out_dir}: {exc}") from exc
        self._context = context
        slide_dir = self.out_dir / slide_stem(context.slide.name)
        slide_dir.mkdir(exist_ok=True)
        self._final = slide_dir / context.run_key
        self._partial = Path(tempfile.mkdtemp(prefix=f".partial-{context.run_key}-", dir=slide_dir))
        self._csv = open(self._partial / "objects.csv", "w", newline="")
        self._csv_writer = csv.writer(self._csv)
        self._csv_writer.writerow(object_columns(context.slide.channels))
        self._geojson = open(self._partial / "objects.geojson", "w")
        self._geojson.write('{"type": "FeatureCollection", "features": [\n')

    def add_objects(self, objects: Sequence[ObjectRecord]) -> None:
        for obj in objects:
            self._csv_writer.writerow(object_row(obj))
            if len(obj.polygon) >= 3:
                if not self._first_feature:
                    self._geojson.write(",\n")
                self._geojson.write(json.dumps(self._feature(obj), separators=(",", ":")))
                self._first_feature = False

    def _feature(self, obj: ObjectRecord) -> dict:
        ring = np.round(np.asarray(obj.polygon), 2).tolist()
        ring.append(ring[0])
        props: dict = {
            "objectType": "detection",
            "name": f"{self._context.run_key} {obj.id}",
            "measurements": {
                "dlcore id": obj.id, "Area px": obj.area_px, "Perimeter px": round(obj.perimeter_px, 2),
                **({"Area µm^2": round(obj.area_um2, 3)} if obj.area_um2 is not None else {}),
            },
        }
        if obj.class_name:
            props["classification"] = {"name": obj.class_name, "color": list(self._class_color(obj.class_name))}
        return {"type": "Feature", "id": str(obj.id), "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}

    def _class_color(self, name: str) -> tuple[int, int, int]:
        ctx = self._context
        if name in ctx.class_names and len(ctx.class_colors) == len(ctx.class_names):
            return ctx.class_colors[ctx.class_names.index(name)]
        return (200, 0, 0)

    def finish(self, outputs: RunOutputs) -> dict[str, str]:
        self._close_streams()
        partial, final = self._partial, self._final
        written: dict[str, str] = {}
        mpp = self._context.working_mpp
        if self.label_format == "none":
            pass
        elif self.label_format == "ome-tiff":
            outputs.labels.write_ome_tiff(partial / "labels.ome.tif", mpp=mpp, name=f"{self._context.run_key} labels")
            written["label image"] = "labels.ome.tif"
        else:
            outputs.labels.write_ome_zarr(partial / "labels.ome.zarr", mpp=mpp, name=f"{self._context.run_key} labels")
            written["label image"] = "labels.ome.zarr"
        shutil.copyfile(outputs.overview_png, partial / "overview.png")
        for name, path in outputs.extra_files.items():
            shutil.copyfile(path, partial / Path(path).name)
            written[name] = Path(path).name
        written.update({"measurements": "objects.csv", "outlines": "objects.geojson", "overview": "overview.png",
                        "provenance": "provenance.json"})
        (partial / "provenance.json").write_text(json.dumps(outputs.provenance, indent=2, default=str))
        self._replace(final, partial)
        self._partial = None
        return {name: str(final / file) for name, file in written.items()}

    @staticmethod
    def _replace(final: Path, partial: Path) -> None:
        """Move ``partial`` to ``final``, replacing an earlier result folder as atomically as possible."""
        old = None
        if final.exists():
            old = final.with_name(f".old-{final.name}-{partial.name[-8:]}")
            final.rename(old)
        partial.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _close_streams(self) -> None:
        if self._geojson is not None and not self._geojson.closed:
            self._geojson.write("\n]}\n")
            self._geojson.close()
        if self._csv is not None and not self._csv.closed:
            self._csv.close()

    def abort(self) -> None:
        for stream in (self._csv, self._geojson):
            if stream is not None and not stream.closed:
                stream.close()
        if self._partial is not None:
            shutil.rmtree(self._partial, ignore_errors=True)
            self._partial = None
