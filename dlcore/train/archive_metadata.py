"""Archive metadata for an exported dataset: MIFA (annotations), REMBI (images) and the BioImage Archive file list.

:func:`dlcore.train.data.export_dataset` calls :func:`write_archive_metadata`, which writes beside the
images and labels::

    mifa.json             the dataset and its annotations, field names of the BioImage Archive's
                          "MIFA model reference" (MifaContainer, Author, OrganisationInfo,
                          GrantReference, Publications, Annotations, FileLevelMetadata)
    rembi.json            biosample, specimen, image acquisition (REMBI) and the image data dlcore knows
    file_list.tsv         the archive's File List: first column ``Files``, one row per file, attributes
    archive.example.yaml  (only while something is missing) the YAML a facility fills

What the facility knows (title, licence, authors, organism, staining, scanner, how it annotated) comes
from a small YAML it keeps (``dlcore export-dataset --metadata archive.yaml``; :func:`load_archive_metadata`);
what dlcore knows itself (task, classes, counts, pixel sizes, channels, files, and the provenance of
automatic labels in ``labels_provenance.json`` of the source folder) is filled in.  :meth:`ArchiveMetadata.validate`
lists every required field still missing, with the YAML key to fill; the export is ``submission_ready``
only when nothing is missing, and says so in the terminal, the README and both JSON files.

References followed
-------------------
- MIFA: Zulueta-Coarasa T. et al., "MIFA: Metadata, Incentives, Formats and Accessibility guidelines to
  improve the reuse of AI datasets for bioimage analysis", Nat. Methods (2025), doi:10.1038/s41592-025-02835-8,
  and the BioImage Archive's "MIFA model reference" (https://www.ebi.ac.uk/bioimage-archive/mifa-model-reference):
  required ``title``, ``description``, ``license`` (CC0 | CC_BY), ``funding_statement``, ``annotations``
  (each with ``annotation_overview`` and ``annotation_method``); optional ``keywords``, ``authors``,
  ``grants``, ``publications``, ``acknowledgements``, ``ai_models_trained``, ``annotation_type`` (the
  enumeration class_labels, bounding_boxes, counts, derived_annotations, geometrical_annotations, graphs,
  point_annotations, segmentation_mask, tracks, weak_annotations, other), ``annotation_criteria``,
  ``annotation_coverage``, ``annotation_confidence_level``, ``file_metadata``.
- REMBI: Sarkans U. et al., "REMBI: Recommended Metadata for Biological Images", Nat. Methods 18,
  1418-1422 (2021), doi:10.1038/s41592-021-01166-8, with the field names of the BioImage Archive's
  REMBI models: Biosample (``organism_classification`` with ``scientific_name``/``common_name``/``ncbi_id``,
  ``biological_entity_description``, intrinsic/extrinsic/experimental variable descriptions), Specimen
  (``protocol_description``, ``signal_channel_information``), Image acquisition (``protocol_description``,
  ``imaging_instrument_description``, ``imaging_method_name``, ``fbbi_id``).
- File list: the BioImage Archive "File List Guide" (https://www.ebi.ac.uk/bioimage-archive/help-file-list):
  tab-separated, header's first cell ``Files``, one file per line, ``/`` separators, an annotation's
  ``source_image`` column; an OME-Zarr folder is one entry.

dlcore's own additions (kept apart, or named so): ``annotation.method_type`` (manual | automatic |
semi_automatic), ``software``/``software_version``/``parameters``/``created`` (the provenance that MIFA
asks ``annotation_method`` to describe in words), ``image_acquisition.objective_magnification``, and
``ai_models_trained`` given as name + version + url.  Also required here (the archive's submission form
asks for them): at least one author with an organisation.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import difflib
import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlcore.errors import InputError, ParameterError

MIFA_FILE = "mifa.json"
REMBI_FILE = "rembi.json"
FILE_LIST = "file_list.tsv"
TEMPLATE_FILE = "archive.example.yaml"
PROVENANCE_FILE = "labels_provenance.json"  # dlcore.marker.labels.PROVENANCE_FILE (not imported: keeps this light)
LICENSES = ("CC0", "CC_BY")
ANNOTATION_TYPES = ("class_labels", "bounding_boxes", "counts", "derived_annotations", "geometrical_annotations",
                    "graphs", "point_annotations", "segmentation_mask", "tracks", "weak_annotations", "other")
METHOD_TYPES = ("manual", "automatic", "semi_automatic")
_ORCID = re.compile(r"^(https://orcid\.org/)?\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
_EMAIL = re.compile(r"^\S+@\S+\.\S+$")


# -- the facility's metadata -----------------------------------------------------------------------
@dataclass(frozen=True)
class Organisation:
    """An author's affiliation (MIFA OrganisationInfo)."""

    organisation_name: str | None = None
    address: str | None = None
    ror_id: str | None = None


@dataclass(frozen=True)
class Author:
    """An author of the dataset or of its annotations (MIFA Author)."""

    author_first_name: str | None = None
    author_last_name: str | None = None
    email: str | None = None
    orcid_id: str | None = None
    role: tuple[str, ...] = ()
    organisation: tuple[Organisation, ...] = ()


@dataclass(frozen=True)
class Grant:
    """A grant that funded the study (MIFA GrantReference)."""

    grant_id: str | None = None
    funder: str | None = None


@dataclass(frozen=True)
class Publication:
    """A publication about the dataset (MIFA Publications)."""

    publication_title: str | None = None
    publication_authors: str | None = None
    publication_doi: str | None = None
    publication_year: str | None = None
    pubmed_id: str | None = None


@dataclass(frozen=True)
class TrainedModel:
    """A model trained on this dataset (MIFA ``ai_models_trained``, given as name, version and link)."""

    name: str | None = None
    version: str | None = None
    url: str | None = None

    def text(self) -> str:
        """The reference's one string: the link, else name and version."""
        return self.url or " ".join(p for p in (self.name, self.version and f"v{self.version}") if p)


@dataclass(frozen=True)
class Study:
    """Dataset-level fields of the MIFA model (MifaContainer without the annotations)."""

    title: str | None = None
    description: str | None = None
    license: str | None = None
    keywords: tuple[str, ...] = ()
    funding_statement: str | None = None
    acknowledgements: str | None = None
    authors: tuple[Author, ...] = ()
    grants: tuple[Grant, ...] = ()
    publications: tuple[Publication, ...] = ()
    link_url: tuple[str, ...] = ()
    link_description: tuple[str, ...] = ()
    ai_models_trained: tuple[TrainedModel, ...] = ()


@dataclass(frozen=True)
class Organism:
    """REMBI organism classification."""

    scientific_name: str | None = None
    common_name: str | None = None
    ncbi_id: str | None = None


@dataclass(frozen=True)
class Biosample:
    """REMBI Biosample: what the specimen came from."""

    title: str | None = None
    organism_classification: tuple[Organism, ...] = ()
    biological_entity_description: str | None = None
    intrinsic_variable_description: str | None = None
    extrinsic_variable_description: str | None = None
    experimental_variable_description: str | None = None


@dataclass(frozen=True)
class SignalChannel:
    """REMBI signal/channel information: what a stain or channel shows."""

    channel_label: str | None = None
    channel_content_description: str | None = None
    channel_biological_entity: str | None = None


@dataclass(frozen=True)
class Specimen:
    """REMBI Specimen: how the sample was prepared and stained for imaging."""

    title: str | None = None
    protocol_description: str | None = None
    signal_channel_information: tuple[SignalChannel, ...] = ()


@dataclass(frozen=True)
class ImageAcquisition:
    """REMBI Image acquisition: instrument, method and parameters (pixel size comes from the images)."""

    title: str | None = None
    protocol_description: str | None = None
    imaging_instrument_description: str | None = None
    imaging_method_name: tuple[str, ...] = ()
    fbbi_id: tuple[str, ...] = ()
    objective_magnification: float | None = None


@dataclass(frozen=True)
class Annotation:
    """MIFA Annotations, plus dlcore's structured provenance (who, when, with what, how)."""

    annotation_overview: str | None = None
    annotation_type: tuple[str, ...] = ()
    annotation_method: str | None = None
    method_type: str | None = None
    annotation_criteria: str | None = None
    annotation_coverage: str | None = None
    annotation_confidence_level: str | None = None
    authors: tuple[Author, ...] = ()
    software: str | None = None
    software_version: str | None = None
    parameters: dict | None = None
    created: str | None = None


@dataclass(frozen=True)
class DatasetFacts:
    """What dlcore knows about the exported dataset itself."""

    task: str
    classes: tuple[str, ...]
    samples: int
    annotated: int
    mpps: tuple[float | None, ...]
    channels: tuple[int, ...]
    axes: tuple[str, ...]
    objects: int | None = None
    label_provenance: dict | None = None
    stains: tuple[str | None, ...] = ()
    magnifications: tuple[float | None, ...] = ()
    image_format: str = "OME-TIFF"


@dataclass(frozen=True)
class Missing:
    """A required field without a value: the YAML key to fill (or the option to give) and what it is."""

    key: str
    what: str

    def __str__(self) -> str:
        return f"{self.key} ({self.what})"


@dataclass(frozen=True)
class ArchiveMetadata:
    """The facility's metadata (from its YAML) and, once :func:`complete` has run, dlcore's own facts."""

    study: Study = Study()
    biosample: Biosample = Biosample()
    specimen: Specimen = Specimen()
    image_acquisition: ImageAcquisition = ImageAcquisition()
    annotation: Annotation = Annotation()
    source: str | None = None
    label_provenance: dict | None = None
    facts: DatasetFacts | None = None

    def validate(self) -> tuple[Missing, ...]:
        """Every required MIFA/REMBI field still missing, with the YAML key to fill; () when complete."""
        s, b, sp, ia, a = self.study, self.biosample, self.specimen, self.image_acquisition, self.annotation
        missing = []

        def need(value, key, what):
            if value in (None, "", ()) or (isinstance(value, str) and not value.strip()):
                missing.append(Missing(key, what))

        need(s.title, "study.title", "MIFA title of the dataset")
        need(s.description, "study.description", "MIFA description, with the biological application")
        need(s.license, "study.license", f"MIFA licence, one of {', '.join(LICENSES)}")
        need(s.funding_statement, "study.funding_statement", "MIFA funding statement")
        need(s.authors, "study.authors", "at least one author with an organisation")
        for i, author in enumerate(s.authors):
            need(author.author_first_name, f"study.authors[{i}].author_first_name", "MIFA author first name")
            need(author.author_last_name, f"study.authors[{i}].author_last_name", "MIFA author last name")
            need(author.organisation, f"study.authors[{i}].organisation", "the author's affiliation")
            for j, org in enumerate(author.organisation):
                need(org.organisation_name, f"study.authors[{i}].organisation[{j}].organisation_name",
                     "MIFA organisation name")
        for i, grant in enumerate(s.grants):
            need(grant.grant_id, f"study.grants[{i}].grant_id", "MIFA grant id")
            need(grant.funder, f"study.grants[{i}].funder", "MIFA funder")
        for i, pub in enumerate(s.publications):
            for name in ("publication_title", "publication_authors", "publication_doi"):
                need(getattr(pub, name), f"study.publications[{i}].{name}", "MIFA publication field")
        need(b.organism_classification, "biosample.organism_classification",
             "REMBI organism: scientific_name (and ncbi_id)")
        for i, org in enumerate(b.organism_classification):
            need(org.scientific_name, f"biosample.organism_classification[{i}].scientific_name",
                 "REMBI organism scientific name")
        need(b.biological_entity_description, "biosample.biological_entity_description",
             "REMBI biological entity, e.g. tissue")
        need(sp.protocol_description, "specimen.protocol_description",
             "REMBI sample preparation and staining protocol")
        need(ia.imaging_instrument_description, "image_acquisition.imaging_instrument_description",
             "REMBI imaging instrument, e.g. the slide scanner")
        need(ia.imaging_method_name, "image_acquisition.imaging_method_name",
             "REMBI imaging method, e.g. bright-field microscopy")
        need(ia.protocol_description, "image_acquisition.protocol_description",
             "REMBI image acquisition parameters, e.g. objective, magnification")
        need(a.annotation_overview, "annotation.annotation_overview", "MIFA annotation overview")
        need(a.annotation_method, "annotation.annotation_method",
             "MIFA annotation method: who annotated, by hand or with which software, when")
        need(a.annotation_type, "annotation.annotation_type", f"MIFA annotation type, from {', '.join(ANNOTATION_TYPES)}")
        if self.facts is not None and any(m is None for m in self.facts.mpps):
            unknown = sum(m is None for m in self.facts.mpps)
            missing.append(Missing("--mpp", f"REMBI pixel size: {unknown} of {len(self.facts.mpps)} images have "
                                            "none; export again with --mpp µm/pixel"))
        return tuple(missing)


# -- loading the YAML ------------------------------------------------------------------------------
_SECTIONS = {"study": Study, "biosample": Biosample, "specimen": Specimen, "image_acquisition": ImageAcquisition,
             "annotation": Annotation}


def load_archive_metadata(path: str | Path | None = None, *, source: str | Path | None = None) -> ArchiveMetadata:
    """The facility's metadata from ``path`` (YAML; None: nothing given yet), plus the provenance of
    automatic labels found in the dataset's ``source`` folder (``labels_provenance.json``).

    Raises :class:`~dlcore.errors.ParameterError` naming the key for an unknown key or a value of the
    wrong type, and :class:`~dlcore.errors.InputError` for a missing or unreadable file.
    """
    data: dict = {}
    where = None
    if path is not None:
        import yaml

        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise InputError(f"metadata file {path} does not exist; `dlcore export-dataset` writes a template, "
                             f"{TEMPLATE_FILE}, into every export that is not submission-ready")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"metadata file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ParameterError(f"{path}: the top level must be a mapping with keys {', '.join(_SECTIONS)}; "
                                 f"got {type(data).__name__}")
    sections = {}
    for key, value in data.items():
        if key not in _SECTIONS:
            raise ParameterError(_unknown(where, str(key), key, _SECTIONS))
        sections[key] = _convert(_SECTIONS[key], value, key, where)
    meta = ArchiveMetadata(**sections, source=where)
    _check_values(meta)
    provenance = read_label_provenance(source) if source is not None else None
    if provenance:
        meta = dataclasses.replace(meta, annotation=_with_provenance(meta.annotation, provenance),
                                   label_provenance=provenance)
    return meta


def _unknown(where, dotted, key, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"{where or 'archive metadata'}: unknown key {dotted!r}{hint} "
            f"(known here: {', '.join(known)})")


def _convert(kind, value, key: str, where):
    """``value`` from YAML as ``kind`` (a dataclass, str, float, dict or tuple of these), naming ``key`` on error."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ParameterError(f"{where or 'archive metadata'}: {key} must be a mapping of "
                                 f"{', '.join(f.name for f in dataclasses.fields(kind))}; got {value!r}")
        hints = typing.get_type_hints(kind)
        known = [f.name for f in dataclasses.fields(kind)]
        out = {}
        for name, item in value.items():
            if name not in known:
                raise ParameterError(_unknown(where, f"{key}.{name}", name, known))
            if item is not None and item != "":  # an empty template entry is no value
                out[name] = _convert(hints[name], item, f"{key}.{name}", where)
        return kind(**out)
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise ParameterError(f"{where or 'archive metadata'}: {key} must be a list (one '- ' item per line); "
                                 f"got {value!r}")
        return tuple(_convert(inner, item, f"{key}[{i}]", where) for i, item in enumerate(value))
    args = [a for a in typing.get_args(kind) if a is not type(None)]  # X | None
    if args:
        kind = args[0]
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, datetime.date)):
            raise ParameterError(f"{where or 'archive metadata'}: {key} must be text; got {value!r}")
        return str(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{where or 'archive metadata'}: {key} must be a number; got {value!r}")
        return float(value)
    if kind is dict:
        if not isinstance(value, Mapping):
            raise ParameterError(f"{where or 'archive metadata'}: {key} must be a mapping; got {value!r}")
        return dict(value)
    raise TypeError(f"no YAML conversion for {kind!r}")  # a bug in the dataclasses above


def _check_values(meta: ArchiveMetadata) -> None:
    """Raise :class:`ParameterError` for a given value outside the reference's choices or formats."""
    where = meta.source or "archive metadata"
    if meta.study.license is not None and meta.study.license not in LICENSES:
        raise ParameterError(f"{where}: study.license={meta.study.license!r}; the BioImage Archive's MIFA model "
                             f"accepts {' or '.join(LICENSES)}")
    for name, authors in (("study.authors", meta.study.authors), ("annotation.authors", meta.annotation.authors)):
        for i, a in enumerate(authors):
            if a.orcid_id and not _ORCID.match(a.orcid_id):
                raise ParameterError(f"{where}: {name}[{i}].orcid_id={a.orcid_id!r} is not an ORCID iD "
                                     "(0000-0002-1825-0097, optionally after https://orcid.org/)")
            if a.email and not _EMAIL.match(a.email):
                raise ParameterError(f"{where}: {name}[{i}].email={a.email!r} is not an e-mail address")
    for t in meta.annotation.annotation_type:
        if t not in ANNOTATION_TYPES:
            raise ParameterError(f"{where}: annotation.annotation_type {t!r} is not one of {', '.join(ANNOTATION_TYPES)}")
    if meta.annotation.method_type is not None and meta.annotation.method_type not in METHOD_TYPES:
        raise ParameterError(f"{where}: annotation.method_type={meta.annotation.method_type!r}; "
                             f"use one of {', '.join(METHOD_TYPES)}")


def read_label_provenance(source: str | Path) -> dict | None:
    """The ``labels_provenance.json`` of a source folder (automatic labels), or None."""
    path = Path(source) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); remove it or write it again") from None


def _with_provenance(a: Annotation, prov: dict) -> Annotation:
    """The annotation fields the facility left empty, filled from an automatic-labels provenance record."""
    params = prov.get("parameters") if isinstance(prov.get("parameters"), dict) else {}
    software = a.software or ("dlcore annotate-from-marker" if prov.get("format") == "dlcore-marker-labels"
                              else prov.get("software") or "dlcore")
    version = a.software_version or prov.get("dlcore_version") or prov.get("version")
    created = a.created or prov.get("created")
    method_type = a.method_type or "automatic"
    marker = params.get("marker")
    text = (f"{method_type.replace('_', '-')}: labels derived by {software}"
            + (f" {version}" if version else "")
            + (f", method {prov['method']}" if prov.get("method") else "")
            + (f", from the marker {marker}" if marker else "")
            + (f", created {created}" if created else "")
            + "; parameters in mifa.json annotations[0].parameters")
    return dataclasses.replace(a, method_type=method_type, software=software, software_version=version,
                               created=created, parameters=a.parameters or params or None,
                               annotation_method=a.annotation_method or text)


# -- what dlcore knows -----------------------------------------------------------------------------
def dataset_facts(dataset, rows: Sequence[dict], *, label_provenance: dict | None = None) -> DatasetFacts:
    """Facts of an :class:`~dlcore.train.data.AnnotatedDataset` and the rows export_dataset wrote."""
    from dlcore.train.data import count_objects

    samples = dataset.samples
    annotated = sum(1 for s in samples if (s.mask is not None and s.mask.any()) or s.label is not None)
    return DatasetFacts(task=dataset.task, classes=tuple(dataset.classes), samples=len(samples),
                        annotated=annotated, mpps=tuple(s.mpp for s in samples),
                        channels=tuple(int(s.image.shape[-1]) for s in samples),
                        axes=tuple(str(r.get("image_axes") or "") for r in rows),
                        objects=count_objects(dataset), label_provenance=label_provenance,
                        stains=tuple(s.stain for s in samples), magnifications=tuple(s.magnification for s in samples),
                        image_format="OME-Zarr (NGFF 0.4)" if any(str(r.get("image", "")).endswith(".zarr") for r in rows)
                        else "OME-TIFF")


def complete(meta: ArchiveMetadata, facts: DatasetFacts) -> ArchiveMetadata:
    """``meta`` with what dlcore knows filled in where the facility left a field empty."""
    from dlcore.train.task_inference import summarize_classes

    a = meta.annotation
    if facts.label_provenance and not a.software:
        a = _with_provenance(a, facts.label_provenance)
    kind = {"semantic": "semantic segmentation masks (one class id per pixel)",
            "instances": "instance segmentation masks (one id per object)",
            "classification": "image-level class labels"}[facts.task]
    types = a.annotation_type or (("class_labels",) if facts.task == "classification" else ("segmentation_mask",))
    overview = a.annotation_overview or (
        f"{kind}: {summarize_classes(facts.task, facts.classes, ids=facts.objects)}, "
        f"{facts.annotated} of {facts.samples} images" + (f", {a.method_type.replace('_', '-')}" if a.method_type else ""))
    coverage = a.annotation_coverage or (f"{facts.annotated} of {facts.samples} exported images carry annotations "
                                         f"({100.0 * facts.annotated / max(facts.samples, 1):.0f}%)")
    a = dataclasses.replace(a, annotation_type=tuple(types), annotation_overview=overview, annotation_coverage=coverage)
    acquisition = meta.image_acquisition
    magnifications = set(facts.magnifications)
    if acquisition.objective_magnification is None and len(magnifications) == 1 and None not in magnifications:
        acquisition = dataclasses.replace(acquisition, objective_magnification=magnifications.pop())
    return dataclasses.replace(meta, annotation=a, image_acquisition=acquisition, facts=facts)


# -- writing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveReport:
    """What :func:`write_archive_metadata` wrote and whether the export can be submitted as it is."""

    submission_ready: bool
    missing: tuple[Missing, ...]
    files: tuple[str, ...] = field(default=())


def _clean(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[\t\r\n]+", " ", str(value))


def _asdict(obj):
    """A dataclass as JSON-able dict, tuples as lists, empty values left out."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = _asdict(getattr(obj, f.name))
            if value not in (None, "", [], {}):
                out[f.name] = value
        return out
    if isinstance(obj, (tuple, list)):
        return [_asdict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _asdict(v) for k, v in obj.items()}
    return obj


def write_archive_metadata(out: str | Path, dataset, rows: Sequence[dict], meta: ArchiveMetadata | None = None,
                           *, annotation_provenance: Mapping[str, dict] | None = None) -> ArchiveReport:
    """Write ``mifa.json``, ``rembi.json``, ``file_list.tsv`` (and, when incomplete, ``archive.example.yaml``)
    into the export folder ``out``, and add the verdict to its README.md.

    ``rows`` are export_dataset's per-sample rows (``id``, ``image``, ``labels``, ``image_axes``, ``class``,
    ``source``, ``group``, ``mpp``).  Raises :class:`ParameterError` for a given value outside the reference's
    choices (licence, annotation type, ORCID, e-mail).

    ``annotation_provenance`` (optional): who annotated each sample and how, keyed by a sample's ``source``
    or, failing that, its ``group`` (the OMERO export keys it by ``Image:<id>``).  A record may hold
    ``annotators`` (names), ``created`` / ``modified`` (ISO times of the first and last annotation),
    ``method_type`` (manual, automatic, or mixed), ``automatic`` (a list of automatic-annotation records:
    software, version, method, marker, threshold, run id, parameters, ...), ``rois`` (per annotation: id,
    owner, created, automatic) and ``attributes`` (e.g. tags and key-value pairs of the image).  It goes
    into ``mifa.json`` (each ``file_metadata`` entry: ``annotation_creation_time`` and ``dlcore_provenance``),
    into extra ``file_list.tsv`` columns (``annotated_by``, ``annotation_created``, ``annotation_source``,
    ``sample_attributes``), and fills the dataset-level annotation fields the facility left empty
    (``annotation_method``, ``method_type`` when every sample agrees, ``authors``).
    """
    from dlcore.train.task_inference import summarize_classes

    out = Path(out)
    meta = meta or ArchiveMetadata()
    _check_values(meta)
    provenance = _per_row(rows, annotation_provenance)
    if provenance is not None:
        meta = dataclasses.replace(meta, annotation=_with_sample_provenance(meta.annotation, provenance))
    meta = complete(meta, dataset_facts(dataset, rows, label_provenance=meta.label_provenance))
    missing = meta.validate()
    ready = not missing
    verdict = {"submission_ready": ready, "missing": [m.key for m in missing],
               "missing_explained": [str(m) for m in missing],
               "metadata_source": meta.source, "fill_with": None if ready else TEMPLATE_FILE}
    s, a, f = meta.study, meta.annotation, meta.facts
    classes_text = summarize_classes(f.task, f.classes, ids=f.objects)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    by_image = {r["image"]: r for r in rows}
    file_metadata = [{"annotation_id": r["id"], "annotation_type": list(a.annotation_type),
                      "source_image_id": r["image"], **({"annotation_file": r["labels"]} if r.get("labels") else {}),
                      **({"class_label": r["class"]} if r.get("class") is not None else {}),
                      **({"annotation_creation_time": a.created} if a.created else {})} for r in rows]
    for entry, prov in zip(file_metadata, provenance or ()):
        if prov:
            if prov.get("created"):
                entry["annotation_creation_time"] = prov["created"]
            entry["dlcore_provenance"] = _asdict(prov)
    annotation = {**_asdict(dataclasses.replace(a, parameters=None)), "file_metadata": file_metadata}
    if a.parameters:
        annotation["parameters"] = _asdict(a.parameters)
    mifa = {**_asdict(dataclasses.replace(s, ai_models_trained=())),
            "ai_models_trained": [m.text() for m in s.ai_models_trained],
            "annotations": [annotation], **verdict,
            "dlcore": {"task": f.task, "classes": list(f.classes), "classes_summary": classes_text,
                       "samples": f.samples, "objects": f.objects,
                       "ai_models_trained_details": _asdict(s.ai_models_trained),
                       "label_provenance": f.label_provenance, "written": created,
                       "reference": "BioImage Archive MIFA model reference; Zulueta-Coarasa et al. 2025"}}
    mpps = sorted({m for m in f.mpps if m is not None})
    rembi = {"biosample": _asdict(meta.biosample), "specimen": _asdict(meta.specimen),
             "image_acquisition": _asdict(meta.image_acquisition),
             "image_data": {"format": f.image_format, "images": f.samples,
                            "pixel_size_um": mpps[0] if len(mpps) == 1 else mpps,
                            "stains": sorted({x for x in f.stains if x}),
                            "objective_magnifications": sorted({x for x in f.magnifications if x is not None}),
                            "channels": sorted(set(f.channels)), "axes": sorted(set(f.axes)),
                            "dimensions": "2-D (YX plus channels)"},
             **verdict, "reference": "REMBI, Sarkans et al. 2021 (BioImage Archive REMBI field names)"}
    (out / MIFA_FILE).write_text(json.dumps(mifa, indent=1, default=str), encoding="utf-8")
    (out / REMBI_FILE).write_text(json.dumps(rembi, indent=1, default=str), encoding="utf-8")
    if not ready:
        (out / TEMPLATE_FILE).write_text(TEMPLATE, encoding="utf-8")
    readme = out / "README.md"
    if readme.is_file():
        readme.write_text(readme.read_text(encoding="utf-8") + _readme_section(ready, missing), encoding="utf-8")
    files = _write_file_list(out, by_image, rows, meta, classes_text, provenance)
    return ArchiveReport(ready, missing, files)


def _per_row(rows: Sequence[dict], given: Mapping[str, dict] | None) -> list[dict | None] | None:
    """The provenance record of each row (by its source, else its group), or None when none was given.

    A row that names the annotations its labels come from (``annotation_ids``, e.g. ``ROI:12``) gets the
    record narrowed to them: a region cut from an image is credited to those who drew its ROIs, when they
    drew them, not to every annotator of the image."""
    if not given:
        return None
    records = [given.get(str(r.get("source"))) or given.get(str(r.get("group"))) for r in rows]
    return [_narrowed(record, r.get("annotation_ids")) for record, r in zip(records, rows)]


def _narrowed(record: dict | None, annotation_ids) -> dict | None:
    """``record`` restricted to the ROIs ``annotation_ids`` (``ROI:<id>``); unchanged when either has none."""
    if not record or not annotation_ids or not record.get("rois"):
        return record
    wanted = set(annotation_ids)
    rois = [r for r in record["rois"] if f"ROI:{r.get('id')}" in wanted]
    runs = {r.get("run_id") for r in rois if r.get("automatic")}
    return {**record, **summarise_rois(rois),
            "automatic": [a for a in record.get("automatic") or () if a.get("run_id") in runs]}


def summarise_rois(rois: Sequence[dict]) -> dict:
    """The provenance fields of a set of annotation records (each: ``owner``, ``created`` ISO time,
    ``automatic``): ``rois`` themselves, ``annotators`` (owners of the manual ones, in order),
    ``created`` / ``modified`` (first and last time) and ``method_type`` (manual, automatic, mixed or None)."""
    times = sorted(r["created"] for r in rois if r.get("created"))
    kinds = {bool(r.get("automatic")) for r in rois}
    return {"rois": list(rois),
            "annotators": list(dict.fromkeys(r["owner"] for r in rois if not r.get("automatic") and r.get("owner"))),
            "created": times[0] if times else None, "modified": times[-1] if times else None,
            "method_type": ("automatic" if kinds == {True} else "manual" if kinds == {False} else
                            "mixed" if kinds else None)}


def _with_sample_provenance(a: Annotation, provenance: Sequence[dict | None]) -> Annotation:
    """The annotation fields the facility left empty, filled from the samples' provenance records."""
    records = [p for p in provenance if p]
    if not records:
        return a
    kinds = {p.get("method_type") for p in records} - {None}
    method_type = a.method_type or (next(iter(kinds)) if len(kinds) == 1 and kinds <= set(METHOD_TYPES) else None)
    names = list(dict.fromkeys(n for p in records for n in p.get("annotators") or ()))
    times = sorted(t for p in records for t in (p.get("created"), p.get("modified")) if t)
    tools = list(dict.fromkeys(" ".join(str(x) for x in (r.get("software"), r.get("version") or r.get("dlcore_version"))
                                        if x) + (f" ({r['method']})" if r.get("method") else "")
                               for p in records for r in p.get("automatic") or ()))
    text = "; ".join(part for part in (
        f"annotations drawn by {', '.join(names)}" if names else "",
        f"created {times[0]}" + (f" to {times[-1]}" if times[-1] != times[0] else "") if times else "",
        f"automatic annotations by {', '.join(tools)}" if tools else "",
        "per-image provenance in file_metadata[].dlcore_provenance") if part)
    authors = a.authors or tuple(Author(author_first_name=n.split(" ", 1)[0] if " " in n else None,
                                        author_last_name=n.split(" ", 1)[1] if " " in n else n, role=("annotation",))
                                 for n in (_full_name(x) for x in names))
    return dataclasses.replace(a, method_type=method_type, annotation_method=a.annotation_method or text,
                               authors=authors, created=a.created or (times[0] if times else None))


def _full_name(annotator: str) -> str:
    """``"alice (Alice Smith)"`` -> ``"Alice Smith"``; a bare login stays as it is."""
    match = re.fullmatch(r"\S+ \((.+)\)", annotator)
    return match.group(1) if match else annotator


def _readme_section(ready: bool, missing: Sequence[Missing]) -> str:
    head = "\n## BioImage Archive submission (MIFA + REMBI)\n\n"
    files = ("`mifa.json` (dataset and annotations, MIFA), `rembi.json` (biosample, specimen, acquisition, "
             "REMBI) and `file_list.tsv` (the archive's File List, one row per file).\n")
    if ready:
        return head + "**Submission-ready**: every required MIFA/REMBI field is filled. " + files
    return (head + f"**NOT submission-ready**: {len(missing)} required field(s) missing. " + files
            + "\nFill these keys in a YAML (start from `archive.example.yaml`) and export again with "
              "`dlcore export-dataset ... --metadata archive.yaml`:\n\n"
            + "".join(f"- `{m.key}`: {m.what}\n" for m in missing))


def _listed_files(out: Path) -> list[str]:
    """Every file under ``out`` (an OME-Zarr folder counts as one), relative, ``/``-separated, sorted."""
    paths = []

    def walk(folder: Path):
        for p in sorted(folder.iterdir()):
            if p.is_dir() and p.name.lower().endswith(".zarr"):
                paths.append(p.relative_to(out).as_posix())
            elif p.is_dir():
                walk(p)
            elif p.is_file() and not (folder == out and p.name == FILE_LIST):
                paths.append(p.relative_to(out).as_posix())

    walk(out)
    return paths


def _write_file_list(out: Path, by_image: dict, rows: Sequence[dict], meta: ArchiveMetadata,
                     classes_text: str, provenance: Sequence[dict | None] | None = None) -> tuple[str, ...]:
    f, a = meta.facts, meta.annotation
    by_label = {r["labels"]: r for r in rows if r.get("labels")}
    columns = ["Files", "type", "sample_id", "source_image", "original_source", "group", "class", "mpp_um",
               "channels", "channel_names", "stain", "objective_magnification", "axes", "task", "classes",
               "annotation_type", "annotation_method"]
    if provenance is not None:
        columns += ["annotated_by", "annotation_created", "annotation_source", "sample_attributes"]
    method = a.method_type or ("" if not a.annotation_method else "see mifa.json")
    if a.software:
        method = f"{method} ({a.software}{' ' + a.software_version if a.software_version else ''})".strip()
    table = []
    index = {r["id"]: i for i, r in enumerate(rows)}
    for path in _listed_files(out):
        row = dict.fromkeys(columns, "")
        row["Files"] = path
        sample = by_image.get(path) or by_label.get(path)
        if sample is None:
            row["type"] = "metadata"
        else:
            i = index[sample["id"]]
            is_label = path in by_label and by_image.get(path) is None
            row.update(type="label" if is_label else "image", sample_id=sample["id"],
                       source_image=sample["image"] if is_label else "", original_source=sample.get("source"),
                       group=sample.get("group"), mpp_um=sample.get("mpp"),
                       channels=1 if is_label else f.channels[i], axes="YX" if is_label else sample.get("image_axes"),
                       channel_names="" if is_label else ";".join(sample.get("channel_names") or ()),
                       stain=sample.get("stain"), objective_magnification=sample.get("magnification"),
                       task=f.task, classes=classes_text)
            row["class"] = sample.get("class")
            if is_label or f.task == "classification":
                row.update(annotation_type=";".join(a.annotation_type), annotation_method=method)
            prov = provenance[i] if provenance is not None else None
            if prov:
                row.update(annotated_by="; ".join(prov.get("annotators") or ()),
                           annotation_created=" to ".join(dict.fromkeys(
                               t for t in (prov.get("created"), prov.get("modified")) if t)),
                           annotation_source="; ".join(
                               [prov.get("method_type") or ""] + [
                                   " ".join(str(r[k]) for k in ("software", "version", "method", "marker", "run_id")
                                            if r.get(k)) for r in prov.get("automatic") or ()]).strip("; "),
                           sample_attributes=_attributes_text(prov.get("attributes")))
        table.append({k: _clean(v) for k, v in row.items()})
    with (out / FILE_LIST).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    return tuple(r["Files"] for r in table)


def _attributes_text(attributes: dict | None) -> str:
    """Tags and key-value pairs as one file-list cell: ``tag:a; tag:b; key=value``."""
    if not attributes:
        return ""
    parts = [f"tag:{t}" for t in attributes.get("tags") or ()]
    for pairs in (attributes.get("key_values") or {}).values():
        parts += [f"{k}={v}" for k, v in (pairs.items() if isinstance(pairs, Mapping) else pairs)]
    return "; ".join(parts)


def readiness(out: str | Path) -> dict:
    """The verdict recorded in an export's ``mifa.json`` (``submission_ready``, ``missing``)."""
    path = Path(out) / MIFA_FILE
    if not path.is_file():
        raise InputError(f"{out} has no {MIFA_FILE}; export it with `dlcore export-dataset` first")
    meta = json.loads(path.read_text(encoding="utf-8"))
    return {"submission_ready": meta.get("submission_ready", False), "missing": meta.get("missing", [])}


TEMPLATE = """\
# Archive metadata for `dlcore export-dataset SRC OUT --metadata archive.yaml`.
# Field names follow the BioImage Archive's MIFA model reference (study, annotation) and REMBI
# (biosample, specimen, image_acquisition).  Keys marked REQUIRED must be filled for the export to be
# submission-ready; the rest are recommended.  dlcore fills itself: task, classes, counts, pixel sizes
# (--mpp), channels, the file list, the annotation type/overview/coverage, and the provenance of
# automatic labels (labels_provenance.json in the source folder).  Unknown keys are refused.
study:
  title: ""                      # REQUIRED
  description: ""                # REQUIRED: what the images show and the biological application
  license: ""                    # REQUIRED: CC0 or CC_BY
  funding_statement: ""          # REQUIRED: how the work was funded
  keywords: []                   # e.g. [histology, nuclei, H&E]
  acknowledgements: ""
  authors:                       # REQUIRED: at least one, with an organisation
    - author_first_name: ""
      author_last_name: ""
      email: ""
      orcid_id: ""               # 0000-0002-1825-0097
      role: []                   # e.g. [data acquisition, annotation]
      organisation:
        - organisation_name: ""
          address: ""
          ror_id: ""
  grants: []                     # - grant_id: "..."  funder: "..."
  publications: []               # - publication_title, publication_authors, publication_doi, publication_year, pubmed_id
  link_url: []
  link_description: []
  ai_models_trained: []          # - name: nuclei-he  version: "3"  url: https://...
biosample:
  title: ""
  organism_classification:       # REQUIRED
    - scientific_name: ""        # e.g. Homo sapiens
      common_name: ""            # e.g. human
      ncbi_id: ""                # e.g. NCBI:txid9606
  biological_entity_description: ""   # REQUIRED: e.g. colon, adenocarcinoma resection
  intrinsic_variable_description: ""
  extrinsic_variable_description: ""
  experimental_variable_description: ""
specimen:
  title: ""
  protocol_description: ""       # REQUIRED: fixation, sectioning, staining (e.g. FFPE, 4 µm, H&E)
  signal_channel_information: [] # - channel_label: DAB  channel_content_description: ...  channel_biological_entity: CD3
image_acquisition:
  title: ""
  imaging_instrument_description: ""  # REQUIRED: e.g. the slide scanner, make and model
  imaging_method_name: []        # REQUIRED: e.g. [bright-field microscopy]
  fbbi_id: []                    # e.g. [obo:FBbi_00000243]
  protocol_description: ""       # REQUIRED: acquisition parameters (objective, magnification, focus, ...)
  objective_magnification:       # e.g. 40
annotation:
  annotation_method: ""          # REQUIRED unless the labels came with labels_provenance.json:
                                 # who annotated, by hand or with which software, when, QA/consensus
  method_type: ""                # manual, automatic or semi_automatic
  annotation_criteria: ""        # rules the annotators followed
  annotation_confidence_level: ""
  authors: []                    # the annotators, as study.authors
  software: ""                   # e.g. QuPath
  software_version: ""
  created: ""                    # when, e.g. 2024-05-01
"""


__all__ = ["ArchiveMetadata", "ArchiveReport", "Study", "Author", "Organisation", "Grant", "Publication",
           "TrainedModel", "Biosample", "Organism", "Specimen", "SignalChannel", "ImageAcquisition", "Annotation",
           "DatasetFacts", "Missing", "load_archive_metadata", "read_label_provenance", "dataset_facts", "complete",
           "write_archive_metadata", "readiness", "TEMPLATE", "MIFA_FILE", "REMBI_FILE", "FILE_LIST",
           "TEMPLATE_FILE", "LICENSES", "ANNOTATION_TYPES", "METHOD_TYPES"]
