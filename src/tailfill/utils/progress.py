"""Progress for long loops: a tqdm bar (rate, ETA, current loss) on a terminal, plain log lines elsewhere.

    with progress(total=steps, desc="diffusion", unit="step") as bar:
        ...
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

When stderr is not a terminal (CI, ``nohup``, a log file) the bar becomes an INFO line about every
10 % of the work or every 60 seconds, whichever comes first, with the same rate, ETA and postfix.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tailfill.progress")


class LogProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` interface, written as log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, every_fraction: float = 0.1,
                 every_seconds: float = 60.0, disable: bool = False):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n, self.initial, self.postfix, self.started = initial, initial, {}, time.time()
        self.every = max(1, int(round((total or 0) * every_fraction))) if total else None
        self.every_seconds, self.last_n, self.last_t = every_seconds, initial, self.started

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.time()
        due = (self.every and self.n - self.last_n >= self.every) or now - self.last_t >= self.every_seconds
        if due or (self.total and self.n >= self.total):
            self._emit(now)

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.initial) / elapsed
        text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit} ({rate:.2f} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {max(0.0, (self.total - self.n) / rate):.0f} s"
        text += ")" + "".join(f", {k} {v}" for k, v in self.postfix.items())
        log.info(text)
        self.last_n, self.last_t = self.n, now

    def close(self) -> None:
        if self.n != self.last_n and not self.disable:
            self._emit(time.time())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             disable: bool = False, leave: bool = False):
    """A progress bar for ``total`` units of work (see the module docstring); ``disable`` on non-main processes."""
    if sys.stderr.isatty() and not disable:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial, disable=disable)
