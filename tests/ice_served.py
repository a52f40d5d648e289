"""The double's services served over real Ice: servants on 127.0.0.1, called through omero-py's proxies.

A call then goes through omero-py's generated proxy and real Ice marshalling to a servant in an object
adapter on 127.0.0.1 (a second communicator in this process), exactly as against a server: a wrong
argument type (``rint`` where Slice says ``int``, an ``int`` where it says ``double``) fails in the test
as it would in production, and so does a result or an exception Ice cannot send back.

OMERO's services are AMD (``["amd"]`` in their Slice): Ice dispatches ``<op>_async(cb, *args, current)``
and the servant answers with ``cb.ice_response(result)`` or ``cb.ice_exception(exc)``.  :func:`serve`
builds such a servant around a plain backend object of the double whose methods take the same
arguments plus ``ctx`` (the call's context).
"""
from __future__ import annotations

import atexit
import threading

import Ice
import omero
import omero.clients  # noqa: F401  (registers omero.model's classes)
import omero.ObjectFactoryRegistrar as object_factories

_LOCK = threading.Lock()
_STATE: dict = {}


def _communicator():
    ic = Ice.initialize()
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


def _servant_class(interface, backend):
    def operation(name):
        method = getattr(backend, name)

        def dispatch_async(self, callback, *args):
            *args, current = args
            try:
                result = method(*args, ctx=dict(current.ctx))
            except omero.ServerError as exc:
                callback.ice_exception(exc)
                return
            except Exception as exc:  # noqa: BLE001 - what a server reports for a bug: InternalException
                callback.ice_exception(omero.InternalException(None, None, f"{type(exc).__name__}: {exc}"))
                return
            if result is None:
                callback.ice_response()
            else:
                callback.ice_response(result)

        return dispatch_async

    names = [n for n in dir(type(backend)) if not n.startswith("_") and callable(getattr(backend, n))]
    return type(f"Served{interface.__name__}", (interface,), {f"{n}_async": operation(n) for n in names})


def serve(interface, proxy_class, backend):
    """A client proxy (``proxy_class``) to ``backend`` served as a servant of ``interface`` over real Ice."""
    state = _endpoints()
    obj = state["adapter"].addWithUUID(_servant_class(interface, backend)())
    return proxy_class.uncheckedCast(state["client"].stringToProxy(state["server"].proxyToString(obj)))
