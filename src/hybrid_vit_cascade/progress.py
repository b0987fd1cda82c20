"""Progress over a loop of items: a tqdm bar on a terminal, plain lines (no carriage returns) elsewhere.

A log file or CI console fed tqdm's '\\r' redraws grows by one line per redraw; off a terminal the
loop prints "desc: i/n (postfix), elapsed, left" at most every PLAIN_EVERY_S seconds and once at the end.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

PLAIN_EVERY_S = 30.0
T = TypeVar("T")


def duration(seconds: float) -> str:
    """A time left or spent as "1h02m", "3m05s" or "42s" ("?" when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class PlainProgress:
    """The subset of tqdm's interface the loops use, printing plain lines."""

    def __init__(self, items: Iterable[T], desc: str, unit: str, total: Optional[int], enabled: bool,
                 every_s: float = PLAIN_EVERY_S):
        self.items, self.desc, self.unit, self.enabled, self.every_s = items, desc, unit, enabled, every_s
        self.total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        self.n, self.postfix, self.t0, self.last = 0, "", time.perf_counter(), time.perf_counter()

    def __iter__(self) -> Iterator[T]:
        for item in self.items:
            yield item
            self.n += 1
            now = time.perf_counter()
            if now - self.last >= self.every_s or (self.total is not None and self.n == self.total):
                self.last = now
                self._line(now)

    def _line(self, now: float) -> None:
        if not self.enabled:
            return
        done = now - self.t0
        of = f"/{self.total}" if self.total is not None else ""
        left = f", {duration(done / self.n * (self.total - self.n))} left" if self.total and self.n else ""
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{post}, {duration(done)}{left}", file=sys.stderr, flush=True)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        pass


def progress_bar(items: Iterable[T], desc: str, unit: str, enabled: bool = True, total: Optional[int] = None):
    """Iterate `items` with progress: tqdm on a terminal, PlainProgress otherwise (both have set_postfix_str/close)."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True)
    return PlainProgress(items, desc, unit, total, enabled)
