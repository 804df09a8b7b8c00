"""The only place that reads the time: the system clock, and a fake clock for tests.

Rules:
- `now()` is epoch seconds as a float, like `time.time()`.
- `wait(deadline, wake_fd)` returns at the deadline (in this clock's time), as soon as
  `wake_fd` is readable (a signal arrived: see `signal.set_wakeup_fd`), or, for the fake
  clock, as soon as the time in its file changes. It never blocks longer than 60 s, so a
  laptop that slept or a clock set by NTP is noticed within a minute: the caller re-reads
  `now()` after every return and must not assume the deadline was reached.
- `SystemClock.wait` meets its deadline within about a millisecond: Linux may end a
  long select() late by 0.1 % of its timeout (60 ms on a 60 s sleep, which made the
  first run of a minute start that late), so a long wait ends FINAL_STEP early and a
  short one, whose slack is under a millisecond, reaches the deadline. That is two
  wake-ups a minute when idle, the most allowed (BENCHMARKS.md, 5).
- `FileClock` (`saturnd --clock FILE`) reads "now" as decimal text from FILE and notices
  a change within 50 ms, so a test can live through a day of schedule in seconds.
"""

from __future__ import annotations

import select
import time
from pathlib import Path
from typing import Protocol

MAX_SLEEP = 60.0
"""Longest single wait: the wall clock is re-read at least this often."""
FINAL_STEP = 0.5
"""How early the long sleep of `SystemClock.wait` ends before its deadline: above the
kernel's slack on any timeout up to MAX_SLEEP (0.1 %, at most 60 ms), so the short
sleep that follows always starts before the deadline."""
FILE_POLL = 0.01
"""How often the fake clock re-reads its file (well within the 50 ms promise)."""


class Clock(Protocol):
    """What the executor needs of a clock."""

    def now(self) -> float:
        """Epoch seconds."""
        ...

    def wait(self, deadline: float, wake_fd: int | None) -> None:
        """Sleep until `deadline`, a wake-up on `wake_fd`, or (fake clock) a change."""
        ...


def _wait_readable(fd: int | None, timeout: float) -> bool:
    """select() on one fd (or just sleep); True if the fd became readable."""
    timeout = max(0.0, timeout)
    if fd is None:
        time.sleep(timeout)
        return False
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
        return True
    return bool(readable)


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        """Epoch seconds from the system's real-time clock."""
        return time.time()

    def wait(self, deadline: float, wake_fd: int | None) -> None:
        """Sleep until `deadline` (at most MAX_SLEEP) or until `wake_fd` is readable.

        Far from the deadline, in two steps: a long sleep that ends FINAL_STEP early,
        then the rest, measured again on the wall clock (which may have been set in
        between). A deadline beyond MAX_SLEEP is not reached in this call, so its
        lateness does not matter: one sleep of MAX_SLEEP.
        """
        remaining = deadline - time.time()
        if remaining > MAX_SLEEP:
            _wait_readable(wake_fd, MAX_SLEEP)
            return
        if remaining > FINAL_STEP:
            if _wait_readable(wake_fd, remaining - FINAL_STEP):
                return
            remaining = deadline - time.time()
        _wait_readable(wake_fd, remaining)


class FileClock:
    """A fake clock: "now" is the number written in a file (tests, `--clock FILE`).

    A file being rewritten may be read empty or half-written; the last good value is
    kept then, so the clock never goes to zero by accident.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._last = 0.0
        self.now()

    def now(self) -> float:
        """The time written in the file, or the last good value."""
        try:
            text = self._path.read_text(encoding="ascii").strip()
            self._last = float(text)
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        return self._last

    def wait(self, deadline: float, wake_fd: int | None) -> None:
        """Return at the deadline, on a wake-up, or as soon as the file's time changes."""
        start = self.now()
        limit = time.monotonic() + MAX_SLEEP
        while time.monotonic() < limit:
            current = self.now()
            if current >= deadline or current != start:
                return
            if _wait_readable(wake_fd, FILE_POLL):
                return


def make_clock(path: str | None) -> Clock:
    """The system clock, or a FileClock when `--clock FILE` was given."""
    if path is None:
        return SystemClock()
    clock_path = Path(path)
    if not clock_path.is_file():
        raise OSError(f"clock file {path} does not exist")
    return FileClock(clock_path)


__all__ = [
    "FILE_POLL",
    "FINAL_STEP",
    "MAX_SLEEP",
    "Clock",
    "FileClock",
    "SystemClock",
    "make_clock",
]
