"""Results of a run written back onto the OMERO image (:class:`OmeroSink`).

What a run leaves on an image, all in the image's group and the namespace ``dlcore/<run key>``:

- ROIs: one polygon per object, up to the ROI cap (:mod:`dlcore.omero.rois`), saved in batches of 500
  while tiles stream;
- an OMERO.table of every object's measurements, with ``Image`` and ``Roi`` columns (:mod:`~dlcore.omero.tables`);
- a label image (uint16, working resolution; ids above 65,535 wrap, the exact uint32 labels are an
  attached pyramidal OME-TIFF) in the image's datasets (:mod:`~dlcore.omero.label_image`);
- for an ``image`` task (denoising, image translation) instead of ROIs, table and label image: the
  predicted image, a new uint8 / uint16 image beside the source in its datasets, with named channels,
  display settings and its own key-value pairs (model, source, each channel's scale and offset), named
  by the source's key-value pairs (:mod:`~dlcore.omero.image_output`);
- key-value pairs with the provenance and summary (a run with QC: its verdict and figures, ``QC ...``), tags
  for classification results (and QC's), and attached files: ``objects.geojson`` (QuPath), ``objects.csv``,
  ``overview.png``, ``provenance.json``, and the task's and QC's extra files (``qc.json``,
  ``qc_mask.ome.tif``, ``qc_overview.png``, class outlines, heatmaps).

Nothing half-written stays behind: everything new is written first, unlinked where OMERO allows it
(files, table, label image); a failure deletes what the run created (:meth:`OmeroSink.abort`).  Only
when everything exists are the new objects linked in one call, and then the earlier run's results of
the same run key are deleted, with what killed runs of it left behind (:mod:`dlcore.omero.journal`).
Other runs' results and the user's annotations are never touched.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from dlcore.io.local_sink import LocalFolderSink
from dlcore.io.sink import RunContext, RunOutputs
from dlcore.objects import ObjectRecord
from dlcore.omero import annotations as ann
from dlcore.omero.deleting import delete_objects
from dlcore.omero.image_output import (
    PREDICTED_IMAGE_KEY, earlier_predicted_images, predicted_description, predicted_image_links, write_predicted_image,
)
from dlcore.omero.journal import CreationJournal, delete_leftovers, journal_folder
from dlcore.omero.label_image import LABEL_DESCRIPTION, create_label_image, dataset_links
from dlcore.omero.rois import ROI_BATCH, RoiWriter, roi_marker
from dlcore.omero.tables import TableWriter

log = logging.getLogger(__name__)

ATTACHED_FILES = {  # LocalFolderSink output name -> (mimetype, description)
    "label image": ("image/tiff", "label image with exact object ids (pyramidal uint32 OME-TIFF; the OMERO label "
                                  "image wraps ids above 65,535)"),
    "outlines": ("application/geo+json", "object outlines (GeoJSON; QuPath: File > Import objects)"),
    "measurements": ("text/csv", "per-object measurements (CSV)"),
    "overview": ("image/png", "overview: outlines drawn over the slide"),
    "provenance": ("application/json", "provenance of the run (dlcore, task, parameters, timings)"),
}

RENAMED_OUTPUTS = {"label image": "exact labels"}  # "label image" names the OMERO image in a run's outputs


@contextlib.contextmanager
def in_group(conn, group_id: int):
    """Run BlitzGateway calls that use ``conn.SERVICE_OPTS`` in ``group_id``, then restore it."""
    before = conn.SERVICE_OPTS.getOmeroGroup()
    conn.SERVICE_OPTS.setOmeroGroup(group_id)
    try:
        yield
    finally:
        conn.SERVICE_OPTS.setOmeroGroup(before)


class OmeroSink:
    """Writes one run's results onto one OMERO image (see the module docstring).

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    image_id, image_name
        The analysed image.
    group_id
        The image's group: every new object is saved there.
    dataset_ids
        Datasets the label image goes into (those of the source image the user may link to).
    roi_cap
        Most ROIs written for this image and run.
    work_dir
        The node's scratch folder (files before upload, the journal of created objects); None: the
        system's temporary folder.
    """

    def __init__(self, conn, image_id: int, *, image_name: str, group_id: int, dataset_ids: Sequence[int] = (),
                 roi_cap: int = 5000, work_dir: Path | None = None) -> None:
        self._conn = conn
        self.image_id, self.image_name, self.group_id = int(image_id), image_name, int(group_id)
        self.dataset_ids = list(dataset_ids)
        self.roi_cap = roi_cap
        self.context = {"omero.group": str(self.group_id)}
        self.run_id = uuid.uuid4().hex[:12]
        self._started = time.perf_counter()
        self._created: dict[str, list[int]] = {"Roi": [], "Image": [], "Annotation": [], "OriginalFile": []}
        self._committed = False
        self._buffer: list[ObjectRecord] = []
        self._scratch: Path | None = None
        self._work_dir = work_dir
        self._journal: CreationJournal | None = None
        self._files = self._rois = self._table = self._run = None
        self.cleanup_problem = ""

    # -- streaming --------------------------------------------------------------------------------
    def begin(self, context: RunContext) -> None:
        from dlcore.omero.slide import server_uuid
        from dlcore.scratch import make_scratch

        self._run = context
        self._journal = CreationJournal(journal_folder(self._work_dir), server=server_uuid(self._conn),
                                        user_id=int(self._conn.getUserId()), image_id=self.image_id,
                                        run_key=context.run_key, run_id=self.run_id).open()
        self._scratch = make_scratch(self._work_dir, prefix="dlcore-omero-")
        # the label image's exact uint32 ids are attached; a predicted image goes to OMERO as an image only
        self._files = LocalFolderSink(self._scratch, label_format="none" if context.task_kind == "image" else "ome-tiff")
        self._files.begin(context)
        update = self._conn.getUpdateService()
        colors = dict(zip(context.class_names, context.class_colors)) if context.class_colors else {}
        self._rois = RoiWriter(
            image_id=self.image_id, marker=roi_marker(context.run_key, self.run_id), cap=self.roi_cap,
            save=lambda batch: update.saveAndReturnArray(batch, self.context), colors=colors,
            saved_ids=self._created["Roi"],
        )
        if context.task_kind != "image":  # a predicted image has no objects to measure
            self._table = TableWriter(self._conn, f"dlcore_{context.run_key}_Image{self.image_id}.h5",
                                      context.slide.channels, self.context)

    def add_objects(self, objects: Sequence[ObjectRecord]) -> None:
        self._files.add_objects(objects)
        self._buffer.extend(objects)
        if len(self._buffer) >= ROI_BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self._buffer = self._buffer, []
        if batch:
            roi_ids = self._rois.write(batch)
            self._table.add(self.image_id, batch, roi_ids)
            if self._table.file_id is not None and self._table.file_id not in self._created["OriginalFile"]:
                self._created["OriginalFile"].append(self._table.file_id)
            self._journal.record(self._created)

    def _created_now(self, graph: str, object_id: int) -> None:
        """Note an object just created, in memory and in the journal."""
        self._created[graph].append(object_id)
        self._journal.record(self._created)

    def _deleted_now(self, graph: str, object_id: int) -> None:
        """Note that an object this run created is gone again (deleted by the code that made it)."""
        if object_id in self._created[graph]:
            self._created[graph].remove(object_id)
            self._journal.record(self._created)

    # -- finishing ------------------------------------------------------------------------------
    def finish(self, outputs: RunOutputs) -> dict[str, str]:
        if outputs.image is not None:
            return self._finish_image(outputs)
        run = self._run
        self._flush()
        self._table.ensure_created()
        table_file = self._table.close()
        if table_file not in self._created["OriginalFile"]:
            self._created_now("OriginalFile", table_file)
        files = self._files.finish(outputs)
        label_id = create_label_image(
            self._conn, outputs.labels, name=f"{self.image_name} [{run.run_key} labels]",
            description=f"{LABEL_DESCRIPTION}: {run.run_key} on Image:{self.image_id} (0 = background, n = object n)",
            mpp=run.working_mpp, context=self.context, on_created=lambda image_id: self._created_now("Image", image_id),
        )
        uploaded = self._upload(files)
        table_ann = ann.file_annotation(table_file, run.run_key, "per-object measurements (OMERO.table)")
        extra = {
            ann.RUN_ID_KEY: self.run_id,
            ann.LABEL_IMAGE_KEY: f"Image:{label_id}",
            "ROIs": self._rois.cap_note(),
            "table": f"OriginalFile:{table_file} ({self._table.rows} rows)",
            "run time s": f"{time.perf_counter() - self._started:.1f}",
        }
        earlier = ann.find_earlier_run(self._conn, self.image_id, run.run_key, keep_run_id=self.run_id,
                                       context=self.context)
        written = {
            "ROIs": f"{len(self._rois.saved_ids)} ROIs on Image:{self.image_id}" + (
                f" (cap {self.roi_cap}; {self._rois.skipped} more objects only in the label image and table)"
                if self._rois.skipped else ""),
            "label image": f"Image:{label_id}",
        }
        saved = self._link(outputs, extra, earlier, [ann.image_link(self.image_id, table_ann)], uploaded,
                           dataset_links(label_id, self.dataset_ids), written)
        written["table"] = f"FileAnnotation:{int(saved[1].getChild().getId().getValue())}"
        return self._finished(outputs, earlier, written, uploaded)

    def _finish_image(self, outputs: RunOutputs) -> dict[str, str]:
        """An ``image`` task's results: the predicted image beside the source (no ROIs, table or label
        image), the key-value pairs naming it, the files."""
        run, canvas = self._run, outputs.image
        files = self._files.finish(outputs)
        image_id = write_predicted_image(
            self._conn, canvas, name=f"{self.image_name} [{run.run_key} prediction]",
            description=predicted_description(run.run_key, self.image_id), mpp=run.working_mpp, context=self.context,
            on_created=lambda i: self._created_now("Image", i), on_deleted=lambda i: self._deleted_now("Image", i))
        uploaded = self._upload(files)
        extra = {
            ann.RUN_ID_KEY: self.run_id,
            PREDICTED_IMAGE_KEY: f"Image:{image_id}",
            "predicted channels": ", ".join(canvas.channels),
            "pixel type": str(canvas.dtype),
            "run time s": f"{time.perf_counter() - self._started:.1f}",
        }
        earlier = ann.find_earlier_run(self._conn, self.image_id, run.run_key, keep_run_id=self.run_id,
                                       context=self.context)
        earlier.label_image_ids += earlier_predicted_images(self._conn, self.image_id, run.run_key,
                                                            keep_run_id=self.run_id, context=self.context)
        publish = predicted_image_links(image_id, canvas, run_key=run.run_key, run_id=self.run_id,
                                        provenance=outputs.provenance, source_image_id=self.image_id,
                                        dataset_ids=self.dataset_ids)
        written = {"predicted image": f"Image:{image_id}"}
        self._link(outputs, extra, earlier, [], uploaded, publish, written)
        return self._finished(outputs, earlier, written, uploaded)

    def _link(self, outputs: RunOutputs, extra: dict, earlier: ann.EarlierRun, annotations: list,
              uploaded: dict[str, int], others: list, written: dict[str, str]) -> list:
        """Link every new result in one call: the run's key-value pairs (first), ``annotations`` (links
        onto the image), the uploaded files, the tags, and ``others`` (dataset links, ...).  From then on
        the results are the run's: :meth:`abort` deletes nothing.  Returns the saved links."""
        run = self._run
        map_ann = ann.map_annotation(run.run_key, ann.key_values(outputs.provenance, outputs.summary, extra))
        tags = [t for t in dict.fromkeys(outputs.tags) if t not in earlier.tag_links]
        links = [ann.image_link(self.image_id, map_ann), *annotations]
        links += [ann.image_link(self.image_id, _loaded_file_annotation(i)) for i in uploaded.values()]
        links += [ann.image_link(self.image_id, ann.tag_for(self._conn, run.run_key, t, self.context)) for t in tags]
        links += others
        saved = self._conn.getUpdateService().saveAndReturnArray(links, self.context)
        self._committed = True
        written["key-value pairs"] = f"MapAnnotation:{int(saved[0].getChild().getId().getValue())}"
        return saved

    def _finished(self, outputs: RunOutputs, earlier: ann.EarlierRun, written: dict[str, str],
                  uploaded: dict[str, int]) -> dict[str, str]:
        """Once linked: delete the earlier run's results and what killed runs left, clean up, and return
        what was written (name -> location)."""
        replaced = self._delete_earlier(earlier, keep_tags=set(outputs.tags))
        self._journal.close()  # the objects are results now
        replaced = "; ".join(note for note in (replaced, self._delete_leftovers()) if note)
        shutil.rmtree(self._scratch, ignore_errors=True)
        written.update({RENAMED_OUTPUTS.get(name, name): f"FileAnnotation:{i}" for name, i in uploaded.items()})
        if outputs.tags:
            written["tags"] = ", ".join(outputs.tags)
        if replaced:
            written["replaced"] = replaced
        return written

    def _upload(self, files: dict[str, str]) -> dict[str, int]:
        """Upload the attached files as unlinked FileAnnotations; return name -> annotation id.

        Every file the run wrote is attached: those of :data:`ATTACHED_FILES` with their mimetype and
        description, the task's and QC's extra files (class outlines, heatmaps, ``qc.json``,
        ``qc_mask.ome.tif``, ``qc_overview.png``) with the mimetype of their suffix
        (:func:`~dlcore.omero.annotations.mimetype_of`)."""
        ns = ann.namespace(self._run.run_key)
        uploaded = {}
        with in_group(self._conn, self.group_id):
            for name, path in files.items():
                mimetype, description = ATTACHED_FILES.get(name) or (
                    ann.mimetype_of(path), ann.FILE_DESCRIPTIONS.get(Path(path).name, name))
                fa = self._conn.createFileAnnfromLocalFile(path, mimetype=mimetype, ns=ns, desc=description)
                uploaded[name] = int(fa.getId())
                self._created_now("Annotation", uploaded[name])
        return uploaded

    def _delete_leftovers(self) -> str:
        """Delete what killed runs of this task on this image created and never linked (their journals,
        :mod:`dlcore.omero.journal`); a note of it ('' when there was nothing)."""
        return delete_leftovers(self._conn, self._journal, context=self.context, label=f"Image:{self.image_id}")

    def _delete_earlier(self, earlier: ann.EarlierRun, *, keep_tags: set[str]) -> str:
        """Delete the earlier run's results; return a note of what was replaced ('' when nothing)."""
        return ann.delete_earlier_run(self._conn, earlier, keep_tags=keep_tags, context=self.context,
                                      label=f"Image:{self.image_id} {self._run.run_key}")

    def abort(self) -> None:
        """Delete everything this run created (nothing, once the results were linked)."""
        if self._files is not None:
            self._files.abort()
        if self._table is not None:
            with contextlib.suppress(Exception):
                self._table.discard()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self._committed:
            return
        targets = {graph: [i for i in self._created[graph] if i is not None]
                   for graph in ("Roi", "Annotation", "OriginalFile", "Image")}
        targets = {graph: ids for graph, ids in targets.items() if ids}
        try:
            delete_objects(self._conn, targets, context=self.context)
            for graph in targets:
                self._created[graph].clear()
            if self._journal is not None:
                self._journal.close()
        except Exception as exc:  # reported by the workflow next to the run's own error, which must not be hidden
            if self._journal is not None:
                self._journal.release()  # a later run deletes what is listed
            listed = "; ".join(f"{graph} {ids}" for graph, ids in targets.items())
            self.cleanup_problem = (f"cleaning up the partial results failed too ({getattr(exc, 'message', '') or exc}); "
                                    f"delete these by hand: {listed}")
            log.error("Image:%s: %s", self.image_id, self.cleanup_problem)


def _loaded_file_annotation(annotation_id: int):
    from omero.model import FileAnnotationI

    return FileAnnotationI(annotation_id, False)
