"""The double's services served over real Ice: servants on 127.0.0.1, called through omero-py's proxies.

A call then goes through omero-py's generated proxy and real Ice marshalling to a servant in an object
adapter on 127.0.0.1 (a second communicator in this process), exactly as against a server: a wrong
argument type (``rint`` where Slice says ``int``, an ``int`` where it says ``double``, a numpy integer
where it says ``long``) fails in the test as it would in production, and so does a result or an exception
Ice cannot send back.  What the client gets back is a copy, as from a server: changing a returned object
changes nothing stored, and an object the client sent is not given its id by the save.

Most of OMERO's services are AMD (``["amd"]`` in their Slice): Ice dispatches
``<op>_async(cb, *args, current)`` and the servant answers with ``cb.ice_response(result)`` or
``cb.ice_exception(exc)``; others (``omero.grid.Table``, ``omero.cmd.Handle``) are dispatched as
``<op>(*args, current)``.  :func:`serve` builds a servant of either kind, operation by operation as the
Slice declares it, around a plain backend object of the double; a backend method that takes ``ctx`` is
given the call's context (``omero.group``, ...).  Stateful services (a RawPixelsStore, a Table, a command
Handle) are removed from the adapter when closed: a later call fails with ``Ice.ObjectNotExistException``,
as on a server.

The communicators are configured as omero-py configures a client (``Ice.MessageSizeMax`` =
``omero.constants.MESSAGESIZEMAX``), so a message the server would refuse as too big is refused here.
"""
from __future__ import annotations

import atexit
import functools
import inspect
import re
import threading

import Ice
import omero
import omero.clients  # noqa: F401  (registers omero.model's classes)
import omero.constants
import omero.ObjectFactoryRegistrar as object_factories

_LOCK = threading.Lock()
_STATE: dict = {}

#: methods after which a stateful service is gone (its servant removed from the adapter)
DESTROYING = ("close",)


def _communicator():
    data = Ice.InitializationData()
    data.properties = Ice.createProperties()
    data.properties.setProperty("Ice.MessageSizeMax", str(omero.constants.MESSAGESIZEMAX))
    data.properties.setProperty("Ice.ImplicitContext", "Shared")  # as omero-py's client sets it
    data.properties.setProperty("Ice.ThreadPool.Server.Size", "4")  # tiles are read from several threads
    data.properties.setProperty("Ice.ThreadPool.Server.SizeMax", "16")
    ic = Ice.initialize(data)
    for factory in omero.rtypes.ObjectFactories.values():
        factory.register(ic)
    object_factories.registerObjectFactory(ic, None)
    return ic


def _endpoints():
    with _LOCK:
        if not _STATE:
            server, client = _communicator(), _communicator()
            adapter = server.createObjectAdapterWithEndpoints("omero-double", "tcp -h 127.0.0.1 -p 0")
            adapter.activate()
            _STATE.update(server=server, client=client, adapter=adapter)
            atexit.register(_shutdown)
        return _STATE


def _shutdown() -> None:
    for key in ("client", "server"):
        if key in _STATE:
            _STATE[key].destroy()
    _STATE.clear()


def _takes_ctx(method) -> bool:
    return "ctx" in inspect.signature(method).parameters


def _call(backend, name, args, current):
    """Run a backend method for one Ice call; returns ``(result, exception)``, the exception as Ice sends it."""
    method = getattr(backend, name)
    try:
        result = method(*args, ctx=dict(current.ctx)) if _takes_ctx(method) else method(*args)
    except (omero.ServerError, Ice.RequestFailedException) as exc:  # ObjectNotExist: a closed session's service
        return None, exc
    except Exception as exc:  # noqa: BLE001 - what a server reports for a bug: InternalException
        return None, omero.InternalException(None, None, f"{type(exc).__name__}: {exc}")
    finally:
        if name in DESTROYING:
            try:
                current.adapter.remove(current.id)
            except Ice.NotRegisteredException:
                pass
    return result, None


@functools.lru_cache(maxsize=None)
def _slice_source(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _is_void(interface, name: str) -> bool:
    """Whether the Slice operation returns nothing: its generated ``IcePy.Operation(...)`` has ``None`` as
    return type (the argument before the exception tuple).  An AMD callback must be answered with exactly
    the declared results: ``ice_response()`` for an operation that returns a value crashes IcePy."""
    for cls in interface.__mro__:
        skeleton = cls.__dict__.get(f"{name}_async") or cls.__dict__.get(name)
        if skeleton is None:
            continue
        source = _slice_source(skeleton.__code__.co_filename)  # the generated *_ice.py module
        match = re.search(rf"^\s*{cls.__name__}\._op_{name} = IcePy\.Operation\(.*$", source, re.M)
        if match:
            return re.search(r", None, \([^()]*\)\)\s*$", match.group(0)) is not None
    raise LookupError(f"{interface.__name__}.{name} is not in the generated Slice code")


def _amd_operation(interface, backend, name):
    void = _is_void(interface, name)

    def dispatch_async(self, callback, *args):
        *args, current = args
        result, error = _call(backend, name, args, current)
        if error is not None:
            callback.ice_exception(error)
        elif void:
            callback.ice_response()
        else:
            callback.ice_response(result)

    return dispatch_async


def _plain_operation(backend, name):
    def dispatch(self, *args):
        *args, current = args
        result, error = _call(backend, name, args, current)
        if error is not None:
            raise error
        return result

    return dispatch


def _not_implemented(name, amd):
    def refuse(self, *args):
        raise Ice.OperationNotExistException(operation=name)

    return refuse


def _servant_class(interface, backend):
    """A servant class of ``interface``: every operation the Slice declares, AMD or not as declared; those
    the backend has run it, the others fail with ``OperationNotExistException`` (the generated skeleton
    would silently answer null)."""
    members = {}
    for attr in dir(interface):
        if not attr.startswith("_op_"):
            continue
        name = attr.removeprefix("_op_")
        amd = hasattr(interface, f"{name}_async")
        public = not name.startswith("_") and callable(getattr(backend, name, None))
        if public:
            members[f"{name}_async" if amd else name] = (
                _amd_operation(interface, backend, name) if amd else _plain_operation(backend, name))
        else:
            members[f"{name}_async" if amd else name] = _not_implemented(name, amd)
    return type(f"Served{interface.__name__}", (interface,), members)


def serve(interface, proxy_class, backend):
    """A client proxy (``proxy_class``) to ``backend`` served as a servant of ``interface`` over real Ice.

    The backend's public methods that ``interface`` declares are served; calling any other operation of the
    interface fails."""
    state = _endpoints()
    obj = state["adapter"].addWithUUID(_servant_class(interface, backend)())
    return proxy_class.uncheckedCast(state["client"].stringToProxy(state["server"].proxyToString(obj)))
