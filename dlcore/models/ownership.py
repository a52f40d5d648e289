"""Who may use a trained model, and who may add versions of it.

A model trained with Train_Model belongs to the OMERO user who trained it and to the group its
training images are in; that is written into the package as ``owner.json`` before the package
becomes visible.  Shipped and sysadmin-installed models have no ``owner.json``: everyone may use
them and nobody replaces them through OMERO (sysadmins use ``dlcore models``).

The rules (OMERO's own idea of sharing: a group's members see its data):

* **use** (Run_Model, List_Models, Base_Model): a model without owner, or one whose group the caller
  is a member of; an OMERO administrator may use every model;
* **add a version** (Train_Model with an existing name): only the user who owns every version so far;
  a name taken by a shipped model or by another user is refused, so nobody's model is overwritten or
  shadowed by a newer version of someone else's.

No omero import: the caller is described by :class:`Caller`, which :mod:`dlcore.omero` builds from the
session's event context.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dlcore.errors import ParameterError

OWNER_FILE = "owner.json"


@dataclass(frozen=True)
class Caller:
    """The OMERO user a script runs for."""

    user_id: int
    user_name: str
    group_ids: frozenset[int]  # every group the user is a member of
    is_admin: bool = False


def owner_record(caller: Caller, group_id: int, group_name: str) -> dict:
    """The ``owner.json`` content for a model ``caller`` trains on data of group ``group_id``."""
    return {"user_id": int(caller.user_id), "user_name": caller.user_name,
            "group_id": int(group_id), "group_name": group_name}


def read_owner(folder: Path) -> dict | None:
    """A package's ``owner.json``, or None when it has none (a shared model).

    An unreadable file counts as owned by nobody anyone can match (user and group id -1): a damaged
    record must not turn a private model into a shared one.
    """
    path = Path(folder) / OWNER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {**data, "user_id": int(data["user_id"]), "group_id": int(data["group_id"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"user_id": -1, "group_id": -1, "user_name": "?", "group_name": f"? (unreadable {path})"}


def can_use(owner: dict | None, caller: Caller) -> bool:
    """Whether ``caller`` may run (or train from) a model with this owner record."""
    return owner is None or caller.is_admin or owner["group_id"] in caller.group_ids


def usable(records: Iterable, caller: Caller) -> list:
    """The records (anything with an ``owner`` attribute) ``caller`` may use, in order."""
    return [r for r in records if can_use(getattr(r, "owner", None), caller)]


def check_use(record, caller: Caller, usable_names: Iterable[str]) -> None:
    """Raise ParameterError unless ``caller`` may use ``record``; the message names the models they may use."""
    owner = getattr(record, "owner", None)
    if not can_use(owner, caller):
        raise ParameterError(
            f"model {record.name!r} belongs to the group {owner.get('group_name', owner['group_id'])!r}, which "
            f"{caller.user_name} is not a member of; models you may use: {', '.join(usable_names) or 'none'}")


def check_add_version(name: str, existing: Iterable, caller: Caller) -> None:
    """Raise ParameterError unless ``caller`` may train a model called ``name`` given the registry's
    ``existing`` records of that name (every version)."""
    for record in existing:
        owner = getattr(record, "owner", None)
        if owner is None:
            raise ParameterError(f"Model_Name {name!r} is the name of a shared model ({record.name}); "
                                 "choose another name for your model")
        if owner["user_id"] != caller.user_id:
            raise ParameterError(f"Model_Name {name!r} belongs to {owner.get('user_name', owner['user_id'])} "
                                 f"({record.name}); choose another name for your model")
