"""Older layouts of `cmds` turned into the current one (`records.VERSION`), sans I/O.

This module owns the upgrade of a VERSION 1 file (BODY = the course's TIMING and
COMMANDLINE) to VERSION 2 (BODY = a whole task), and the VERSION 1 body, to build old
files in tests. `store.py` writes the result in place at start, crash-safely;
`tasktable.py` reads a VERSION 1 file through it, in memory. A later VERSION adds its
step here.

Rules: pure; the upgraded file holds exactly the old tasks (ids, timings, command
lines) and NEXT_ID, and repairs what a load of the old file would have repaired.
"""

from __future__ import annotations

from saturnd.records import (
    HEADER_SIZE,
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
from saturnd.task import NO_EXTRAS
from saturnd.timing import Timing
from saturnd.wiretypes import encode_commandline, encode_extras, encode_timing, encode_timing_ex

__all__ = ["encode_body_v1", "upgrade_v1"]


def encode_body_v1(timing: Timing, argv: tuple[bytes, ...]) -> bytes:
    """A VERSION 1 BODY: the course's TIMING then COMMANDLINE (to build an old file)."""
    return encode_timing(timing) + encode_commandline(argv)


def upgrade_v1(data: bytes | bytearray) -> tuple[bytearray, Scan]:
    """The VERSION 2 `cmds` holding exactly the tasks of the VERSION 1 file `data`.

    Same ids, timings, command lines and NEXT_ID; only live records, by increasing
    id, each as large as its body (free slots are dropped). Also the old file's scan
    (lean, without its slots): its problems are what the upgrade repaired, as a load
    would have. Raises RecordsError when `data` is not a VERSION 1 file.
    """
    version = header_version(data)
    if version != 1 or len(data) < HEADER_SIZE:
        raise RecordsError(f"not a version 1 cmds file (version {version})")
    live: list[tuple[int, int, int]] = []  # (id, offset, used) of each live record

    def keep(slot: Slot) -> None:
        if slot.task_id is not None:
            live.append((slot.task_id, slot.offset, slot.used))

    scan = scan_cmds(data, lean=True, sink=keep)
    live.sort()
    # A course TIMING means every day of the month, every month, no flag and no zone,
    # and a VERSION 1 task has no extras: its new body is spliced from its old one,
    # byte for byte what encode_body gives (a test checks it), without decoding it.
    tail = encode_timing_ex(Timing())[TIMING_SIZE:]
    extras = encode_extras(NO_EXTRAS)
    upgraded = bytearray(encode_header(scan.next_id))
    for task_id, offset, used in live:
        start = offset + RECORD_HEAD_SIZE
        upgraded += encode_record_head(task_id, used + len(tail) + len(extras))
        upgraded += data[start : start + TIMING_SIZE]
        upgraded += tail
        upgraded += data[start + TIMING_SIZE : start + used]
        upgraded += extras
    return upgraded, scan
