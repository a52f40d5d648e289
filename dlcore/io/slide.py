"""The :class:`Slide` interface every image source implements, and reading at a resolution.

A slide is a pyramid of levels; level 0 is full resolution.  ``read_region`` always returns a
``(Y, X, C)`` numpy array in the slide's dtype, with coordinates in the pixels *of that level*.
Local files and OMERO images are two implementations (:mod:`dlcore.io.local`, :mod:`dlcore.omero`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from dlcore.errors import InputError, SlideError


@dataclass(frozen=True)
class Level:
    """One resolution level: its size in pixels and its downsample relative to level 0."""

    width: int
    height: int
    downsample: float


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is, without its pixels.

    Attributes
    ----------
    name: a human label (file name, or OMERO ``Image:ID name``).
    identity: a stable identifier of the input recorded in provenance (path + size + mtime, or OMERO id).
    levels: the pyramid, level 0 first.
    mpp: level 0's physical pixel size in micrometres (x, y), or None when the file has none.
    channels: channel names, in ``C`` order.
    dtype: numpy dtype name of the pixels.
    tile_size: the native tile (width, height) of level 0, the grid reads should follow.
    """

    name: str
    identity: str
    levels: tuple[Level, ...]
    mpp: tuple[float, float] | None
    channels: tuple[str, ...]
    dtype: str
    tile_size: tuple[int, int]

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def is_rgb(self) -> bool:
        return len(self.channels) == 3 and self.dtype == "uint8"

    def channel_name(self, index: int) -> str:
        """The name of channel ``index``; a :class:`~dlcore.errors.SlideError` naming the channels there
        are when the slide has no such channel."""
        if not 0 <= index < len(self.channels):
            raise SlideError(f"channel {index} does not exist in {self.name}: it has channels "
                             f"0..{len(self.channels) - 1} ({', '.join(self.channels)})")
        return self.channels[index]


@runtime_checkable
class Slide(Protocol):
    """A readable whole-slide image.  Implementations are thread-safe for ``read_region``."""

    info: SlideInfo

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels of ``level`` in ``[y, y+height) x [x, x+width)`` as ``(Y, X, C)``.

        Raises :class:`~dlcore.errors.InputError` when the region is not inside the level.
        """

    def close(self) -> None:
        """Release files or server resources; the slide is unusable afterwards."""


def check_region(info: SlideInfo, level: int, x: int, y: int, width: int, height: int) -> None:
    """Raise a clear :class:`InputError` unless the region lies inside ``level`` of the slide."""
    if not 0 <= level < len(info.levels):
        raise InputError(f"level {level} does not exist in {info.name}: it has levels 0..{len(info.levels) - 1}")
    lv = info.levels[level]
    if width <= 0 or height <= 0:
        raise InputError(f"region {width}x{height} of {info.name} is empty; width and height must be positive")
    if x < 0 or y < 0 or x + width > lv.width or y + height > lv.height:
        raise InputError(
            f"region x={x} y={y} {width}x{height} lies outside level {level} of {info.name} "
            f"({lv.width}x{lv.height}); keep x+width <= {lv.width} and y+height <= {lv.height}"
        )


def reflect_index(coords: np.ndarray, size: int) -> np.ndarray:
    """Map coordinates that may lie outside ``[0, size)`` back inside by mirroring at the edges.

    Mirroring includes the edge pixel (numpy's ``"symmetric"``: -1 -> 0, -2 -> 1, size -> size - 1)
    and repeats with period ``2 * size``, so any coordinate, however far outside, maps to one fixed
    pixel of the image: the result depends on the position only, never on the region asked for.
    """
    period = 2 * size
    folded = np.mod(coords, period)
    return np.where(folded >= size, period - 1 - folded, folded)


def read_padded(slide: Slide, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Like ``read_region`` but the region may reach outside the level: outside, the image is mirrored.

    Why mirroring: a constant fill is signal for some stains and not for others (black is maximal
    stain for brightfield colour deconvolution, zero is background for fluorescence), while a mirror
    shows a model or a filter only intensities and textures the slide itself holds, so no edge
    artefact can appear, whatever the modality.  Whatever a task then finds outside the level is
    not part of any result: the stitchers keep only pixels inside the image.
    """
    lv = slide.info.levels[level]
    if 0 <= x and 0 <= y and x + width <= lv.width and y + height <= lv.height:
        return slide.read_region(level, x, y, width, height)
    if width <= 0 or height <= 0:
        raise InputError(f"region {width}x{height} of {slide.info.name} is empty; width and height must be positive")
    rows = reflect_index(np.arange(y, y + height), lv.height)
    cols = reflect_index(np.arange(x, x + width), lv.width)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    inside = slide.read_region(level, x0, y0, x1 - x0, y1 - y0)
    return inside[np.ix_(rows - y0, cols - x0)]


def level_mpp(info: SlideInfo, level: int) -> float | None:
    """The mean pixel size of ``level`` in micrometres, or None when the slide has no pixel size."""
    if info.mpp is None:
        return None
    return (info.mpp[0] + info.mpp[1]) / 2 * info.levels[level].downsample


def with_mpp(info: SlideInfo, mpp: float | None) -> SlideInfo:
    """``info`` with level 0's pixel size replaced by ``mpp`` (the ``--mpp`` override)."""
    if mpp is None:
        return info
    if not (mpp > 0 and math.isfinite(mpp)):
        raise InputError(f"--mpp {mpp} is not a positive pixel size in micrometres (e.g. 0.25 for 40x)")
    from dataclasses import replace

    return replace(info, mpp=(float(mpp), float(mpp)))


@dataclass(frozen=True)
class ResolutionPlan:
    """How to read a slide at a requested resolution.

    Pixels are read from ``level`` and resized by ``scale`` (``<= 1``: shrink) to reach the working
    resolution.  ``factor`` converts working-resolution coordinates to level-0 coordinates.
    """

    level: int
    scale: float
    factor: float
    working_mpp: float | None

    def working_size(self, info: SlideInfo) -> tuple[int, int]:
        """(width, height) of the whole slide at the working resolution."""
        return (max(1, int(round(info.width / self.factor))), max(1, int(round(info.height / self.factor))))


def plan_resolution(info: SlideInfo, mpp: float | None, *, tolerance: float = 0.05) -> ResolutionPlan:
    """Choose the level to read for a working resolution of ``mpp`` micrometres per pixel.

    ``mpp=None`` works at level 0's native pixels.  Otherwise the coarsest level that is at least as
    fine as ``mpp`` (within ``tolerance``) is read and resampled; a request finer than level 0 reads
    level 0 and enlarges it.  Raises :class:`InputError` when a resolution is requested and the
    slide has no pixel size.
    """
    if mpp is None:
        return ResolutionPlan(level=0, scale=1.0, factor=1.0, working_mpp=level_mpp(info, 0))
    if info.mpp is None:
        raise InputError(
            f"{info.name} has no physical pixel size and the task works at {mpp} µm/pixel; "
            "give the slide's pixel size with --mpp (e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)"
        )
    base = level_mpp(info, 0)
    factor = mpp / base
    best = 0
    for index, lv in enumerate(info.levels):
        if lv.downsample <= factor * (1 + tolerance):
            best = index if lv.downsample >= info.levels[best].downsample else best
    scale = info.levels[best].downsample / factor
    if abs(scale - 1) <= tolerance:
        scale = 1.0
        factor = info.levels[best].downsample
    return ResolutionPlan(level=best, scale=scale, factor=factor, working_mpp=mpp)


def read_working(slide: Slide, plan: ResolutionPlan, x: int, y: int, width: int, height: int) -> np.ndarray:
    """A region in working-resolution coordinates (it may reach outside the slide: mirrored, see
    :func:`read_padded`).

    Reads the plan's level and resamples it (area averaging when shrinking, linear when enlarging).
    """
    if plan.scale == 1.0:
        return read_padded(slide, plan.level, x, y, width, height)
    ds = slide.info.levels[plan.level].downsample
    to_level = plan.factor / ds  # working px -> level px
    lx, ly = int(math.floor(x * to_level)), int(math.floor(y * to_level))
    lw = int(math.ceil((x + width) * to_level)) - lx
    lh = int(math.ceil((y + height) * to_level)) - ly
    raw = read_padded(slide, plan.level, lx, ly, max(lw, 1), max(lh, 1))
    return resize_image(raw, height, width)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a ``(Y, X, C)`` image to ``height x width`` keeping its dtype."""
    from skimage.transform import resize

    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height
    out = resize(
        image, (height, width, image.shape[2]), order=1, anti_aliasing=shrinking,
        preserve_range=True, mode="edge",
    )
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype)


def to_rgb_uint8(image: np.ndarray, *, what: str = "this task") -> np.ndarray:
    """Check that a ``(Y, X, C)`` tile is 8-bit RGB, as colour deconvolution needs.

    Raises :class:`SlideError` for single-channel or 16-bit input with the fix to apply.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise SlideError(
            f"{what} expects an RGB image (3 channels) but got {image.shape[2] if image.ndim == 3 else 1}; "
            "for single-channel or fluorescence images choose --channel N (a channel index) instead of 'hematoxylin'"
        )
    if image.dtype != np.uint8:
        raise SlideError(
            f"{what} expects 8-bit RGB but the image is {image.dtype}; "
            "choose --channel N to segment one channel of a 16-bit image instead of 'hematoxylin'"
        )
    return image
