"""What P5 does around a run's record beyond `times-exitcodes`: its history record and
kept outputs, its task's on-failure command, and the task's runs whose P5 was killed.

Rules:
- `record_more` runs under the run lock, right after the `times-exitcodes` entry: a
  failure here is logged and the run stays recorded (FileNotFoundError, "the task was
  removed", is raised for the caller).
- The on-failure command is started like a run's command (own session, default
  signals, /dev/null for its three standard descriptors) and never waited for: it is
  reaped with P5's runs or, once P5 is gone, by init.
- Abandoned runs (liveruns.py) are recorded by whoever starts the task's next run,
  before it starts; a failure there is logged, and the next run tries again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from saturnd import history, taskdir
from saturnd.launch import spawn_hook
from saturnd.pendingruns import Recorder
from saturnd.runpolicy import failure_env
from saturnd.runrecord import RunRecord
from saturnd.task import Extras

__all__ = ["on_failure", "output_paths", "reap_abandoned", "record_more"]

# (P5 pid, the run's number in P5's batch, how many runs' outputs are kept)
Keeping = tuple[int, int, int]


def record_more(
    dir_fd: int,
    entry: RunRecord,
    temporaries: tuple[bytes, bytes],
    keeping: Keeping,
    task_id: int,
    log: logging.Logger | None,
) -> None:
    """The run's history record and kept outputs (see the module docstring)."""
    try:
        history.append_history(dir_fd, entry)
        history.keep_outputs(dir_fd, temporaries, entry, *keeping)
    except FileNotFoundError:
        raise
    except OSError as error:
        if log is not None:
            log.error(
                "task %d: run pid %d: history or kept output not written: %s",
                task_id,
                entry.pid,
                error,
            )


def output_paths(task_dir: Path, entry: RunRecord, keeping: Keeping) -> tuple[bytes, bytes]:
    """Where a recorded run's stdout and stderr are: its kept outputs, or the task's
    `stdout`/`stderr` when none are kept (the next run replaces those)."""
    p5_pid, number, keep = keeping
    if keep > 1:
        out, err = history.kept_paths(task_dir, entry, p5_pid, number)
    else:
        out, err = task_dir / taskdir.STDOUT, task_dir / taskdir.STDERR
    return os.fsencode(out), os.fsencode(err)


def on_failure(
    task_id: int,
    task_dir: Path,
    extras: Extras,
    env: dict[bytes, bytes],
    entry: RunRecord,
    keeping: Keeping,
    null: int,
    log: logging.Logger | None,
) -> None:
    """Start the task's on-failure command through /bin/sh -c, in the run's `env` plus
    what runpolicy.failure_env adds."""
    env = failure_env(env, task_id, entry, *output_paths(task_dir, entry, keeping))
    try:
        pid = spawn_hook((b"/bin/sh", b"-c", extras.on_failure), env, null)
    except (OSError, ValueError) as error:
        if log is not None:
            log.error("task %d: cannot start its on-failure command: %s", task_id, error)
        return
    if log is not None:
        log.info("task %d: on-failure command started, pid %d", task_id, pid)


def reap_abandoned(
    task_id: int, task_dir: Path, now: int, record: Recorder, log: logging.Logger | None
) -> None:
    """Record, KILLED at `now`, the task's runs whose P5 was killed (taskdir.py)."""
    try:
        found = taskdir.reap_abandoned(task_dir, now, record)
    except OSError as error:
        if log is not None and not isinstance(error, FileNotFoundError):
            log.error("task %d: cannot record abandoned runs: %s", task_id, error)
        return
    if found and log is not None:
        log.warning(
            "task %d: %d run(s) whose supervising process was killed recorded as killed",
            task_id,
            found,
        )
