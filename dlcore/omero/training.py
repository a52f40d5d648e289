"""Training and dataset export from OMERO annotations: the calls behind Train_Model and Export_Annotated_Dataset.

- :func:`train_on_objects`: OMERO ROIs/tags → :func:`~dlcore.omero.annotated.dataset_from_images` →
  :func:`dlcore.train.train_model` into the node's registry (``models_dir``) → the QC report (a zip
  of the report folder and the card) and the model card attached to the images' datasets
  (namespace ``dlcore/training``);
- :func:`export_objects`: the same dataset written by :func:`dlcore.train.data.export_dataset`
  (OME-TIFF or OME-Zarr images and labels, ``dataset.json``, ``samples.csv``, README, and the BioImage
  Archive metadata ``mifa.json``, ``rembi.json``, ``file_list.tsv``) as one zip attached to the images'
  datasets (namespace ``dlcore/export``), or, for large sets, as a folder in the node's configured
  ``export_dir``.  The facility's archive YAML is a FileAnnotation in OMERO (``Archive_Metadata``); the
  provenance of each image's annotations (who drew its ROIs and when, the dlcore key-values of automatic
  ones such as Labels From Marker's) and its tags and key-values (sample attributes) go into the
  annotation metadata (:func:`annotation_provenance`).

Everything is checked before the long work: ids, annotations, classes, and that the user may
annotate at least one of the images' datasets (else the report would have nowhere to go).  Files
are uploaded unlinked and linked in one call; a failure deletes what was uploaded.

Parse mode imports this module too (the scripts' parameter lists are declared here), so it imports
nothing heavy at module level.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
from pathlib import Path

import omero.scripts as scripts
from omero.rtypes import rstring

from dlcore.errors import DlcoreError, OmeroError, ParameterError
from dlcore.omero.deleting import delete_objects
from dlcore.omero.scripts import parse_parameters, script_body

log = logging.getLogger(__name__)

NS_TRAINING = "dlcore/training"
NS_EXPORT = "dlcore/export"
TASK_CHOICES = {"semantic segmentation": "semantic", "instance segmentation": "instances",
                "classification": "classification"}
CLASS_SOURCES = {"ROI name": "roi_name", "ROI comment": "roi_comment", "ROI tag": "roi_tag",
                 "Image tag": "image_tag"}
FROM_SCRATCH = "(none: train from scratch)"
#: TrainSpec fields a script user may set through ``Training_Parameters`` (the others have their own input).
ADVANCED = ("steps_per_epoch", "batch_size", "lr", "weight_decay", "patch_size", "channels", "classifier_width",
            "classifier_depth", "val_fraction", "test_fraction", "seed", "patience", "boundary_width", "min_size",
            "tile_size", "halo", "threads", "max_seconds", "augment")


FORMATS = {"OME-TIFF": "ome-tiff", "OME-Zarr": "ome-zarr"}
ATTACH, FOLDER = "attach zip to the dataset", "export folder"
DESTINATIONS = {ATTACH: "attach", FOLDER: "folder"}
YAML_SUFFIXES = (".yaml", ".yml")
MAX_YAML_BYTES = 1 << 20
#: who drew each ROI of an image, and when (owner and creation event, from the ROI's details)
Q_ROI_AUTHORS = ("select r.id, r.description, o.omeName, o.firstName, o.lastName, e.time from Roi r "
                 "join r.details.owner o join r.details.creationEvent e where r.image.id = :iid order by r.id")


# -- the scripts' parameters ------------------------------------------------------------------
def annotation_params(grouping: int) -> list:
    """What to learn and where the classes come from (shared by Train_Model and Export_Annotated_Dataset)."""
    g = grouping
    return [
        scripts.String("Task", optional=False, grouping=f"{g}", default="semantic segmentation",
                       values=[rstring(t) for t in TASK_CHOICES],
                       description="Semantic segmentation (ROIs are class regions), instance segmentation (each ROI "
                                   "is one object, e.g. a nucleus) or classification (each ROI, or each tagged "
                                   "image, is one example of its class)"),
        scripts.String("Class_Source", optional=False, grouping=f"{g + 1}", default="ROI name",
                       values=[rstring(c) for c in CLASS_SOURCES],
                       description="Where each ROI's class is read: its name (or its shape's text), its shapes' "
                                   "comment (text), a tag on the ROI, or a tag on the image (classification only)"),
        scripts.String("Classes", grouping=f"{g + 2}",
                       description="Class names in order, separated by commas (e.g. 'tumour, stroma'); empty: every "
                                   "name found, sorted. A ROI with another class is an error"),
        scripts.Int("Resolution_Level", grouping=f"{g + 3}", default=0, min=0,
                    description="Pyramid level to read: 0 = full resolution, 1 = the next smaller (often half), ..."),
        scripts.Int("Region_Margin", grouping=f"{g + 4}", default=16, min=0,
                    description="Pixels read around the ROIs of a segmentation region; what no ROI covers there is "
                                "learnt as background"),
        scripts.Float("Image_Pixel_Size_um", grouping=f"{g + 5}", min=0.01,
                      description="Pixel size in µm for images that have none in OMERO (0.25 = 40x, 0.5 = 20x)"),
    ]


def _registry_models() -> list[str]:
    """Shared model packages (no owner) that training can start from ([] when unreadable)."""
    try:
        from dlcore.config import load_config
        from dlcore.models.ownership import read_owner
        from dlcore.train.registry_io import packages

        return [folder.name for root in load_config().model_roots for folder, rdf in packages(root)
                if "pytorch_state_dict" in (rdf.get("weights") or {}) and read_owner(folder) is None]
    except Exception as exc:  # the script must still parse with a broken registry
        log.warning("the model registry cannot be read: %s", exc)
        return []


def training_params(grouping: int) -> list:
    """The new model's name, the base model, freezing, epochs, folds and advanced settings."""
    from dlcore.train.spec import TrainSpec

    defaults = {f.name: f.default for f in dataclasses.fields(TrainSpec)}
    g = grouping
    return [
        scripts.String("Model_Name", optional=False, grouping=f"{g}",
                       description="Name of the new model (no spaces); a name you used before gets a new version; "
                                   "a name of a shared model or of another user's is refused"),
        scripts.String("Base_Model", grouping=f"{g + 1}", default=FROM_SCRATCH,
                       description="Start from this model, by name (transfer learning: a shared model or one of your "
                                   f"groups'), or {FROM_SCRATCH}. Shared models when this menu was read: "
                                   + (", ".join(_registry_models()) or "none")),
        scripts.Int("Freeze_Stages", grouping=f"{g + 2}", default=defaults["freeze_stages"], min=0,
                    description="With a base model: keep the weights of its first N encoder stages (0 = fine-tune all)"),
        scripts.Int("Epochs", grouping=f"{g + 3}", default=defaults["epochs"], min=1,
                    description="Most training epochs (training stops early when validation stops improving)"),
        scripts.Int("K_Folds", grouping=f"{g + 4}", default=defaults["k_folds"], min=1,
                    description="K > 1: K-fold cross-validation (by image) before the final training, reported "
                                "as mean ± sd"),
        scripts.String("Model_Description", grouping=f"{g + 5}",
                       description="One line for the model card: what the model does"),
        scripts.String("Training_Parameters", grouping=f"{g + 6}",
                       description="Advanced, as name=value separated by commas, e.g. 'patch_size=256, batch_size=4'. "
                                   f"Names: {', '.join(ADVANCED)}"),
    ]


def export_params(grouping: int) -> list:
    """The export's description, image format, archive metadata and destination."""
    g = grouping
    return [scripts.String("Description", grouping=f"{g}",
                           description="What the dataset is (staining, scanner, who annotated); goes into the "
                                       "archive's README.md and dataset.json"),
            scripts.String("Format", grouping=f"{g + 1}", default="OME-TIFF", values=[rstring(f) for f in FORMATS],
                           description="OME-TIFF files, or one OME-Zarr (NGFF) per image with its labels inside"),
            scripts.Long("Archive_Metadata", grouping=f"{g + 2}", min=0,
                         description="ID of a FileAnnotation holding the facility's archive YAML (study, biosample, "
                                     "specimen, acquisition, annotation; the template is archive.example.yaml in "
                                     "any export). Empty: the export says it is NOT submission-ready"),
            scripts.String("Destination", grouping=f"{g + 3}", default=ATTACH,
                           values=[rstring(d) for d in DESTINATIONS],
                           description="Attach the zip to the images' dataset, or (large sets) write the folder "
                                       "into the export folder your facility configured on the analysis node")]


# -- reading the inputs -----------------------------------------------------------------------
def _choice(inputs: dict, key: str, choices: dict, default: str) -> str:
    value = inputs.get(key) or default
    if value in choices.values():
        return value
    if value not in choices:
        raise ParameterError(f"{key}={value!r} must be one of {', '.join(choices)}")
    return choices[value]


def annotation_options(inputs: dict):
    """The :class:`~dlcore.omero.annotated.AnnotationOptions` of a script's inputs."""
    from dlcore.omero.annotated import AnnotationOptions

    classes = tuple(c.strip() for c in (inputs.get("Classes") or "").split(",") if c.strip()) or None
    return AnnotationOptions(
        task=_choice(inputs, "Task", TASK_CHOICES, "semantic segmentation"),
        class_source=_choice(inputs, "Class_Source", CLASS_SOURCES, "ROI name"),
        classes=classes, level=int(inputs.get("Resolution_Level") or 0),
        margin=int(16 if inputs.get("Region_Margin") is None else inputs["Region_Margin"]))


def spec_overrides(text: str | None) -> dict:
    """``Training_Parameters`` as :class:`~dlcore.train.spec.TrainSpec` keyword arguments."""
    from dlcore.train.augment import AugmentSpec

    values = parse_parameters(text, input_name="Training_Parameters")
    unknown = sorted(set(values) - set(ADVANCED))
    if unknown:
        raise ParameterError(f"Training_Parameters: {', '.join(unknown)} unknown; use {', '.join(ADVANCED)}")
    if "augment" in values:
        if str(values["augment"]).lower() not in ("none", "false", "off"):
            raise ParameterError("Training_Parameters: augment=none switches augmentation off; nothing else is accepted")
        values["augment"] = AugmentSpec.none()
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


# -- where results go ------------------------------------------------------------------------
def report_datasets(images) -> list:
    """The images' datasets the user may annotate; raise :class:`OmeroError` when there is none."""
    found: dict[int, object] = {}
    refused = []
    for image in images:
        for parent in image.listParents():
            if parent.OMERO_CLASS != "Dataset":
                continue
            (found.setdefault(int(parent.getId()), parent) if parent.canAnnotate() else refused.append(parent))
    if not found:
        why = (f"you may not annotate Dataset {', '.join(str(int(p.getId())) for p in refused)}" if refused
               else "the images are in no dataset")
        raise OmeroError(f"{why}, so the results cannot be attached; put the images into a dataset of your own "
                         "(or one you may annotate) and select that. Nothing was written")
    return list(found.values())


def attach_files(conn, files: list[tuple[Path, str, str]], datasets: list, ns: str) -> dict[str, int]:
    """Upload ``(path, mimetype, description)`` files and link each to every dataset; all or nothing.

    One FileAnnotation per file and group (a link cannot cross groups).  Returns ``{file name:
    annotation id}`` for the first group's annotations.
    """
    from omero.model import DatasetAnnotationLinkI, DatasetI, FileAnnotationI

    from dlcore.omero.sink import in_group

    by_group: dict[int, list[int]] = {}
    for dataset in datasets:
        by_group.setdefault(int(dataset.getDetails().getGroup().getId()), []).append(int(dataset.getId()))
    created: list[tuple[int, int]] = []
    first: dict[str, int] = {}
    try:
        for group, dataset_ids in by_group.items():
            links = []
            with in_group(conn, group):
                for path, mimetype, description in files:
                    fa = conn.createFileAnnfromLocalFile(str(path), mimetype=mimetype, ns=ns, desc=description)
                    created.append((group, int(fa.getId())))
                    first.setdefault(Path(path).name, int(fa.getId()))
                    for did in dataset_ids:
                        link = DatasetAnnotationLinkI()
                        link.setParent(DatasetI(did, False))
                        link.setChild(FileAnnotationI(int(fa.getId()), False))
                        links.append(link)
            conn.getUpdateService().saveAndReturnArray(links, {"omero.group": str(group)})
    except Exception as exc:
        for group, ann_id in reversed(created):
            try:
                delete_objects(conn, {"Annotation": [ann_id]}, context={"omero.group": str(group)})
            except Exception as cleanup:  # say what is left; the original error is the one to report
                log.error("could not delete FileAnnotation:%s after a failed upload: %s", ann_id, cleanup)
        raise OmeroError(f"attaching {', '.join(Path(p).name for p, _, _ in files)} failed: "
                         f"{getattr(exc, 'message', '') or exc}") from exc
    return first


def _zip(folder: Path, out: Path) -> Path:
    return Path(shutil.make_archive(str(out), "zip", root_dir=folder))


def _scratch(config) -> Path:
    base = getattr(config, "work_dir", None)
    return Path(tempfile.mkdtemp(prefix="dlcore-train-", dir=str(base) if base else None))


# -- the workflows ---------------------------------------------------------------------------
def _dataset(conn, data_type, ids, options, mpp, progress):
    from dlcore.omero.annotated import dataset_from_images
    from dlcore.omero.workflows import resolve_images

    images = resolve_images(conn, data_type, ids)
    datasets = report_datasets(images)  # checked before any pixels are read
    dataset, images, notes = dataset_from_images(conn, images, options, mpp=mpp, progress=progress)
    return dataset, images, datasets, notes


def archive_from_annotation(conn, annotation_id: int | None):
    """The facility's :class:`~dlcore.train.archive_metadata.ArchiveMetadata` from a YAML FileAnnotation
    (None: no metadata given).  Raises :class:`ParameterError` for a missing, non-YAML or too large file
    and for its content (unknown keys, wrong values), naming the annotation."""
    from dlcore.errors import InputError
    from dlcore.train.archive_metadata import load_archive_metadata

    if not annotation_id:
        return None
    what = f"Archive_Metadata=FileAnnotation:{int(annotation_id)}"
    wrapper = conn.getObject("FileAnnotation", int(annotation_id))
    if wrapper is None:
        raise ParameterError(f"{what}: not found, or not visible to you in your current group; attach the "
                             "facility's archive YAML to a dataset or project and give its ID")
    name = str(wrapper.getFileName() or "")
    if not name.lower().endswith(YAML_SUFFIXES):
        raise ParameterError(f"{what} is {name!r}, not a YAML file (.yaml or .yml); give the ID of the archive "
                             "YAML (start from archive.example.yaml of any export)")
    size = int(wrapper.getFileSize() or 0)
    if size > MAX_YAML_BYTES:
        raise ParameterError(f"{what} ({name}) is {size} bytes; an archive YAML is a few kB: is it the right file?")
    data = b"".join(wrapper.getFileInChunks())
    label = f"{what} ({name})"
    folder = Path(tempfile.mkdtemp(prefix="dlcore-archive-yaml-"))
    try:
        path = folder / "archive.yaml"
        path.write_bytes(data)
        try:
            meta = load_archive_metadata(path)
        except (InputError, ParameterError) as exc:
            raise ParameterError(str(exc).replace(str(path), label)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dataclasses.replace(meta, source=f"OMERO FileAnnotation:{int(annotation_id)} {name}")


def _iso(ms) -> str | None:
    import datetime

    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(int(ms) / 1000, datetime.timezone.utc).isoformat(timespec="seconds")


def _rv(value):
    return value.getValue() if hasattr(value, "getValue") else value


def annotation_provenance(conn, images, options) -> dict[str, dict]:
    """Who annotated each image, when and how, keyed ``Image:<id>`` (the samples' group), for
    :func:`dlcore.train.data.export_dataset`'s ``annotation_provenance``.

    Per image: the ROIs used (those dlcore wrote as results, description ``dlcore:``, are left out as the
    dataset leaves them out) with their owner and creation time (the ROI's details: owner, creation
    event); ROIs of Labels From Marker (description ``dlcore-marker-labels:<run id>``) are automatic, their
    provenance the image's ``dlcore/marker-labels`` key-values of that run (method, marker, threshold,
    parameters, dlcore version, created, run id); the image's tags and its key-values of non-dlcore
    namespaces are the sample's attributes.
    """
    from dlcore.omero.annotated import DLCORE_ROI_PREFIX, Q_IMAGE_MAPS, READ_CONTEXT, _params, image_tags
    from dlcore.omero.annotations import NS_PREFIX, namespace
    from dlcore.omero.marker_labels import ROI_PREFIX, RUN_KEY
    from dlcore.train.archive_metadata import summarise_rois

    query = conn.getQueryService()
    out = {}
    for image in images:
        iid = int(image.getId())
        runs: dict[str, dict] = {}
        key_values: dict[str, dict] = {}
        for link in query.findAllByQuery(Q_IMAGE_MAPS, _params(iid=iid), READ_CONTEXT):
            child = link.getChild()
            ns = str(_rv(child.getNs()) or "")
            pairs = {nv.name: nv.value for nv in (child.getMapValue() or [])}
            if ns == namespace(RUN_KEY) and pairs.get("run id"):
                runs.setdefault(pairs["run id"], pairs)
            elif not ns.startswith(NS_PREFIX):
                key_values.setdefault(ns or "(no namespace)", {}).update(pairs)
        rois, automatic = [], {}
        for rid, desc, login, first, last, ms in query.projection(Q_ROI_AUTHORS, _params(iid=iid), READ_CONTEXT):
            desc = str(_rv(desc) or "")
            if desc.startswith(DLCORE_ROI_PREFIX) and not options.include_dlcore_rois:
                continue
            full = " ".join(str(_rv(n)) for n in (first, last) if _rv(n))
            who = f"{_rv(login)} ({full})" if full else str(_rv(login))
            record = {"id": int(_rv(rid)), "owner": who, "created": _iso(_rv(ms)), "automatic": False}
            if desc.startswith(ROI_PREFIX):
                run_id = desc[len(ROI_PREFIX):]
                pairs = runs.get(run_id, {})
                record.update(automatic=True, run_id=run_id)
                automatic.setdefault(run_id, {
                    "software": "dlcore Labels From Marker", "version": pairs.get("dlcore version"),
                    "method": pairs.get("method"), "marker": pairs.get("marker"),
                    "threshold": pairs.get("threshold"), "run_id": run_id, "created": pairs.get("created"),
                    "parameters": pairs.get("parameters"), "launched_by": who,
                    **({} if pairs else {"note": "its dlcore/marker-labels key-value pairs are gone"})})
            rois.append(record)
        out[f"Image:{iid}"] = {
            "image": f"Image:{iid} {image.getName()}", **summarise_rois(rois),
            "automatic": [{k: v for k, v in a.items() if v is not None} for a in automatic.values()],
            "attributes": {"tags": image_tags(conn, iid), "key_values": key_values}}
    return out


def export_destination(inputs_value: str | None, config) -> Path | None:
    """None to attach a zip; the node's ``export_dir`` for the export folder (checked: configured, a
    writable folder), else :class:`ParameterError`."""
    import os

    choice = _choice({"Destination": inputs_value}, "Destination", DESTINATIONS, ATTACH)
    if choice == "attach":
        return None
    folder = getattr(config, "export_dir", None)
    if not folder:
        raise ParameterError(f"Destination={FOLDER!r}: no export folder is configured on this node; ask the "
                             "administrator to set export_dir in /etc/dlcore/dlcore.toml, or attach the zip instead")
    folder = Path(folder)
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ParameterError(f"Destination={FOLDER!r}: the export folder {folder} (export_dir of "
                             f"{getattr(config, 'source', None) or 'the configuration'}) is not a writable folder; "
                             "ask the administrator to create it, or attach the zip instead")
    return folder


def _provenance(images, options, notes) -> str:
    where = ", ".join(f"Image:{int(i.getId())} {i.getName()}" for i in images[:20])
    more = f" and {len(images) - 20} more" if len(images) > 20 else ""
    text = (f"OMERO images {where}{more}; annotations: ROIs ({options.class_source.replace('_', ' ')} = class), "
            f"read at resolution level {options.level} with a {options.margin}-pixel margin")
    return text + (f"; {'; '.join(notes)}" if notes else "")


def train_on_objects(conn, data_type: str, ids, *, options, name: str, base_model: str | None = None,
                     spec_kwargs: dict | None = None, description: str = "", mpp: float | None = None,
                     config=None, progress=None) -> dict:
    """Train a model on the annotated OMERO images and attach its report to their datasets.

    Parameters
    ----------
    conn
        A connected BlitzGateway.
    data_type, ids
        The selection (``"Image"``, ``"Dataset"`` or ``"Project"`` ids).
    options
        :class:`~dlcore.omero.annotated.AnnotationOptions` (task, class source, classes, level, margin).
    name, base_model
        The new model's name; the registered model to start from (None: from scratch).
    spec_kwargs
        Further :class:`~dlcore.train.spec.TrainSpec` fields (epochs, k_folds, freeze_stages, ...).
    description
        One line for the model card.
    mpp
        Full-resolution pixel size in µm for images that have none.
    config
        dlcore's configuration (default :func:`~dlcore.config.load_config`); the model goes into
        ``trained_models_dir`` (shared by every node), owned by the caller and the group of the first
        object (:mod:`dlcore.models.ownership`).  A name of a shared model or of another user's model is
        refused before any training; ``base_model`` must be one the caller may use.
    progress
        ``(stage, done, total)`` callback.

    Returns
    -------
    dict with ``result`` (:class:`~dlcore.train.spec.TrainResult`), ``attached`` (file name ->
    FileAnnotation id), ``datasets`` (ids), ``samples``, ``images`` and ``notes``.
    """
    from dlcore.config import load_config
    from dlcore.models.ownership import check_add_version
    from dlcore.models.registry import list_models
    from dlcore.omero.model_access import caller_of, owner_for_training, usable_model
    from dlcore.train.api import train_model
    from dlcore.train.spec import TrainSpec

    config = config or load_config()
    spec_kwargs = dict(spec_kwargs or {})
    spec = TrainSpec(task=options.task, name=name, description=description, **spec_kwargs)  # checked first
    if spec.freeze_stages and not base_model:
        raise ParameterError(f"Freeze_Stages={spec.freeze_stages} needs a base model to start from; choose a "
                             "Base_Model, or set Freeze_Stages to 0 to train from scratch")
    versions = [r for r in list_models(config) if r.name == name or re.fullmatch(rf"{re.escape(name)}-v\d+", r.name)]
    check_add_version(name, versions, caller_of(conn))
    base_path = str(usable_model(conn, base_model, config).path) if base_model else None
    dataset, images, datasets, notes = _dataset(conn, data_type, ids, options, mpp, progress)
    owner = owner_for_training(conn, data_type, ids)
    spec = dataclasses.replace(spec, training_data=_provenance(images, options, notes), reproduce=(
        f"OMERO Deep Learning > Train Model: Data_Type={data_type}, IDs={','.join(map(str, ids))}, task={options.task}, "
        f"class source={options.class_source}, classes={','.join(dataset.classes)}, level={options.level}, "
        f"margin={options.margin}, base model={base_model or 'none'}, {spec_kwargs}"))
    result = train_model(dataset, spec=spec, out_registry=config.trained_dir, base_model=base_path,
                         progress=progress, owner=owner)
    version = result.metrics["version"]
    scratch = _scratch(config)
    try:
        bundle = scratch / "bundle"
        shutil.copytree(result.report_path.parent, bundle / "report")
        shutil.copy2(result.package_path / "README.md", bundle / "README.md")
        report_zip = _zip(bundle, scratch / f"{name}-{version}-qc-report")
        card = scratch / f"{name}-{version}-model-card.md"
        shutil.copy2(result.package_path / "README.md", card)
        attached = attach_files(conn, [
            (report_zip, "application/zip", f"QC report of model {name} {version}: learning curves, held-out test "
                                            "metrics, confusion matrix, overlays (report.html inside)"),
            (card, "text/markdown", f"model card of {name} {version}: training data, metrics, limits"),
        ], datasets, NS_TRAINING)
    except DlcoreError:
        shutil.rmtree(result.package_path, ignore_errors=True)  # the message says nothing was written: make it true
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"result": result, "attached": attached, "datasets": [int(d.getId()) for d in datasets],
            "samples": len(dataset.samples), "images": len(images), "classes": dataset.classes, "notes": notes}


def export_objects(conn, data_type: str, ids, *, options, description: str = "", mpp: float | None = None,
                   config=None, progress=None, image_format: str = "ome-tiff", archive_annotation: int | None = None,
                   destination: str | None = None) -> dict:
    """Export the annotated OMERO images as an archive: a zip attached to their datasets, or a folder.

    Parameters are those of :func:`train_on_objects`, and ``image_format`` (``"ome-tiff"`` or
    ``"ome-zarr"``), ``archive_annotation`` (ID of the FileAnnotation holding the facility's archive YAML;
    None: none, the export says it is not submission-ready) and ``destination`` (``"attach"``, the
    default, or ``"folder"``: a new folder in the configured ``export_dir``, nothing attached).  Every
    input, the YAML included, is checked before any pixels are read.  Returns a dict with ``annotation``
    (the FileAnnotation id, None for a folder), ``file`` (the zip's name), ``folder`` (the folder written,
    or None), ``datasets``, ``samples``, ``images``, ``notes`` and ``readiness`` (``submission_ready``,
    ``missing``).
    """
    from datetime import datetime, timezone
    from uuid import uuid4

    from dlcore.config import load_config
    from dlcore.omero.annotated import dataset_from_images
    from dlcore.omero.workflows import resolve_images
    from dlcore.train.archive_metadata import readiness
    from dlcore.train.data import EXPORT_FORMATS, export_dataset

    config = config or load_config()
    image_format = _choice({"Format": image_format}, "Format", FORMATS, "OME-TIFF")
    if image_format not in EXPORT_FORMATS:
        raise ParameterError(f"Format={image_format!r} must be one of {', '.join(FORMATS)}")
    export_dir = export_destination(destination, config)
    archive = archive_from_annotation(conn, archive_annotation)
    images = resolve_images(conn, data_type, ids)
    datasets = report_datasets(images) if export_dir is None else []  # checked before any pixels are read
    dataset, images, notes = dataset_from_images(conn, images, options, mpp=mpp, progress=progress)
    provenance = annotation_provenance(conn, images, options)
    parents = datasets or [p for i in images[:1] for p in i.listParents() if p.OMERO_CLASS == "Dataset"][:1]
    stem = ("".join(c if c.isalnum() or c in "-_" else "_" for c in (parents[0].getName() if parents else ""))[:60]
            or "images")
    text = description or _provenance(images, options, notes)
    what = (f"annotated {dataset.task} dataset ({len(dataset.samples)} samples, classes {', '.join(dataset.classes)}): "
            f"{'OME-Zarr' if image_format == 'ome-zarr' else 'OME-TIFF'} images and labels, dataset.json, "
            "mifa.json, rembi.json, file_list.tsv")
    folder = archive_file = attached = None
    if export_dir is not None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        final = export_dir / f"{stem}-{dataset.task}-annotated-{stamp}-{uuid4().hex[:6]}"
        partial = export_dir / f".{final.name}.partial"
        try:
            export_dataset(dataset, partial, description=text, progress=progress, archive=archive,
                           image_format=image_format, annotation_provenance=provenance)
            partial.rename(final)  # nothing half-written appears under the final name
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        folder, verdict = final, readiness(final)
    else:
        scratch = _scratch(config)
        try:
            out = export_dataset(dataset, scratch / "export", description=text, progress=progress, archive=archive,
                                 image_format=image_format, annotation_provenance=provenance)
            verdict = readiness(out)
            archive_file = _zip(out, scratch / f"{stem}-{dataset.task}-annotated")
            attached = attach_files(conn, [(archive_file, "application/zip", what)], datasets, NS_EXPORT)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return {"annotation": next(iter(attached.values())) if attached else None,
            "file": archive_file.name if archive_file else None, "folder": folder,
            "datasets": [int(d.getId()) for d in datasets], "samples": len(dataset.samples), "images": len(images),
            "classes": dataset.classes, "notes": notes, "readiness": verdict, "format": image_format}


# -- the script bodies -----------------------------------------------------------------------
def _targets(inputs: dict) -> tuple[str, list]:
    return inputs.get("Data_Type", "Image"), list(inputs.get("IDs") or [])


def _where(out: dict) -> str:
    return f"Dataset {', '.join(map(str, out['datasets']))}"


def train_script(script_client, *, conn=None, config=None) -> str:
    """The body of Train_Model: train, attach the report, set ``Message`` (name, version, held-out metrics)."""

    def work(conn, inputs) -> str:
        from omero.model import FileAnnotationI
        from omero.rtypes import robject

        from dlcore.progress import LineProgress
        from dlcore.train.evaluate import headline

        options = annotation_options(inputs)
        base = inputs.get("Base_Model")
        base = None if base in (None, "", FROM_SCRATCH) else base
        name = (inputs.get("Model_Name") or "").strip()
        if not name:
            raise ParameterError("Model_Name is empty; give the new model a name without spaces, e.g. 'tumour-stroma'")
        kwargs = {**spec_overrides(inputs.get("Training_Parameters")),
                  "epochs": int(inputs.get("Epochs") or 30), "k_folds": int(inputs.get("K_Folds") or 1),
                  "freeze_stages": int(inputs.get("Freeze_Stages") or 0)}
        data_type, ids = _targets(inputs)
        out = train_on_objects(conn, data_type, ids, options=options, name=name, base_model=base, spec_kwargs=kwargs,
                               description=inputs.get("Model_Description") or "",
                               mpp=inputs.get("Image_Pixel_Size_um"), config=config, progress=LineProgress())
        result = out["result"]
        metrics = result.metrics
        test = headline(metrics["test"], options.task) if metrics["test"] else {}
        figures = ", ".join(f"{k} {v:.3f}" for k, v in test.items() if isinstance(v, float)) or \
            "none (no images were held out for testing)"
        report_id = next(iter(out["attached"].values()))
        script_client.setOutput("Report", robject(FileAnnotationI(report_id, False)))
        lines = [f"✓ Trained {result.package_path.name} version {metrics['version']} ({options.task}, classes "
                 f"{', '.join(out['classes'])}) on {out['samples']} regions of {out['images']} images.",
                 f"  held-out test: {figures}; split {metrics['split']}",
                 f"  QC report and model card attached to {_where(out)} (FileAnnotation "
                 f"{', '.join(map(str, out['attached'].values()))})",
                 f"  the model is installed: Run Model lists it as {result.package_path.name}"]
        if metrics.get("kfold"):
            lines.insert(2, "  cross-validation: " + ", ".join(
                f"{k} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in metrics["kfold"]["summary"].items()))
        return "\n".join(lines + [f"  note: {n}" for n in out["notes"]])

    return script_body(script_client, work, conn=conn)


def export_script(script_client, *, conn=None, config=None) -> str:
    """The body of Export_Annotated_Dataset: export, attach the zip (or write the export folder), set
    ``Message`` (with the archive verdict) and, for a zip, ``File_Annotation``."""

    def work(conn, inputs) -> str:
        from omero.model import FileAnnotationI
        from omero.rtypes import robject

        from dlcore.progress import LineProgress

        data_type, ids = _targets(inputs)
        out = export_objects(conn, data_type, ids, options=annotation_options(inputs),
                             description=inputs.get("Description") or "", mpp=inputs.get("Image_Pixel_Size_um"),
                             config=config, progress=LineProgress(), image_format=inputs.get("Format") or "OME-TIFF",
                             archive_annotation=inputs.get("Archive_Metadata") or None,
                             destination=inputs.get("Destination") or ATTACH)
        head = (f"✓ Exported {out['samples']} samples of {out['images']} images (classes "
                f"{', '.join(out['classes'])}) as {'OME-Zarr' if out['format'] == 'ome-zarr' else 'OME-TIFF'}")
        if out["folder"] is not None:
            head += f" into the export folder {out['folder']} (nothing attached in OMERO)"
        else:
            script_client.setOutput("File_Annotation", robject(FileAnnotationI(out["annotation"], False)))
            head += f", {out['file']}, attached to {_where(out)} (FileAnnotation {out['annotation']})"
        verdict = out["readiness"]
        ready = ("  BioImage Archive: submission-ready (mifa.json, rembi.json, file_list.tsv)"
                 if verdict["submission_ready"] else
                 f"  BioImage Archive: NOT submission-ready, {len(verdict['missing'])} required field(s) missing "
                 f"({', '.join(verdict['missing'][:6])}{', ...' if len(verdict['missing']) > 6 else ''}); fill "
                 "archive.example.yaml of the export, attach it and give its ID as Archive_Metadata")
        return "\n".join([head, ready] + [f"  note: {n}" for n in out["notes"]])

    return script_body(script_client, work, conn=conn)


__all__ = ["annotation_params", "training_params", "export_params", "train_on_objects", "export_objects",
           "train_script", "export_script", "attach_files", "report_datasets", "archive_from_annotation",
           "annotation_provenance", "export_destination"]
