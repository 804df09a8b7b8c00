"""P5's runs that the disk refused to record: kept, retried, accounted for in the log.

This module owns, for one P5 (runsupervisor.py), what happens to a finished run whose
record fails with an error that may pass (ENOSPC, EDQUOT, EFBIG, EIO):
- `keep`: the run is held in the names of its outputs (taskdir.pend), or in memory when
  even that rename fails (its output is then lost), and logged as kept;
- `record_before`: a later run of the same task records the pending ones first, in
  order of start, so the history never holds a later run before an earlier one;
- `retry` / `linger`: P5 retries, backing off from 1 s to 60 s, for up to `RETRY_FOR`
  seconds after its first pending run; then it exits and what is on disk waits for the
  task's next record (`saturnd status` shows it meanwhile);
- the log lines: each pending run is logged when kept and again in the line that
  records it ("recorded N runs of task T that could not be recorded earlier (from
  HH:MM)"), or as LOST.

Why not a file of pending records: on a full disk it could not be written, and a P5
lingering for every minute would cost memory, so P5 lingers only for a few minutes.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from saturnd import taskdir
from saturnd.launch import strerror

__all__ = ["RETRIABLE", "RETRY_FOR", "PendingRuns", "recovered_text"]

RETRIABLE: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""Errors after which a record may work later (space freed, a file size limit raised,
a transient device error): the run is kept pending. Others lose it at once."""
RETRY_FOR = 300.0
"""Seconds P5 retries its pending runs before leaving them to the task's next run."""
_RETRY_FIRST: Final = 1.0
_RETRY_MOST: Final = 60.0
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Recorder = Callable[[Path, int, int], None]
"""Appends one finished run (task directory, start time, exit code) to the history."""


@dataclass(slots=True)
class _Pending:
    """A task directory where this P5 left runs it could not record."""

    task_id: int
    memory: list[taskdir.PendingRun]  # those only P5's memory holds (outputs lost)


class PendingRuns:
    """The runs one P5 could not record yet, by task directory, and when to retry."""

    def __init__(self, pid: int, record: Recorder, logger: logging.Logger | None) -> None:
        self.pid = pid
        self.record = record
        self.log = logger
        self.dirs: dict[Path, _Pending] = {}  # directories with runs to record
        self.retry_at = 0.0  # monotonic
        self.retry_delay = _RETRY_FIRST
        self.retry_until = 0.0  # monotonic

    def __bool__(self) -> bool:
        return bool(self.dirs)

    def keep(
        self,
        task_id: int,
        task_dir: Path,
        dirfd: int,
        names: tuple[bytes, bytes],
        run: taskdir.PendingRun,
        command_pid: int,
        error: OSError,
    ) -> bool:
        """Keep a run the disk refused to record, to retry; whether its outputs stay
        on disk (holding it in their names) rather than in memory alone."""
        entry = self.dirs.get(task_dir)
        if entry is None:
            if not self.dirs:
                self._schedule(first=True)
            entry = self.dirs[task_dir] = _Pending(task_id, [])
        try:
            taskdir.pend(dirfd, names[0], names[1], run)
            on_disk = True
        except OSError:
            entry.memory.append(replace(run, on_disk=False, whole=False))
            on_disk = False
        if self.log is not None:
            self.log.warning(
                "task %d: cannot record the run of %s (start %d, exit code %d, pid %d): %s; "
                "kept pending%s, retried for up to %d s",
                task_id,
                _clock(run.start),
                run.start,
                run.exitcode,
                command_pid,
                strerror(error).decode(),
                "" if on_disk else " in memory (its output is lost)",
                RETRY_FOR,
            )
        return on_disk

    def _schedule(self, first: bool = False) -> None:
        """When to retry next: 1 s after the first pending run, then twice as long each
        time, at most a minute; never past `RETRY_FOR` after the first."""
        now = time.monotonic()
        if first:
            self.retry_delay = _RETRY_FIRST
            self.retry_until = now + RETRY_FOR
        else:
            self.retry_delay = min(self.retry_delay * 2, _RETRY_MOST)
        self.retry_at = min(now + self.retry_delay, self.retry_until)

    def record_before(self, task_id: int, task_dir: Path, dirfd: int) -> None:
        """Under the run lock, record the directory's pending runs before a later one;
        raises the error that stopped them (the later run is then kept pending too)."""
        entry = self.dirs.get(task_dir)
        flushed = taskdir.flush_pending(dirfd, task_dir, self.record, entry.memory if entry else ())
        self._account(task_id, entry, flushed)
        if flushed.error is not None:
            raise flushed.error

    def _account(self, task_id: int, entry: _Pending | None, flushed: taskdir.Flushed) -> None:
        """Log what a flush recorded and forget those held in memory."""
        if not flushed.recorded:
            return
        if entry is not None:
            entry.memory = [run for run in entry.memory if run not in flushed.recorded]
        if self.log is not None:
            self.log.warning("%s", recovered_text(task_id, flushed.recorded))

    def due(self) -> bool:
        """Whether a retry is due now."""
        return bool(self.dirs) and time.monotonic() >= self.retry_at

    def wait_ms(self) -> int:
        """Milliseconds until the next retry (for P5's poll)."""
        return max(0, int((self.retry_at - time.monotonic()) * 1000) + 1)

    def retry(self) -> None:
        """Try again to record the pending runs of every directory this P5 left some in;
        forget a directory once none of its own are left there."""
        for task_dir, entry in list(self.dirs.items()):
            try:
                dirfd = os.open(task_dir, _DIR_FLAGS)
            except OSError as error:
                if isinstance(error, FileNotFoundError | NotADirectoryError):
                    self._removed(task_dir, entry)
                continue
            try:
                taskdir.lock_runs(dirfd)
                flushed = taskdir.flush_pending(
                    dirfd, task_dir, self.record, entry.memory, publish_last=True
                )
                ours = any(run.pid == self.pid for run in taskdir.pending_runs(dirfd))
            finally:
                os.close(dirfd)
            self._account(entry.task_id, entry, flushed)
            if isinstance(flushed.error, FileNotFoundError):
                self._removed(task_dir, entry)
            elif flushed.error is None or not (ours or entry.memory):
                del self.dirs[task_dir]  # nothing of ours left there
        self._schedule()

    def _removed(self, task_dir: Path, entry: _Pending) -> None:
        del self.dirs[task_dir]
        if self.log is not None:
            self.log.info("task %d: removed, its pending runs are not recorded", entry.task_id)

    def linger(self) -> None:
        """Once every run has ended: retry what is pending until it is recorded or
        `RETRY_FOR` has passed, then leave what is on disk to the task's next run."""
        while self.dirs:
            pause = self.retry_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.retry()
            if self.dirs and time.monotonic() >= self.retry_until:
                self._give_up()
                return

    def _give_up(self) -> None:
        logger = self.log
        if logger is None:
            return
        for task_dir, entry in self.dirs.items():
            for lost in entry.memory:
                logger.error(
                    "task %d: run LOST, not recorded (start %d, exit code %d, pid %d): "
                    "the disk refused it for %d s",
                    entry.task_id,
                    lost.start,
                    lost.exitcode,
                    self.pid,
                    RETRY_FOR,
                )
            left = [run for run in taskdir.pending_runs(task_dir) if run.pid == self.pid]
            if left:
                logger.warning(
                    "task %d: %d runs still not recorded (from %s) after %d s; kept in "
                    "its directory, the task's next run records them first",
                    entry.task_id,
                    len(left),
                    _clock(left[0].start),
                    RETRY_FOR,
                )


def _clock(epoch: int) -> str:
    """A run's start as the log names it: HH:MM, local time."""
    return time.strftime("%H:%M", time.localtime(epoch))


def recovered_text(task_id: int, runs: Sequence[taskdir.PendingRun]) -> str:
    """The log line that accounts for pending runs recorded at last (oldest first)."""
    first, last = _clock(runs[0].start), _clock(runs[-1].start)
    span = first if first == last else f"{first} to {last}"
    plural = "run" if len(runs) == 1 else "runs"
    text = (
        f"recorded {len(runs)} {plural} of task {task_id} that could not be recorded "
        f"earlier (from {span})"
    )
    lost = [_clock(run.start) for run in runs if not run.on_disk]
    cut = [_clock(run.start) for run in runs if run.on_disk and not run.whole]
    if lost:
        text += "; output lost: " + ", ".join(lost)
    if cut:
        text += "; output cut by the full disk: " + ", ".join(cut)
    return text
