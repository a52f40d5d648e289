"""Which registry models the OMERO user running a script may use (:mod:`dlcore.models.ownership`).

The caller is read from the session's event context (``BlitzGateway.getEventContext``: user id and
name, the groups they are a member of, whether they are an administrator), so the rule follows OMERO's
own group membership.
"""
from __future__ import annotations

from dlcore.errors import ParameterError
from dlcore.models.ownership import Caller, check_use, owner_record, usable


def caller_of(conn) -> Caller:
    """The user a connection (a script's session) acts for."""
    context = conn.getEventContext()
    return Caller(user_id=int(context.userId), user_name=str(context.userName),
                  group_ids=frozenset(int(g) for g in (context.memberOfGroups or ())), is_admin=bool(context.isAdmin))


def usable_models(conn, config=None) -> list:
    """The registry's models the caller may use: shared ones and those of the caller's groups."""
    from dlcore.models.registry import list_models

    return usable(list_models(config), caller_of(conn))


def usable_model(conn, name: str, config=None):
    """The registry record of model ``name`` when the caller may use it; ParameterError otherwise (naming
    the models they may use), ModelError when there is no such model."""
    from dlcore.models.registry import find_model

    record = find_model(name, config)
    check_use(record, caller_of(conn), [r.name for r in usable_models(conn, config)])
    return record


def owner_for_training(conn, data_type: str, ids: list[int]) -> dict:
    """The ``owner.json`` record of a model trained on these objects: the caller, and the group the first
    object is in (the group whose members will see and use the model)."""
    obj = conn.getObject(data_type, int(ids[0])) if ids else None
    if obj is None:
        raise ParameterError(f"{data_type} {ids[0] if ids else '(none)'} is not readable; check the IDs")
    group = obj.getDetails().getGroup()
    return owner_record(caller_of(conn), group.getId(), group.getName() or str(group.getId()))
