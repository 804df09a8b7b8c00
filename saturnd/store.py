"""The state directory on disk: `cmds`, the `task_<ID>/` directories, durable writes.

This module owns every read and write of `cmds` (the layout itself is `records.py`'s)
and the life of the task directories: created with a task, deleted with it, repaired
at start. What is inside one, and its names, is `taskdir.py`'s. Two processes use it:
the listener opens the store to create and remove tasks (`Store.open`), the executor
opens the same directory read-only and calls `refresh()` to follow the listener's
changes; each run's supervising process records its end with `taskdir.append_run`.

Rules:
- Nothing is acknowledged before it is durable: `create` and `remove` return only
  after `fdatasync`, and on failure raise `StoreError` with the in-memory index
  unchanged (the caller then sends no OK).
- Crash safety (DESIGN.md "Files"): NEXT_ID is persisted before an id is used; a new
  record is written under the tombstone ID and flushed before its real ID is written
  in one 8-byte `pwrite`; a removal writes the tombstone before deleting the task's
  directory. Loading drops a torn tail and finishes interrupted removals.
- The in-memory index (taskindex.py) is the truth between loads: CREATE never scans
  the file and LIST never parses it. The writer keeps the index's copy of the file's
  bytes equal to the file by writing into it what it writes to disk.
- Start-up touches each task directory by name only (no `stat`): a missing one is
  recreated and a stale one deleted, but the mode of an existing one is not checked.
  They are created 0700 by us, and what guards them is the state directory, which
  the daemon checks is ours and 0700 before opening the store.
- Files are created 0600 and directories 0700; every path in the state directory is
  opened with O_NOFOLLOW (and task files relative to their directory's descriptor), so
  a symlink planted there is never followed.
- One-line errors: OS failures become `StoreError` raised `from` the OSError. A refused
  create or remove is logged by the caller, which knows what was not acknowledged: one
  line per event, not one here and one there.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import time_ns
from typing import Final

from saturnd import taskdir
from saturnd.protocol import TaskEntry
from saturnd.records import (
    HEADER_SIZE,
    ID_SIZE,
    NEXT_ID_OFFSET,
    RECORD_HEAD_SIZE,
    RUNS_HEAD_SIZE,
    TOMBSTONE,
    VERSION,
    RecordsError,
    Scan,
    choose_slot,
    command_span,
    complete_runs,
    decode_header,
    encode_body,
    encode_header,
    encode_id,
    encode_record,
    encode_record_head,
    header_version,
    runs_body,
    upgrade_v1,
)
from saturnd.task import Task
from saturnd.taskindex import (
    WORTH_TRIMMING,
    Index,
    TaskView,
    TimingView,
    index_cmds,
    read_all,
    read_into_bytearray,
    release_freed_memory,
)
from saturnd.timing import Timing

__all__ = ["CMDS", "CMDS_TEMP", "Store", "StoreError"]

CMDS: Final = "cmds"
"""The task table's file name in the state directory."""
CMDS_TEMP: Final = "cmds.new"
"""Where a whole new `cmds` is written before it is renamed over the old one (an
upgrade, a REPLACE); one left by a crash is deleted at the next load."""

# A file's mtime is a coarse clock on many kernels: two writes within one tick can
# leave (inode, size, mtime) unchanged. A load this close to the mtime is "racy" (as
# git calls it) and the next refresh re-reads. Seconds, to cover 1 s and 2 s stamps.
_RACY_WINDOW_NS: Final = 2_000_000_000

_OPEN_FILE: Final = os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StoreError(Exception):
    """The state directory cannot be read or written (one line, raised from OSError)."""


@dataclass(frozen=True)
class _Stamp:
    """What `refresh` compares to know whether `cmds` changed since the last load."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> _Stamp:
        return cls(status.st_ino, status.st_size, status.st_mtime_ns)


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of `data` at `offset`: a short write (file size limit, disk full)
    is continued, so the error behind it is raised instead of being ignored."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:  # pragma: no cover - pwrite reports an error instead
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[written:]
        offset += written


class Store:
    """The state directory: the task table of `cmds` and the `task_<ID>/` directories.

    Build one with `Store.open`. Not thread-safe; one writer process per directory
    (the daemon's pid-file lock ensures it), any number of read-only ones.
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
        self._stamp: _Stamp | None = None
        self._racy = False
        # Read-only: the bytes of the last load, None when there was no file. The index
        # reads its tasks from them, so comparing the next read to them costs nothing.
        self._seen: bytes | None = None
        # Set when a failed append could not be truncated back: bytes after _end.
        self._tail_dirty = False

    # --- opening and loading ----------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, logger: logging.Logger, *, read_only: bool = False) -> Store:
        """Open the store of `state_dir` (already checked by the caller), repairing it.

        Creates `cmds` if missing, drops a torn tail, finishes interrupted removals
        and recreates missing task directories. With `read_only` (the executor), only
        reads: no file is created or repaired, and a missing `cmds` is an empty store.
        Raises StoreError.
        """
        store = cls(state_dir, logger, read_only)
        try:
            if read_only:
                store._load_read_only()
                if store._seen is not None:
                    store._log.info("read %s: %d tasks", store._path, len(store._index))
            else:
                store._load_and_repair()
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def check(state_dir: Path) -> None:
        """Refuse what `open` would refuse, without loading the tasks; raises StoreError.

        For the process that starts the daemon and does not need the tasks itself:
        `cmds` is opened as `open` does (read-write, O_NOFOLLOW, created 0600 if
        missing), must be a regular file, and a complete header must have the MAGIC
        and VERSION this code reads. A torn header passes, as `open` repairs it.
        """
        path = state_dir / CMDS
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FILE, 0o600)
        except OSError as error:
            raise StoreError(f"cannot open {path}: {_describe(error)}") from error
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"{path} is not a regular file")
            head = os.pread(fd, HEADER_SIZE, 0)
        except OSError as error:
            raise StoreError(f"cannot read {path}: {_describe(error)}") from error
        finally:
            os.close(fd)
        if len(head) == HEADER_SIZE:
            try:
                decode_header(head)
            except RecordsError as error:
                raise StoreError(f"{path}: {error}") from error

    def close(self) -> None:
        """Close the `cmds` file descriptor (the in-memory index stays readable)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _load_and_repair(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | _OPEN_FILE, 0o600)
            status = os.fstat(self._fd)
        except OSError as error:
            raise StoreError(f"cannot open {self._path}: {_describe(error)}") from error
        if not stat.S_ISREG(status.st_mode):
            raise StoreError(f"{self._path} is not a regular file")
        try:
            self._delete_temp()
            if stat.S_IMODE(status.st_mode) & 0o077:
                os.fchmod(self._fd, 0o600)
                self._log.warning(
                    "tightened %s from %o to 600", self._path, stat.S_IMODE(status.st_mode)
                )
            # Read into the bytearray that the index keeps as its copy of the file.
            data = read_into_bytearray(self._fd, status.st_size)
            if self._version_of(data) != VERSION:
                data = self._upgrade(data)
            # Indexed before the repairs below: if one fails, open() drops the store.
            scan = self._index_tasks(data)
            torn = scan.valid_length < len(data)
            header_behind = scan.valid_length >= HEADER_SIZE and decode_header(data) != scan.next_id
            # Each repair is made to the file, then to the index's copy of it.
            for problem in scan.problems:
                self._log.warning("repairing %s: %s", self._path, problem)
            if scan.valid_length < HEADER_SIZE:
                # A fresh (or torn-at-birth) file: start it with a durable header.
                os.ftruncate(self._fd, 0)
                _pwrite_all(self._fd, encode_header(scan.next_id), 0)
                os.fdatasync(self._fd)
                self._sync_dir()
                data[:] = encode_header(scan.next_id)
            elif torn or header_behind:
                if torn:
                    os.ftruncate(self._fd, scan.valid_length)
                    del data[scan.valid_length :]
                if header_behind:
                    _pwrite_all(self._fd, encode_header(scan.next_id), 0)
                    data[:HEADER_SIZE] = encode_header(scan.next_id)
                os.fdatasync(self._fd)
            self._stamp_fd()
            taskdir.repair_dirs(self._dir, self._index.ids, self._log)
        except OSError as error:
            raise StoreError(f"cannot repair {self._dir}: {_describe(error)}") from error
        release_freed_memory()
        self._log.info(
            "loaded %s: %d tasks, next id %d", self._path, len(self._index), self._next_id
        )

    def _version_of(self, data: bytes | bytearray) -> int:
        try:
            return header_version(data)
        except RecordsError as error:
            raise StoreError(f"{self._path}: {error}") from error

    def _delete_temp(self) -> None:
        """Delete the `cmds.new` of a rewrite a crash interrupted (it was never `cmds`)."""
        try:
            os.unlink(self._dir / CMDS_TEMP)
        except FileNotFoundError:
            return
        self._log.warning("deleted %s, left by an interrupted rewrite", self._dir / CMDS_TEMP)

    def _upgrade(self, data: bytearray) -> bytearray:
        """Rewrite a VERSION 1 `cmds` (read into `data`) as VERSION 2, crash-safely; the
        new file's bytes. Its tasks, ids and NEXT_ID are the old file's (`upgrade_v1`)."""
        try:
            upgraded, old = upgrade_v1(data)
        except RecordsError as error:
            raise StoreError(f"{self._path}: {error}") from error
        for problem in old.problems:
            self._log.warning("repairing %s: %s", self._path, problem)
        try:
            self._rewrite(upgraded)
        except OSError as error:
            raise StoreError(
                f"cannot upgrade {self._path} to version {VERSION}: {_describe(error)}"
            ) from error
        self._log.info("upgraded %s from version 1 to version %d", self._path, VERSION)
        return upgraded

    def _rewrite(self, content: bytearray) -> None:
        """Make `content` the whole of `cmds` in one step that a crash cannot split.

        It is written to `cmds.new`, flushed, renamed over `cmds`, and the directory
        flushed: a crash leaves the old file or the new one (and maybe a `cmds.new`
        that the next load deletes). The new file's descriptor becomes the store's.
        Raises OSError, with `cmds` unchanged, when the rename did not happen.
        """
        temp = self._dir / CMDS_TEMP
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _OPEN_FILE, 0o600)
        try:
            _pwrite_all(fd, content, 0)
            os.fsync(fd)
            os.rename(temp, self._path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._tail_dirty = False
        try:
            self._sync_dir()
        except OSError as error:
            # The rename is done and cannot be taken back: the new file is the store's.
            self._log.error("cannot flush %s after renaming cmds: %s", self._dir, error)

    def _load_read_only(self) -> bool:
        """Read `cmds` as it is now, without changing anything on disk.

        Returns True when the bytes differ from the previous load's.
        """
        try:
            fd = os.open(self._path, os.O_RDONLY | _OPEN_FILE)
        except FileNotFoundError:
            changed = self._seen is not None
            self._adopt(Scan(next_id=self._next_id), Index(b""), [])
            self._stamp, self._seen, self._racy = None, None, False
            return changed
        except OSError as error:
            raise StoreError(f"cannot open {self._path}: {_describe(error)}") from error
        try:
            started = time_ns()
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise StoreError(f"{self._path} is not a regular file")
            data = read_all(fd, status.st_size)
        except OSError as error:
            raise StoreError(f"cannot read {self._path}: {_describe(error)}") from error
        finally:
            os.close(fd)
        self._stamp = _Stamp.of(status)
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
                data = upgrade_v1(data)[0]
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

    def _stamp_fd(self) -> None:
        # The writer's own changes must not look like someone else's to refresh().
        self._stamp = _Stamp.of(os.fstat(self._fd))
        self._racy = False

    def _sync_dir(self) -> None:
        """fsync the state directory, so a newly created `cmds` keeps its name."""
        fd = os.open(self._dir, _OPEN_DIR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- reading ----------------------------------------------------------------

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
                f"cannot read the runs of task {task_id}: {_describe(error)}"
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
                f"cannot read the runs of task {task_id}: {_describe(error)}"
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
                f"cannot read the {stream} of task {task_id}: {_describe(error)}"
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
            raise StoreError(f"cannot stat {self._path}: {_describe(error)}") from error
        stamp = None if status is None else _Stamp.of(status)
        if not self._racy and stamp == self._stamp:
            return False
        return self._load_read_only()

    # --- writing ----------------------------------------------------------------

    def create(self, timing: Timing, argv: tuple[bytes, ...]) -> int:
        """The course's CREATE: `create_task` of a task with no extras."""
        return self.create_task(Task(timing, argv))

    def create_task(self, task: Task) -> int:
        """Store a new task durably and return its id; raises StoreError.

        Order: NEXT_ID+1 in the header and the record under the tombstone ID (in the
        first free slot big enough, else appended), fdatasync; the real ID in one
        8-byte pwrite, fdatasync; then `task_<ID>/`. On failure the write is undone
        as far as possible and the in-memory index is unchanged: the task was not
        stored and must not be acknowledged. ValueError for a task the protocol
        cannot carry.
        """
        self._check_writable()
        body = encode_body(task)
        command = command_span(body)
        task_id = self._next_id
        choice = choose_slot(self._free, len(body))
        if choice is None:
            offset, size, appended = self._end, len(body), True
        else:
            (offset, size), appended = self._free[choice], False
        committing = False  # True once the real ID may have reached the file
        try:
            if appended and self._tail_dirty:
                os.ftruncate(self._fd, self._end)
                self._tail_dirty = False
            _pwrite_all(self._fd, encode_id(task_id + 1), NEXT_ID_OFFSET)
            _pwrite_all(self._fd, encode_record(TOMBSTONE, body, size), offset)
            os.fdatasync(self._fd)
            committing = True
            _pwrite_all(self._fd, encode_id(task_id), offset)
            os.fdatasync(self._fd)
            os.mkdir(self.task_dir(task_id), 0o700)
        except OSError as error:
            self._undo_create(offset, appended, committing)
            if committing:
                # The id may be on disk if the undo failed: never hand it out again.
                self._next_id = task_id + 1
            # No log line here: the caller logs the refusal, once (one line per event).
            raise StoreError(f"cannot store the task in {self._dir}: {_describe(error)}") from error
        if appended:
            self._end = offset + RECORD_HEAD_SIZE + size
        else:
            assert choice is not None
            del self._free[choice]
        self._next_id = task_id + 1
        # The index's copy of the file gets what the file got: header, record, ID.
        data = self._mirror()
        assert not appended or offset == len(data), "the copy ends where the file does"
        data[NEXT_ID_OFFSET:HEADER_SIZE] = encode_id(task_id + 1)
        data[offset : offset + RECORD_HEAD_SIZE + size] = encode_record(task_id, body, size)
        self._index.append(task_id, offset, body, task.timing, command)
        self._list_cache = self._list_ex_cache = None
        self._stamp_fd_quietly()
        self._log.info(
            "task created id=%d (%s slot at offset %d)",
            task_id,
            "new" if appended else "reused",
            offset,
        )
        return task_id

    def _undo_create(self, offset: int, appended: bool, committing: bool) -> None:
        """Best effort after a failed create: put the tombstone back, drop an append."""
        try:
            if committing:
                _pwrite_all(self._fd, encode_id(TOMBSTONE), offset)
            if appended:
                os.ftruncate(self._fd, self._end)
            os.fdatasync(self._fd)
        except OSError as error:
            # Harmless for the file: bytes past _end are a tombstone record or a torn
            # tail. Remember to cut them before the next append writes over them.
            self._tail_dirty = self._tail_dirty or appended
            self._log.error("cannot undo a failed create at offset %d: %s", offset, error)
        with contextlib.suppress(OSError):
            self._stamp_fd()

    def remove(self, task_id: int) -> bool:
        """Remove a task durably; False if there is no such task. Raises StoreError.

        The tombstone is written and flushed first (the removal is then done, even
        after a crash); then `task_<ID>/` is renamed to `.removed-<ID>-<random>`, so a
        run ending at this moment cannot write into it by path, and deleted.
        """
        self._check_writable()
        index = self._index
        position = index.find(task_id)
        if position < 0:
            return False
        offset, size = index.offsets[position], index.size(position)
        try:
            _pwrite_all(self._fd, encode_id(TOMBSTONE), offset)
            os.fdatasync(self._fd)
        except OSError as error:
            raise StoreError(
                f"cannot remove task {task_id} from {self._path}: {_describe(error)}"
            ) from error
        index.delete(position)
        self._mirror()[offset : offset + ID_SIZE] = encode_id(TOMBSTONE)
        bisect.insort(self._free, (offset, size))
        self._list_cache = self._list_ex_cache = None
        self._stamp_fd_quietly()
        self._log.info("task removed id=%d", task_id)
        taskdir.delete_dir(self._dir, task_id, self._log)
        return True

    def replace(self, remove_ids: Iterable[int], tasks: Sequence[Task]) -> list[int]:
        """Remove the tasks `remove_ids` and create `tasks`, all or nothing; the new ids
        (in the order of `tasks`). Raises StoreError, and ValueError for a task the
        protocol cannot carry, with nothing changed.

        Every other task keeps its id and its directory. Crash-safe: the new tasks'
        directories are made first (a crash leaves them stale: the next load deletes
        them), then the whole new `cmds` replaces the old one in one rename (the
        commit), and only then are the removed tasks' directories deleted (a crash
        leaves them stale too). The file comes out compacted: no free slot.
        """
        self._check_writable()
        index = self._index
        removing: set[int] = set()
        for task_id in remove_ids:
            if index.find(task_id) < 0:
                raise StoreError(f"cannot replace: no task with id {task_id}")
            removing.add(task_id)
        bodies = [encode_body(task) for task in tasks]
        first = self._next_id
        new_ids = list(range(first, first + len(bodies)))
        content = bytearray(encode_header(first + len(bodies)))
        data = index.data
        for task_id, offset, used in zip(index.ids, index.offsets, index.used, strict=True):
            if task_id not in removing:
                start = offset + RECORD_HEAD_SIZE
                content += encode_record_head(task_id, used)
                content += data[start : start + used]
        for task_id, body in zip(new_ids, bodies, strict=True):
            content += encode_record(task_id, body, len(body))
        made: list[int] = []
        try:
            for task_id in new_ids:
                os.mkdir(self.task_dir(task_id), 0o700)
                made.append(task_id)
            self._rewrite(content)
        except OSError as error:
            for task_id in made:
                with contextlib.suppress(OSError):
                    os.rmdir(self.task_dir(task_id))
            raise StoreError(
                f"cannot replace the tasks in {self._dir}: {_describe(error)}"
            ) from error
        self._index_tasks(content)
        self._stamp_fd_quietly()
        self._log.info(
            "tasks replaced: %d removed, %d created (ids %s)",
            len(removing),
            len(new_ids),
            f"{new_ids[0]}-{new_ids[-1]}" if new_ids else "none",
        )
        for task_id in sorted(removing):
            taskdir.delete_dir(self._dir, task_id, self._log)
        release_freed_memory()
        return new_ids

    def _mirror(self) -> bytearray:
        """The writer's copy of `cmds` (the index's bytes): what was loaded and written."""
        data = self._index.data
        assert isinstance(data, bytearray), "only the writer changes the file"
        return data

    def _check_writable(self) -> None:
        if self._read_only or self._fd < 0:
            raise StoreError(f"{self._path} is not open for writing")

    def _stamp_fd_quietly(self) -> None:
        # After a durable change a failing fstat costs at most one needless re-read.
        try:
            self._stamp_fd()
        except OSError:
            self._stamp = None
