"""The task table of a state directory as a process reads it: `cmds`, indexed in memory.

This module owns reading: loading `cmds` (read-only, repairing nothing), following the
writer's changes (`refresh`), the views of the tasks and their timings, the encoded
LIST and LIST-EX replies, and reading a task's run history and outputs. `TaskTable` is
the base of `store.Store`, which adds the writer's side (repairs, the upgrade, create,
remove, replace); the executor uses a read-only Store, the listener the writer.

Rules:
- The in-memory index (taskindex.py) is the truth between loads: LIST never parses
  the file. A reload builds a new index, so a view taken before shows the old table.
- An older `cmds` is read as its upgrade (`cmdsupgrade.upgrade`), in memory only:
  the listener rewrites the file at its start, and a reader sees the same tasks before
  and after.
- `refresh` costs one `stat` when nothing changed, except within a couple of seconds
  of a change, where a file time stamp is too coarse to be trusted. A same-size
  rewrite (PAUSE's one byte) is seen too: it moves the mtime.
- `paused_ids` is cached per load (the executor asks every minute).
- One-line errors: OS failures become `StoreError` raised `from` the OSError.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from time import time_ns
from typing import Final

from saturnd import taskdir
from saturnd.cmdsupgrade import upgrade
from saturnd.protocol import TaskEntry
from saturnd.records import (
    HEADER_SIZE,
    VERSION,
    RecordsError,
    Scan,
    header_version,
)
from saturnd.runrecord import RunRecord
from saturnd.runsfile import RUNS_HEAD_SIZE, complete_runs, runs_body
from saturnd.statefile import OPEN_FILE, Stamp, describe
from saturnd.taskindex import (
    WORTH_TRIMMING,
    Index,
    TaskView,
    TimingView,
    index_cmds,
    read_all,
    release_freed_memory,
)
from saturnd.timing import Timing

__all__ = ["CMDS", "StoreError", "TaskTable"]

CMDS: Final = "cmds"
"""The task table's file name in the state directory."""

# A file's mtime is a coarse clock on many kernels: two writes within one tick can
# leave (inode, size, mtime) unchanged. A load this close to the mtime is "racy" (as
# git calls it) and the next refresh re-reads. Seconds, to cover 1 s and 2 s stamps.
_RACY_WINDOW_NS: Final = 2_000_000_000


class StoreError(Exception):
    """The state directory cannot be read or written (one line, raised from OSError)."""


class TaskTable:
    """The tasks of a state directory's `cmds`, as last loaded, and their histories.

    Build one with `store.Store.open`. Not thread-safe. The writer's bookkeeping
    (`_fd`, `_free`, `_end`, `_tail_dirty`) is set up here so that a load fills it in.
    """

    def __init__(self, state_dir: Path, logger: logging.Logger, read_only: bool) -> None:
        """Use `Store.open`; this only sets up an empty index."""
        self._dir = state_dir
        self._path = state_dir / CMDS
        self._log = logger
        self._read_only = read_only
        self._fd = -1
        self._index = Index(b"" if read_only else bytearray())
        self._free: list[tuple[int, int]] = []  # (offset, SIZE), by offset
        self._end = HEADER_SIZE
        self._next_id = 0
        self._list_cache: bytes | None = None
        self._list_ex_cache: bytes | None = None
        self._paused_cache: frozenset[int] | None = None
        self._stamp: Stamp | None = None
        self._racy = False
        # Read-only: the bytes of the last load, None when there was no file. The index
        # reads its tasks from them, so comparing the next read to them costs nothing.
        self._seen: bytes | None = None
        # Set when a failed append could not be truncated back: bytes after _end.
        self._tail_dirty = False

    def close(self) -> None:
        """Close the `cmds` file descriptor (the in-memory index stays readable)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _load_read_only(self) -> bool:
        """Read `cmds` as it is now, without changing anything on disk.

        Returns True when the bytes differ from the previous load's.
        """
        try:
            fd = os.open(self._path, os.O_RDONLY | OPEN_FILE)
        except FileNotFoundError:
            changed = self._seen is not None
            self._adopt(Scan(next_id=self._next_id), Index(b""), [])
            self._stamp, self._seen, self._racy = None, None, False
            return changed
        except OSError as error:
            raise StoreError(f"cannot open {self._path}: {describe(error)}") from error
        try:
            started = time_ns()
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise StoreError(f"{self._path} is not a regular file")
            data = read_all(fd, status.st_size)
        except OSError as error:
            raise StoreError(f"cannot read {self._path}: {describe(error)}") from error
        finally:
            os.close(fd)
        self._stamp = Stamp.of(status)
        self._racy = status.st_mtime_ns + _RACY_WINDOW_NS > started
        if data == self._seen:
            # Read again for nothing (a racy stamp): the allocator may keep this copy in
            # the process's RSS once freed, unless told to give it back.
            large = len(data) >= WORTH_TRIMMING
            del data
            if large:
                release_freed_memory()
            return False
        scan = self._index_tasks(data)
        for problem in scan.problems:
            # The writer may be in the middle of an append: not worth a warning here.
            self._log.debug("reading %s: %s", self._path, problem)
        self._seen = data
        release_freed_memory()
        return True

    def _index_tasks(self, data: bytes | bytearray) -> Scan:
        """Make the tasks of `data` (a whole `cmds`) the in-memory index; the scan.

        Raises StoreError for a file this code may not read, leaving the index as it
        was.
        """
        try:
            if self._read_only and header_version(data) != VERSION:
                # The listener upgrades it at its start: until then, read it as it will be.
                data = upgrade(data)[0]
            index, free, scan = index_cmds(data, writer=not self._read_only)
        except RecordsError as error:
            raise StoreError(f"{self._path}: {error}") from error
        self._adopt(scan, index, free)
        return scan

    def _adopt(self, scan: Scan, index: Index, free: list[tuple[int, int]]) -> None:
        """Replace the in-memory index (and the free slots, by offset) and what the
        scan says of the file."""
        self._index, self._free = index, free
        self._end = max(scan.valid_length, HEADER_SIZE)
        self._next_id = scan.next_id
        self._list_cache = self._list_ex_cache = None
        self._paused_cache = None

    def _stamp_fd(self) -> None:
        # The writer's own changes must not look like someone else's to refresh().
        self._stamp = Stamp.of(os.fstat(self._fd))
        self._racy = False

    @property
    def tasks(self) -> Mapping[int, TaskEntry]:
        """The live tasks by increasing id (a read-only view of the current index:
        take it again after `refresh()`, which builds a new one).

        Each access to a task decodes its command line: to go over every task's
        timing, use `timings`.
        """
        return TaskView(self._index)

    @property
    def timings(self) -> Mapping[int, Timing]:
        """The timing of each live task by increasing id, without decoding any command
        line (for planning a minute); read-only, and like `tasks` a view of the
        current index."""
        return TimingView(self._index)

    @property
    def next_id(self) -> int:
        """The id the next created task gets."""
        return self._next_id

    @property
    def state_dir(self) -> Path:
        """The state directory."""
        return self._dir

    def task_dir(self, task_id: int) -> Path:
        """The `task_<ID>/` directory of a task."""
        return self._dir / taskdir.dir_name(task_id)

    def list_reply(self) -> bytes:
        """The whole encoded LIST reply: `OK`, NBTASKS, then the tasks by increasing id."""
        reply = self._list_cache
        if reply is None:
            reply = self._list_cache = self._index.listing()
            if len(reply) >= WORTH_TRIMMING:
                # The buffer it was built in is freed: give it back, or the process
                # keeps a second copy of the reply in its RSS (8 MB at 100,000 tasks).
                release_freed_memory()
        return reply

    def list_ex_reply(self) -> bytes:
        """The whole encoded LIST-EX reply: `OK`, NBTASKS, then the whole tasks by id."""
        reply = self._list_ex_cache
        if reply is None:
            reply = self._list_ex_cache = self._index.listing_ex()
            if len(reply) >= WORTH_TRIMMING:
                release_freed_memory()  # as in list_reply
        return reply

    def paused_ids(self) -> frozenset[int]:
        """The ids of the paused tasks (PAUSE), as last loaded or written.

        Cached: built once per load (one byte read per task, no decoding), so the
        executor may ask every minute; the writer keeps it up to date as it writes.
        """
        paused = self._paused_cache
        if paused is None:
            paused = self._paused_cache = self._index.paused_ids()
        return paused

    def times_exitcodes_body(self, task_id: int) -> bytes:
        """The TX reply body (NBRUNS, runs) of a task; zero runs if it never finished one.

        The caller has checked that the task exists. A run being appended at this
        moment is either wholly in or wholly out: the count is written after the run.
        Raises StoreError.
        """
        try:
            data = taskdir.read_file(self.task_dir(task_id), taskdir.TIMES_EXITCODES)
        except OSError as error:
            raise StoreError(
                f"cannot read the runs of task {task_id}: {describe(error)}"
            ) from error
        return runs_body(data or b"")

    def open_runs(self, task_id: int) -> tuple[int, int] | None:
        """An open descriptor of a task's `times-exitcodes` and its complete runs, for
        sending the TX reply without reading the history into memory.

        Returns (fd, count): the runs to send are the count * RUN_SIZE bytes at offset
        RUNS_HEAD_SIZE, NBRUNS clamped to the runs present as `times_exitcodes_body`
        does. These bytes stay as they are while the caller reads them: an append
        writes only past them and NBRUNS. The caller closes fd. None when the task
        never finished a run (no file). Raises StoreError.
        """
        try:
            opened = taskdir.open_file(self.task_dir(task_id), taskdir.TIMES_EXITCODES)
            if opened is None:
                return None
            fd, size = opened
            try:
                count = complete_runs(os.pread(fd, RUNS_HEAD_SIZE, 0), size)
            except BaseException:
                os.close(fd)
                raise
        except OSError as error:
            raise StoreError(
                f"cannot read the runs of task {task_id}: {describe(error)}"
            ) from error
        return fd, count

    def output(self, task_id: int, stream: str) -> bytes | None:
        """What the last finished run of a task wrote on `stream` ("stdout"/"stderr").

        None when the file does not exist (the task never finished a run: NR).
        Raises StoreError.
        """
        if stream not in taskdir.OUTPUT_STREAMS:
            raise ValueError(f"unknown output stream {stream!r}")
        try:
            return taskdir.read_file(self.task_dir(task_id), stream)
        except OSError as error:
            raise StoreError(
                f"cannot read the {stream} of task {task_id}: {describe(error)}"
            ) from error

    def history(self, task_id: int) -> tuple[RunRecord, ...]:
        """The runs of a task's history, oldest first (none if it never ran). The
        caller has checked that the task exists. Raises StoreError."""
        try:
            return taskdir.read_history(self.task_dir(task_id))
        except OSError as error:
            raise StoreError(
                f"cannot read the history of task {task_id}: {describe(error)}"
            ) from error

    def kept_output(self, task_id: int, stream: str, start: int) -> tuple[bool, bytes] | None:
        """Whether it was cut, and what a kept run of a task wrote on `stream`
        ("stdout"/"stderr"): the run that started at `start`, or the last finished one
        for 0. None when no such run's output is kept (NR). Raises StoreError."""
        if stream not in taskdir.OUTPUT_STREAMS:
            raise ValueError(f"unknown output stream {stream!r}")
        try:
            return taskdir.kept_output(self.task_dir(task_id), stream, start)
        except OSError as error:
            raise StoreError(
                f"cannot read the {stream} of task {task_id}: {describe(error)}"
            ) from error

    def refresh(self) -> bool:
        """Reload `cmds` if it changed on disk since the last load; True if the tasks
        may have changed (the index was rebuilt from different bytes).

        For the read-only process: no repair, no truncation. One `stat` when nothing
        changed, except within a couple of seconds of a change, where a file time
        stamp is too coarse to be trusted and the file is read again. Raises
        StoreError if the file cannot be read or does not decode.
        """
        try:
            status = os.stat(self._path, follow_symlinks=False)
        except FileNotFoundError:
            status = None
        except OSError as error:
            raise StoreError(f"cannot stat {self._path}: {describe(error)}") from error
        stamp = None if status is None else Stamp.of(status)
        if not self._racy and stamp == self._stamp:
            return False
        return self._load_read_only()
