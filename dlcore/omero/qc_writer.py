"""A slide's quality control written onto its OMERO image (:class:`QCWriter`), for QC_Slides.

In the image's group and the namespace ``dlcore/qc`` (:data:`dlcore.qc.run.QC_NAMESPACE`):

- key-value pairs a person reads (:func:`~dlcore.omero.annotations.qc_key_values`: the verdict, each
  artefact's share of the tissue and flag, the stain judgement, the focus figures) with the options, dlcore's
  version, the date and the run id;
- the tags of :meth:`~dlcore.qc.run.QCResult.tags` (``QC pass``, ``QC warn`` or ``QC fail``, and ``QC:
  <artefact>`` for each artefact flagged), shared in the group;
- ``qc.json``, ``qc_mask.ome.tif`` and ``qc_overview.png`` (:func:`dlcore.qc.outputs.write_qc_files`) as
  FileAnnotations.

As :class:`~dlcore.omero.sink.OmeroSink` does for a run: the files are uploaded unlinked (each id in the
node's journal, :mod:`dlcore.omero.journal`), then the key-value pairs, files and tags are linked in one
call, and only then are the caller's earlier QC annotations of the image deleted (one Delete2, waited on),
with whatever killed QC runs of the image left.  A failure before the link deletes what was uploaded.
Annotations of other users, other namespaces (a run's own QC block and tags included) are never touched.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import shutil
import uuid
from pathlib import Path

import dlcore
from dlcore.omero import annotations as ann
from dlcore.omero.deleting import delete_objects
from dlcore.omero.journal import CreationJournal, delete_leftovers, journal_folder

log = logging.getLogger(__name__)

QC_RUN_KEY = "qc"  # ann.namespace(QC_RUN_KEY) is dlcore.qc.run.QC_NAMESPACE
TAG_DESCRIPTION = "slide quality control by dlcore (QC_Slides, or Run Model with QC)"
FILE_ORDER = ("qc_overview", "qc_json", "qc_mask")  # kinds of dlcore.qc.outputs.FILES, in the order attached


class QCWriter:
    """Writes one QC result onto one OMERO image (see the module docstring).

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    image_id
        The checked image.
    group_id
        The image's group: every new object is saved there.
    work_dir
        The node's scratch folder (the QC files before upload, the journal); None: the system's temporary
        folder.
    """

    def __init__(self, conn, image_id: int, *, group_id: int, work_dir: Path | None = None) -> None:
        self._conn = conn
        self.image_id, self.group_id = int(image_id), int(group_id)
        self.context = {"omero.group": str(self.group_id)}
        self.run_id = uuid.uuid4().hex[:12]
        self._work_dir = work_dir
        self._created: dict[str, list[int]] = {"Annotation": []}
        self._journal: CreationJournal | None = None
        self.cleanup_problem = ""

    def write(self, result, *, input_identity: str = "") -> dict[str, str]:
        """Attach ``result`` (a :class:`~dlcore.qc.run.QCResult`) to the image, replacing the caller's
        earlier QC of it.

        Returns what was written, name -> location: ``key-value pairs`` (``MapAnnotation:<id>``), one
        ``FileAnnotation:<id>`` per QC file (``qc_json``, ``qc_mask``, ``qc_overview``), ``tags`` and, when
        an earlier QC was replaced, ``replaced``.  On any error before the new annotations are linked,
        what was created is deleted (:attr:`cleanup_problem` says when that failed too) and the error is
        raised.
        """
        from omero.model import FileAnnotationI

        from dlcore.omero.sink import in_group
        from dlcore.omero.slide import server_uuid
        from dlcore.qc.outputs import write_qc_files
        from dlcore.scratch import make_scratch

        self._journal = CreationJournal(journal_folder(self._work_dir), server=server_uuid(self._conn),
                                        user_id=int(self._conn.getUserId()), image_id=self.image_id,
                                        run_key=QC_RUN_KEY, run_id=self.run_id).open()
        scratch = None
        try:
            scratch = make_scratch(self._work_dir, prefix="dlcore-qc-")
            files = write_qc_files(result, scratch)
            uploaded: dict[str, int] = {}
            with in_group(self._conn, self.group_id):
                for kind in FILE_ORDER:
                    path = files[kind]
                    fa = self._conn.createFileAnnfromLocalFile(
                        str(path), mimetype=ann.mimetype_of(path), ns=ann.namespace(QC_RUN_KEY),
                        desc=ann.FILE_DESCRIPTIONS.get(path.name, kind))
                    uploaded[kind] = int(fa.getId())
                    self._created["Annotation"].append(uploaded[kind])
                    self._journal.record(self._created)
            map_ann = ann.map_annotation(QC_RUN_KEY, self.key_values(result, input_identity=input_identity))
            earlier = ann.find_earlier_run(self._conn, self.image_id, QC_RUN_KEY, keep_run_id=self.run_id,
                                           context=self.context)
            tags = list(dict.fromkeys(result.tags()))
            links = [ann.image_link(self.image_id, map_ann)]
            links += [ann.image_link(self.image_id, FileAnnotationI(i, False)) for i in uploaded.values()]
            links += [ann.image_link(self.image_id, ann.tag_for(self._conn, QC_RUN_KEY, t, self.context,
                                                                description=TAG_DESCRIPTION))
                      for t in tags if t not in earlier.tag_links]
            saved = self._conn.getUpdateService().saveAndReturnArray(links, self.context)
        except BaseException:
            self._abort()
            raise
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        replaced = ann.delete_earlier_run(self._conn, earlier, keep_tags=set(tags), context=self.context,
                                          label=f"Image:{self.image_id} QC")
        self._journal.close()  # the annotations are results now
        leftovers = delete_leftovers(self._conn, self._journal, context=self.context, label=f"Image:{self.image_id}")
        written = {"key-value pairs": f"MapAnnotation:{int(saved[0].getChild().getId().getValue())}",
                   **{kind: f"FileAnnotation:{i}" for kind, i in uploaded.items()},
                   "tags": ", ".join(tags)}
        replaced = "; ".join(note for note in (replaced, leftovers) if note)
        if replaced:
            written["replaced"] = replaced
        return written

    def key_values(self, result, *, input_identity: str = "") -> list[tuple[str, str]]:
        """The key-value pairs of ``result``: its figures (:func:`~dlcore.omero.annotations.qc_key_values`),
        then the options, dlcore's version, the date, the image read and this run's id."""
        pairs = ann.qc_key_values(result.summary())
        pairs += [
            ("options", json.dumps(result.options, sort_keys=True)),
            ("dlcore version", dlcore.__version__),
            ("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
        ]
        if input_identity:
            pairs.append(("input", input_identity))
        pairs.append((ann.RUN_ID_KEY, self.run_id))
        return pairs

    def _abort(self) -> None:
        """Delete the annotations this run created (it failed before linking them)."""
        targets = {graph: ids for graph, ids in self._created.items() if ids}
        try:
            delete_objects(self._conn, targets, context=self.context)
            with contextlib.suppress(Exception):
                self._journal.close()
        except Exception as exc:  # reported beside the run's own error, which must not be hidden
            from dlcore.omero.workflows import server_message

            self._journal.release()  # the next QC run of the image deletes what is listed
            listed = "; ".join(f"{graph} {ids}" for graph, ids in targets.items())
            self.cleanup_problem = (f"cleaning up the partial QC results failed too ({server_message(exc)}); "
                                    f"delete these by hand: {listed}")
            log.error("Image:%s: %s", self.image_id, self.cleanup_problem)
