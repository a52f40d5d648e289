"""What the scripts in ``omero_scripts/Deep_Learning`` are made of, so each stays a declaration plus one call.

OMERO executes a script file to read its parameters (parse mode), so this module imports nothing
heavy at module level: ``omero.scripts``, ``dlcore`` and the built-in task classes (numpy) only; the
engine, torch and the models load inside :func:`run_script`.

Conventions: ``Data_Type`` and ``IDs`` first (OMERO.web and Insight fill them from the selection),
then the task's parameters, then the run options.  Task parameters are built from the task
dataclass's fields (:func:`task_params`), so their defaults never drift from the engine's.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys

import omero.scripts as scripts
from omero.rtypes import rlong, rstring

import dlcore
from dlcore.errors import DlcoreError, ParameterError

SCRIPT_INFO = {
    "version": dlcore.__version__,
    "authors": ["dlcore developers"],
    "institutions": ["Histology core facility"],
    "contact": "your OMERO administrator (the facility's image-analysis team)",
}
DATA_TYPES = ["Image", "Dataset", "Project"]

#: For each built-in task field shown in a script: (what a biologist reads, advanced?)
FIELD_HELP = {
    "channel": "What to segment: 'hematoxylin' (nuclei in H&E/IHC), 'eosin', 'dab', or a channel number "
               "(0 = first) for fluorescence or grey images",
    "invert": "Objects are dark on a bright background (only for a channel number on a grey brightfield image)",
    "sigma": "Smoothing before thresholding, in pixels (3 suits 0.25-0.5 µm/pixel)",
    "threshold_method": "How the nuclei/background threshold is chosen (once per slide)",
    "threshold": "A fixed threshold instead (leave empty to compute it per slide)",
    "stain_vectors": "Stain colours for colour deconvolution: estimated from each image (robust to your lab's "
                     "stains) or the textbook ones",
    "split_touching": "Split touching nuclei (watershed)",
    "markers": "Where the watershed starts: centres of the nuclei shapes ('distance') or their darkest points",
    "min_distance": "Smallest distance between two nuclei centres, in pixels",
    "min_size": "Remove objects smaller than this many pixels",
    "max_area_um2": "Remove objects larger than this many µm²: not nuclei (glands, folds); empty: no limit",
    "background_radius_um": "Local background radius in µm, removed before thresholding so dense tissue is "
                            "not all 'nuclei' (0: off)",
    "mpp": "Analyse at this pixel size in µm (empty: the image's own pixels)",
    "tile_size": "Tile size in pixels (memory use; results do not depend on it)",
    "halo": "Overlap between tiles in pixels (empty: what the other settings need)",
}


NAME_OVERRIDES = {"mpp": "Working_Pixel_Size_um"}


def script_name(field: str) -> str:
    """The script parameter name of a task field: ``min_size`` -> ``Min_Size``."""
    if field in NAME_OVERRIDES:
        return NAME_OVERRIDES[field]
    return "_".join(part.capitalize() for part in field.split("_"))


def target_params() -> list:
    """``Data_Type`` and ``IDs``, the pair OMERO's clients fill from the selection."""
    return [
        scripts.String("Data_Type", optional=False, grouping="1", default="Image",
                       values=[rstring(t) for t in DATA_TYPES],
                       description="Analyse the selected Images, or every image in the selected Datasets or Projects"),
        scripts.List("IDs", optional=False, grouping="2",
                     description="IDs of the selected Images, Datasets or Projects").ofType(rlong(0)),
    ]


def run_option_params(grouping: int) -> list:
    """Options every analysis script has: whole image, pixel size override, ROI cap, slide QC."""
    return [
        scripts.Bool("Analyse_Whole_Image", grouping=f"{grouping}", default=False,
                     description="Analyse the whole image instead of only the detected tissue"),
        pixel_size_param(grouping + 1),
        scripts.Int("Max_ROIs", grouping=f"{grouping + 2}", min=0, default=_default_roi_cap(),
                    description="Most ROIs drawn per image (viewers slow down beyond a few thousand); "
                                "every object is still in the label image and the measurement table"),
        qc_mode_param(grouping + 3),
    ]


def pixel_size_param(grouping: int):
    """``Image_Pixel_Size_um``: the level-0 pixel size of images that have none in OMERO."""
    return scripts.Float("Image_Pixel_Size_um", grouping=f"{grouping}", min=0.01,
                         description="Pixel size in µm for images that have none in OMERO (0.25 = 40x, 0.5 = 20x)")


def qc_mode_param(grouping: int):
    """``QC``: slide quality control before the analysis (:attr:`dlcore.workflows.RunOptions.qc`)."""
    from dlcore.qc.run import QC_MODES

    return scripts.String(
        "QC", grouping=f"{grouping}", default="off", values=[rstring(m) for m in QC_MODES],
        description="Slide quality control first (blur, pen ink, folds, bubbles, coverslip edges, pale staining): "
                    "'flag' reports what it finds (key-value pairs, tags 'QC pass/warn/fail', the QC mask and "
                    "overview attached) and analyses everything; 'exclude' also leaves the artefacts out of the "
                    "analysis; 'off' (default): no QC")


def _default_roi_cap() -> int:
    try:
        from dlcore.config import load_config

        return load_config().roi_cap
    except DlcoreError:
        return 5000


def available_tasks(config=None) -> list[str]:
    """Built-in tasks and the registry's shared models (those without owner), by name.

    Read when OMERO parses the script, with no user at hand, so models trained in a group are not
    named here (List_Models shows each user the ones of their groups)."""
    from dlcore.tasks import task_names

    names = task_names()  # "nuclei" first: the default, which picks the model that fits each image
    for model in _installed_models(config):
        if model.name not in names and model.owner is None:
            names.append(model.name)
    return names


def _installed_models(config=None) -> list:
    """The registry's models, or [] when the registry is not there or broken (scripts must still parse)."""
    try:
        from dlcore.config import load_config
        from dlcore.models.registry import list_models

        return list(list_models(config or load_config()))
    except ImportError:
        return []
    except Exception as exc:  # a broken model folder must not hide the built-in tasks
        print(f"warning: the model registry cannot be read: {exc}", file=sys.stderr)
        return []


OMERO_IMAGE_TYPES = ("uint16", "uint8")  # what a predicted image may be stored as (see dlcore.omero.workflows)


def model_params(grouping: int) -> list:
    """``Model`` (a name, validated by dlcore when the job runs) and ``Model_Parameters``.

    ``Model`` is a free string, not a choice list: OMERO parses a script's parameters once and caches
    them (``ParamsCache``, refreshed by ``omero.scripts.cache.cron``), and the processor's
    ``validate_inputs`` refuses a value not in ``values``, so a model trained a minute ago would be
    refused until the cache refreshed.  The models installed when the parameters were read are listed in
    the description; an unknown name fails the job with the list of what is installed now.
    """
    names = available_tasks()
    return [
        scripts.String("Model", optional=False, grouping=f"{grouping}", default=names[0],
                       description="The model or pipeline to apply, by name (List_Models shows every model you "
                                   "may use, including those trained in your groups, and what each does). Shared "
                                   "models when this menu was read: " + ", ".join(names)),
        scripts.String("Model_Parameters", grouping=f"{grouping + 1}",
                       description="Optional parameters as name=value, separated by commas, e.g. 'sigma=2, min_size=40'"),
        scripts.String("Output_Pixel_Type", grouping=f"{grouping + 1}.1", values=list(OMERO_IMAGE_TYPES),
                       description="For image models (denoising, image translation): the pixel type of the predicted "
                                   "image written next to each image (uint16 when empty; OMERO pyramids hold uint8 "
                                   "and uint16 only). Other models ignore it."),
    ]


def task_params(task_name: str, grouping: int) -> list:
    """Script parameters for a built-in task's fields listed in :data:`FIELD_HELP`, defaults from the dataclass."""
    from dlcore.tasks import task_parameters

    params = []
    fields = [f for name, f in task_parameters(task_name).items() if name in FIELD_HELP]
    for index, field in enumerate(fields, 1):
        kwargs = {"grouping": f"{grouping}.{index}", "description": FIELD_HELP[field.name]}
        default = field.default if field.default is not dataclasses.MISSING else None
        kind = str(field.type).removesuffix(" | None")  # optional fields: no value given = the task's default
        choices = re.findall(r"[\"']([^\"']+)[\"']", kind) if kind.startswith("Literal") else []
        if default is not None:
            kwargs["default"] = str(default) if "str" in kind or choices else default
        if choices:
            params.append(scripts.String(script_name(field.name), values=[rstring(c) for c in choices], **kwargs))
        elif kind == "bool":
            params.append(scripts.Bool(script_name(field.name), **kwargs))
        elif kind == "int":
            params.append(scripts.Int(script_name(field.name), min=0, **kwargs))
        elif kind.startswith("float"):
            params.append(scripts.Float(script_name(field.name), min=0.0, **kwargs))
        else:
            params.append(scripts.String(script_name(field.name), **kwargs))
    return params


def task_values(task_name: str, inputs: dict) -> dict:
    """The task parameters given in a script's inputs, converted back to the dataclass's types."""
    from dlcore.tasks import task_parameters

    values = {}
    for name, field in task_parameters(task_name).items():
        key = script_name(name)
        if key not in inputs or inputs[key] is None or name not in FIELD_HELP:
            continue
        value = inputs[key]
        if "int" in str(field.type) and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        values[name] = value
    return values


def parse_parameters(text: str | None, *, input_name: str = "Model_Parameters") -> dict:
    """``"sigma=2, min_size=40, channels=[4, 8]"`` -> ``{"sigma": 2, "min_size": 40, "channels": [4, 8]}``.

    Values are read as JSON where they parse (commas inside ``[...]`` belong to the value).
    """
    params = {}
    for pair in filter(None, (p.strip() for p in re.split(r",(?![^\[]*\])", text or ""))):
        if "=" not in pair:
            raise ParameterError(f"{input_name}: {pair!r} must look like name=value (e.g. sigma=2.5)")
        key, raw = (s.strip() for s in pair.split("=", 1))
        try:
            params[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = raw
    return params


def client(name: str, description: str, *params):
    """``omero.scripts.client`` with dlcore's version, authors, contact and namespace."""
    return scripts.client(name, description, *params, namespaces=["dlcore"], **SCRIPT_INFO)


def connect_client(script_client):
    """The BlitzGateway of a running script (its session is the calling user's)."""
    from omero.gateway import BlitzGateway

    return BlitzGateway(client_obj=script_client)


def script_body(script_client, work, *, conn=None) -> str:
    """Run ``work(conn, inputs) -> message`` for a script: connect, report a :class:`DlcoreError` as
    "Nothing was written: ...", print the message and set the ``Message`` output.

    The gateway is never closed here: one built with ``BlitzGateway(client_obj=script_client)`` shares
    the script's session, and its ``close()`` closes that session (omero-py ``gateway/__init__.py``
    ``close`` -> ``clients.py`` ``closeSession``), after which ``setOutput`` fails with "No session
    available" and the job ends in error with no Message.  The script file closes the session last, after
    every output is set (:func:`run_script_file`)."""
    inputs = script_client.getInputs(unwrap=True)
    conn = conn or connect_client(script_client)
    try:
        message = work(conn, inputs)
    except DlcoreError as exc:
        message = f"Nothing was written: {exc}"
    print(message)
    script_client.setOutput("Message", rstring(message))
    return message


def run_script_file(script_client, body, **kwargs) -> None:
    """What each script file does after declaring its parameters: ``body(script_client, **kwargs)``,
    then close the script's session (omero-scripts' ``finally: client.closeSession()``) once every
    output is set.  A cancel from OMERO (SIGTERM) stops the job like Ctrl-C (:mod:`dlcore.interrupts`): the
    image being analysed keeps its checkpoint and deletes what it had written."""
    from dlcore.interrupts import stop_on_sigterm

    stop_on_sigterm()
    try:
        body(script_client, **kwargs)
    finally:
        script_client.closeSession()


def run_script(script_client, *, task: str | None = None, conn=None) -> str:
    """The body of Run_Model (``task=None``: the ``Model`` input) and of single-task scripts.

    Reads the inputs, runs :func:`dlcore.omero.workflows.run_on_objects`, prints the outcome and sets
    the ``Message`` output (plus ``Label_Image`` or ``Predicted_Image`` and ``Overview`` links for the first
    image done).
    Returns the message.
    """

    def work(conn, inputs) -> str:
        from omero.model import FileAnnotationI, ImageI
        from omero.rtypes import robject

        from dlcore.omero.workflows import run_on_objects, summary_message
        from dlcore.progress import LineProgress

        name = task or (inputs.get("Model") or "").strip()
        params = task_values(name, inputs) if task else parse_parameters(inputs.get("Model_Parameters"))
        _check_may_use(conn, name)
        reports = run_on_objects(
            conn, name, inputs.get("Data_Type", "Image"), inputs.get("IDs") or [], params,
            detect_tissue=not inputs.get("Analyse_Whole_Image", False), mpp=inputs.get("Image_Pixel_Size_um"),
            roi_cap=inputs.get("Max_ROIs"), qc=inputs.get("QC") or "off", progress=lambda label: LineProgress(label),
            output_dtype=inputs.get("Output_Pixel_Type") or None,
        )
        done = [r for r in reports if r.ok]
        if done and done[0].output_id("label image"):
            script_client.setOutput("Label_Image", robject(ImageI(done[0].output_id("label image"), False)))
        if done and done[0].output_id("predicted image"):
            script_client.setOutput("Predicted_Image", robject(ImageI(done[0].output_id("predicted image"), False)))
        if done and done[0].output_id("overview"):
            script_client.setOutput("Overview", robject(FileAnnotationI(done[0].output_id("overview"), False)))
        return summary_message(reports)

    return script_body(script_client, work, conn=conn)


def _check_may_use(conn, name: str) -> None:
    """ParameterError unless the caller may use ``name`` (a built-in task, or a registry model that is
    shared or belongs to one of their groups); a name that is neither is left to the run to report."""
    from dlcore.errors import ModelError
    from dlcore.omero.model_access import usable_model
    from dlcore.tasks import task_names

    if name in task_names():
        return
    try:
        usable_model(conn, name)
    except ModelError:
        return  # not in the registry: the run says what exists


def models_text(config=None, models=None) -> str:
    """Built-in tasks with their parameters, then each model's card: ``models`` (records), by default
    every model installed on this node."""
    from dlcore.tasks import AUTO_DESCRIPTIONS, AUTO_TASKS, builtin_task_class, builtin_task_names, task_parameters

    lines = ["Chosen for each image:"] + [f"- {name}: {AUTO_DESCRIPTIONS[name]}" for name in AUTO_TASKS]
    lines += ["", "Built-in pipelines:"]
    for name in builtin_task_names():
        doc = (builtin_task_class(name).__doc__ or "").strip().splitlines()[0]
        params = ", ".join(f"{k}={f.default!r}" for k, f in task_parameters(name).items()
                           if f.default is not dataclasses.MISSING)
        lines += [f"- {name}: {doc}", f"    parameters: {params}"]
    models = _installed_models(config) if models is None else models
    lines.append(f"\nInstalled models ({len(models)}):" if models else "\nNo models are installed on this node.")
    for model in models:
        owner = getattr(model, "owner", None)
        whose = f" [trained by {owner.get('user_name')} in group {owner.get('group_name')}]" if owner else ""
        lines.append(f"- {model.name}: {getattr(model, 'description', '')}{whose}")
        card = getattr(model, "card_text", lambda: "")()
        lines += [f"    {line}" for line in card.splitlines()]
    return "\n".join(lines)


def list_models_script(script_client, *, conn=None) -> str:
    """The body of List_Models: print the models the caller may use (shared ones and those of their
    groups) and set the ``Message`` and ``Models`` outputs."""
    from dlcore.omero.model_access import usable_models

    try:
        text = models_text(models=usable_models(conn or connect_client(script_client)))
    except DlcoreError as exc:
        text = f"Cannot list the models: {exc}"
    print(text)
    script_client.setOutput("Message", rstring(text.splitlines()[0] + " (see the script's output for every card)"))
    script_client.setOutput("Models", rstring(text))
    return text
