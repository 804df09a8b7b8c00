"""The in-memory task table: a copy of the bytes of `cmds`, its index, read-only views.

This module owns what a store keeps in memory between loads (store.py owns the file
and every write to it): the file's bytes, read in without a second copy; the index
built over them by one scan (`index_cmds`); and the `Mapping` views handed to callers.

Invariants:
- Lean, because a daemon process must stay small with 100,000 tasks (BENCHMARKS.md,
  3): per task, six numbers in arrays (id, record offset, BODY length before the
  padding, kind of its shared Timing, where its COMMANDLINE starts and ends in the
  BODY), about 30 bytes besides the file's own bytes.
- Only current (VERSION) bytes are indexed (the store upgrades an older file first).
- Tasks are kept by increasing id; LIST and LIST-EX entries, command lines and extras
  are read from the bytes only when asked for, so loading decodes no command line.
- Views hold an index, not a copy: they follow the writer's create and remove, and a
  reload (which builds a new index) leaves an old view showing the old table.
- After a load or once a large buffer is freed, freed memory is given back to the
  system (`release_freed_memory`), so transients do not stay in the process's RSS.
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from collections.abc import Set as AbstractSet
from typing import Final

from saturnd.proc import libc
from saturnd.protocol import REPLY_OK, TaskEntry
from saturnd.records import (
    ID_SIZE,
    RECORD_HEAD_SIZE,
    TIMING_SIZE,
    VERSION,
    RecordsError,
    Scan,
    Slot,
    decode_body,
    encode_header,
    encode_record,
    encode_record_head,
    header_version,
    scan_cmds,
)
from saturnd.timing import Timing
from saturnd.wiretypes import PFLAG_PAUSED, PFLAGS_OFFSET

__all__ = [
    "WORTH_TRIMMING",
    "Index",
    "TaskView",
    "TimingView",
    "index_cmds",
    "read_all",
    "read_into_bytearray",
    "release_freed_memory",
]

_U32: Final = struct.Struct(">I")

# A buffer at least this long (a LIST reply's, a re-read `cmds`) is worth giving back to
# the system once freed; below it, the cost of malloc_trim (some 15 us) is the larger.
WORTH_TRIMMING: Final = 1 << 20


def read_all(fd: int, size: int) -> bytes:
    """Every byte of an open file, from offset 0 (pread: the offset is not shared).

    `size` is what fstat said: a file that has not grown since is read in one piece,
    with no second copy to join chunks into (that copy would double the peak memory
    of loading a large `cmds`).
    """
    return read_all_from(fd, 0, size + 1)  # one more byte: the end shows at once


def read_all_from(fd: int, offset: int, want: int = 1 << 20) -> bytes:
    """The bytes of an open file from `offset` to its end, read `want` bytes first."""
    chunks: list[bytes] = []
    while True:
        chunk = os.pread(fd, want, offset)
        if not chunk:
            return b"".join(chunks)  # one chunk is returned as it is, not copied
        chunks.append(chunk)
        offset += len(chunk)
        want = 1 << 20


def read_into_bytearray(fd: int, size: int) -> bytearray:
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
        data += read_all_from(fd, filled)  # it grew (nothing, as a rule)
    return data


def release_freed_memory() -> None:
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


_UNSHARED: Final = 0xFFFF_FFFF
"""The kind of a task created with a timing that no loaded task has (`Index.extra`)."""


class Index:
    """The live tasks by increasing id, over a copy of the bytes of `cmds`.

    Per task, six numbers at the same position of six arrays: its id, the offset of
    its record in `data`, the length of its BODY before the padding, its kind (the
    position of its Timing in `shared`), and where its COMMANDLINE starts and ends in
    the BODY: about 30 bytes a task besides the file's own bytes, where dictionaries
    of objects took some 300. The LIST entries and the task itself are read from
    `data` when asked for.

    `data` is the file as it was read: bytes for a read-only store (a reload builds a
    new index), a bytearray for the writer, which writes into it what it writes into
    the file (records and NEXT_ID; not what a failed write may have left past the
    end), so the two stay equal. Not thread-safe, like the store.
    """

    __slots__ = (
        "command_ends",
        "commands",
        "data",
        "extra",
        "ids",
        "kinds",
        "known",
        "offsets",
        "shared",
        "used",
    )

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.ids: array[int] = array("Q")
        self.offsets: array[int] = array("Q")
        self.used: array[int] = array("I")
        self.kinds: array[int] = array("I")
        self.commands: array[int] = array("H")  # a TIMING-EX is at most 280 bytes
        self.command_ends: array[int] = array("I")
        # The distinct timings of the loaded tasks: tasks with equal timings share one.
        self.shared: list[Timing] = []
        # TIMING-EX bytes -> kind of that timing, for created tasks to share it too (the
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

    def pflags_offset(self, position: int) -> int:
        """Where a task's PFLAGS byte is in `data` (PAUSE and RESUME rewrite it)."""
        return (
            self.offsets[position] + RECORD_HEAD_SIZE + self.command_ends[position] + PFLAGS_OFFSET
        )

    def paused_ids(self) -> frozenset[int]:
        """The ids of the paused tasks: one byte read per task, no body decoded."""
        data = self.data
        skip = RECORD_HEAD_SIZE + PFLAGS_OFFSET
        return frozenset(
            task_id
            for task_id, offset, end in zip(self.ids, self.offsets, self.command_ends, strict=True)
            if data[offset + skip + end] & PFLAG_PAUSED
        )

    def body(self, position: int) -> bytes:
        """A task's BODY without its padding, as stored."""
        start = self.offsets[position] + RECORD_HEAD_SIZE
        return bytes(self.data[start : start + self.used[position]])

    def size(self, position: int) -> int:
        """The SIZE of a task's record (its slot's capacity), read from `data`."""
        size: int = _U32.unpack_from(self.data, self.offsets[position] + ID_SIZE)[0]
        return size

    def listing(self) -> bytes:
        """The course's LIST reply: `OK`, NBTASKS, then by increasing id each task's
        ID, TIMING (the first bytes of its BODY) and COMMANDLINE.

        A record is ID, SIZE, BODY, padding: the entry is copied from `data` into a
        buffer of the reply's exact size (a growing one would be copied as it grows:
        a peak of twice the reply).
        """
        data = self.data
        count = len(self.ids)
        head = ID_SIZE + TIMING_SIZE
        size = head * count + sum(self.command_ends) - sum(self.commands)
        reply = bytearray(len(REPLY_OK) + _U32.size + size)
        position = len(REPLY_OK) + _U32.size
        reply[:position] = REPLY_OK + _U32.pack(count)
        for offset, command, end in zip(
            self.offsets, self.commands, self.command_ends, strict=True
        ):
            body = offset + RECORD_HEAD_SIZE
            # ID, then (past SIZE) TIMING: two pieces of the record, one slice each.
            reply[position : position + ID_SIZE] = data[offset : offset + ID_SIZE]
            position += ID_SIZE
            reply[position : position + TIMING_SIZE] = data[body : body + TIMING_SIZE]
            position += TIMING_SIZE
            following = position + end - command
            reply[position:following] = data[body + command : body + end]
            position = following
        return bytes(reply)

    def listing_ex(self) -> bytes:
        """The LIST-EX reply: `OK`, NBTASKS, then each task's ID and BODY (the task as
        on the wire) by increasing id, built like `listing`."""
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

    def rewritten(
        self, next_id: int, removing: AbstractSet[int], created: dict[int, bytes]
    ) -> bytearray:
        """A whole compact `cmds` announcing `next_id`: the live tasks but `removing`,
        then the `created` bodies by id (ids above every live one and below `next_id`),
        with no free slot and no padding."""
        data = self.data
        content = bytearray(encode_header(next_id))
        for task_id, offset, used in zip(self.ids, self.offsets, self.used, strict=True):
            if task_id not in removing:
                start = offset + RECORD_HEAD_SIZE
                content += encode_record_head(task_id, used)
                content += data[start : start + used]
        for task_id, body in created.items():
            content += encode_record(task_id, body, len(body))
        return content

    def append(
        self, task_id: int, offset: int, body: bytes, timing: Timing, command: tuple[int, int]
    ) -> None:
        """Add a task whose id is above every live one (a created task); `command` is
        where its COMMANDLINE starts and ends in `body`."""
        kind = self.known.get(body[: command[0]], _UNSHARED)
        if kind == _UNSHARED:
            self.extra[task_id] = timing
        self.ids.append(task_id)
        self.offsets.append(offset)
        self.used.append(len(body))
        self.kinds.append(kind)
        self.commands.append(command[0])
        self.command_ends.append(command[1])

    def delete(self, position: int) -> None:
        """Drop the task at `position` (its bytes in `data` are the caller's)."""
        if self.kinds[position] == _UNSHARED:
            del self.extra[self.ids[position]]
        del self.ids[position]
        del self.offsets[position]
        del self.used[position]
        del self.kinds[position]
        del self.commands[position]
        del self.command_ends[position]

    def sort(self) -> None:
        """Put the tasks in increasing id order (a load meets them in file order, which
        is id order unless a slot was reused)."""
        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        self.ids = array("Q", map(self.ids.__getitem__, order))
        self.offsets = array("Q", map(self.offsets.__getitem__, order))
        self.used = array("I", map(self.used.__getitem__, order))
        self.kinds = array("I", map(self.kinds.__getitem__, order))
        self.commands = array("H", map(self.commands.__getitem__, order))
        self.command_ends = array("I", map(self.command_ends.__getitem__, order))


class TaskView(Mapping[int, TaskEntry]):
    """The live tasks as a read-only mapping, decoding a command line when asked.

    It holds the index, not a copy: it follows create and remove, and keeps showing
    the old table after a reload (which builds a new index).
    """

    __slots__ = ("_index",)

    def __init__(self, index: Index) -> None:
        self._index = index

    def __getitem__(self, task_id: int) -> TaskEntry:
        index = self._index
        position = index.find(task_id)
        if position < 0:
            raise KeyError(task_id)
        task = decode_body(index.body(position))
        return TaskEntry(task_id, index.timing(position), task.argv, task.extras)

    def __contains__(self, task_id: object) -> bool:
        return self._index.find(task_id) >= 0  # without decoding, unlike Mapping's

    def __iter__(self) -> Iterator[int]:
        return iter(self._index.ids)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"<tasks view of {len(self._index)} tasks>"


class TimingView(Mapping[int, Timing]):
    """The timing of each live task as a read-only mapping; like `TaskView`, a view
    of one index. Going over its items (the executor plans every minute that way)
    costs no lookup per task."""

    __slots__ = ("_index",)

    def __init__(self, index: Index) -> None:
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

    def __init__(self, view: TimingView, index: Index) -> None:
        super().__init__(view)
        self._index = index

    def __iter__(self) -> Iterator[tuple[int, Timing]]:
        return zip(self._index.ids, self._index.timings(), strict=True)


class _TimingValues(ValuesView[Timing]):
    __slots__ = ("_index",)

    def __init__(self, view: TimingView, index: Index) -> None:
        super().__init__(view)
        self._index = index

    def __iter__(self) -> Iterator[Timing]:
        return self._index.timings()


def index_cmds(
    data: bytes | bytearray, *, writer: bool
) -> tuple[Index, list[tuple[int, int]], Scan]:
    """Index the tasks of `data` (a whole `cmds`): the index, the free slots by offset
    (offset, SIZE), and the scan. With `writer`, the index also learns every timing
    of the file (`Index.known`), for created tasks to share it.

    The index keeps `data` and is built as the scan goes, one slot at a time: a
    list of every slot besides it would take 15 MB more at 100,000 tasks, in small
    objects between the index's own, which the allocator could not give back.
    Raises RecordsError for a file this code may not read, or must upgrade first.
    """
    version = header_version(data)
    if version != VERSION:
        raise RecordsError(f"a version {version} cmds must be upgraded before it is indexed")
    index = Index(data)
    ids, offsets, used, kinds = index.ids, index.offsets, index.used, index.kinds
    commands, command_ends = index.commands, index.command_ends
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
        commands.append(slot.command)
        command_ends.append(slot.command_end)

    scan = scan_cmds(data, lean=True, sink=keep)
    if not ordered:
        index.sort()
    if writer:
        for key, timing in scan.timings.items():
            kind = kind_of.get(id(timing))
            if kind is None:  # met only in a record that was freed
                kind = kind_of[id(timing)] = len(shared)
                shared.append(timing)
            index.known[key] = kind
    return index, free, scan
