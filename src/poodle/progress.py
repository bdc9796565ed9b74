"""Progress for long loops: a tqdm bar on a terminal, plain lines in a log file.

tqdm writes carriage returns, which in a log file (SLURM, `make demo > log`, `| tee`) become one endless line that
is only readable at the end. Without a terminal, `progress_bar` prints `desc: n/total (rate, about T left)` when
the loop starts and then at most every `interval` seconds, and a last line when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

INTERVAL_S = 30.0


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = True,
                 interval: float = INTERVAL_S, **tqdm_kwargs: Any):  # fmt: skip
    """A tqdm bar (terminal), a `LineProgress` (no terminal), or a disabled tqdm (`enabled=False`).

    `enabled=None` shows a bar on a terminal and nothing otherwise (for short, optional loops)."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, **tqdm_kwargs)
    return LineProgress(total, desc, unit, interval)


class LineProgress:
    """The part of tqdm's interface poodle uses (`update`, `set_postfix`, `write`, `close`, context manager)."""

    disable = False

    def __init__(self, total: int | None, desc: str, unit: str, interval: float = INTERVAL_S) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._closed = False
        self._printed_once = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total}" if self.total else f"{self.desc}: {self.n}"]
        if self.n:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.3g} s/{self.unit}")
            if self.total and self.n < self.total:
                parts.append(f"about {format_duration((self.total - self.n) / max(rate, 1e-9))} left")
            elif self.total:
                parts.append(f"{format_duration(elapsed)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self._printed_once or now - self._last >= self.interval:
            print(self._line(), file=sys.stderr, flush=True)
            self._last, self._printed_once = now, True

    def set_postfix(self, values: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:  # noqa: ARG002
        values = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self._closed and self.n:
            print(self._line(), file=sys.stderr, flush=True)
        self._closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
