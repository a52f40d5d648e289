"""Connecting to OMERO outside a script: from ``OMERO_HOST``, ``OMERO_USER``, ``OMERO_PASSWORD``.

Scripts get their connection from the script client (:func:`dlcore.omero.scripts.connect_client`)
and ``omero dl`` from the CLI's session; this is for the live test suite and notebooks.
"""
from __future__ import annotations

import os

from dlcore.errors import OmeroError


def connect(*, host: str | None = None, user: str | None = None, password: str | None = None,
            port: int | None = None, group: str | None = None):
    """A connected BlitzGateway; arguments default to ``OMERO_HOST``/``_USER``/``_PASSWORD``/``_PORT``/``_GROUP``."""
    from omero.gateway import BlitzGateway

    host = host or os.environ.get("OMERO_HOST")
    user = user or os.environ.get("OMERO_USER")
    password = password or os.environ.get("OMERO_PASSWORD")
    port = int(port or os.environ.get("OMERO_PORT", 4064))
    if not (host and user and password):
        raise OmeroError("no OMERO server given: set OMERO_HOST, OMERO_USER and OMERO_PASSWORD (and OMERO_PORT if not 4064)")
    conn = BlitzGateway(user, password, host=host, port=port, group=group or os.environ.get("OMERO_GROUP"), secure=True)
    if not conn.connect():
        raise OmeroError(f"cannot log in to OMERO at {host}:{port} as {user}: {conn.getLastError() or 'wrong user or password?'}")
    return conn
