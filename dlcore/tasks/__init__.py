"""Analysis tasks the tile engine runs (see :mod:`dlcore.tasks.base`), and finding them by name.

A task name is either a built-in task (the classical pipelines) or a model in the registry
(:mod:`dlcore.models`).  :func:`resolve_task` is the one place that turns a name and parameters
into a ready task, for the command line and the OMERO scripts alike.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from dlcore.errors import ModelError, ParameterError

BUILTIN_TASKS = {"nuclei-classical": "dlcore.tasks.classical:ClassicalNuclei"}
AUTO_TASKS = ("nuclei",)  # a name that picks its task from each slide (dlcore.tasks.auto)
AUTO_DESCRIPTIONS = {
    "nuclei": "nuclei with the shipped model that fits each image: nuclei-brightfield-unet for 8-bit RGB "
              "(H&E, IHC), nuclei-fluorescence-unet for anything else (on the nuclear channel: --channel N, "
              "or the one named DAPI/Hoechst); nuclei-classical where torch or the model is missing",
}


def task_names() -> list[str]:
    """The automatic task names, then the built-in tasks (models from the registry come on top)."""
    return [*AUTO_TASKS, *builtin_task_names()]


def builtin_task_names() -> list[str]:
    """Names of the tasks built into dlcore (models from the registry come on top)."""
    return sorted(BUILTIN_TASKS)


def builtin_task_class(name: str) -> type:
    """The class of the built-in task ``name``; raises ModelError when there is none."""
    if name not in BUILTIN_TASKS:
        raise ModelError(f"no built-in task {name!r}; built-in tasks: {', '.join(builtin_task_names())}")
    module, attr = BUILTIN_TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def task_parameters(name: str) -> dict[str, dataclasses.Field]:
    """The parameters a built-in task accepts, name -> dataclass field."""
    return {f.name: f for f in dataclasses.fields(builtin_task_class(name)) if f.init}


def build_builtin_task(name: str, params: dict[str, Any]):
    """A built-in task with ``params`` applied; unknown parameters are an error naming the valid ones."""
    fields = task_parameters(name)
    unknown = set(params) - set(fields)
    if unknown:
        raise ParameterError(f"task {name!r} has no parameter(s) {sorted(unknown)}; its parameters: {', '.join(fields)}")
    return builtin_task_class(name)(**params)


def resolve_task(name: str, params: dict[str, Any] | None = None, *, config=None):
    """The task called ``name``: a built-in task, an automatic one (``nuclei``: the task is chosen when
    the slide is open, see :mod:`dlcore.tasks.auto`), or a model installed in the registry.

    Raises :class:`~dlcore.errors.ModelError` naming what is installed when nothing matches.
    """
    params = dict(params or {})
    if name in BUILTIN_TASKS:
        return build_builtin_task(name, params)
    if name in AUTO_TASKS:  # chosen per slide, when the slide is open
        from dlcore.tasks.auto import AutoTask

        return AutoTask(name, params, config)
    try:
        registry = importlib.import_module("dlcore.models.registry")
    except ModuleNotFoundError:
        registry = None
    if registry is not None and hasattr(registry, "load_task"):
        return registry.load_task(name, params, config=config)
    raise ModelError(f"no task or model called {name!r}; built-in tasks: {', '.join(builtin_task_names())} "
                     "(see `dlcore models` for installed models)")
