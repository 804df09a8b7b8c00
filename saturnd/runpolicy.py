"""The rules P5 applies when a run ends or outlives its timeout, sans I/O.

This module owns: the history record of a finished run (its outcome from how it
ended, its end from its duration, its flags), whether it failed (on-failure runs),
the environment an on-failure command gets on top of the task's, and the grace
between SIGTERM and SIGKILL. runsupervisor.py applies them; man saturnd says them.

Rules: pure (values in, values out); a signal nobody in saturnd sent makes the run
KILLED but keeps the course's exit code (65535).
"""

from __future__ import annotations

import os
from typing import Final

from saturnd.runrecord import (
    CUT_STDERR,
    CUT_STDOUT,
    EXITED,
    KILLED,
    NOT_STARTED,
    OUTCOME_NAMES,
    RunRecord,
)

__all__ = ["STOP_GRACE", "failed", "failure_env", "record_of", "timeout_grace"]

STOP_GRACE: Final = 10.0
"""Seconds between SIGTERM and SIGKILL when a run is stopped (at most its timeout)."""


def timeout_grace(timeout: int) -> float:
    """The grace after a timeout's SIGTERM: short timeouts get as short a grace."""
    return min(float(timeout), STOP_GRACE)


def record_of(
    start: int,
    pid: int,
    status: int | None,
    stopped: int,
    flags: int,
    cuts: tuple[bool, bool],
    exitcode: int,
    duration: float,
) -> RunRecord:
    """The record of a run that started at `start` (its command `pid`, -1 if none ran;
    its wait `status`; `stopped`: the outcome P5 stopped it for, else EXITED)."""
    flags |= (CUT_STDOUT if cuts[0] else 0) | (CUT_STDERR if cuts[1] else 0)
    if pid < 0:
        return RunRecord(start, start, exitcode, NOT_STARTED, flags, 0)
    outcome = stopped
    if outcome == EXITED and status is not None and os.WIFSIGNALED(status):
        outcome = KILLED  # a signal from someone else: the exit code stays the course's
    return RunRecord(start, start + int(duration), exitcode, outcome, flags, pid)


def failed(record: RunRecord) -> bool:
    """Whether a run calls for its task's on-failure command."""
    return record.exitcode != 0 or record.outcome != EXITED


def failure_env(
    env: dict[bytes, bytes], task_id: int, record: RunRecord, stdout: bytes, stderr: bytes
) -> dict[bytes, bytes]:
    """The on-failure command's environment: the task's, plus the run's facts."""
    return {
        **env,
        b"SATURND_TASK_ID": b"%d" % task_id,
        b"SATURND_EXIT_CODE": b"%d" % record.exitcode,
        b"SATURND_OUTCOME": OUTCOME_NAMES[record.outcome].encode(),
        b"SATURND_START": b"%d" % record.start,
        b"SATURND_STDOUT": stdout,
        b"SATURND_STDERR": stderr,
    }
