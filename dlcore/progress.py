"""Progress reporting: a bar on a terminal, plain lines elsewhere (OMERO script output, logs)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

ProgressCallback = Callable[[str, int, int], None]


class TqdmProgress:
    """A tqdm bar per stage; call with (stage, done, total)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=f"{self.prefix}{stage}", unit="tile" if stage == "tiles" else "it",
                             dynamic_ncols=True, leave=False, file=sys.stderr)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None


class LineProgress:
    """Prints ``prefix stage: done/total (pct%)`` lines at most every ``interval`` seconds."""

    def __init__(self, prefix: str = "", *, interval: float = 10.0, stream=None) -> None:
        self.prefix = prefix
        self.interval = interval
        self.stream = stream or sys.stdout
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last >= self.interval:
            self._last = now
            pct = 100.0 * done / total if total else 100.0
            print(f"{self.prefix}{stage}: {done}/{total} ({pct:.0f}%)", file=self.stream, flush=True)

    def close(self) -> None:
        pass
