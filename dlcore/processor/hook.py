"""Puts dlcore's processor class in place when OMERO starts a processor in this environment.

An OMERO 5.6 node starts its processor as ``${PYTHON} -m runProcessor`` (older versions as
``python runProcessor.py``; the ``ProcessorTemplate`` of OMERO.server's ``etc/grid/templates.xml``
names it), and omero-py's ``runProcessor`` does ``from omero.processor import ProcessorI``.  Both
ways, ``sys.argv[0]`` is the path of ``runProcessor.py`` by the time that import runs.  The Ansible role adds a one-line ``.pth`` file to the
processor's virtual environment::

    import dlcore.processor.hook; dlcore.processor.hook.install()

:func:`install` only adds an import hook (nothing is imported).  When the running program is
``runProcessor`` and it imports ``omero.processor``, the hook replaces
``omero.processor.ProcessorI`` by :class:`dlcore.processor.server.DlcoreProcessorI` right after
the module loads, so ``runProcessor`` serves dlcore's class.  Any other program in the
environment (the scripts themselves, the CLI) is left alone.  Should dlcore's class fail to
load, the hook logs why and OMERO's own processor runs unchanged.

Set ``DLCORE_PROCESSOR_EXTENSION=0`` in the node's environment to switch it off.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys

logger = logging.getLogger(__name__)

TARGET = "omero.processor"
LAUNCHERS = ("runProcessor.py", "runProcessor")
PTH_LINE = "import dlcore.processor.hook; dlcore.processor.hook.install()\n"


def is_processor_launch(argv: list[str]) -> bool:
    """Whether a program is OMERO's processor launcher.

    Parameters
    ----------
    argv : list of str
        The program's ``sys.argv``.

    Returns
    -------
    bool
        True when ``argv[0]`` names ``runProcessor.py`` (run as a file or with ``-m``).
    """
    return bool(argv) and os.path.basename(argv[0]) in LAUNCHERS


def patch(module) -> bool:
    """Make ``module`` (the loaded ``omero.processor``) hand out dlcore's processor class.

    Parameters
    ----------
    module : module
        ``omero.processor``, just executed.

    Returns
    -------
    bool
        True when ``module.ProcessorI`` is now :class:`~dlcore.processor.server.DlcoreProcessorI`;
        False when dlcore's class failed to load (logged; OMERO's class is left in place so the
        node keeps processing scripts).
    """
    try:
        from dlcore.processor.server import DlcoreProcessorI
    except Exception:  # never take the node's processor down with us
        logger.exception("dlcore processor extension not loaded; OMERO's ProcessorI serves unchanged")
        return False
    module.ProcessorI = DlcoreProcessorI
    return True


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        patch(module)


class ProcessorFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loader of ``omero.processor`` in a processor launch."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self._argv = argv

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        if not is_processor_launch(self._argv if self._argv is not None else sys.argv):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


def install(argv: list[str] | None = None) -> bool:
    """Add the import hook (what the ``.pth`` line calls at interpreter start).

    Parameters
    ----------
    argv : list of str, optional
        The program's arguments, read when ``omero.processor`` is imported (default
        ``sys.argv`` at that moment).

    Returns
    -------
    bool
        True when the hook was added; False when ``DLCORE_PROCESSOR_EXTENSION=0``, when
        ``omero.processor`` is already imported, or when the hook is already there.
    """
    if os.environ.get("DLCORE_PROCESSOR_EXTENSION", "1") == "0":
        return False
    if TARGET in sys.modules or any(isinstance(f, ProcessorFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, ProcessorFinder(argv))
    return True
