"""An in-process OMERO for the tests: real ``omero.model`` objects with OMERO's semantics, no server.

It implements exactly the part of BlitzGateway and the OMERO services that :mod:`dlcore.omero`
uses (listed in that package's docstring), with the behaviour the adapter must cope with.  The services
(IQuery, IUpdate, IPixels, the ServiceFactory with its RawPixelsStores, SharedResources, Tables and
command Handles) are served over real Ice (:mod:`ice_served`: omero-py's proxies, Ice marshalling, a
servant on 127.0.0.1), so argument types are Ice's own checks and what comes back is a copy; the
BlitzGateway wrappers are client-side, as in omero-py:

- ids are assigned on save (per table: annotations share one id space, shapes another);
- every save names its group in the call context; ``-1`` is refused, links across groups are refused,
  and so are ROIs or annotation links on images the user may not annotate (OMERO's permissions:
  ``rw----`` private, ``rwr---`` read-only, ``rwra--`` read-annotate, ``rwrw--`` read-write);
- other users' objects in a private group are invisible;
- the RawPixelsStore numbers resolution levels the OMERO way round (``levels - 1`` is full
  resolution, descriptions largest first), has a tile size per level, returns big-endian bytes one
  channel at a time, and counts as open until closed;
- images the server creates (``IPixels.createImage``) are written as OMERO.server 5.6 writes them:
  above 3192 x 3192 as a pyramid (8- and 16-bit only, 256 x 256 tiles on the grid, in order, read-only once
  saved), below it as a ROMIO buffer (whole-row tiles at x = 0), and displayed through a RenderingEngine
  whose windows and colours are kept (:class:`RenderingEngine`; the rules and their sources are at
  :data:`MAX_PLANE_PIXELS`);
- deleting cascades like OMERO's Delete2 for the graphs dlcore deletes.

Every service call is counted in :attr:`Server.calls` (``"Service.method"``), which the
server-call benchmark reads.  dlcore never imports this module.
"""
from __future__ import annotations

import functools
import itertools
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import Ice
import numpy as np
import omero
import omero.api
import omero.cmd
import omero.grid
from omero.gateway import ServiceOptsDict
from omero.model import (
    ChannelI, DatasetAnnotationLinkI, DatasetI, DatasetImageLinkI, ExperimenterGroupI, ExperimenterI, FileAnnotationI,
    ImageAnnotationLinkI, ImageI, LengthI, LogicalChannelI, MapAnnotationI, OriginalFileI, PermissionsI, PixelsI,
    PixelsTypeI, ProjectDatasetLinkI, ProjectI, RoiAnnotationLinkI, RoiI, TagAnnotationI, InstrumentI, ObjectiveI,
    ObjectiveSettingsI,
)
from omero.model.enums import UnitsLength
from omero.model import EventI
from omero.rtypes import rdouble, rint, rlong, rstring, rtime

from dlcore.omero.annotated import Q_IMAGE_MAPS, Q_IMAGE_OBJECTIVE, Q_IMAGE_TAGS, Q_ROI_TAGS, Q_ROIS
from dlcore.omero.annotations import Q_RUN_LINKS, Q_RUN_ROIS, Q_TAG
from dlcore.omero.image_output import Q_PIXELS_CHANNELS
from dlcore.omero.label_image import Q_IMAGE_PIXELS, Q_PIXELS_TYPE
from dlcore.omero.journal import GRAPHS as OWNED_ID_GRAPHS, Q_OWNED_IDS
from dlcore.omero.qc_table import Q_DATASET_QC_LINKS
from dlcore.omero.training import Q_ROI_AUTHORS

ANNOTATE = {"rwra--", "rwrw--"}  # group permissions that let members annotate each other's data
READ = {"rwr---", "rwra--", "rwrw--"}
BIG_ENDIAN = {"int8": ">i1", "uint8": ">u1", "int16": ">i2", "uint16": ">u2", "int32": ">i4", "uint32": ">u4",
              "float": ">f4", "double": ">f8", "bit": ">u1"}


def _table(obj) -> str:
    """The id space of a model object (OMERO assigns ids per table)."""
    name = type(obj).__name__.removesuffix("I")
    if name.endswith("Annotation"):
        return "Annotation"
    if name in ("Polygon", "Rectangle", "Point", "Mask", "Ellipse", "Line", "Polyline", "Label"):
        return "Shape"
    return name


def _counted(service: str):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            self.server.calls[f"{service}.{fn.__name__}"] += 1
            conn = getattr(self, "conn", None)
            if conn is not None:
                conn.check_session()
            return fn(self, *args, **kwargs)
        return inner
    return wrap


def like_regex(pattern: str, *, escape: str | None = None):
    """SQL/HQL ``LIKE`` as PostgreSQL evaluates it: ``%`` any run, ``_`` any one character, ``escape``
    makes the next character literal."""
    import re

    out, chars = [], iter(pattern)
    for char in chars:
        if escape is not None and char == escape:
            out.append(re.escape(next(chars, "")))
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.S)


def _val(x):
    return x.getValue() if hasattr(x, "getValue") else x


class Server:
    """The whole fake installation: users, groups, objects, pixel data, files, tables."""

    def __init__(self) -> None:
        self.database_uuid = str(uuid.uuid4())  # each installation's own, as PostgreSQL's dbuuid
        self.objects: dict[tuple[str, int], object] = {}
        self._ids: dict[str, itertools.count] = defaultdict(lambda: itertools.count(1))
        self.pixels: dict[int, list[np.ndarray]] = {}  # pixels id -> levels, full resolution first, (Y, X, C)
        self.tile_sizes: dict[int, list[tuple[int, int]]] = {}
        self.file_bytes: dict[int, bytes] = {}
        self.tables: dict[int, dict] = {}  # OriginalFile id -> {"columns": [...], "values": {name: []}}
        self.calls: Counter = Counter()
        self.open_stores: set = set()
        self.channel_ranges: dict[tuple[int, int], tuple[float, float]] = {}  # (pixels id, channel) -> min, max
        self.pyramids_pending: set[int] = set()  # pixels ids whose pyramid the server is still building
        self.delete_seconds = 0.0  # how long a Delete2 takes before its handle has a response
        self.session_ttl_ms = 0  # time to live of new sessions (a script's: omero.scripts.timeout); 0: none
        self.open_handles: set = set()
        self.deleted: list[dict] = []  # the targets of every Delete2 that completed
        self.cancelled: list[dict] = []  # the targets of every Delete2 closed before it completed
        self.members: dict[int, set[int]] = defaultdict(set)  # group id -> user ids
        self.admins: set[int] = set()  # user ids of OMERO administrators
        self.created_pixels: set[int] = set()  # pixels made by IPixels.createImage (no original file)
        self.pyramid_writes: dict[int, dict] = {}  # pixels id -> where a pyramid's sequential writing stands
        self.pixels_written: set[int] = set()  # created pixels whose file exists (tiles were written)
        self.rendering: dict[tuple[int, int], dict] = {}  # (pixels id, user id) -> saved rendering settings

    # -- setting up -------------------------------------------------------------------------------
    def new_id(self, table: str) -> int:
        return next(self._ids[table])

    def store(self, obj, *, owner: int, group: int):
        table = _table(obj)
        obj.setId(rlong(self.new_id(table)))
        details = obj.getDetails()
        details.setOwner(ExperimenterI(owner, False))
        details.setGroup(ExperimenterGroupI(group, False))
        event = EventI(self.new_id("Event"), True)  # dlcore reads its time through a query that joins it
        event.setTime(rtime(int(time.time() * 1000)))
        details.setCreationEvent(event)
        perms = self.objects[("ExperimenterGroup", group)].getDetails().getPermissions() if table != "ExperimenterGroup" else None
        if perms is not None:
            details.setPermissions(PermissionsI(str(perms)))
        self.objects[(table, obj.getId().getValue())] = obj
        return obj

    def add_group(self, name: str, perms: str = "rwra--") -> int:
        group = ExperimenterGroupI()
        group.setName(rstring(name))
        group.setId(rlong(self.new_id("ExperimenterGroup")))
        group.getDetails().setPermissions(PermissionsI(perms))
        self.objects[("ExperimenterGroup", group.getId().getValue())] = group
        return group.getId().getValue()

    def add_user(self, name: str, groups: list[int]) -> int:
        user = ExperimenterI()
        user.setOmeName(rstring(name))
        user.setId(rlong(self.new_id("Experimenter")))
        self.objects[("Experimenter", user.getId().getValue())] = user
        for g in groups:
            self.members[g].add(user.getId().getValue())
        return user.getId().getValue()

    def connect(self, user: int, group: int) -> "Conn":
        return Conn(self, user, group)

    def add_project(self, name: str, *, owner: int, group: int) -> int:
        project = ProjectI()
        project.setName(rstring(name))
        return self.store(project, owner=owner, group=group).getId().getValue()

    def add_dataset(self, name: str, *, owner: int, group: int, project: int | None = None) -> int:
        dataset = DatasetI()
        dataset.setName(rstring(name))
        did = self.store(dataset, owner=owner, group=group).getId().getValue()
        if project is not None:
            link = ProjectDatasetLinkI()
            link.setParent(ProjectI(project, False))
            link.setChild(DatasetI(did, False))
            self.store(link, owner=owner, group=group)
        return did

    def add_image(self, levels: list[np.ndarray], *, name: str, owner: int, group: int, dataset: int | None = None,
                  mpp: float | None = 0.5, mpp_unit=UnitsLength.MICROMETER, tile: tuple[int, int] = (256, 256),
                  pixels_type: str | None = None, channel_names: list[str] | None = None, size_z: int = 1,
                  objective_magnification: float | None = None) -> int:
        """Store an image from its pyramid (list of ``(Y, X, C)`` arrays, full resolution first), with an
        instrument whose objective has ``objective_magnification`` when given (as Bio-Formats imports a scan)."""
        base = levels[0]
        image = ImageI()
        image.setName(rstring(name))
        if objective_magnification is not None:
            instrument, objective, settings = InstrumentI(), ObjectiveI(), ObjectiveSettingsI()
            self.store(instrument, owner=owner, group=group)
            objective.setNominalMagnification(rdouble(objective_magnification))
            objective.setInstrument(instrument)
            self.store(objective, owner=owner, group=group)
            settings.setObjective(objective)
            self.store(settings, owner=owner, group=group)
            image.setInstrument(instrument)
            image.setObjectiveSettings(settings)
        self.store(image, owner=owner, group=group)
        pixels = PixelsI()
        pixels.setSizeX(rint(base.shape[1]))
        pixels.setSizeY(rint(base.shape[0]))
        pixels.setSizeC(rint(base.shape[2]))
        pixels.setSizeZ(rint(size_z))
        pixels.setSizeT(rint(1))
        ptype = PixelsTypeI()
        ptype.setValue(rstring(pixels_type or base.dtype.name.replace("float64", "double").replace("float32", "float")))
        pixels.setPixelsType(ptype)
        if mpp is not None:
            pixels.setPhysicalSizeX(LengthI(mpp, mpp_unit))
            pixels.setPhysicalSizeY(LengthI(mpp, mpp_unit))
        pixels.setImage(image)
        self.store(pixels, owner=owner, group=group)
        image.addPixels(pixels)
        self.pixels[pixels.getId().getValue()] = [np.asarray(a) for a in levels]
        self.tile_sizes[pixels.getId().getValue()] = [tile] * len(levels)
        self.channel_names = getattr(self, "channel_names", {})
        self.channel_names[image.getId().getValue()] = channel_names
        if dataset is not None:
            link = DatasetImageLinkI()
            link.setParent(DatasetI(dataset, False))
            link.setChild(ImageI(image.getId().getValue(), False))
            self.store(link, owner=owner, group=group)
        return image.getId().getValue()

    # -- reading the state back -------------------------------------------------------------------
    def all(self, table: str, cls=None) -> list:
        return [o for (t, _), o in sorted(self.objects.items(), key=lambda kv: (kv[0][0], kv[0][1]))
                if t == table and (cls is None or isinstance(o, cls))]

    def get(self, table: str, oid: int):
        return self.objects.get((table, int(oid)))

    def rois_of(self, image_id: int) -> list:
        return [r for r in self.all("Roi") if r.getImage().getId().getValue() == image_id]

    def annotations_of(self, image_id: int, cls=None) -> list:
        anns = [self.get("Annotation", link.getChild().getId().getValue()) for link in self.all("ImageAnnotationLink")
                if link.getParent().getId().getValue() == image_id]
        return [a for a in anns if cls is None or isinstance(a, cls)]

    def dataset_annotations(self, dataset_id: int, cls=None) -> list:
        anns = [self.get("Annotation", link.getChild().getId().getValue()) for link in self.all("DatasetAnnotationLink")
                if link.getParent().getId().getValue() == dataset_id]
        return [a for a in anns if cls is None or isinstance(a, cls)]

    def images_in(self, dataset_id: int) -> list[int]:
        return [link.getChild().getId().getValue() for link in self.all("DatasetImageLink")
                if link.getParent().getId().getValue() == dataset_id]

    def pixels_of(self, image_id: int) -> int:
        return next(p.getId().getValue() for p in self.all("Pixels") if p.getImage().getId().getValue() == image_id)

    # -- permissions ------------------------------------------------------------------------------
    def group_perms(self, group: int) -> str:
        return str(self.objects[("ExperimenterGroup", group)].getDetails().getPermissions())

    def owner_group(self, obj) -> tuple[int, int]:
        details = obj.getDetails()
        return details.getOwner().getId().getValue(), details.getGroup().getId().getValue()

    def can_see(self, user: int, obj) -> bool:
        owner, group = self.owner_group(obj)
        return user in self.members[group] and (owner == user or self.group_perms(group) in READ)

    def can_annotate(self, user: int, obj) -> bool:
        owner, group = self.owner_group(obj)
        return self.can_see(user, obj) and (owner == user or self.group_perms(group) in ANNOTATE)

    def can_link(self, user: int, obj) -> bool:
        owner, group = self.owner_group(obj)
        return self.can_see(user, obj) and (owner == user or self.group_perms(group) == "rwrw--")


# -- BlitzGateway-like connection and wrappers ------------------------------------------------------
class Conn:
    """What dlcore uses of :class:`omero.gateway.BlitzGateway`."""

    def __init__(self, server: Server, user: int, group: int) -> None:
        self.server, self.user, self.group = server, user, group
        self.SERVICE_OPTS = ServiceOptsDict()
        self.SERVICE_OPTS.setOmeroGroup(group)
        self._proxies: dict = {}
        self.closed = False
        self.c = _Client(self)
        self.session_started_ms = int(time.time() * 1000)
        self.session_ttl_ms = server.session_ttl_ms  # a script's session: omero.scripts.timeout (0: none)

    def check_session(self) -> None:
        """A closed session, or one past its time to live, is gone: every call fails (the processor stops
        the job); its services no longer exist."""
        if self.closed:
            raise Ice.ObjectNotExistException()
        if self.session_ttl_ms and time.time() * 1000 > self.session_started_ms + self.session_ttl_ms:
            raise omero.SessionTimeoutException(None, None, "the session's time to live has passed")

    def getSession(self):
        """``BlitzGateway.getSession``: the omero.model.Session with its start and time to live (ms)."""
        from omero.model import SessionI
        from omero.rtypes import rtime

        self.check_session()
        session = SessionI()
        session.setStarted(rtime(self.session_started_ms))
        session.setTimeToLive(rlong(self.session_ttl_ms))
        return session

    def save_group(self, ctx) -> int:
        group = (ctx or {}).get("omero.group") if isinstance(ctx, dict) else None
        group = int(group if group is not None else self.SERVICE_OPTS.getOmeroGroup() or self.group)
        if group == -1:
            raise omero.SecurityViolation(None, None, "cannot save objects with omero.group=-1: name the group")
        if self.user not in self.server.members[group]:
            raise omero.SecurityViolation(None, None, f"user {self.user} is not a member of group {group}")
        return group

    def getObject(self, obj_type: str, oid: int):
        self.server.calls["Gateway.getObject"] += 1
        obj = self.server.get("Annotation" if obj_type.endswith("Annotation") else obj_type, int(oid))
        if obj_type == "FileAnnotation" and not isinstance(obj, FileAnnotationI):
            obj = None  # another kind of annotation with that id: the gateway's query finds nothing
        if obj is None or not self.server.can_see(self.user, obj):
            return None
        group = int(self.SERVICE_OPTS.getOmeroGroup() or self.group)
        if group != -1 and self.server.owner_group(obj)[1] != group:
            return None  # outside the current group, as BlitzGateway without group -1
        return WRAPPERS[obj_type](self, obj)

    def close(self, hard=True):
        """``BlitzGateway.close``: the session ends (with ``client_obj=``, the script's own session)."""
        self.server.calls["Gateway.close"] += 1
        self.closed = True

    def getUserId(self) -> int:
        return self.user

    def getEventContext(self):
        """``BlitzGateway.getEventContext`` (IAdmin.getEventContext): who the session is, and its groups."""
        import omero.sys

        self.check_session()
        user = self.server.get("Experimenter", self.user)
        group = self.server.get("ExperimenterGroup", self.group)
        return omero.sys.EventContext(
            userId=self.user, userName=user.getOmeName().getValue(), groupId=self.group,
            groupName=group.getName().getValue(),
            memberOfGroups=sorted(g for g, users in self.server.members.items() if self.user in users),
            leaderOfGroups=[], isAdmin=self.user in self.server.admins)

    def _served(self, name: str, interface, proxy_class, backend_class):
        """One proxy per service and connection, as BlitzGateway keeps them."""
        if name not in self._proxies:
            from ice_served import serve

            self._proxies[name] = serve(interface, proxy_class, backend_class(self))
        return self._proxies[name]

    def getUpdateService(self):
        return self._served("IUpdate", omero.api.IUpdate, omero.api.IUpdatePrx, UpdateService)

    def getQueryService(self):
        return self._served("IQuery", omero.api.IQuery, omero.api.IQueryPrx, QueryService)

    def getPixelsService(self):
        return self._served("IPixels", omero.api.IPixels, omero.api.IPixelsPrx, PixelsService)

    def getConfigService(self):
        return self._served("IConfig", omero.api.IConfig, omero.api.IConfigPrx, ConfigService)

    def deleteObjects(self, graph_spec, obj_ids, deleteAnns=False, deleteChildren=False, dryRun=False, wait=False):
        raise NotImplementedError(
            "BlitzGateway.deleteObjects(wait=True) waits 5 s, then closing its handle cancels an unfinished "
            "Delete2 (omero-py clients._waitOnCmd, omero-blitz HandleI): use dlcore.omero.deleting.delete_objects")

    def createFileAnnfromLocalFile(self, localPath, origFilePathAndName=None, mimetype=None, ns=None, desc=None):
        self.server.calls["Gateway.createFileAnnfromLocalFile"] += 1
        group = self.save_group(None)
        data = Path(localPath).read_bytes()
        ofile = OriginalFileI()
        ofile.setName(rstring(Path(localPath).name))
        ofile.setPath(rstring("dlcore/"))
        ofile.setSize(rlong(len(data)))
        ofile.setMimetype(rstring(mimetype or "application/octet-stream"))
        self.server.store(ofile, owner=self.user, group=group)
        self.server.file_bytes[ofile.getId().getValue()] = data
        fa = FileAnnotationI()
        fa.setFile(ofile)
        fa.setNs(rstring(ns) if ns else None)
        fa.setDescription(rstring(desc) if desc else None)
        self.server.store(fa, owner=self.user, group=group)
        return Wrapper(self, fa)


class _Client:
    """``omero.client``: its ``sf`` is the session's ServiceFactory, served over real Ice."""

    def __init__(self, conn: Conn) -> None:
        self.sf = conn._served("ServiceFactory", omero.api.ServiceFactory, omero.api.ServiceFactoryPrx, _Session)


class _Session:
    """The ServiceFactory operations dlcore calls; each hands out a new stateful service over real Ice."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def createRawPixelsStore(self, ctx=None):
        from ice_served import serve

        self.conn.server.calls["Session.createRawPixelsStore"] += 1
        self.conn.check_session()
        return serve(omero.api.RawPixelsStore, omero.api.RawPixelsStorePrx, RawPixelsStore(self.conn))

    def createRenderingEngine(self, ctx=None):
        from ice_served import serve

        self.conn.server.calls["Session.createRenderingEngine"] += 1
        self.conn.check_session()
        return serve(omero.api.RenderingEngine, omero.api.RenderingEnginePrx, RenderingEngine(self.conn))

    def sharedResources(self, ctx=None):
        from ice_served import serve

        self.conn.check_session()
        return serve(omero.grid.SharedResources, omero.grid.SharedResourcesPrx, SharedResources(self.conn))

    def submit(self, request, ctx=None):
        """``ServiceFactory.submit``: a command runs asynchronously; its :class:`Handle` tells when it is done.
        (Ice has checked the request's types: ``targetObjects`` is a map of string to sequence<long>.)"""
        from ice_served import serve

        self.conn.server.calls["Session.submit"] += 1
        self.conn.check_session()
        if not isinstance(request, omero.cmd.Delete2):
            raise omero.ApiUsageException(None, None, f"the double runs Delete2 commands only, not "
                                          f"{type(request).__name__}")
        return serve(omero.cmd.Handle, omero.cmd.HandlePrx, Handle(self.conn, request))


class Handle:
    """``omero.cmd.Handle`` of a Delete2: the response is None until ``server.delete_seconds`` have passed
    since the submit; ``close()`` before that cancels the command (omero-blitz ``HandleI``): nothing is
    deleted.  One target the user does not own fails the whole command with an ``ERR`` (``Delete2`` is one
    transaction)."""

    def __init__(self, conn, request) -> None:
        self.conn, self.server, self.request = conn, conn.server, request
        self.submitted = time.monotonic()
        self.response = None
        self.closed = False
        self.server.open_handles.add(self)

    def _finish(self):
        targets = {graph: [int(i) for i in ids] for graph, ids in self.request.targetObjects.items()}
        for graph, ids in targets.items():
            for oid in ids:
                obj = self.server.get(_graph_table(graph), oid)
                if obj is None or self.server.owner_group(obj)[0] != self.conn.user:
                    why = "no such object" if obj is None else "owned by another user"
                    return omero.cmd.ERR(category="ome.services.graphs.GraphException", name="graph-fail",
                                         parameters={"message": f"{graph}:{oid}: {why}"})
        for graph, ids in targets.items():
            for oid in ids:
                _delete(self.server, _graph_table(graph), oid)
        self.server.deleted.append(targets)
        return omero.cmd.OK()

    def getResponse(self):
        if self.closed:
            raise omero.ObjectNotExistException()
        if self.response is None and time.monotonic() - self.submitted >= self.server.delete_seconds:
            self.response = self._finish()
        return self.response

    def close(self):
        if self.response is None:
            self.server.cancelled.append(self.request.targetObjects)
        self.closed = True
        self.server.open_handles.discard(self)


class Wrapper:
    """The BlitzObjectWrapper methods dlcore calls."""

    OMERO_CLASS = ""

    def __init__(self, conn: Conn, obj) -> None:
        self._conn, self._obj = conn, obj

    def getId(self) -> int:
        return self._obj.getId().getValue()

    def getName(self) -> str:
        return self._obj.getName().getValue()

    def getDescription(self) -> str:
        value = getattr(self._obj, "getDescription", lambda: None)()
        return value.getValue() if value is not None else ""

    def getDetails(self):
        return _Details(self._obj, self._conn.server)

    def canAnnotate(self) -> bool:
        return self._conn.server.can_annotate(self._conn.user, self._obj)

    def canLink(self) -> bool:
        return self._conn.server.can_link(self._conn.user, self._obj)

    def _linked(self, link_table: str, *, parent_id=None, child_id=None, want: str):
        server = self._conn.server
        out = []
        for link in server.all(link_table):
            if parent_id is not None and link.getParent().getId().getValue() == parent_id:
                obj = server.get(want, link.getChild().getId().getValue())
            elif child_id is not None and link.getChild().getId().getValue() == child_id:
                obj = server.get(want, link.getParent().getId().getValue())
            else:
                continue
            if obj is not None and server.can_see(self._conn.user, obj):
                out.append(WRAPPERS[want](self._conn, obj))
        return out


class _Details:
    """``BlitzObjectWrapper.getDetails()``: owner and group wrappers (the group's name, as the gateway
    loads it)."""

    def __init__(self, obj, server=None) -> None:
        self._obj, self._server = obj, server

    def getGroup(self):
        group_id = self._obj.getDetails().getGroup().getId().getValue()
        holder = _IdHolder(group_id)
        group = self._server.get("ExperimenterGroup", group_id) if self._server is not None else None
        holder.getName = lambda: group.getName().getValue() if group is not None else None
        return holder

    def getOwner(self):
        return _IdHolder(self._obj.getDetails().getOwner().getId().getValue())


class _IdHolder:
    def __init__(self, oid: int) -> None:
        self._id = oid

    def getId(self) -> int:
        return self._id


class ProjectWrapper(Wrapper):
    OMERO_CLASS = "Project"

    def listChildren(self):
        return self._linked("ProjectDatasetLink", parent_id=self.getId(), want="Dataset")


class DatasetWrapper(Wrapper):
    OMERO_CLASS = "Dataset"

    def listChildren(self):
        return self._linked("DatasetImageLink", parent_id=self.getId(), want="Image")


class PixelsWrapper(Wrapper):
    OMERO_CLASS = "Pixels"

    def __getattr__(self, name):  # getSizeX() ... getSizeT()
        if name.startswith("getSize"):
            return lambda: getattr(self._obj, name)().getValue()
        raise AttributeError(name)


class ImageWrapper(Wrapper):
    OMERO_CLASS = "Image"

    def getPrimaryPixels(self):
        return PixelsWrapper(self._conn, self._obj.getPrimaryPixels())

    def getPixelsType(self) -> str:
        return self._obj.getPrimaryPixels().getPixelsType().getValue().getValue()

    def _size(self, value, units):
        if value is None:
            return None
        return LengthI(value, units) if units else value.getValue()

    def getPixelSizeX(self, units=None):
        return self._size(self._obj.getPrimaryPixels().getPhysicalSizeX(), units)

    def getPixelSizeY(self, units=None):
        return self._size(self._obj.getPrimaryPixels().getPhysicalSizeY(), units)

    def getChannelLabels(self):
        names = getattr(self._conn.server, "channel_names", {}).get(self.getId())
        pixels = self._obj.getPrimaryPixels()
        size_c = pixels.getSizeC().getValue()
        if not names and pixels.sizeOfChannels():  # an image the server created: its LogicalChannels' names
            names = [_val(c.getLogicalChannel().getName()) for c in pixels.copyChannels()]
            names = [n if n else str(i) for i, n in enumerate(names)]
        return list(names) if names else [str(i) for i in range(size_c)]  # OMERO falls back to indices

    def listParents(self):
        return self._linked("DatasetImageLink", child_id=self.getId(), want="Dataset")


class FileAnnotationWrapper(Wrapper):
    """``FileAnnotationWrapper``: the file's name, size and bytes (RawFileStore reads, in chunks)."""

    OMERO_CLASS = "FileAnnotation"

    def _file(self):
        return self._conn.server.get("OriginalFile", self._obj.getFile().getId().getValue())

    def getNs(self):
        return _val(self._obj.getNs())

    def getFileName(self):
        return _val(self._file().getName())

    def getFileSize(self):
        return len(self._conn.server.file_bytes.get(self._file().getId().getValue(), b""))

    def getFileInChunks(self, buf=2621440):
        self._conn.check_session()
        data = self._conn.server.file_bytes[self._file().getId().getValue()]
        for start in range(0, len(data), buf):
            yield data[start:start + buf]


WRAPPERS = {"Image": ImageWrapper, "Dataset": DatasetWrapper, "Project": ProjectWrapper,
            "FileAnnotation": FileAnnotationWrapper}


# -- services ---------------------------------------------------------------------------------------
class UpdateService:
    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server

    def _save(self, obj, group: int):
        server, user = self.server, self.conn.user
        if isinstance(obj, LogicalChannelI) and obj.getId() is not None:  # a channel renamed
            stored = server.get("LogicalChannel", obj.getId().getValue())
            if stored is None or not server.can_see(user, stored):
                raise omero.ValidationException(None, None, f"LogicalChannel:{obj.getId().getValue()} does not exist")
            if server.owner_group(stored)[1] != group:
                raise omero.SecurityViolation(None, None, "cannot save a LogicalChannel of another group")
            if not server.can_link(user, stored):
                raise omero.SecurityViolation(None, None, "only the owner may rename another user's channels")
            stored.setName(obj.getName())
            return stored
        if isinstance(obj, PixelsI) and obj.getId() is not None:  # an update of existing pixels
            stored = server.get("Pixels", obj.getId().getValue())
            stored.setPhysicalSizeX(obj.getPhysicalSizeX())
            stored.setPhysicalSizeY(obj.getPhysicalSizeY())
            return stored
        if obj.getId() is not None:
            ref = server.get(_table(obj), obj.getId().getValue())
            if ref is None or not server.can_see(user, ref):
                raise omero.ValidationException(None, None, f"{_table(obj)}:{obj.getId().getValue()} does not exist")
            if server.owner_group(ref)[1] != group:
                raise omero.SecurityViolation(None, None, f"cannot link to {_table(obj)} of another group")
            return ref
        if isinstance(obj, RoiI):
            image = self._save(obj.getImage(), group)
            if not server.can_annotate(user, image):
                raise omero.SecurityViolation(None, None, "ROIs need annotate permission on the image")
            server.store(obj, owner=user, group=group)
            for shape in obj.copyShapes():
                server.store(shape, owner=user, group=group)
            return obj
        if isinstance(obj, (ImageAnnotationLinkI, DatasetAnnotationLinkI, RoiAnnotationLinkI, DatasetImageLinkI)):
            parent = self._save(obj.getParent(), group)
            allowed = server.can_link if isinstance(obj, DatasetImageLinkI) else server.can_annotate
            if not allowed(user, parent):
                raise omero.SecurityViolation(None, None, f"not allowed to link to {_table(parent)}")
            child = self._save(obj.getChild(), group)
            for other in server.all(_table(obj)):
                if (other.getParent().getId().getValue(), other.getChild().getId().getValue()) == (
                        parent.getId().getValue(), child.getId().getValue()):
                    raise omero.ValidationException(None, None, "duplicate link (unique constraint)")
            obj.setParent(type(parent)(parent.getId().getValue(), False))
            obj.setChild(child)
            return server.store(obj, owner=user, group=group)
        if isinstance(obj, FileAnnotationI) and obj.getFile() is not None:
            self._save(obj.getFile(), group)
        if isinstance(obj, (MapAnnotationI, TagAnnotationI, FileAnnotationI)):
            return server.store(obj, owner=user, group=group)
        raise NotImplementedError(f"the double does not save {type(obj).__name__}")

    @_counted("IUpdate")
    def saveAndReturnObject(self, obj, ctx=None):
        return self._save(obj, self.conn.save_group(ctx))

    @_counted("IUpdate")
    def saveObject(self, obj, ctx=None):
        self._save(obj, self.conn.save_group(ctx))

    @_counted("IUpdate")
    def saveArray(self, objs, ctx=None):
        group = self.conn.save_group(ctx)
        for o in objs:
            self._save(o, group)

    @_counted("IUpdate")
    def saveAndReturnArray(self, objs, ctx=None):
        group = self.conn.save_group(ctx)
        return [self._save(o, group) for o in objs]


def _params(params) -> dict:
    return {k: [_val(x) for x in v.getValue()] if isinstance(v, omero.RList) else _val(v)
            for k, v in params.map.items()}


class QueryService:
    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server

    def _visible(self, objs):
        return [o for o in objs if self.server.can_see(self.conn.user, o)]

    @_counted("IQuery")
    def findAllByQuery(self, query, params, ctx=None):
        p = _params(params)
        if query == Q_RUN_LINKS:
            links = [link for link in self.server.all("ImageAnnotationLink")
                     if link.getParent().getId().getValue() == p["iid"]]
            out = []
            for link in self._visible(links):
                child = self.server.get("Annotation", link.getChild().getId().getValue())
                if (child.getNs() is not None and child.getNs().getValue() == p["ns"]
                        and self.server.owner_group(child)[0] == p["uid"]):
                    link.setChild(child)
                    out.append(link)
            return out
        if query == Q_DATASET_QC_LINKS:
            out = []
            for link in self._visible(self.server.all("DatasetAnnotationLink")):
                child = self.server.get("Annotation", link.getChild().getId().getValue())
                if (link.getParent().getId().getValue() == p["did"] and _val(child.getNs()) == p["ns"]
                        and self.server.owner_group(child)[0] == p["uid"]):
                    link.setChild(child)
                    out.append(link)
            return out
        if query == Q_TAG:
            group = self.conn.save_group(ctx)
            return [t for t in self._visible(self.server.all("Annotation", TagAnnotationI))
                    if _val(t.getNs()) == p["ns"] and _val(t.getTextValue()) == p["name"]
                    and self.server.owner_group(t)[1] == group]
        if query == Q_ROIS:
            return self._visible(self.server.rois_of(p["iid"]))
        if query == Q_IMAGE_MAPS:
            out = []
            for link in self._visible(self.server.all("ImageAnnotationLink")):
                child = self.server.get("Annotation", link.getChild().getId().getValue())
                if link.getParent().getId().getValue() == p["iid"] and isinstance(child, MapAnnotationI):
                    link.setChild(child)
                    out.append(link)
            return out
        if query in (Q_ROI_TAGS, Q_IMAGE_TAGS):
            table, parents = (("RoiAnnotationLink", set(p["ids"])) if query == Q_ROI_TAGS
                              else ("ImageAnnotationLink", {p["iid"]}))
            out = []
            for link in self._visible(self.server.all(table)):
                child = self.server.get("Annotation", link.getChild().getId().getValue())
                if link.getParent().getId().getValue() in parents and isinstance(child, TagAnnotationI):
                    link.setChild(child)
                    out.append(link)
            return out
        raise NotImplementedError(f"the double does not know the query {query!r}")

    @_counted("IQuery")
    def findByQuery(self, query, params, ctx=None):
        p = _params(params)
        if query == Q_PIXELS_TYPE:
            if p["value"] not in BIG_ENDIAN:  # OMERO's names ("float", not "float32"): anything else finds nothing
                return None
            ptype = PixelsTypeI()
            ptype.setValue(rstring(p["value"]))
            return ptype
        if query in (Q_IMAGE_PIXELS, Q_PIXELS_CHANNELS):
            image = self.server.get("Image", p["iid"])
            if image is None or not self.server.can_see(self.conn.user, image):
                return None
            return self.server.get("Pixels", self.server.pixels_of(p["iid"]))
        raise NotImplementedError(f"the double does not know the query {query!r}")

    @_counted("IQuery")
    def projection(self, query, params, ctx=None):
        p = _params(params)
        for graph in OWNED_ID_GRAPHS:
            if query == Q_OWNED_IDS.format(graph=graph):
                objs = [self.server.get(_graph_table(graph), i) for i in p["ids"]]
                return [[rlong(o.getId().getValue())] for o in self._visible([o for o in objs if o is not None])
                        if self.server.owner_group(o)[0] == p["uid"]]
        if query == Q_ROI_AUTHORS:  # the owner and creation event joined: their fields, as rtypes
            rows = []
            for r in self._visible(self.server.rois_of(p["iid"])):
                owner = self.server.get("Experimenter", r.getDetails().getOwner().getId().getValue())
                rows.append([rlong(r.getId().getValue()), r.getDescription(), owner.getOmeName(),
                             owner.getFirstName(), owner.getLastName(), r.getDetails().getCreationEvent().getTime()])
            return rows
        if query == Q_IMAGE_OBJECTIVE:  # inner joins: no row for an image without objective settings
            image = self.server.get("Image", p["iid"])
            if image is None or not self.server.can_see(self.conn.user, image) or image.getObjectiveSettings() is None:
                return []
            objective = image.getObjectiveSettings().getObjective()
            return [[objective.getNominalMagnification()]] if objective is not None else []
        if query == Q_RUN_ROIS:
            pattern = like_regex(p["marker"], escape="!")
            return [[rlong(r.getId().getValue()), rstring(_val(r.getDescription()))]
                    for r in self._visible(self.server.rois_of(p["iid"]))
                    if pattern.fullmatch(_val(r.getDescription()) or "") and self.server.owner_group(r)[0] == p["uid"]]
        raise NotImplementedError(f"the double does not know the query {query!r}")


class ConfigService:
    """IConfig: only the database's UUID (the server's identity; omero-blitz IConfig.getDatabaseUuid)."""

    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server

    @_counted("IConfig")
    def getDatabaseUuid(self, ctx=None):
        return self.server.database_uuid


class PixelsService:
    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server

    @_counted("IPixels")
    def createImage(self, sizeX, sizeY, sizeZ, sizeT, channelList, pixelsType, name, description, ctx=None):
        """``IPixels.createImage`` (omero-server ``PixelsImpl``): any size and type is accepted here (what the
        pixel buffer cannot hold fails when the pixels are written, :meth:`RawPixelsStore.setPixelsId`); an
        empty channel list is refused; one Channel with an unnamed LogicalChannel per entry."""
        group = self.conn.save_group(ctx)  # served over real Ice: the argument types were checked by Ice
        if not channelList:
            raise omero.ValidationException(None, None, "Channel list must be filled.")
        if pixelsType is None or _val(pixelsType.getValue()) not in BIG_ENDIAN:
            raise omero.ValidationException(None, None, f"no such PixelsType: {pixelsType}")
        if min(sizeX, sizeY, sizeZ, sizeT) < 1:
            raise omero.ValidationException(None, None, f"sizes must be positive: {sizeX}x{sizeY}x{sizeZ}x{sizeT}")
        dtype = np.dtype(BIG_ENDIAN[pixelsType.getValue().getValue()]).newbyteorder("=")
        levels = [np.zeros((sizeY, sizeX, len(channelList)), dtype)]
        image_id = self.server.add_image(levels, name=name, owner=self.conn.user, group=group, mpp=None,
                                         pixels_type=pixelsType.getValue().getValue())
        self.server.get("Image", image_id).setDescription(rstring(description))
        pixels = self.server.get("Pixels", self.server.pixels_of(image_id))
        for _ in channelList:
            channel = ChannelI()
            logical = LogicalChannelI()
            self.server.store(logical, owner=self.conn.user, group=group)
            channel.setLogicalChannel(logical)
            self.server.store(channel, owner=self.conn.user, group=group)
            pixels.addChannel(channel)
        self.server.created_pixels.add(pixels.getId().getValue())
        return rlong(image_id)

    @_counted("IPixels")
    def setChannelGlobalMinMax(self, pixelsId, channelIndex, minValue, maxValue, ctx=None):
        """``PixelsImpl.setChannelGlobalMinMax``: the channel's StatsInfo (``pixels.getChannel(index)``: an
        index past the last fails on the server)."""
        pixels = self.server.get("Pixels", int(pixelsId))
        if pixels is None or not self.server.can_see(self.conn.user, pixels):
            raise omero.ValidationException(None, None, f"Pixels:{pixelsId} does not exist")
        if not 0 <= channelIndex < pixels.getSizeC().getValue():
            raise omero.InternalException(None, None, f"IndexOutOfBoundsException: channel {channelIndex} of "
                                          f"{pixels.getSizeC().getValue()}")
        self.server.channel_ranges[(int(pixelsId), channelIndex)] = (minValue, maxValue)


#: How OMERO.server 5.6 stores the pixels of an image it created (no original file), read in omero-romio
#: ``ome/io/nio/PixelsService.java`` (``_getPixelBuffer``, ``requiresPixelsPyramid``), ``ConfiguredTileSizes``,
#: ``RomioPixelBuffer`` and ``ome/io/bioformats/BfPyramidPixelBuffer.java``, omero-server
#: ``ome/services/RawPixelsBean.java`` and ome-model-documentation ``omero-pyramid/index.rst``:
#:
#: - ``IPixels.createImage`` accepts any size and pixel type; the pixel buffer is made when a RawPixelsStore
#:   is pointed at the pixels (``setPixelsId`` -> ``getPixelBuffer(pixels, write=True)``).
#: - sizeX * sizeY above max_plane_width * max_plane_height (3192 x 3192 by default) needs a pyramid: a
#:   ``BfPyramidPixelBuffer``, a JPEG-2000 tiled TIFF that holds uint8 and uint16 only ("Images with pixel
#:   type uint32, float or double cannot be converted to an OMERO pyramid"; JPEG-2000 has no signed types
#:   either).  float and double are exempt from the pyramid while ``omero.pixeldata.max_plane_float_override``
#:   is on (the default): the server then writes one uncompressed ROMIO plane, which it never tiles for
#:   viewing.  The double refuses those too (stricter than the server: dlcore never writes such an image).
#: - A pyramid being written reports the configured tile size, 256 x 256 (``getTileSize`` in write mode).
#:   Its writer takes each plane's tile size from that plane's first ``setTile`` and writes sequentially
#:   (``setWriteSequentially(true)``, a new IFD when z/c/t changes); the double therefore takes tiles only
#:   on the 256 grid, full-size except at the right and bottom edges, plane after plane, row-major, once
#:   each (stricter: the server does not check the order, it writes a broken file).  Any read
#:   (``save()`` computes the SHA-1, ``getTile``) closes the writer: later ``setTile`` calls fail ("In
#:   read-only mode!").
#: - Below the limit a ``RomioPixelBuffer``: ``getTileSize`` is (sizeX, min(sizeY, 1 MiB / bytes per pixel /
#:   sizeX)) and ``setTile`` takes only whole rows at x = 0 ("ROMIO pixel buffer only supports 0 offseted
#:   tile writes" / "full row writes").
#: - Tiles are big-endian (``BfPyramidPixelBuffer`` byte order, ROMIO files).  Neither buffer checks that the
#:   byte count is w * h * bytes per pixel (a short one leaves zeros, a long one spills into the next
#:   rows); the double refuses any other length.
MAX_PLANE_PIXELS = 3192 * 3192
PYRAMID_TYPES = {"uint8", "uint16"}
PYRAMID_TILE = (256, 256)  # omero.pixeldata.tile_width / tile_height
ROMIO_BUFFER = 1048576  # RomioPixelBuffer.MAXIMUM_BUFFER_SIZE
TYPE_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
               "int32": (-2 ** 31, 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1), "bit": (0, 1),
               "float": (-3.4028234663852886e38, 3.4028234663852886e38),
               "double": (-1.7976931348623157e308, 1.7976931348623157e308)}


def _created_layout(server: "Server", pixels_id: int) -> tuple[str, tuple[int, int]]:
    """``("pyramid" | "romio", tile size)`` of pixels the server created (see :data:`MAX_PLANE_PIXELS`)."""
    pixels = server.get("Pixels", pixels_id)
    width, height = pixels.getSizeX().getValue(), pixels.getSizeY().getValue()
    pixels_type = pixels.getPixelsType().getValue().getValue()
    if width * height > MAX_PLANE_PIXELS and pixels_type not in ("float", "double"):
        return "pyramid", PYRAMID_TILE
    width_bytes = np.dtype(BIG_ENDIAN[pixels_type]).itemsize * width
    return "romio", (width, max(1, min(height, ROMIO_BUFFER // width_bytes)))


class RawPixelsStore:
    """Tiles of one image; OMERO's level numbering (``levels - 1`` = full resolution)."""

    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server
        self.pixels_id = None
        self.level = None
        self.closed = False
        self.read_only = False
        self.server.open_stores.add(self)

    def _check(self):
        if self.closed:
            raise omero.ApiUsageException(None, None, "the RawPixelsStore is closed")
        if self.pixels_id is None:
            raise omero.ApiUsageException(None, None, "setPixelsId was not called")

    @property
    def _levels(self):
        return self.server.pixels[self.pixels_id]

    @_counted("RawPixelsStore")
    def setPixelsId(self, pixels_id, bypass, ctx=None):
        pixels = self.server.get("Pixels", pixels_id)
        if pixels is None or not self.server.can_see(self.conn.user, pixels):
            raise omero.SecurityViolation(None, None, f"Pixels:{pixels_id} is not readable")
        if int(pixels_id) in self.server.pyramids_pending:  # a big import whose pyramid is being built
            raise omero.MissingPyramidException(None, None, "Pixels pyramid is being generated", 5000, int(pixels_id))
        pixels_type = pixels.getPixelsType().getValue().getValue()
        height, width = self.server.pixels[int(pixels_id)][0].shape[:2]
        if (int(pixels_id) in self.server.created_pixels and width * height > MAX_PLANE_PIXELS
                and pixels_type not in PYRAMID_TYPES):
            raise omero.InternalException(
                None, None, f"cannot write a pyramid of {pixels_type} pixels ({width}x{height} is above "
                "omero.pixeldata.max_plane_width x height): OMERO pyramids hold 8- and 16-bit pixels only")
        self.pixels_id = int(pixels_id)
        self.level = len(self._levels) - 1
        # a ROMIO file that exists is opened read-only ("returning read-only ROMIO pixel buffer")
        self.read_only = int(pixels_id) in self.server.pixels_written

    @_counted("RawPixelsStore")
    def getResolutionLevels(self):
        self._check()
        return len(self._levels)

    @_counted("RawPixelsStore")
    def getResolutionDescriptions(self):
        self._check()
        return [omero.api.ResolutionDescription(sizeX=a.shape[1], sizeY=a.shape[0]) for a in self._levels]

    @_counted("RawPixelsStore")
    def setResolutionLevel(self, level):
        self._check()
        if not 0 <= level < len(self._levels):
            raise omero.ApiUsageException(None, None, f"no resolution level {level}")
        self.level = level

    def _array(self):
        return self._levels[len(self._levels) - 1 - self.level]

    def _created(self) -> str | None:
        """"pyramid" or "romio" for pixels the server created, None for imported ones."""
        return _created_layout(self.server, self.pixels_id)[0] if self.pixels_id in self.server.created_pixels else None

    def _reading(self) -> None:
        """A read closes the writer of a pyramid being written: it is read-only from then on."""
        if self._created() == "pyramid":
            self.server.pyramid_writes.setdefault(self.pixels_id, {"next": (0, 0, 0)})["read_only"] = True

    @_counted("RawPixelsStore")
    def getTileSize(self):
        self._check()
        if self.pixels_id in self.server.created_pixels:
            return list(_created_layout(self.server, self.pixels_id)[1])
        return list(self.server.tile_sizes[self.pixels_id][len(self._levels) - 1 - self.level])

    @_counted("RawPixelsStore")
    def getTile(self, z, c, t, x, y, w, h):
        self._check()
        array = self._array()
        if x < 0 or y < 0 or x + w > array.shape[1] or y + h > array.shape[0] or z != 0 or t != 0:
            raise omero.ApiUsageException(None, None, f"tile {x},{y} {w}x{h} outside the plane")
        pixels_type = self.server.get("Pixels", self.pixels_id).getPixelsType().getValue().getValue()
        self._reading()
        return np.ascontiguousarray(array[y:y + h, x:x + w, c]).astype(BIG_ENDIAN[pixels_type]).tobytes()

    @_counted("RawPixelsStore")
    def setTile(self, buf, z, c, t, x, y, w, h, ctx=None):
        """``RawPixelsBean.setTile``: ``buf`` holds ``h`` rows of ``w`` big-endian pixels; the buffer's rules
        are those of :data:`MAX_PLANE_PIXELS`."""
        self._check()
        array = self._levels[0]
        pixels = self.server.get("Pixels", self.pixels_id)
        size_z, size_c, size_t = (pixels.getSizeZ().getValue(), pixels.getSizeC().getValue(),
                                  pixels.getSizeT().getValue())
        if (min(x, y) < 0 or min(w, h) < 1 or x + w > array.shape[1] or y + h > array.shape[0]
                or not (0 <= z < size_z and 0 <= c < size_c and 0 <= t < size_t)):
            raise omero.ApiUsageException(None, None, f"tile z={z} c={c} t={t} {x},{y} {w}x{h} outside the "
                                          f"{array.shape[1]}x{array.shape[0]} plane of {size_z}x{size_c}x{size_t}")
        pixels_type = pixels.getPixelsType().getValue().getValue()
        order = np.dtype(BIG_ENDIAN[pixels_type])
        if len(buf) != w * h * order.itemsize:
            raise omero.ApiUsageException(None, None, f"a {w}x{h} tile of {pixels_type} is {w * h * order.itemsize} "
                                          f"bytes, not {len(buf)}")
        layout = self._created()
        if layout == "romio" and self.read_only:
            raise omero.ApiUsageException(None, None, f"Pixels:{self.pixels_id} were written by an earlier "
                                          "RawPixelsStore: the ROMIO pixel buffer is read-only now")
        if layout == "romio" and (x != 0 or w != array.shape[1]):
            raise omero.InternalException(None, None, "UnsupportedOperationException: ROMIO pixel buffer only "
                                          "supports 0 offseted tile writes / full row writes")
        if layout == "pyramid":
            self._check_pyramid_tile(z, c, t, x, y, w, h, size_z, size_c)
        if z != 0 or t != 0:
            raise NotImplementedError("the double stores one plane per channel")
        array[y:y + h, x:x + w, c] = np.frombuffer(buf, dtype=order).reshape(h, w)
        if layout is not None:
            self.server.pixels_written.add(self.pixels_id)

    def _check_pyramid_tile(self, z, c, t, x, y, w, h, size_z, size_c) -> None:
        width, height = self._levels[0].shape[1], self._levels[0].shape[0]
        tw, th = PYRAMID_TILE
        state = self.server.pyramid_writes.setdefault(self.pixels_id, {"next": (0, 0, 0)})
        if state.get("read_only"):
            raise omero.ApiUsageException(None, None, "In read-only mode! (the pyramid was saved or read: its "
                                          "writer is closed)")
        if x % tw or y % th or w != min(tw, width - x) or h != min(th, height - y):
            raise omero.InternalException(None, None, f"the pyramid is written in {tw}x{th} tiles on its grid, not "
                                          f"{w}x{h} at {x},{y}")
        plane = (t * size_c + c) * size_z + z  # XYZCT
        if (plane, y, x) < state["next"]:
            raise omero.InternalException(None, None, f"the pyramid is written sequentially: tile {x},{y} of plane "
                                          f"{plane} comes after plane {state['next'][0]} row {state['next'][1]} "
                                          f"column {state['next'][2]}")
        state["next"] = (plane, y, x + 1)

    @_counted("RawPixelsStore")
    def save(self, ctx=None):
        self._check()
        self._reading()  # the server computes the pixels' SHA-1 by reading them back
        return self.server.get("Pixels", self.pixels_id)

    @_counted("RawPixelsStore")
    def close(self):
        if not self.closed and self.pixels_id is not None:
            self._reading()  # RawPixelsBean.close() saves (the SHA-1 reads the pixels back)
        self.closed = True
        self.server.open_stores.discard(self)


class RenderingEngine:
    """``omero.api.RenderingEngine`` for the calls dlcore makes, with the server's rules (omero-server
    ``ome/services/RenderingBean.java``, ``ome/logic/RenderingSettingsImpl.java``; omero-renderer
    ``omeis/providers/re/Renderer.java``, ``quantum/QuantumStrategy.java``):

    - ``lookupPixels`` first (an unknown or unreadable Pixels: ``ValidationException``); then
      ``lookupRenderingDef`` answers False when the caller has no settings for the pixels, and
      ``resetDefaultSettings(True)`` creates and saves them; ``load()`` before any ``set*`` call, else
      ``ApiUsageException("RenderingEngine not ready: ...")``;
    - the defaults: greyscale for one channel, rgb for more, the first three channels active, each window the
      channel's StatsInfo (``setChannelGlobalMinMax``) or, without one or when min == max, the pixel type's
      full range;
    - ``setChannelWindow(w, start, end)``: ``start > end``, or a range the type cannot span, silently becomes
      the type's full range; either end is clipped to the type's range (``QuantumStrategy.setWindow``);
    - a channel index past the last fails (``ArrayIndexOutOfBoundsException`` on the server);
    - ``setRGBA``: the server keeps any int; the double refuses components outside 0-255 (stricter);
    - ``saveCurrentSettings`` / ``resetDefaultSettings(True)`` save in the group of the call's context,
      which must be the pixels' group (the double refuses -1 or another group).

    Saved settings are in :attr:`Server.rendering` under ``(pixels id, user id)``."""

    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server
        self.pixels_id = None
        self.settings = None  # the RenderingDef in use (a copy until saved)
        self.loaded = False

    def _ready(self):
        if self.pixels_id is None:
            raise omero.ApiUsageException(None, None, "RenderingEngine not ready: Pixels object not set.")
        if self.settings is None:
            raise omero.ApiUsageException(None, None, "RenderingEngine not ready: RenderingDef object not set.")
        if not self.loaded:
            raise omero.ApiUsageException(None, None, "RenderingEngine not ready: Renderer not loaded (call load()).")

    def _channel(self, w):
        self._ready()
        channels = self.settings["channels"]
        if not 0 <= w < len(channels):
            raise omero.InternalException(None, None, f"ArrayIndexOutOfBoundsException: channel {w} of {len(channels)}")
        return channels[w]

    def _type_range(self):
        return TYPE_RANGES[self.server.get("Pixels", self.pixels_id).getPixelsType().getValue().getValue()]

    def _save(self, ctx) -> None:
        group = self.conn.save_group(ctx)
        if self.server.owner_group(self.server.get("Pixels", self.pixels_id))[1] != group:
            raise omero.SecurityViolation(None, None, "rendering settings are saved in the group of the image")
        import copy

        self.server.rendering[(self.pixels_id, self.conn.user)] = copy.deepcopy(self.settings)

    @_counted("RenderingEngine")
    def lookupPixels(self, pixelsId, ctx=None):
        pixels = self.server.get("Pixels", int(pixelsId))
        if pixels is None or not self.server.can_see(self.conn.user, pixels):
            raise omero.ValidationException(None, None, f"Pixels object with id {pixelsId} not found.")
        self.pixels_id, self.settings, self.loaded = int(pixelsId), None, False

    @_counted("RenderingEngine")
    def lookupRenderingDef(self, pixelsId, ctx=None):
        import copy

        saved = self.server.rendering.get((int(pixelsId), self.conn.user))
        self.settings, self.loaded = (copy.deepcopy(saved) if saved is not None else None), False
        return saved is not None

    @_counted("RenderingEngine")
    def resetDefaultSettings(self, save, ctx=None):
        if self.pixels_id is None:
            raise omero.ApiUsageException(None, None, "RenderingEngine not ready: Pixels object not set.")
        pixels = self.server.get("Pixels", self.pixels_id)
        size_c = pixels.getSizeC().getValue()
        low, high = self._type_range()
        channels = []
        for w in range(size_c):
            start, end = self.server.channel_ranges.get((self.pixels_id, w), (low, high))
            if abs(end - start) < 1e-10:
                start, end = low, high
            channels.append({"active": w < 3, "window": (float(start), float(end)),
                             "rgba": ((255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255))[w % 3]
                             if size_c > 1 else (255, 255, 255, 255)})
        self.settings = {"model": "rgb" if size_c > 1 else "greyscale", "channels": channels}
        if save:
            self._save(ctx)
        return 1

    @_counted("RenderingEngine")
    def load(self, ctx=None):
        if self.pixels_id is None:
            raise omero.ApiUsageException(None, None, "RenderingEngine not ready: Pixels object not set.")
        if self.settings is None:
            raise omero.ApiUsageException(None, None, "RenderingEngine not ready: RenderingDef object not set.")
        self.loaded = True

    @_counted("RenderingEngine")
    def setActive(self, w, active, ctx=None):
        self._channel(w)["active"] = bool(active)

    @_counted("RenderingEngine")
    def setChannelWindow(self, w, start, end, ctx=None):
        channel = self._channel(w)
        low, high = self._type_range()
        pixels_type = self.server.get("Pixels", self.pixels_id).getPixelsType().getValue().getValue()
        span = {"int8": 0x100, "uint8": 0x100, "int16": 0x10000, "uint16": 0x10000, "int32": 0x100000000,
                "uint32": 0x100000000}.get(pixels_type, float("inf"))
        if not (start <= end and end - start < span):
            start, end = low, high
        channel["window"] = (float(max(start, low)), float(min(end, high)))

    @_counted("RenderingEngine")
    def setRGBA(self, w, red, green, blue, alpha, ctx=None):
        channel = self._channel(w)
        if not all(0 <= v <= 255 for v in (red, green, blue, alpha)):
            raise omero.ApiUsageException(None, None, f"colour components are 0-255, not {(red, green, blue, alpha)}")
        channel["rgba"] = (red, green, blue, alpha)

    @_counted("RenderingEngine")
    def saveCurrentSettings(self, ctx=None):
        self._ready()
        self._save(ctx)

    @_counted("RenderingEngine")
    def close(self):
        self.pixels_id = self.settings = None


class SharedResources:
    def __init__(self, conn: Conn) -> None:
        self.conn, self.server = conn, conn.server

    @_counted("SharedResources")
    def repositories(self):
        repos = omero.grid.RepositoryMap()
        repos.descriptions = [OriginalFileI(1, False)]
        return repos

    @_counted("SharedResources")
    def newTable(self, repo_id, name, ctx=None):
        from ice_served import serve

        group = self.conn.save_group(ctx)
        ofile = OriginalFileI()
        ofile.setName(rstring(name))
        ofile.setMimetype(rstring("OMERO.tables"))
        self.server.store(ofile, owner=self.conn.user, group=group)
        return serve(omero.grid.Table, omero.grid.TablePrx, Table(self.server, ofile))

    @_counted("SharedResources")
    def openTable(self, file, ctx=None):
        """``SharedResources.openTable``: an existing OMERO.tables file the user may read (omero-py
        ``tables.py`` TablesI.getTable, which reads the file with the caller's session)."""
        from ice_served import serve

        ofile = self.server.get("OriginalFile", _val(file.getId())) if file.getId() is not None else None
        if ofile is None or not self.server.can_see(self.conn.user, ofile):
            raise omero.SecurityViolation(None, None, f"OriginalFile:{_val(file.getId())} is not readable")
        if _val(ofile.getMimetype()) != "OMERO.tables" or ofile.getId().getValue() not in self.server.tables:
            raise omero.ApiUsageException(None, None, f"OriginalFile:{ofile.getId().getValue()} is not an OMERO.tables file")
        return serve(omero.grid.Table, omero.grid.TablePrx, Table(self.server, ofile))


class Table:
    def __init__(self, server: Server, ofile) -> None:
        self.server, self.ofile = server, ofile
        self.record = server.tables.setdefault(ofile.getId().getValue(), {"columns": [], "values": {}, "headers": []})

    @_counted("Table")
    def getOriginalFile(self):
        return self.ofile

    @_counted("Table")
    def initialize(self, cols):
        for c in cols:  # PyTables' check_name_validity, as HdfStorage meets it
            if not c.name or "/" in c.name or c.name[:3] in ("_i_", "_v_", "_f_", "_g_", "_c_"):
                raise omero.InternalException(None, None, f"ValueError: column name {c.name!r} is not a valid "
                                              "PyTables name (no '/', no reserved prefix)")
        self.record["columns"] = [(type(c).__name__, c.name) for c in cols]
        self.record["headers"] = [(type(c), c.name, c.description, getattr(c, "size", None)) for c in cols]
        self.record["values"] = {c.name: [] for c in cols}

    def _empty_columns(self) -> list:
        return [cls(name, description, *(() if size is None else (size,)), [])
                for cls, name, description, size in self.record["headers"]]

    @_counted("Table")
    def getHeaders(self):
        return self._empty_columns()

    def _rows(self) -> int:
        values = self.record["values"]
        return len(next(iter(values.values()))) if values else 0

    @_counted("Table")
    def getNumberOfRows(self):
        return self._rows()

    @_counted("Table")
    def read(self, colNumbers, start, stop):
        """``Table.read``: rows ``start`` to ``stop`` (exclusive; both 0: all) of the columns ``colNumbers``
        (omero-py ``tables.py`` TableI.read -> ``hdfstorageV2.py`` HdfStorage.read).  No column or one past
        the last: ``ApiUsageException`` (HdfStorage.__sizecheck).  Rows past the end are refused too, which
        is stricter than the server (PyTables clips them and the reply's rowNumbers name rows that do not
        exist), so a caller must ask for ``getNumberOfRows()`` rows."""
        rows = self._rows()
        if start == 0 and stop == 0:
            stop = rows
        if not colNumbers or max(colNumbers) >= len(self.record["headers"]):
            raise omero.ApiUsageException(None, None, f"Column overflow or no columns: {list(colNumbers)}")
        if not 0 <= start <= stop <= rows:
            raise omero.ApiUsageException(None, None, f"rows {start}-{stop} out of range (the table has {rows})")
        columns = self._empty_columns()
        out = []
        for i in colNumbers:
            column = columns[i]
            column.values = list(self.record["values"][column.name][start:stop])
            out.append(column)
        return omero.grid.Data(columns=out, rowNumbers=list(range(start, stop)), lastModification=0)

    @_counted("Table")
    def addData(self, cols):
        sizes = {len(c.values) for c in cols}
        if len(sizes) != 1 or [c.name for c in cols] != [n for _, n in self.record["columns"]]:
            raise omero.ApiUsageException(None, None, "columns do not match the table's, or differ in length")
        for c in cols:
            if isinstance(c, omero.grid.StringColumn):  # StringColumnI: the size is in bytes of UTF-8
                for value in c.values:
                    if len(value.encode()) > c.size:
                        raise omero.ValidationException(
                            None, None, f"Maximum string (byte) length in column {c.name} is {c.size}")
        for c in cols:
            self.record["values"][c.name].extend(c.values)

    @_counted("Table")
    def close(self):
        pass


# -- deleting ---------------------------------------------------------------------------------------
def _graph_table(graph_spec: str) -> str:
    name = graph_spec.split("/")[0]
    return "Annotation" if name.endswith("Annotation") else name


def _delete(server: Server, table: str, oid: int) -> None:
    obj = server.objects.pop((table, oid), None)
    if obj is None:
        return
    if table == "Roi":
        for shape in obj.copyShapes():
            server.objects.pop(("Shape", shape.getId().getValue()), None)
    elif table == "Annotation":
        for link_table in ("ImageAnnotationLink", "DatasetAnnotationLink", "RoiAnnotationLink"):
            for link in server.all(link_table):
                if link.getChild().getId().getValue() == oid:
                    _delete(server, link_table, link.getId().getValue())
        if isinstance(obj, FileAnnotationI) and obj.getFile() is not None:
            _delete(server, "OriginalFile", obj.getFile().getId().getValue())
    elif table == "OriginalFile":
        server.file_bytes.pop(oid, None)
        server.tables.pop(oid, None)
        for ann in server.all("Annotation", FileAnnotationI):
            if ann.getFile() is not None and ann.getFile().getId().getValue() == oid:
                _delete(server, "Annotation", ann.getId().getValue())
    elif table == "Image":
        pid = next((p.getId().getValue() for p in server.all("Pixels") if p.getImage().getId().getValue() == oid), None)
        if pid is not None:
            pixels = server.objects.pop(("Pixels", pid), None)
            server.pixels.pop(pid, None)
            for channel in pixels.copyChannels() if pixels is not None else ():
                server.objects.pop(("Channel", channel.getId().getValue()), None)
                server.objects.pop(("LogicalChannel", channel.getLogicalChannel().getId().getValue()), None)
            for key in [k for k in server.rendering if k[0] == pid]:
                del server.rendering[key]
            for key in [k for k in server.channel_ranges if k[0] == pid]:
                del server.channel_ranges[key]
        for roi in server.rois_of(oid):
            _delete(server, "Roi", roi.getId().getValue())
        annotated = [link.getChild().getId().getValue() for link in server.all("ImageAnnotationLink")
                     if link.getParent().getId().getValue() == oid]
        for link_table in ("DatasetImageLink", "ImageAnnotationLink"):
            for link in server.all(link_table):
                end = link.getChild() if link_table == "DatasetImageLink" else link.getParent()
                if end.getId().getValue() == oid:
                    _delete(server, link_table, link.getId().getValue())
        # omero-blitz blitz-delete-rules.xml: a deleted object's map (list, XML, comment) annotations go when
        # nothing else links them; its file and tag annotations only if also owned by the object's owner
        for ann_id in annotated:
            ann = server.get("Annotation", ann_id)
            still_linked = any(link.getChild().getId().getValue() == ann_id for t in
                               ("ImageAnnotationLink", "DatasetAnnotationLink", "RoiAnnotationLink") for link in server.all(t))
            same_owner = ann is not None and server.owner_group(ann)[0] == server.owner_group(obj)[0]
            if ann is not None and not still_linked and (
                    not isinstance(ann, (FileAnnotationI, TagAnnotationI)) or same_owner):
                _delete(server, "Annotation", ann_id)


# -- loading a dlcore slide into the double ---------------------------------------------------------
def import_slide(server: Server, slide, **kwargs) -> int:
    """Store every level of a dlcore :class:`~dlcore.io.slide.Slide` as an OMERO image (an "import")."""
    levels = [slide.read_region(i, 0, 0, lv.width, lv.height) for i, lv in enumerate(slide.info.levels)]
    kwargs.setdefault("mpp", slide.info.mpp[0] if slide.info.mpp else None)
    kwargs.setdefault("channel_names", ["Red", "Green", "Blue"] if slide.info.is_rgb else None)
    return server.add_image(levels, **kwargs)


def demo_levels(folder: Path, width: int = 1536, height: int = 1024) -> list[np.ndarray]:
    """The pyramid of a synthetic demo slide (real IHC tissue), as written to and read from an OME-TIFF."""
    from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide
    from dlcore.io import open_slide

    slide = open_slide(write_synthetic_slide(Path(folder) / "demo.ome.tif", SyntheticSlideSpec(width=width, height=height)))
    try:
        return [slide.read_region(i, 0, 0, lv.width, lv.height) for i, lv in enumerate(slide.info.levels)]
    finally:
        slide.close()
