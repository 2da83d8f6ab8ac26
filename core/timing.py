"""Where a stage's time goes: seconds and call counts per phase (train, evaluate, ...).

`recording()` activates a `Timings` for one stage run (`pipeline.cli.execute` wraps each
stage in it and writes `timings` into the manifest); `phase(name)` marks code that belongs
to a phase, and does nothing when nothing records (a library call from a notebook, a
thread other than the recording one). Phases are exclusive: one inside another pauses the
outer one, so validation inside training counts as `evaluate`, not `train`; a phase
inside one of the same name is part of it. What no phase covers is `other`.

    train      training steps              evaluate   Keras and in-process TFLite accuracy
    convert    TFLite conversion, SavedModel writing
    calibrate  range calibration, shape importance scoring
    verify     fresh-process gates, MediaPipe runs
    io         model and checkpoint reads and writes, file hashing
    latency    the report's speed measurements

Example:
    >>> with recording() as timings:
    ...     with phase("train"):
    ...         with phase("evaluate"):  # pauses "train"
    ...             pass
    >>> timings.as_dict(total_seconds=1.0)["other"]["seconds"] <= 1.0
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

PHASES = ("train", "evaluate", "convert", "calibrate", "verify", "io", "latency")

# New threads start with an empty context, so `phase` is a no-op outside the recording one.
_active: ContextVar[Timings | None] = ContextVar("slimbert_timings", default=None)


class Timings:
    """Seconds and call counts per phase; exclusive: a phase inside another pauses it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._stack: list[list] = []  # [name, running since] of the open phases, innermost last

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def enter(self, name: str) -> bool:
        """Start phase `name`, pausing the open one; False if `name` is already the
        innermost open phase (then it simply goes on)."""
        now = time.perf_counter()
        if self._stack:
            if self._stack[-1][0] == name:
                return False
            self._add(self._stack[-1][0], now - self._stack[-1][1])
        self._stack.append([name, now])
        self.counts[name] = self.counts.get(name, 0) + 1
        self.seconds.setdefault(name, 0.0)
        return True

    def exit(self) -> None:
        """End the innermost open phase and resume the one it paused."""
        now = time.perf_counter()
        name, since = self._stack.pop()
        self._add(name, now - since)
        if self._stack:
            self._stack[-1][1] = now

    def as_dict(self, total_seconds: float) -> dict[str, dict[str, float]]:
        """{"train": {"seconds": .., "count": ..}, ..., "other": {"seconds": ..}}: the
        known phases first, in `PHASES` order; `other` is what no phase covered of
        `total_seconds` (never below 0). Open phases count up to now."""
        seconds = dict(self.seconds)
        now = time.perf_counter()
        if self._stack:
            name, since = self._stack[-1]
            seconds[name] = seconds.get(name, 0.0) + now - since
        order = [p for p in PHASES if p in seconds] + [p for p in seconds if p not in PHASES]
        out: dict[str, dict[str, float]] = {
            name: {"seconds": round(seconds[name], 3), "count": self.counts[name]}
            for name in order}
        out["other"] = {"seconds": round(max(total_seconds - sum(seconds.values()), 0.0), 3)}
        return out


@contextmanager
def recording() -> Iterator[Timings]:
    """Record phases in this thread (and its context) until the block ends."""
    timings = Timings()
    token = _active.set(timings)
    try:
        yield timings
    finally:
        _active.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's time as phase `name` of the active recording, if any. Also a
    decorator: `@phase("evaluate")`."""
    timings = _active.get()
    if timings is None or not timings.enter(name):
        yield
        return
    try:
        yield
    finally:
        timings.exit()
