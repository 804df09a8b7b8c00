"""The state directory on disk as its one writer changes it: `cmds`, the task directories.

This module owns every write of `cmds` (the layout is `records.py`'s, reading and the
in-memory table `tasktable.py`'s, the durable system-call sequences `statefile.py`'s)
and the life of the task directories: created with a task, deleted with it, repaired
at start. What is inside one, and its names, is `taskdir.py`'s. Two processes use it:
the listener opens the store to create, remove and replace tasks (`Store.open`), the
executor opens the same directory read-only and calls `refresh()` to follow it; each
run's supervising process records its end with `taskdir.append_run`.

Rules:
- Nothing is acknowledged before it is durable: `create_task`, `remove` and `replace`
  return only after an fsync, and on failure raise `StoreError` with the in-memory
  index unchanged (the caller then sends no OK).
- Crash safety (DESIGN.md "Files"): NEXT_ID is persisted before an id is used; a new
  record is written under the tombstone ID and flushed before its real ID is written
  in one 8-byte `pwrite`; a removal writes the tombstone before deleting the task's
  directory. Loading drops a torn tail and finishes interrupted removals. PAUSE and
  RESUME rewrite the one PFLAGS byte of a record in place (a 1-byte write cannot tear).
- Whole-file changes (the upgrade of an older `cmds` at start, REPLACE) write
  `cmds.new` and rename it over `cmds`: a crash leaves one file or the other, and a
  leftover `cmds.new` is deleted at the next start. REPLACE makes its new task
  directories before the rename and deletes the removed ones after it: a crash leaves
  stale directories only, which the next start deletes.
- The writer keeps the index's copy of the file's bytes equal to the file by writing
  into it what it writes to disk: CREATE never scans the file.
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
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from saturnd import taskdir
from saturnd.cmdsupgrade import upgrade
from saturnd.records import (
    HEADER_SIZE,
    ID_SIZE,
    NEXT_ID_OFFSET,
    RECORD_HEAD_SIZE,
    TOMBSTONE,
    VERSION,
    RecordsError,
    choose_slot,
    command_span,
    decode_header,
    encode_body,
    encode_header,
    encode_id,
    encode_record,
    header_version,
)
from saturnd.statefile import (
    OPEN_FILE,
    delete_leftover,
    describe,
    pwrite_all,
    replace_file,
    sync_dir,
)
from saturnd.task import Task
from saturnd.taskindex import (
    read_into_bytearray,
    release_freed_memory,
)
from saturnd.tasktable import CMDS, StoreError, TaskTable
from saturnd.timing import Timing
from saturnd.wiretypes import PFLAG_PAUSED

__all__ = ["CMDS", "CMDS_TEMP", "Store", "StoreError"]

CMDS_TEMP: Final = "cmds.new"
"""Where a whole new `cmds` is written before it is renamed over the old one (an
upgrade, a REPLACE); one left by a crash is deleted at the next load."""


class Store(TaskTable):
    """The state directory: the task table of `cmds` and the `task_<ID>/` directories.

    Build one with `Store.open`. Not thread-safe; one writer process per directory
    (the daemon's pid-file lock ensures it), any number of read-only ones.
    """

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
            fd = os.open(path, os.O_RDWR | os.O_CREAT | OPEN_FILE, 0o600)
        except OSError as error:
            raise StoreError(f"cannot open {path}: {describe(error)}") from error
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"{path} is not a regular file")
            head = os.pread(fd, HEADER_SIZE, 0)
        except OSError as error:
            raise StoreError(f"cannot read {path}: {describe(error)}") from error
        finally:
            os.close(fd)
        if len(head) == HEADER_SIZE:
            try:
                decode_header(head)
            except RecordsError as error:
                raise StoreError(f"{path}: {error}") from error

    def _load_and_repair(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | OPEN_FILE, 0o600)
            status = os.fstat(self._fd)
        except OSError as error:
            raise StoreError(f"cannot open {self._path}: {describe(error)}") from error
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
                pwrite_all(self._fd, encode_header(scan.next_id), 0)
                os.fdatasync(self._fd)
                sync_dir(self._dir)
                data[:] = encode_header(scan.next_id)
            elif torn or header_behind:
                if torn:
                    os.ftruncate(self._fd, scan.valid_length)
                    del data[scan.valid_length :]
                if header_behind:
                    pwrite_all(self._fd, encode_header(scan.next_id), 0)
                    data[:HEADER_SIZE] = encode_header(scan.next_id)
                os.fdatasync(self._fd)
            self._stamp_fd()
            taskdir.repair_dirs(self._dir, self._index.ids, self._log)
        except OSError as error:
            raise StoreError(f"cannot repair {self._dir}: {describe(error)}") from error
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
        if delete_leftover(self._dir / CMDS_TEMP):
            self._log.warning("deleted %s, left by an interrupted rewrite", self._dir / CMDS_TEMP)

    def _upgrade(self, data: bytearray) -> bytearray:
        """Rewrite an older `cmds` (read into `data`) as VERSION, crash-safely; the new
        file's bytes. Its tasks, ids and NEXT_ID are the old file's (`upgrade`)."""
        try:
            upgraded, old = upgrade(data)
        except RecordsError as error:
            raise StoreError(f"{self._path}: {error}") from error
        for problem in old.problems:
            self._log.warning("repairing %s: %s", self._path, problem)
        try:
            self._rewrite(upgraded)
        except OSError as error:
            raise StoreError(
                f"cannot upgrade {self._path} to version {VERSION}: {describe(error)}"
            ) from error
        self._log.info(
            "upgraded %s from version %d to version %d", self._path, old.version, VERSION
        )
        return upgraded

    def _rewrite(self, content: bytearray) -> None:
        """Make `content` the whole of `cmds` through `cmds.new` and one rename
        (`statefile.replace_file`); the new file's descriptor becomes the store's.
        Raises OSError, with `cmds` unchanged, when the rename did not happen."""
        fd, unflushed = replace_file(self._path, self._dir / CMDS_TEMP, content)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._tail_dirty = False
        if unflushed is not None:
            # The rename is done and cannot be taken back: the new file is the store's.
            self._log.error("cannot flush %s after renaming cmds: %s", self._dir, unflushed)

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
            pwrite_all(self._fd, encode_id(task_id + 1), NEXT_ID_OFFSET)
            pwrite_all(self._fd, encode_record(TOMBSTONE, body, size), offset)
            os.fdatasync(self._fd)
            committing = True
            pwrite_all(self._fd, encode_id(task_id), offset)
            os.fdatasync(self._fd)
            os.mkdir(self.task_dir(task_id), 0o700)
        except OSError as error:
            self._undo_create(offset, appended, committing)
            if committing:
                # The id may be on disk if the undo failed: never hand it out again.
                self._next_id = task_id + 1
            # No log line here: the caller logs the refusal, once (one line per event).
            raise StoreError(f"cannot store the task in {self._dir}: {describe(error)}") from error
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
        if task.extras.paused and self._paused_cache is not None:
            self._paused_cache = self._paused_cache | {task_id}
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
                pwrite_all(self._fd, encode_id(TOMBSTONE), offset)
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
            pwrite_all(self._fd, encode_id(TOMBSTONE), offset)
            os.fdatasync(self._fd)
        except OSError as error:
            raise StoreError(
                f"cannot remove task {task_id} from {self._path}: {describe(error)}"
            ) from error
        index.delete(position)
        self._mirror()[offset : offset + ID_SIZE] = encode_id(TOMBSTONE)
        bisect.insort(self._free, (offset, size))
        self._list_cache = self._list_ex_cache = None
        if self._paused_cache is not None and task_id in self._paused_cache:
            self._paused_cache = self._paused_cache - {task_id}
        self._stamp_fd_quietly()
        self._log.info("task removed id=%d", task_id)
        taskdir.delete_dir(self._dir, task_id, self._log)
        return True

    def set_paused(self, task_id: int, paused: bool) -> bool:
        """Pause or resume a task durably; False if there is no such task. Raises
        StoreError, with the task as it was.

        The one PFLAGS byte of its record is rewritten in place (one pwrite, then
        fdatasync): a write of one byte cannot tear, so a crash leaves the task paused
        or not, never damaged. Nothing is written when the task is already so. The
        write changes the file's mtime, which the executor's `refresh` compares.
        """
        self._check_writable()
        index = self._index
        position = index.find(task_id)
        if position < 0:
            return False
        at = index.pflags_offset(position)
        data = self._mirror()
        old = data[at]
        new = old | PFLAG_PAUSED if paused else old & ~PFLAG_PAUSED
        if new == old:
            return True
        try:
            pwrite_all(self._fd, bytes((new,)), at)
            os.fdatasync(self._fd)
        except OSError as error:
            with contextlib.suppress(OSError):  # best effort: the byte may be on disk
                pwrite_all(self._fd, bytes((old,)), at)
                os.fdatasync(self._fd)
            raise StoreError(
                f"cannot {'pause' if paused else 'resume'} task {task_id} in {self._path}: "
                f"{describe(error)}"
            ) from error
        data[at] = new
        self._list_ex_cache = None  # LIST-EX carries the flag; LIST does not
        if self._paused_cache is not None:
            change = frozenset((task_id,))
            self._paused_cache = (
                self._paused_cache | change if paused else self._paused_cache - change
            )
        self._stamp_fd_quietly()
        self._log.info("task %s id=%d", "paused" if paused else "resumed", task_id)
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
        created = dict(zip(new_ids, bodies, strict=True))
        content = index.rewritten(first + len(bodies), removing, created)
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
                f"cannot replace the tasks in {self._dir}: {describe(error)}"
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
