"""Older layouts of `cmds` turned into the current one (`records.VERSION`), sans I/O.

This module owns the upgrade of an older file to VERSION 3 (BODY = a whole task whose
EXTRAS start with the POLICY): from VERSION 1 (BODY = the course's TIMING and
COMMANDLINE) and from VERSION 2 (EXTRAS without POLICY); and the old bodies, to build
old files in tests. `store.py` writes the result in place at start, crash-safely;
`tasktable.py` reads an old file through it, in memory. A later VERSION adds its step
here.

Rules: pure; the upgraded file holds exactly the old tasks (ids, timings, command
lines, extras) and NEXT_ID, with no policy, and repairs what a load of the old file
would have repaired. Bodies are spliced from the old bytes, never decoded and encoded
again: byte for byte what `records.encode_body` gives (the tests check it).
"""

from __future__ import annotations

from saturnd.records import (
    HEADER_SIZE,
    NO_POLICY,
    OLD_VERSIONS,
    RECORD_HEAD_SIZE,
    TIMING_SIZE,
    RecordsError,
    Scan,
    Slot,
    encode_header,
    encode_record_head,
    header_version,
    scan_cmds,
)
from saturnd.task import NO_EXTRAS, Task
from saturnd.timing import Timing
from saturnd.wiretypes import encode_commandline, encode_extras, encode_timing, encode_timing_ex

__all__ = ["encode_body_v1", "encode_body_v2", "upgrade", "upgrade_v1"]


def encode_body_v1(timing: Timing, argv: tuple[bytes, ...]) -> bytes:
    """A VERSION 1 BODY: the course's TIMING then COMMANDLINE (to build an old file)."""
    return encode_timing(timing) + encode_commandline(argv)


def encode_body_v2(task: Task) -> bytes:
    """A VERSION 2 BODY: TIMING-EX, COMMANDLINE, then EXTRAS without the POLICY (to
    build an old file; `task` has no policy, which VERSION 2 could not hold)."""
    if task.extras.replace(env=(), stdin=b"", mailto=None) != NO_EXTRAS:
        raise ValueError("a version 2 body has no policy")
    extras = encode_extras(task.extras)[len(NO_POLICY) :]
    return encode_timing_ex(task.timing) + encode_commandline(task.argv) + extras


def upgrade_v1(data: bytes | bytearray) -> tuple[bytearray, Scan]:
    """`upgrade` of a VERSION 1 file only; RecordsError for any other."""
    version = header_version(data)
    if version != 1 or len(data) < HEADER_SIZE:
        raise RecordsError(f"not a version 1 cmds file (version {version})")
    return upgrade(data)


def upgrade(data: bytes | bytearray) -> tuple[bytearray, Scan]:
    """The current `cmds` holding exactly the tasks of the older file `data`.

    Same ids, timings, command lines, extras and NEXT_ID, no policy; only live
    records, by increasing id, each as large as its body (free slots are dropped).
    Also the old file's scan (lean, without its slots): its problems are what the
    upgrade repaired, as a load would have. Raises RecordsError when `data` is not a
    file of one of `records.OLD_VERSIONS`.
    """
    version = header_version(data)
    if version not in OLD_VERSIONS or len(data) < HEADER_SIZE:
        raise RecordsError(f"not an old cmds file (version {version})")
    live: list[tuple[int, int, int, int]] = []  # (id, offset, used, command end)

    def keep(slot: Slot) -> None:
        if slot.task_id is not None:
            live.append((slot.task_id, slot.offset, slot.used, slot.command_end))

    scan = scan_cmds(data, lean=True, sink=keep)
    live.sort()
    upgraded = bytearray(encode_header(scan.next_id))
    if version == 1:
        # A course TIMING means every day of the month, every month, no flag and no
        # zone, and a VERSION 1 task has no extras.
        tail = encode_timing_ex(Timing())[TIMING_SIZE:]
        extras = encode_extras(NO_EXTRAS)
        for task_id, offset, used, _ in live:
            start = offset + RECORD_HEAD_SIZE
            upgraded += encode_record_head(task_id, used + len(tail) + len(extras))
            upgraded += data[start : start + TIMING_SIZE]
            upgraded += tail
            upgraded += data[start + TIMING_SIZE : start + used]
            upgraded += extras
    else:
        # VERSION 2: the POLICY (none) goes between the COMMANDLINE and the rest of
        # the EXTRAS, which are kept as they were.
        for task_id, offset, used, command_end in live:
            start = offset + RECORD_HEAD_SIZE
            upgraded += encode_record_head(task_id, used + len(NO_POLICY))
            upgraded += data[start : start + command_end]
            upgraded += NO_POLICY
            upgraded += data[start + command_end : start + used]
    return upgraded, scan
