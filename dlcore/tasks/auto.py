"""Tasks chosen from the image: ``nuclei`` runs the shipped nuclei model that fits each slide.

A user should not have to know model names.  For ``nuclei``, :func:`choose_nuclei` looks at a slide's
channels and pixel type:

- 8-bit RGB is brightfield: ``nuclei-brightfield-unet`` for H&E; a slide whose thumbnail shows DAB
  (brown) on a share of its tissue is IHC, which the model is not validated on, so the classical
  pipeline runs there (:func:`brightfield_stain`);
- anything else is fluorescence: ``nuclei-fluorescence-unet`` on the nuclear channel, which is the only
  channel, the one given with ``channel``, or the one whose name says it (DAPI, Hoechst, ...); with
  several channels and none of those, it is an error that asks for ``--channel``.

When torch is not installed, or the model is not in the registry, the classical pipeline
(``nuclei-classical``, on the same channel) runs instead.  The choice and its reason are recorded in
the run's provenance (``task_choice``).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field

from dlcore.errors import SlideError
from dlcore.io.slide import SlideInfo
from dlcore.tasks import AUTO_TASKS

BRIGHTFIELD_NUCLEI = "nuclei-brightfield-unet"
FLUORESCENCE_NUCLEI = "nuclei-fluorescence-unet"
CLASSICAL_NUCLEI = "nuclei-classical"
DAB_OD = 0.08
"""DAB optical density (scikit-image ``rgb2hed``) above which a thumbnail pixel counts as brown."""
IHC_DAB_FRACTION = 0.05
"""Share of the tissue pixels above :data:`DAB_OD` from which a brightfield slide counts as IHC.

Measured on 37 real H&E fields of four sources (MoNuSeg test, CoNSeP, CPM-15, a TCIA field): at most
3.3 % of their tissue passes :data:`DAB_OD` (eosin leaks a little into the DAB channel); scikit-image's
real IHC section: 42 %."""
NUCLEAR_CHANNEL = re.compile(r"dapi|hoechst|h33342|draq5|sytox|nuclear|nucleus|nuclei|\bdna\b", re.IGNORECASE)


@dataclass(frozen=True)
class TaskChoice:
    """What ``requested`` became for one slide: the task ``chosen``, the ``params`` it runs with, and why."""

    requested: str
    chosen: str
    params: dict = field(default_factory=dict)
    modality: str = ""
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def torch_installed() -> bool:
    """Whether torch can be imported here (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def modality(info: SlideInfo) -> str:
    """``"brightfield"`` for 8-bit RGB, else ``"fluorescence"``."""
    return "brightfield" if info.is_rgb else "fluorescence"


def brightfield_stain(thumb) -> tuple[str, float]:
    """``("ihc" or "he", share)``: whether an RGB thumbnail's tissue shows DAB, and the share of its
    tissue pixels (mean below 215 of 255) whose DAB optical density exceeds :data:`DAB_OD`."""
    import numpy as np
    from skimage.color import rgb2hed

    rgb = np.asarray(thumb)[..., :3].astype(np.float64) / 255.0
    tissue = rgb.mean(axis=-1) < 215 / 255
    if tissue.sum() < 100:
        return "he", 0.0
    share = float((rgb2hed(rgb)[..., 2][tissue] > DAB_OD).mean())
    return ("ihc" if share >= IHC_DAB_FRACTION else "he"), share


def nuclear_channel(info: SlideInfo, given: int | None = None) -> tuple[int, str]:
    """The index of the nuclear-stain channel of a fluorescence slide and how it was found."""
    names = list(info.channels)
    if given is not None:
        return given, f"channel {given} ({info.channel_name(given)}) as given"
    if len(names) == 1:
        return 0, "its only channel"
    matches = [i for i, name in enumerate(names) if NUCLEAR_CHANNEL.search(name)]
    if len(matches) == 1:
        return matches[0], f"channel {matches[0]} ({names[matches[0]]}), named as a nuclear stain"
    found = f"channels {', '.join(names[i] for i in matches)} all look nuclear" if matches else "no channel is named DAPI, Hoechst or nuclear"
    raise SlideError(f"{info.name} has {len(names)} channels ({', '.join(names)}) and {found}: "
                     "choose the nuclear channel with --channel N")


def choose_nuclei(info: SlideInfo, params: dict, *, torch_ok: bool, installed,
                  stain: tuple[str, float] | None = None) -> TaskChoice:
    """The nuclei task for ``info``: the fitting shipped model if torch and the model are there, else
    the classical pipeline.  ``installed`` holds the registry's model names; ``params`` are the user's
    (``channel`` among them for fluorescence); ``stain`` is :func:`brightfield_stain`'s answer for a
    brightfield slide (IHC runs the classical pipeline)."""
    params = dict(params)
    kind = modality(info)
    if kind == "brightfield":
        model, detail = BRIGHTFIELD_NUCLEI, f"8-bit RGB ({', '.join(info.channels)}): brightfield"
        if stain is not None and stain[0] == "ihc":
            return TaskChoice("nuclei", CLASSICAL_NUCLEI, params, kind, f"{detail}, DAB (brown) on {stain[1]:.0%} of "
                              f"the tissue: IHC, which {model} is not validated on (it is on H&E), so the classical "
                              f"pipeline runs; name the model to run it anyway")
        if stain is not None:
            detail += f", H&E (DAB on {stain[1]:.0%} of the tissue)"
    else:
        given = params.pop("channel", None)
        if given is not None and (isinstance(given, bool) or not isinstance(given, int)):
            raise SlideError(f"channel={given!r} names a stain, which only 8-bit RGB brightfield has; {info.name} is "
                             f"{len(info.channels)}-channel {info.dtype} fluorescence ({', '.join(info.channels)}): "
                             "give the nuclear channel's index, e.g. --channel 0")
        index, how = nuclear_channel(info, given)
        params["channel"] = index
        model, detail = FLUORESCENCE_NUCLEI, f"{len(info.channels)}-channel {info.dtype}: fluorescence, {how}"
    if not torch_ok:
        return TaskChoice("nuclei", CLASSICAL_NUCLEI, params, kind, f"{detail}; torch is not installed, so the "
                          f"classical pipeline runs instead of {model} (pip install 'dlcore[dl]' for the model)")
    if model not in installed:
        return TaskChoice("nuclei", CLASSICAL_NUCLEI, params, kind, f"{detail}; {model} is not in the model "
                          "registry, so the classical pipeline runs instead")
    return TaskChoice("nuclei", model, params, kind, detail)


def choose_task(name: str, params: dict, info: SlideInfo, *, config=None, stain_thumbnail=None) -> TaskChoice:
    """The task an automatic name (:data:`AUTO_TASKS`) becomes for the slide ``info``; ``stain_thumbnail``
    (a callable returning an RGB thumbnail) is called for brightfield slides only."""
    installed: set[str] = set()
    torch_ok = torch_installed()
    if torch_ok:
        from dlcore.models.registry import list_models

        installed = {record.name for record in list_models(config)}
    if name == "nuclei":
        stain = None
        if stain_thumbnail is not None and modality(info) == "brightfield":
            stain = brightfield_stain(stain_thumbnail())
        return choose_nuclei(info, params, torch_ok=torch_ok, installed=installed, stain=stain)
    raise ValueError(f"{name!r} is not an automatic task ({AUTO_TASKS})")  # pragma: no cover - callers check


@dataclass(frozen=True)
class AutoTask:
    """An automatic task name (``nuclei``) waiting for its slide: :func:`dlcore.workflows.analyse_slide`
    calls :meth:`for_slide` once the slide is open.  Tasks it resolves are kept, so a batch of slides
    loads each chosen model once."""

    requested: str
    params: dict = field(default_factory=dict)
    config: object = field(default=None, repr=False, compare=False)
    _resolved: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.requested

    def for_slide(self, info: SlideInfo, stain_thumbnail=None):
        """``(task, choice)``: the ready task chosen for ``info`` and the :class:`TaskChoice`;
        ``stain_thumbnail`` as for :func:`choose_task`."""
        from dlcore.tasks import resolve_task

        choice = choose_task(self.requested, self.params, info, config=self.config, stain_thumbnail=stain_thumbnail)
        key = (choice.chosen, repr(sorted(choice.params.items())))
        if key not in self._resolved:
            self._resolved[key] = resolve_task(choice.chosen, choice.params, config=self.config)
        return self._resolved[key], choice

    def for_open_slide(self, slide, info: SlideInfo | None = None):
        """:meth:`for_slide` for an open :class:`~dlcore.io.slide.Slide`: its stain is judged from a
        1024-pixel thumbnail, read only when the slide is brightfield.  ``info`` overrides the slide's own
        (e.g. a pixel size given on the command line)."""
        from dlcore.tiling.tissue import thumbnail

        return self.for_slide(info or slide.info, stain_thumbnail=lambda: thumbnail(slide, max_side=1024)[0])
