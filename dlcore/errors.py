"""The exception hierarchy of dlcore.

Every error dlcore raises on purpose derives from :class:`DlcoreError`, so entry points (the
command line, the OMERO scripts) catch it once and show its message.  A message names the
problem, the offending value and the fix.
"""
from __future__ import annotations


class DlcoreError(Exception):
    """Base class of every error dlcore raises deliberately."""


class InputError(DlcoreError):
    """The user's input (file, image, ids) cannot be used as given."""


class SlideError(InputError):
    """A slide cannot be opened or read (missing, unsupported, corrupt, wrong pixel type)."""


class ParameterError(DlcoreError, ValueError):
    """A parameter has an invalid value."""


class ModelError(DlcoreError):
    """A model is missing, invalid or cannot run."""


class ConfigError(DlcoreError):
    """dlcore's configuration file is unreadable or invalid."""


class OutputError(DlcoreError):
    """Results cannot be written where they were asked for."""


class OmeroError(DlcoreError):
    """An OMERO object is missing, of the wrong type, or not accessible to the user."""


class RunStopped(DlcoreError):
    """A run stopped at a tile boundary before its end (a time limit); its checkpoint is kept, so the
    same run started again continues where it stopped (:mod:`dlcore.tiling.checkpoint`)."""


class InvariantError(DlcoreError):
    """A result broke an invariant dlcore guarantees (e.g. an object outside the image): a bug in dlcore
    or in a task; nothing is written, and the message says which object and which rule."""


def require(condition: bool, message: str, *, error: type[DlcoreError] = ParameterError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)
