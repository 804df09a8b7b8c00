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
- The in-memory index is the truth between loads: CREATE never scans the file and
  LIST never parses it. It is lean, because a daemon process must stay small with
  100,000 tasks (BENCHMARKS.md, 3): a copy of the file's bytes (which the writer
  keeps equal to the file by writing into it what it writes to disk) and, per task,
  four numbers in arrays: its id, its record's offset, its BODY's length before the
  padding, and which of the Timings shared by equal timings it has. LIST entries
  and command lines are read from the copy only when asked for (`list_reply`,
  `tasks`).
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
import secrets
import shutil
import stat
import struct
from array import array
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from dataclasses import dataclass
from pathlib import Path
from time import time_ns
from typing import Final

from saturnd import taskdir
from saturnd.proc import libc
from saturnd.protocol import REPLY_OK, TaskEntry
from saturnd.records import (
    HEADER_SIZE,
    ID_SIZE,
    NEXT_ID_OFFSET,
    RECORD_HEAD_SIZE,
    RUNS_HEAD_SIZE,
    TIMING_SIZE,
    TOMBSTONE,
    RecordsError,
    Scan,
    Slot,
    choose_slot,
    complete_runs,
    decode_body,
    decode_header,
    encode_body,
    encode_header,
    encode_id,
    encode_record,
    runs_body,
    scan_cmds,
)
from saturnd.timing import Timing

__all__ = ["CMDS", "Store", "StoreError"]

CMDS: Final = "cmds"
"""The task table's file name in the state directory."""

_U32: Final = struct.Struct(">I")

# A buffer at least this long (a LIST reply's, a re-read `cmds`) is worth giving back to
# the system once freed; below it, the cost of malloc_trim (some 15 us) is the larger.
_WORTH_TRIMMING: Final = 1 << 20

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


def _read_all(fd: int, size: int) -> bytes:
    """Every byte of an open file, from offset 0 (pread: the offset is not shared).

    `size` is what fstat said: a file that has not grown since is read in one piece,
    with no second copy to join chunks into (that copy would double the peak memory
    of loading a large `cmds`).
    """
    return _read_all_from(fd, 0, size + 1)  # one more byte: the end shows at once


def _read_all_from(fd: int, offset: int, want: int = 1 << 20) -> bytes:
    """The bytes of an open file from `offset` to its end, read `want` bytes first."""
    chunks: list[bytes] = []
    while True:
        chunk = os.pread(fd, want, offset)
        if not chunk:
            return b"".join(chunks)  # one chunk is returned as it is, not copied
        chunks.append(chunk)
        offset += len(chunk)
        want = 1 << 20


def _read_into_bytearray(fd: int, size: int) -> bytearray:
    """Every byte of an open file, from offset 0, into a bytearray of `size` bytes (what
    fstat said), read in place: no bytes object to copy it from. A file that is not
    `size` bytes long any more is read as it is now."""
    data = bytearray(size)
    filled = 0
    with memoryview(data) as view:
        while filled < size:
            count = os.preadv(fd, [view[filled:]], filled)
            if count == 0:
                break
            filled += count
    if filled < size:
        del data[filled:]  # it shrank
    else:
        data += _read_all_from(fd, filled)  # it grew (nothing, as a rule)
    return data


def _release_freed_memory() -> None:
    """Give freed memory back to the system (glibc's malloc_trim), after a load or once
    a large buffer is freed (a LIST reply's, a `cmds` read again for nothing).

    The allocator keeps what it freed for reuse, so such transients (a previous load's
    bytes, the scan's bookkeeping, a buffer of 8 MB at 100,000 tasks) could stay in the
    process's RSS for good; trimming takes under a millisecond here. Without glibc
    (musl has no malloc_trim), nothing is done.
    """
    lib = libc()
    trim = getattr(lib, "malloc_trim", None) if lib is not None else None
    if trim is not None:
        trim(0)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of `data` at `offset`: a short write (file size limit, disk full)
    is continued, so the error behind it is raised instead of being ignored."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:  # pragma: no cover - pwrite reports an error instead
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[written:]
        offset += written


_UNSHARED: Final = 0xFFFF_FFFF
"""The kind of a task created with a timing that no loaded task has (`_Index.extra`)."""


class _Index:
    """The live tasks by increasing id, over a copy of the bytes of `cmds`.

    Per task, four numbers at the same position of four arrays: its id, the offset of
    its record in `data`, the length of its BODY before the padding, and its kind (the
    position of its Timing in `shared`): about 24 bytes a task besides the file's own
    bytes, where dictionaries of objects took some 300. The LIST entry and the command
    line are read from `data` when asked for.

    `data` is the file as it was read: bytes for a read-only store (a reload builds a
    new index), a bytearray for the writer, which writes into it what it writes into
    the file (records and NEXT_ID; not what a failed write may have left past the
    end), so the two stay equal. Not thread-safe, like the store.
    """

    __slots__ = ("data", "extra", "ids", "kinds", "known", "offsets", "shared", "used")

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.ids: array[int] = array("Q")
        self.offsets: array[int] = array("Q")
        self.used: array[int] = array("I")
        self.kinds: array[int] = array("I")
        # The distinct timings of the loaded tasks: tasks with equal timings share one.
        self.shared: list[Timing] = []
        # TIMING bytes -> kind of that timing, for created tasks to share it too (the
        # writer's only). Filled by loads only, so a client cannot grow it by creating
        # and removing tasks.
        self.known: dict[bytes, int] = {}
        # id -> Timing of the live tasks created with a timing not in `known`.
        self.extra: dict[int, Timing] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, task_id: object) -> int:
        """The position of a live task, or -1 (also for a key that is no int)."""
        if not isinstance(task_id, int):
            return -1
        ids = self.ids
        position = bisect.bisect_left(ids, task_id)
        if position < len(ids) and ids[position] == task_id:
            return position
        return -1

    def timing(self, position: int) -> Timing:
        kind = self.kinds[position]
        if kind == _UNSHARED:
            return self.extra[self.ids[position]]
        return self.shared[kind]

    def timings(self) -> Iterator[Timing]:
        """The timing of every task, in id order."""
        if not self.extra:
            return map(self.shared.__getitem__, self.kinds)
        return map(self.timing, range(len(self.ids)))

    def body(self, position: int) -> bytes:
        """A task's BODY without its padding, as stored."""
        start = self.offsets[position] + RECORD_HEAD_SIZE
        return bytes(self.data[start : start + self.used[position]])

    def size(self, position: int) -> int:
        """The SIZE of a task's record (its slot's capacity), read from `data`."""
        size: int = _U32.unpack_from(self.data, self.offsets[position] + ID_SIZE)[0]
        return size

    def listing(self) -> bytes:
        """The LIST reply: `OK`, NBTASKS, then each task's ID and BODY by increasing id.

        A record is ID, SIZE, BODY, padding: the entry is its first 8 bytes and its
        BODY, copied from `data` into a buffer of the reply's exact size (a growing
        one would be copied as it grows: a peak of twice the reply).
        """
        data = self.data
        count = len(self.ids)
        reply = bytearray(len(REPLY_OK) + _U32.size + ID_SIZE * count + sum(self.used))
        position = len(REPLY_OK) + _U32.size
        reply[:position] = REPLY_OK + _U32.pack(count)
        for offset, used in zip(self.offsets, self.used, strict=True):
            body = position + ID_SIZE
            reply[position:body] = data[offset : offset + ID_SIZE]
            start = offset + RECORD_HEAD_SIZE
            position = body + used
            reply[body:position] = data[start : start + used]
        return bytes(reply)

    def append(self, task_id: int, offset: int, body: bytes, timing: Timing) -> None:
        """Add a task whose id is above every live one (a created task)."""
        kind = self.known.get(body[:TIMING_SIZE], _UNSHARED)
        if kind == _UNSHARED:
            self.extra[task_id] = timing
        self.ids.append(task_id)
        self.offsets.append(offset)
        self.used.append(len(body))
        self.kinds.append(kind)

    def delete(self, position: int) -> None:
        """Drop the task at `position` (its bytes in `data` are the caller's)."""
        if self.kinds[position] == _UNSHARED:
            del self.extra[self.ids[position]]
        del self.ids[position]
        del self.offsets[position]
        del self.used[position]
        del self.kinds[position]

    def sort(self) -> None:
        """Put the tasks in increasing id order (a load meets them in file order, which
        is id order unless a slot was reused)."""
        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        self.ids = array("Q", map(self.ids.__getitem__, order))
        self.offsets = array("Q", map(self.offsets.__getitem__, order))
        self.used = array("I", map(self.used.__getitem__, order))
        self.kinds = array("I", map(self.kinds.__getitem__, order))


class _TaskView(Mapping[int, TaskEntry]):
    """The live tasks as a read-only mapping, decoding a command line when asked.

    It holds the index, not a copy: it follows create and remove, and keeps showing
    the old table after a reload (which builds a new index).
    """

    __slots__ = ("_index",)

    def __init__(self, index: _Index) -> None:
        self._index = index

    def __getitem__(self, task_id: int) -> TaskEntry:
        index = self._index
        position = index.find(task_id)
        if position < 0:
            raise KeyError(task_id)
        _, argv = decode_body(index.body(position))
        return TaskEntry(task_id, index.timing(position), argv)

    def __contains__(self, task_id: object) -> bool:
        return self._index.find(task_id) >= 0  # without decoding, unlike Mapping's

    def __iter__(self) -> Iterator[int]:
        return iter(self._index.ids)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"<tasks view of {len(self._index)} tasks>"


class _TimingView(Mapping[int, Timing]):
    """The timing of each live task as a read-only mapping; like `_TaskView`, a view
    of one index. Going over its items (the executor plans every minute that way)
    costs no lookup per task."""

    __slots__ = ("_index",)

    def __init__(self, index: _Index) -> None:
        self._index = index

    def __getitem__(self, task_id: int) -> Timing:
        position = self._index.find(task_id)
        if position < 0:
            raise KeyError(task_id)
        return self._index.timing(position)

    def __contains__(self, task_id: object) -> bool:
        return self._index.find(task_id) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._index.ids)

    def __len__(self) -> int:
        return len(self._index)

    def items(self) -> ItemsView[int, Timing]:
        return _TimingItems(self, self._index)

    def values(self) -> ValuesView[Timing]:
        return _TimingValues(self, self._index)

    def __repr__(self) -> str:
        return f"<timings view of {len(self._index)} tasks>"


class _TimingItems(ItemsView[int, Timing]):
    __slots__ = ("_index",)

    def __init__(self, view: _TimingView, index: _Index) -> None:
        super().__init__(view)
        self._index = index

    def __iter__(self) -> Iterator[tuple[int, Timing]]:
        return zip(self._index.ids, self._index.timings(), strict=True)


class _TimingValues(ValuesView[Timing]):
    __slots__ = ("_index",)

    def __init__(self, view: _TimingView, index: _Index) -> None:
        super().__init__(view)
        self._index = index

    def __iter__(self) -> Iterator[Timing]:
        return self._index.timings()


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
        self._index = _Index(b"" if read_only else bytearray())
        self._free: list[tuple[int, int]] = []  # (offset, SIZE), by offset
        self._end = HEADER_SIZE
        self._next_id = 0
        self._list_cache: bytes | None = None
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
            if stat.S_IMODE(status.st_mode) & 0o077:
                os.fchmod(self._fd, 0o600)
                self._log.warning(
                    "tightened %s from %o to 600", self._path, stat.S_IMODE(status.st_mode)
                )
            # Read into the bytearray that the index keeps as its copy of the file.
            data = _read_into_bytearray(self._fd, status.st_size)
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
            self._sync_task_dirs()
        except OSError as error:
            raise StoreError(f"cannot repair {self._dir}: {_describe(error)}") from error
        _release_freed_memory()
        self._log.info(
            "loaded %s: %d tasks, next id %d", self._path, len(self._index), self._next_id
        )

    def _load_read_only(self) -> bool:
        """Read `cmds` as it is now, without changing anything on disk.

        Returns True when the bytes differ from the previous load's.
        """
        try:
            fd = os.open(self._path, os.O_RDONLY | _OPEN_FILE)
        except FileNotFoundError:
            changed = self._seen is not None
            self._adopt(Scan(next_id=self._next_id), _Index(b""), [])
            self._stamp, self._seen, self._racy = None, None, False
            return changed
        except OSError as error:
            raise StoreError(f"cannot open {self._path}: {_describe(error)}") from error
        try:
            started = time_ns()
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise StoreError(f"{self._path} is not a regular file")
            data = _read_all(fd, status.st_size)
        except OSError as error:
            raise StoreError(f"cannot read {self._path}: {_describe(error)}") from error
        finally:
            os.close(fd)
        self._stamp = _Stamp.of(status)
        self._racy = status.st_mtime_ns + _RACY_WINDOW_NS > started
        if data == self._seen:
            # Read again for nothing (a racy stamp): the allocator may keep this copy in
            # the process's RSS once freed, unless told to give it back.
            large = len(data) >= _WORTH_TRIMMING
            del data
            if large:
                _release_freed_memory()
            return False
        scan = self._index_tasks(data)
        for problem in scan.problems:
            # The writer may be in the middle of an append: not worth a warning here.
            self._log.debug("reading %s: %s", self._path, problem)
        self._seen = data
        _release_freed_memory()
        return True

    def _index_tasks(self, data: bytes | bytearray) -> Scan:
        """Make the tasks of `data` (a whole `cmds`) the in-memory index; the scan.

        The index keeps `data` and is built as the scan goes, one slot at a time: a
        list of every slot besides it would take 15 MB more at 100,000 tasks, in small
        objects between the index's own, which the allocator could not give back.
        Raises StoreError for a file this code may not read, leaving the index as it
        was.
        """
        index = _Index(data)
        ids, offsets, used, kinds = index.ids, index.offsets, index.used, index.kinds
        shared = index.shared
        kind_of: dict[int, int] = {}  # id() of a shared Timing -> its kind
        free: list[tuple[int, int]] = []
        previous = -1
        ordered = True

        def keep(slot: Slot) -> None:
            nonlocal previous, ordered
            task_id = slot.task_id
            if task_id is None:
                free.append((slot.offset, slot.size))
                return
            timing = slot.timing
            kind = kind_of.get(id(timing))
            if kind is None:
                assert timing is not None
                kind = kind_of[id(timing)] = len(shared)
                shared.append(timing)
            if task_id < previous:
                ordered = False
            previous = task_id
            ids.append(task_id)
            offsets.append(slot.offset)
            used.append(slot.used)
            kinds.append(kind)

        try:
            scan = scan_cmds(data, lean=True, sink=keep)
        except RecordsError as error:
            raise StoreError(f"{self._path}: {error}") from error
        if not ordered:
            index.sort()
        if not self._read_only:
            for key, timing in scan.timings.items():
                kind = kind_of.get(id(timing))
                if kind is None:  # met only in a record that was freed
                    kind = kind_of[id(timing)] = len(shared)
                    shared.append(timing)
                index.known[key] = kind
        self._adopt(scan, index, free)
        return scan

    def _adopt(self, scan: Scan, index: _Index, free: list[tuple[int, int]]) -> None:
        """Replace the in-memory index (and the free slots, by offset) and what the
        scan says of the file."""
        self._index, self._free = index, free
        self._end = max(scan.valid_length, HEADER_SIZE)
        self._next_id = scan.next_id
        self._list_cache = None

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

    def _sync_task_dirs(self) -> None:
        """Finish interrupted removals and recreate missing task directories."""
        # id -> whether its directory was found; by increasing id, for the log lines.
        found = dict.fromkeys(self._index.ids, False)
        with os.scandir(self._dir) as listing:
            for entry in listing:
                if entry.name.startswith(taskdir.REMOVED_PREFIX):
                    self._log.warning("finishing an interrupted removal: deleting %s", entry.path)
                    try:
                        self._delete(Path(entry.path))
                    except OSError as error:
                        # Its name is no task's: harmless, and retried at the next start.
                        self._log.warning("cannot delete %s: %s", entry.path, error)
                    continue
                task_id = taskdir.task_id_of(entry.name)
                if task_id is None:
                    continue
                if task_id not in found:
                    self._log.warning("deleting %s: task %d does not exist", entry.path, task_id)
                    self._delete(Path(entry.path))
                elif not entry.is_dir(follow_symlinks=False):  # the directory entry's type
                    self._log.warning("replacing %s: not a directory", entry.path)
                    self._delete(Path(entry.path))
                else:
                    # No stat for the mode (a quarter of a second at 100,000 tasks): see the
                    # module docstring for why a task directory's mode is not checked here.
                    found[task_id] = True
        for task_id, present in found.items():
            if not present:
                self._log.warning("recreating the missing directory of task %d", task_id)
                os.mkdir(self.task_dir(task_id), 0o700)

    @staticmethod
    def _delete(path: Path) -> None:
        """Delete a directory tree, or a file or symlink, without following links."""
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    # --- reading ----------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[int, TaskEntry]:
        """The live tasks by increasing id (a read-only view of the current index:
        take it again after `refresh()`, which builds a new one).

        Each access to a task decodes its command line: to go over every task's
        timing, use `timings`.
        """
        return _TaskView(self._index)

    @property
    def timings(self) -> Mapping[int, Timing]:
        """The timing of each live task by increasing id, without decoding any command
        line (for planning a minute); read-only, and like `tasks` a view of the
        current index."""
        return _TimingView(self._index)

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
            if len(reply) >= _WORTH_TRIMMING:
                # The buffer it was built in is freed: give it back, or the process
                # keeps a second copy of the reply in its RSS (8 MB at 100,000 tasks).
                _release_freed_memory()
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
        """Store a new task durably and return its id; raises StoreError.

        Order: NEXT_ID+1 in the header and the record under the tombstone ID (in the
        first free slot big enough, else appended), fdatasync; the real ID in one
        8-byte pwrite, fdatasync; then `task_<ID>/`. On failure the write is undone
        as far as possible and the in-memory index is unchanged: the task was not
        stored and must not be acknowledged. ValueError for a task the protocol
        cannot carry.
        """
        self._check_writable()
        body = encode_body(timing, argv)
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
        self._index.append(task_id, offset, body, timing)
        self._list_cache = None
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
        self._list_cache = None
        self._stamp_fd_quietly()
        self._log.info("task removed id=%d", task_id)
        self._delete_task_dir(task_id)
        return True

    def _delete_task_dir(self, task_id: int) -> None:
        """Rename then delete a removed task's directory; failures are only logged
        (the tombstone is durable, and the next open finishes the deletion)."""
        doomed = self._dir / taskdir.removed_name(task_id, secrets.token_hex(4))
        try:
            os.rename(self.task_dir(task_id), doomed)
        except FileNotFoundError:
            return
        except OSError as error:
            self._log.warning("cannot rename the directory of task %d: %s", task_id, error)
            return
        try:
            shutil.rmtree(doomed)
        except OSError as error:
            self._log.warning("cannot delete %s (retried at next start): %s", doomed, error)

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
