"""Progress for long loops: a tqdm bar on a terminal, periodic log lines otherwise.

Example:
    >>> bar = progress(total=1000, desc="finetune", unit="step", unit_scale_items=32)
    >>> bar.update(1)
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("slimbert.progress")


class _LogProgress:
    """tqdm's update/set_postfix/close, reported as a log line every `every` seconds."""

    def __init__(self, iterable=None, *, total=None, initial=0, desc="", unit="it",
                 every: float = 30.0, items_per_unit: float = 0.0, **_: Any) -> None:
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, \
            desc, unit
        self.every, self.items_per_unit = every, items_per_unit
        self.start_n, self.started = initial, time.perf_counter()
        self.last, self.postfix = self.started, ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        rate = (self.n - self.start_n) / max(now - self.started, 1e-9)
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
                 + f" {self.unit}s", f"{rate:.2f} {self.unit}/s"]
        if self.items_per_unit:
            parts.append(f"{rate * self.items_per_unit:.1f} examples/s")
        if self.total and rate > 0:
            parts.append(f"ETA {int((self.total - self.n) / rate)} s")
        return ", ".join(parts) + (f" ({self.postfix})" if self.postfix else "")

    def close(self) -> None:
        pass


def progress(iterable: Any = None, *, items_per_unit: float = 0.0, every: float = 30.0,
             **kwargs: Any):
    """A tqdm bar when stderr is a terminal; else a log line every `every` seconds with
    the rate, examples/s (`items_per_unit` examples per step) and the ETA."""
    if sys.stderr.isatty():
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("leave", False)
        return tqdm(iterable, **kwargs)
    return _LogProgress(iterable, every=every, items_per_unit=items_per_unit, **kwargs)
