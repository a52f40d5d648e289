"""The time a script's session has left, and whether the next image fits in it.

OMERO's processor gives a script's session a time to live of ``omero.scripts.timeout`` (default
3,600,000 ms, omero-blitz ``InteractiveProcessorI``) and stops the job when it runs out: an image
being analysed then is left half-written and the dead session cannot clean it up.  So before each
image, :class:`TimeBudget` compares what is left with what the image will need, estimated from the
images already done (seconds per pixel, the slowest seen, with a safety factor and a margin for
writing the results).  An image that would not finish is not started; the script's Message names the
images that remain and how to continue.

An image whose analysis runs longer than foreseen stops at a tile boundary at :meth:`TimeBudget.tiles_deadline`
(which leaves :data:`RESULTS_RESERVE_S` for the script to report) with its checkpoint kept on the node
(:mod:`dlcore.tiling.checkpoint`): running the script again on it continues from there.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MIN_START_S = 90.0  # never start an image with less left than this, even before any estimate
RESULTS_RESERVE_S = 60.0  # no tile is started later than this before the session ends
SAFETY = 1.25  # the next image may be slower per pixel than the slowest so far
MARGIN_S = 30.0  # writing the results (ROIs, label image, table, files) on top of the analysis


@dataclass
class TimeBudget:
    """The session's deadline (epoch seconds, None: no limit known) and the pace seen so far."""

    deadline: float | None
    limit_s: float | None = None
    seconds_per_pixel: float = 0.0
    _clock: object = field(default=time.time, repr=False)

    def remaining_s(self) -> float | None:
        """Seconds until the session ends, or None without a limit."""
        return None if self.deadline is None else self.deadline - self._clock()

    def tiles_deadline(self) -> float | None:
        """The time (epoch seconds) after which an image's run starts no tile: the session's end less
        :data:`RESULTS_RESERVE_S`; None without a limit."""
        return None if self.deadline is None else self.deadline - RESULTS_RESERVE_S

    def needed_s(self, pixels: int) -> float:
        """The time an image of ``pixels`` level-0 pixels is expected to need."""
        return self.seconds_per_pixel * pixels * SAFETY + MARGIN_S

    def fits(self, pixels: int) -> bool:
        """Whether an image of ``pixels`` can be started and finished before the session ends."""
        remaining = self.remaining_s()
        if remaining is None:
            return True
        return remaining >= max(MIN_START_S, self.needed_s(pixels))

    def record(self, pixels: int, seconds: float) -> None:
        """Learn from an image that took ``seconds`` for ``pixels``."""
        if pixels > 0:
            self.seconds_per_pixel = max(self.seconds_per_pixel, seconds / pixels)


def session_budget(conn) -> TimeBudget:
    """The budget of ``conn``'s session: started + time to live.  No limit when the session has none (0)
    or cannot be read (then a warning is logged: the job still runs, unprotected)."""
    from omero.rtypes import unwrap

    try:
        session = conn.getSession()
        ttl_ms = unwrap(session.getTimeToLive())
        started_ms = unwrap(session.getStarted())
    except Exception as exc:  # noqa: BLE001 - an unreadable session must not stop the analysis
        log.warning("cannot read the session's time to live (%s); images are started without checking the time left", exc)
        return TimeBudget(deadline=None)
    if not ttl_ms or ttl_ms <= 0 or started_ms is None:
        return TimeBudget(deadline=None)
    return TimeBudget(deadline=(started_ms + ttl_ms) / 1000.0, limit_s=ttl_ms / 1000.0)


def not_started_message(budget: TimeBudget, labels: list[str], *, next_pixels: int) -> str:
    """What the Message says about the images left out: why, which, and how to continue."""
    remaining = max(0.0, budget.remaining_s() or 0.0)
    limit = f"{budget.limit_s / 60:.0f} min" if budget.limit_s else "the job's"
    need = (f" and the next image needs about {budget.needed_s(next_pixels) / 60:.0f} min"
            if budget.seconds_per_pixel else "")
    return (f"{len(labels)} image{'s' if len(labels) != 1 else ''} not started: the script's time limit "
            f"(omero.scripts.timeout, {limit}) ends in {remaining / 60:.0f} min{need}. Nothing was written for "
            f"{'them' if len(labels) != 1 else 'it'}. To continue, run the script again on: {', '.join(labels)} "
            "(images already done keep their results; running them again would replace them). An OMERO "
            "administrator can raise the limit: omero config set omero.scripts.timeout <milliseconds>.")
