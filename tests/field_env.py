"""The field-models environment's Python for the ``field_env`` tests (``DLCORE_FIELD_PYTHON``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def field_python() -> str:
    """``DLCORE_FIELD_PYTHON``; the test fails (not skips) with how to set it when it is missing: the
    ``field_env`` tests are deselected by default and run on purpose (``.ci/run``)."""
    path = os.environ.get("DLCORE_FIELD_PYTHON")
    if not path:
        pytest.fail("DLCORE_FIELD_PYTHON is not set: these tests need the field-models environment's Python "
                    "(install it with tools/install_field_env.sh and export DLCORE_FIELD_PYTHON=<venv>/bin/python)")
    if not Path(path).is_file():
        pytest.fail(f"DLCORE_FIELD_PYTHON={path} does not exist")
    return path
