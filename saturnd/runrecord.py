"""One run as the history keeps it: `RunRecord`, its outcomes and its flags.

This module owns the model of a run beyond the course's (TIME, EXITCODE): when it
started and ended, how it ended (`outcome`), what else is known of it (`flags`) and
the pid of its command. Its 24 bytes (wiretypes.encode_run_record) are the same on
the wire (HISTORY) and in a task's `history` file: written once.

Rules: pure, as cheap to import as `timing`. A run that never ran (skipped, could not
start) has `end == start` and `pid` 0; `exitcode` is the course's (0xFFFF: ended by a
signal, or never ran).
"""

from __future__ import annotations

from saturnd.timing import Frozen

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "CAUGHT_UP",
    "CUT_STDERR",
    "CUT_STDOUT",
    "BY_HAND",
    "EXITED",
    "KILLED",
    "NOT_STARTED",
    "OUTCOME_NAMES",
    "SKIPPED",
    "TIMED_OUT",
    "RunRecord",
]

EXITED: Final = 0
"""The command ended by itself (exit code, or a signal nobody here sent)."""
TIMED_OUT: Final = 1
"""Stopped by saturnd because it outlived the task's timeout."""
KILLED: Final = 2
"""Stopped by `cassini --kill`, or its supervising process was killed."""
SKIPPED: Final = 3
"""Not started: the previous run was still going and the task says --no-overlap."""
NOT_STARTED: Final = 4
"""Could not start (no such program, not executable, ...)."""
OUTCOME_NAMES: Final = ("exited", "timed out", "killed", "skipped", "could not start")
"""The outcomes' names, by value, as listings and JSON give them."""

CUT_STDOUT: Final = 1
"""Its standard output was cut at the cap (or by a full disk)."""
CUT_STDERR: Final = 2
"""Its standard error was cut at the cap (or by a full disk)."""
BY_HAND: Final = 4
"""Started by `cassini --run`, not by the schedule."""
CAUGHT_UP: Final = 8
"""A catch-up run (--catch-up, or the clock-jump rule's catch-up after a restart)."""


class RunRecord(Frozen):
    """One run: start and end (epoch seconds), exit code, outcome, flags, command pid."""

    __slots__ = __match_args__ = ("start", "end", "exitcode", "outcome", "flags", "pid")
    start: int
    end: int
    exitcode: int
    outcome: int
    flags: int
    pid: int

    def __init__(
        self, start: int, end: int, exitcode: int, outcome: int, flags: int = 0, pid: int = 0
    ) -> None:
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "exitcode", exitcode)
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "pid", pid)

    @property
    def duration(self) -> int:
        """Seconds from start to end."""
        return self.end - self.start

    @property
    def outcome_name(self) -> str:
        """`exited`, `timed out`, `killed`, `skipped` or `could not start`."""
        if 0 <= self.outcome < len(OUTCOME_NAMES):
            return OUTCOME_NAMES[self.outcome]
        return f"outcome {self.outcome}"
