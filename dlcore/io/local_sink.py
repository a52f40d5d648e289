"""Results of a run written to a local folder.

Layout: ``<out>/<slide stem>/<run key>/`` holding

- ``labels.ome.tif`` (or ``labels.ome.zarr``): the label image at the working resolution, pyramidal;
- ``objects.csv``: one row per object (level-0 pixel coordinates, areas, mean intensities, class);
- ``objects.geojson``: the objects' outlines as a FeatureCollection QuPath imports (File > Import);
- ``overview.png``: the outlines drawn over a thumbnail;
- ``provenance.json``: dlcore version, task and parameters, input identity, timings, counts.

An ``image`` task (denoising, image translation) writes ``prediction.ome.tif`` (or
``prediction.ome.zarr``) instead: the predicted image, pyramidal, with its channel names and pixel size;
its stored type and, for uint8 / uint16, the scale and offset that turn stored values into predicted ones
(``value = offset + scale * stored``) are in ``provenance.json`` (summary ``predicted_image``).  It has no
objects, so no ``objects.csv`` or ``objects.geojson``.

Everything is written into a hidden ``.partial-*`` folder first and moved into place only when the
run has finished, replacing the previous results of the same run key; a failed run removes its
partial folder, so nothing half-written is ever left behind.  A run that was killed (``kill -9``, a
power cut) cannot clean up: beside each partial folder lies an owner file naming the process that
writes it, and the next run of the same task in the same folder removes the partial folders whose
owner it can prove dead (same host, process gone), restoring the previous results if the kill came
in the middle of replacing them.  Result folders get the user's umask, like any other output.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dlcore.errors import OutputError
from dlcore.io.object_text import csv_line, geojson_feature, text_of
from dlcore.io.sink import RunContext, RunOutputs, check_objects_inside, object_columns
from dlcore.objects import ObjectRecord

log = logging.getLogger(__name__)

LABEL_FORMATS = ("ome-tiff", "ome-zarr", "none")  # "none": no label file (the OMERO sink writes its own)


def slide_stem(name: str) -> str:
    """A folder name for a slide: its file name without image suffixes, safe for file systems."""
    stem = re.sub(r"\.(ome\.)?(tiff?|btf|svs|ndpi|mrxs|scn|bif|png|jpe?g|bmp|zarr)$", "", name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "slide"


class LocalFolderSink:
    """Writes a run's results under ``out_dir`` (see the module docstring)."""

    renders_object_text = True  # the engine's workers render each object's CSV and GeoJSON text for it

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
        self._name_prefix = ""
        self._classifications: dict[str, str] = {}

    def begin(self, context: RunContext) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {self.out_dir}: {exc}") from exc
        self._context = context
        self._name_prefix = json.dumps(f"{context.run_key} ")[:-1]
        slide_dir = self.out_dir / slide_stem(context.slide.name)
        try:
            slide_dir.mkdir(exist_ok=True)
            self._final = slide_dir / context.run_key
            remove_dead_partials(slide_dir, context.run_key)
            self._partial = Path(tempfile.mkdtemp(prefix=f".partial-{context.run_key}-", dir=slide_dir))
        except OSError as exc:
            raise OutputError(f"cannot write results in {slide_dir}: {exc.strerror or exc}; choose an output "
                              "folder you can write to (-o)") from exc
        os.chmod(self._partial, 0o777 & ~current_umask())  # mkdtemp makes it private (0700)
        write_owner(self._partial)
        if context.task_kind == "image":
            return
        self._csv = open(self._partial / "objects.csv", "w", newline="")
        self._csv_writer = csv.writer(self._csv)
        self._csv_writer.writerow(object_columns(context.slide.channels))
        self._geojson = open(self._partial / "objects.geojson", "w")
        self._geojson.write('{"type": "FeatureCollection", "features": [\n')

    def add_objects(self, objects: Sequence[ObjectRecord]) -> None:
        if not objects:
            return
        check_objects_inside(objects, self._context.slide)
        rows, features = [], []
        for obj in objects:
            text = text_of(obj)
            rows.append(csv_line(obj.id, text))
            if text.geometry is not None:
                features.append(geojson_feature(obj.id, text, name_prefix=self._name_prefix,
                                                classification=self._classification(text.class_name)))
        self._csv.write("".join(rows))
        if features:
            self._geojson.write(("" if self._first_feature else ",\n") + ",\n".join(features))
            self._first_feature = False

    def _classification(self, name: str | None) -> str | None:
        """The JSON of a feature's classification (QuPath's name and colour), made once per class."""
        if not name:
            return None
        if name not in self._classifications:
            self._classifications[name] = json.dumps({"name": name, "color": list(self._class_color(name))},
                                                     separators=(",", ":"))
        return self._classifications[name]

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
        if self.label_format == "none":  # the OMERO sink writes the label or predicted image itself
            pass
        elif outputs.image is not None:
            written["predicted image"] = self._write_image(outputs.image, partial)
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
        if self._csv is not None:
            written.update({"measurements": "objects.csv", "outlines": "objects.geojson"})
        written.update({"overview": "overview.png", "provenance": "provenance.json"})
        (partial / "provenance.json").write_text(json.dumps(outputs.provenance, indent=2, default=str))
        self._replace(final, partial)
        owner_file(partial).unlink(missing_ok=True)
        self._partial = None
        return {name: str(final / file) for name, file in written.items()}

    def _write_image(self, image, partial: Path) -> str:
        """The predicted image in the sink's format (OME-Zarr when labels would be, else OME-TIFF)."""
        mpp, name = self._context.working_mpp, f"{self._context.run_key} prediction"
        if self.label_format == "ome-zarr":
            image.write_ome_zarr(partial / "prediction.ome.zarr", mpp=mpp, name=name)
            return "prediction.ome.zarr"
        image.write_ome_tiff(partial / "prediction.ome.tif", mpp=mpp, name=name)
        return "prediction.ome.tif"

    @staticmethod
    def _replace(final: Path, partial: Path) -> None:
        replace_folder(final, partial)

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
            owner_file(self._partial).unlink(missing_ok=True)
            self._partial = None


def replace_folder(final: Path, partial: Path) -> None:
    """Move ``partial`` to ``final``, replacing an earlier result folder as atomically as possible (the
    earlier one is parked beside it first, so a kill in between leaves it for
    :func:`remove_dead_partials` to move back)."""
    old = None
    if final.exists():
        old = old_results_path(partial)
        final.rename(old)
    partial.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_folder(out_dir: Path) -> None:
    """Raise :class:`OutputError` unless results can be written in ``out_dir`` (made when missing): called
    before any slide is analysed, so a wrong ``-o`` fails at once, not after the first slide's work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"the output folder {out_dir} is a file; give -o a folder (it is made if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in the output folder {out_dir}: {exc.strerror or exc}; choose a folder "
                          "you can write to (-o)") from exc


def current_umask() -> int:
    """The process's umask, read without changing it (Linux ``/proc``), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def owner_file(partial: Path) -> Path:
    """The file beside a ``.partial-*`` folder that names the process writing it."""
    return partial.with_name(partial.name + ".owner")


def old_results_path(partial: Path) -> Path:
    """Where the previous results are parked while ``partial`` replaces them."""
    return partial.with_name(".old-" + partial.name[len(".partial-"):])


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def write_owner(partial: Path) -> None:
    """Record this process (host, pid, start time) as the owner of ``partial``."""
    pid = os.getpid()
    owner_file(partial).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}))


def _owner_is_dead(owner: Path) -> bool:
    """True only when the owner file proves its process gone: same host, and no process with that pid and
    start time.  An unreadable file or another host's process proves nothing."""
    try:
        record = json.loads(owner.read_text())
        host, pid, start = record["host"], int(record["pid"]), record["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return False
    if start is not None:
        return _process_start(pid) != start  # gone, or the pid now belongs to a newer process
    try:  # written where /proc was unavailable: only "no such pid" proves anything
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_dead_partials(slide_dir: Path, run_key: str) -> list[Path]:
    """Remove the ``.partial-<run_key>-*`` folders of killed runs in ``slide_dir``; return what was removed.

    Only folders whose owner file proves the owner dead are touched.  When a run was killed while
    replacing earlier results (they are parked in ``.old-*`` and the final folder is gone), the earlier
    results are moved back; otherwise parked results are removed.
    """
    removed = []
    for owner in sorted(slide_dir.glob(f".partial-{run_key}-*.owner")):
        if not _owner_is_dead(owner):
            continue
        partial = owner.with_name(owner.name[: -len(".owner")])
        old, final = old_results_path(partial), slide_dir / run_key
        if old.exists():
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(final)
                log.warning("restored the previous results of %s in %s (a run was killed while replacing them)",
                            run_key, slide_dir)
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
            log.info("removed %s, left by a killed run (pid gone)", partial)
        owner.unlink(missing_ok=True)
    return removed
