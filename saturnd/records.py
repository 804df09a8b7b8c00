"""The byte layout of the state file `cmds` (DESIGN.md, "Files").

This module owns, sans I/O:
- the `cmds` header (MAGIC, VERSION, NEXT_ID) and its records (ID, SIZE, BODY): BODY is
  a whole task as on the wire (`encode_task`), then zero padding; VERSION 1 (the course's
  TIMING, COMMANDLINE) and 2 (no POLICY) are read too, for `cmdsupgrade.py`;
- `scan_cmds`: a whole `cmds` file -> its slots, what is valid, and what was wrong;
  lean (for the daemon's index: each live slot's shared Timing, used length and where
  its COMMANDLINE lies, no argv; the file may be a bytearray, scanned in place) or
  full (argv and extras decoded), handed back as a list or one slot at a time;
- nothing of `times-exitcodes` (`runsfile.py`'s; its names are re-exported here).

Rules:
- Pure code: bytes and values in, bytes and values out. `store.py` does the I/O.
- Big-endian, like the protocol. An unknown MAGIC or VERSION raises `RecordsError`,
  never a guess: a newer daemon's file must not be "repaired" by an older one.
- Damage a crash can cause is repaired by the reader, not refused: a torn tail is
  dropped, and a record whose ID is live but whose BODY does not decode is a free slot.
  Given the write order (BODY under the tombstone ID first, then the real ID), neither
  can hold a task that was ever acknowledged.
- Bodies are decoded strictly, with the protocol's limits, so a record is either
  exactly what a CREATE carried or it is not a task at all. The lean scan checks a
  body through the very code that decodes it (`_parse_body`), so both scans keep and
  free the same records and report the same problems.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from saturnd.protocol import (
    FLAG_DAYS_OR,
    FLAG_REBOOT,
    MAX_ARGC,
    MAX_ENV,
    MAX_ERROR_MESSAGE,
    MAX_STRING,
    MAX_ZONE,
    encode_task,
)
from saturnd.runsfile import (
    RUN_SIZE,
    RUNS_HEAD_SIZE,
    complete_runs,
    decode_runs,
    encode_nbruns,
    encode_run,
    runs_body,
)
from saturnd.task import NO_EXTRAS, Extras, Task, check_extras
from saturnd.timing import Timing
from saturnd.wiretypes import (
    PFLAG_CATCH_UP,
    PFLAG_NO_OVERLAP,
    PFLAG_PAUSED,
    POLICY,
    POLICY_SIZE,
    encode_extras,
    extras_of,
)

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "NO_POLICY",
    "OLD_VERSIONS",
    "RECORD_HEAD_SIZE",
    "RUNS_HEAD_SIZE",
    "RUN_SIZE",
    "TIMING_SIZE",
    "TOMBSTONE",
    "VERSION",
    "RecordsError",
    "Scan",
    "Slot",
    "choose_slot",
    "complete_runs",
    "decode_body",
    "decode_header",
    "decode_runs",
    "encode_body",
    "command_span",
    "encode_record_head",
    "header_version",
    "encode_header",
    "encode_nbruns",
    "encode_record",
    "encode_run",
    "runs_body",
    "scan_cmds",
]

MAGIC: Final = b"SATD"
"""First four bytes of every `cmds` file."""
VERSION: Final = 3
"""The `cmds` layout this code writes (BODY = a whole task, EXTRAS starting with the
POLICY); it also reads VERSION 1 (BODY = the course's TIMING and COMMANDLINE) and
VERSION 2 (EXTRAS without POLICY), to upgrade them."""
OLD_VERSIONS: Final = (1, 2)
"""The older layouts this code reads, to upgrade them (`cmdsupgrade.py`)."""
TOMBSTONE: Final = 0xFFFF_FFFF_FFFF_FFFF
"""The ID of a free slot (never a task id)."""

_HEADER: Final = struct.Struct(">4sIQ")  # MAGIC, VERSION, NEXT_ID
_RECORD_HEAD: Final = struct.Struct(">QI")  # ID, SIZE
_U32: Final = struct.Struct(">I")
_TIMING: Final = struct.Struct(">QIB")
_TIMING_EX: Final = struct.Struct(">IHB")  # DAYSOFMONTH, MONTHS, FLAGS after a TIMING

HEADER_SIZE: Final = _HEADER.size
"""Bytes of the `cmds` header (16)."""
RECORD_HEAD_SIZE: Final = _RECORD_HEAD.size
"""Bytes of a record's ID and SIZE (12)."""
TIMING_SIZE: Final = _TIMING.size
"""Bytes of the course's TIMING that starts every BODY (13): what LIST reports."""
TIMING_EX_HEAD_SIZE: Final = TIMING_SIZE + _TIMING_EX.size + 4
"""Bytes of a TIMING-EX before its ZONE's bytes (24); the whole TIMING-EX, of
variable length, is the key of `Scan.timings`."""
ID_SIZE: Final = 8
"""Bytes of a record's ID: the one field rewritten in place to commit or remove a task."""
NEXT_ID_OFFSET: Final = 8
"""Offset of NEXT_ID in the header: the one header field rewritten in place."""
MAX_SIZE: Final = 0xFFFF_FFFF
"""Largest SIZE a record head can hold."""
_NO_EXTRAS_SIZE: Final = len(encode_extras(NO_EXTRAS))
"""Bytes of the EXTRAS of a task that has none, all zeros (22): no policy, an empty
ON_FAILURE, NBENV 0, an empty STDIN, MAILTO not set."""
NO_POLICY: Final = bytes(POLICY_SIZE + _U32.size)
"""The POLICY of a task that has none (13 zeros, ON_FAILURE empty): what the upgrade
of a VERSION 2 body inserts after its COMMANDLINE."""
_NO_EXTRAS_SIZES: Final = {2: _NO_EXTRAS_SIZE - len(NO_POLICY), VERSION: _NO_EXTRAS_SIZE}


class RecordsError(Exception):
    """Bytes that are not a `cmds` file this code may read (or not a valid body)."""


# --- header ---------------------------------------------------------------------


def encode_header(next_id: int, version: int = VERSION) -> bytes:
    """The 16-byte `cmds` header announcing `next_id` as the next task id.

    `version` is VERSION but for building an old file (the upgrade's tests).
    """
    return _HEADER.pack(MAGIC, version, next_id)


def header_version(data: bytes | bytearray) -> int:
    """The VERSION of a `cmds` file: one of OLD_VERSIONS (to upgrade) or VERSION;
    raises RecordsError.

    A file shorter than a header is a fresh (or torn-at-birth) one: VERSION.
    """
    if len(data) < HEADER_SIZE:
        return VERSION
    magic, version, _ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordsError(f"not a saturnd cmds file (magic {magic.hex(' ')})")
    if version != VERSION and version not in OLD_VERSIONS:
        raise RecordsError(f"unsupported cmds version {version}")
    value: int = version
    return value


def decode_header(data: bytes | bytearray) -> int:
    """NEXT_ID of a `cmds` header (the first 16 bytes of `data`); raises RecordsError."""
    if len(data) < HEADER_SIZE:
        raise RecordsError(f"cmds header is {len(data)} bytes, expected {HEADER_SIZE}")
    header_version(data)
    next_id: int = _HEADER.unpack_from(data)[2]
    return next_id


# --- record bodies --------------------------------------------------------------


def encode_body(task: Task) -> bytes:
    """A record's BODY without padding: the task as on the wire (`encode_task`).

    Raises ValueError for a task the protocol could not have carried (invalid timing
    bits, empty ARGV[0], a limit, a NUL in its environment): checked by decoding it,
    so that a record always reads back.
    """
    # Checked first: a timeout beyond a uint32 would otherwise escape as struct.error.
    problem = check_extras(task.extras)
    if problem is not None:
        raise ValueError(problem)
    body = encode_task(task)
    try:
        _parse_body(body, 0, len(body), VERSION, None, None)
    except RecordsError as error:
        raise ValueError(str(error)) from None
    return body


def command_span(body: bytes | bytearray) -> tuple[int, int]:
    """Where the COMMANDLINE of a BODY starts and ends (offsets in it); RecordsError."""
    _, _, command, command_end, _ = _parse_body(body, 0, len(body), VERSION, None, None)
    return command, command_end


def decode_body(body: bytes, version: int = VERSION) -> Task:
    """The task of a record BODY of `version`; trailing zero padding is allowed.

    Raises RecordsError when the bytes are not exactly one task (VERSION 1: one TIMING
    and one COMMANDLINE) within the protocol's limits followed only by zeros.
    """
    data = body if type(body) is bytes else bytes(body)
    argv: list[bytes] = []
    timing, _, _, _, extras = _parse_body(data, 0, len(data), version, argv, None)
    return Task(timing, tuple(argv), extras)


# What `_parse_body` finds: the timing, the body's used length, where its COMMANDLINE
# starts and ends (offsets in the body), and its extras.
_Parsed = tuple[Timing, int, int, int, Extras]


def _parse_body(
    data: bytes | bytearray,
    start: int,
    end: int,
    version: int,
    argv: list[bytes] | None,
    timings: dict[bytes, Timing] | None,
) -> _Parsed:
    """Check the BODY `data[start:end]` of a `version` record in place.

    The one decoder of bodies: `decode_body`, `encode_body` and both scans go through
    it, so they accept the same bodies and word their refusals alike. The arguments
    are appended to `argv` when one is given (the lean scan passes None and builds
    nothing). `timings` interns: it maps the bytes of a timing already decoded (and
    valid: TIMING-EX, or TIMING in VERSION 1) to its Timing, so tasks with equal
    timings share one object and a known timing is neither unpacked nor checked
    again: its keys are bytes even when `data` is a bytearray. Raises RecordsError.
    """
    if version == 1:
        pos = start + TIMING_SIZE
        decode = _decode_timing
    else:
        pos = start + TIMING_EX_HEAD_SIZE
        if pos <= end:
            (zone_length,) = _U32.unpack_from(data, pos - _U32.size)
            if zone_length > MAX_ZONE:
                raise RecordsError(f"time zone of {zone_length} bytes exceeds {MAX_ZONE}")
            pos += zone_length
        decode = _decode_timing_ex
    if end - pos < _U32.size:
        raise RecordsError(f"body of {end - start} bytes is too short")
    if timings is None:
        timing = decode(data, start, pos)
    else:
        key = data[start:pos]
        if type(key) is not bytes:
            key = bytes(key)  # a bytearray's slice: not hashable
        found = timings.get(key)
        if found is None:
            found = timings[key] = decode(data, start, pos)
        timing = found
    command = pos
    (argc,) = _U32.unpack_from(data, pos)
    pos += _U32.size
    if argc == 0:
        raise RecordsError("command line with ARGC 0")
    if argc > MAX_ARGC:
        raise RecordsError(f"ARGC {argc} exceeds the limit of {MAX_ARGC}")
    program_length = -1
    for index in range(argc):
        if pos + _U32.size > end:
            raise RecordsError(f"body ends inside argument {index}")
        (length,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        if length > MAX_STRING:
            raise RecordsError(f"argument of {length} bytes exceeds the limit of {MAX_STRING}")
        if pos + length > end:
            raise RecordsError(f"body ends inside argument {index}")
        if argv is not None:
            argv.append(bytes(data[pos : pos + length]))  # bytes already, in practice
        if program_length < 0:
            program_length = length
        pos += length
    # After the arguments, as it always was: a body with several faults keeps being
    # refused for the same one (the log lines of a repair do not change).
    if program_length == 0:
        raise RecordsError("empty program name (ARGV[0])")
    command_end = pos
    extras = NO_EXTRAS
    if version != 1:
        rest = end - pos
        none = _NO_EXTRAS_SIZES[version]
        if rest >= none and data.count(0, pos, end) == rest:
            # The common case, in one count: no extras (all zeros), then zero padding.
            used = pos + none - start
            return timing, used, command - start, command_end - start, extras
        extras, pos = _parse_extras(data, pos, end, version)
    # Padding is written as zeros; anything else means the body is not what was written.
    if pos < end and data.count(0, pos, end) != end - pos:
        raise RecordsError(f"non-zero bytes after the task at body offset {pos - start}")
    return timing, pos - start, command - start, command_end - start, extras


def _decode_timing(data: bytes | bytearray, offset: int, end: int) -> Timing:
    """The TIMING at `offset`, refused if it has bits outside the fields' ranges."""
    minutes, hours, days = _TIMING.unpack_from(data, offset)
    timing = Timing(minutes, hours, days)
    if not timing.is_valid():
        raise RecordsError("timing has bits outside the fields' ranges")
    return timing


def _decode_timing_ex(data: bytes | bytearray, offset: int, end: int) -> Timing:
    """The TIMING-EX in `data[offset:end]`, refused as the protocol refuses it."""
    minutes, hours, days = _TIMING.unpack_from(data, offset)
    daysofmonth, months, flags = _TIMING_EX.unpack_from(data, offset + TIMING_SIZE)
    if flags & ~(FLAG_DAYS_OR | FLAG_REBOOT):
        raise RecordsError(f"unknown timing flags {flags:#x}")
    try:
        zone = bytes(data[offset + TIMING_EX_HEAD_SIZE : end]).decode("ascii")
    except UnicodeDecodeError:
        raise RecordsError("time zone is not ASCII") from None
    days_or, reboot = bool(flags & FLAG_DAYS_OR), bool(flags & FLAG_REBOOT)
    timing = Timing(minutes, hours, days, daysofmonth, months, days_or, reboot, zone)
    if not timing.is_valid():
        raise RecordsError("timing has bits outside the fields' ranges")
    return timing


def _parse_extras(data: bytes | bytearray, pos: int, end: int, version: int) -> tuple[Extras, int]:
    """The EXTRAS at `pos` (policy, environment, standard input, MAILTO) and where they
    end; a VERSION 2 body has no policy."""
    timeout = jitter = pflags = 0
    on_failure = b""
    if version >= 3:
        if pos + POLICY_SIZE > end:
            raise RecordsError("body ends inside the policy")
        timeout, jitter, pflags = POLICY.unpack_from(data, pos)
        pos += POLICY_SIZE
        if pflags & ~(PFLAG_NO_OVERLAP | PFLAG_CATCH_UP | PFLAG_PAUSED):
            raise RecordsError(f"unknown policy flags {pflags:#x}")
        on_failure, pos = _string_at(data, pos, end, MAX_STRING, "the on-failure command")
    count, pos = _u32_at(data, pos, end, "the environment")
    if count > MAX_ENV:
        raise RecordsError(f"{count} environment variables exceed the limit of {MAX_ENV}")
    env: list[tuple[bytes, bytes]] = []
    for _ in range(count):
        name, pos = _string_at(data, pos, end, MAX_STRING, "an environment name")
        value, pos = _string_at(data, pos, end, MAX_STRING, "an environment value")
        env.append((name, value))
    stdin, pos = _string_at(data, pos, end, MAX_STRING, "the standard input")
    if pos >= end:
        raise RecordsError("body ends before MAILTO")
    flag = data[pos]
    pos += 1
    mailto: bytes | None = None
    if flag == 1:
        mailto, pos = _string_at(data, pos, end, MAX_ERROR_MESSAGE, "MAILTO")
    elif flag != 0:
        raise RecordsError(f"MAILTO flag {flag} is neither 0 nor 1")
    extras = extras_of(tuple(env), stdin, mailto, timeout, jitter, pflags, on_failure)
    problem = check_extras(extras)
    if problem is not None:
        raise RecordsError(problem)
    return extras, pos


def _u32_at(data: bytes | bytearray, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos + _U32.size > end:
        raise RecordsError(f"body ends inside {what}")
    value: int = _U32.unpack_from(data, pos)[0]
    return value, pos + _U32.size


def _string_at(
    data: bytes | bytearray, pos: int, end: int, limit: int, what: str
) -> tuple[bytes, int]:
    length, pos = _u32_at(data, pos, end, what)
    if length > limit:
        raise RecordsError(f"{what} of {length} bytes exceeds the limit of {limit}")
    if pos + length > end:
        raise RecordsError(f"body ends inside {what}")
    return bytes(data[pos : pos + length]), pos + length


def encode_record(task_id: int, body: bytes, size: int) -> bytes:
    """A whole record: ID, SIZE, then `body` zero-padded to `size` bytes."""
    if not len(body) <= size <= MAX_SIZE:
        raise ValueError(f"record SIZE {size} cannot hold a body of {len(body)} bytes")
    return _RECORD_HEAD.pack(task_id, size) + body + bytes(size - len(body))


def encode_record_head(task_id: int, size: int) -> bytes:
    """A record's ID and SIZE (its BODY follows), for copying a body as it is."""
    return _RECORD_HEAD.pack(task_id, size)


def choose_slot(free: Sequence[tuple[int, int]], length: int) -> int | None:
    """Where a body of `length` bytes goes: the index in `free` ((offset, SIZE) pairs
    by increasing offset) of the first slot whose SIZE holds it, or None to append.

    First fit keeps the file compact at its start and the choice predictable; the
    slot keeps its SIZE, so a record never has to move or split.
    """
    for index, (_, size) in enumerate(free):
        if size >= length:
            return index
    return None


def encode_id(task_id: int) -> bytes:
    """The 8 bytes of a record's ID field (rewritten in place to commit or remove)."""
    return struct.pack(">Q", task_id)


# --- scanning a whole file ------------------------------------------------------


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# the lean scan of 100,000 records a quarter slower. Nothing changes a Slot once made.
@dataclass(slots=True)
class Slot:
    """One record of `cmds`: where it is, its BODY capacity, and its task if live.

    `offset` is where the record head starts; the record spans
    RECORD_HEAD_SIZE + size bytes. The other fields are unset (None, 0) for a free
    slot (a tombstone, or a record whose body did not decode). A full scan sets `argv`
    and `extras`; a lean one sets instead `used`, the body's bytes before its padding
    (the LIST-EX entry is the ID and those bytes), and `command` and `command_end`,
    where its COMMANDLINE lies in the body (the course's LIST entry is the ID, the
    body's first TIMING_SIZE bytes and those), all copied from the file.
    """

    offset: int
    size: int
    task_id: int | None
    timing: Timing | None = None
    argv: tuple[bytes, ...] | None = None
    used: int = 0
    command: int = 0
    command_end: int = 0
    extras: Extras | None = None

    @property
    def end(self) -> int:
        """Offset just past this record."""
        return self.offset + RECORD_HEAD_SIZE + self.size


@dataclass
class Scan:
    """What `scan_cmds` found in a `cmds` file.

    `valid_length` is where the readable records end: bytes after it are a torn tail
    that the writer truncates away. `problems` are one-line descriptions of what was
    repaired or ignored, for the log. `timings` maps the encoding of each distinct
    valid timing met (its TIMING-EX; its TIMING in VERSION 1) to the one Timing the
    live slots share. `version` is the file's VERSION.
    """

    next_id: int
    version: int = VERSION
    slots: list[Slot] = field(default_factory=list)
    valid_length: int = 0
    problems: list[str] = field(default_factory=list)
    timings: dict[bytes, Timing] = field(default_factory=dict)


def scan_cmds(
    data: bytes | bytearray, *, lean: bool = False, sink: Callable[[Slot], object] | None = None
) -> Scan:
    """Parse a whole `cmds` file; raises RecordsError for a bad magic or version.

    An empty file is a fresh store. A file of 1 to 15 bytes is a header torn while the
    file was being created (nothing can have been stored yet): also a fresh store,
    with a problem and `valid_length` 0 so the writer starts over.

    `lean` checks every body exactly as the full scan does, but live slots carry
    `used` instead of a decoded argv (for an index that keeps the encoded entry).
    A lean scan reads a bytearray where it is, without a copy: the writer's own copy
    of the file is one, and a second one would double the peak memory of a load.
    With a `sink`, each slot is handed to it in file order instead of being kept in
    `Scan.slots`, so a caller building its own index never holds both at once.
    """
    if len(data) == 0:
        return Scan(next_id=0)
    if len(data) < HEADER_SIZE:
        return Scan(
            next_id=0,
            valid_length=0,
            problems=[f"dropped a torn header of {len(data)} bytes"],
        )
    if type(data) is not bytes and not (lean and type(data) is bytearray):
        data = bytes(data)  # a full scan's argv are slices of it: they must be bytes
    header_next_id = decode_header(data)
    scan = Scan(next_id=header_next_id, valid_length=HEADER_SIZE, version=header_version(data))
    keep = scan.slots.append if sink is None else sink
    argv: list[bytes] | None = None if lean else []
    seen = _SeenIds()
    length = len(data)
    pos = HEADER_SIZE
    while length - pos >= RECORD_HEAD_SIZE:
        task_id, size = _RECORD_HEAD.unpack_from(data, pos)
        body_start = pos + RECORD_HEAD_SIZE
        end = body_start + size
        if end > length:
            break
        if task_id == TOMBSTONE:
            slot = Slot(pos, size, None)
        else:
            slot = _scan_body(scan, data, pos, task_id, size, argv)
            if slot.task_id is None:
                pass
            elif not seen.add(task_id):
                # Ids are never reused, so a second record with the same id cannot be
                # a task that was stored; keep the first and free this one.
                scan.problems.append(
                    f"freed a duplicate record of task id {task_id} at offset {pos}"
                )
                slot = Slot(pos, size, None)
        keep(slot)
        pos = end
    scan.valid_length = pos
    if pos < length:
        scan.problems.append(f"dropped a torn tail of {length - pos} bytes at offset {pos}")
    highest = seen.highest
    if highest >= scan.next_id:
        # The header is written before any record uses an id, so this means damage;
        # never hand out an id that is already on disk.
        scan.problems.append(
            f"header NEXT_ID {header_next_id} is not above the highest task id {highest}"
        )
        scan.next_id = highest + 1
    return scan


class _SeenIds:
    """The ids of the live records met so far, to free a second record of one.

    An id above every one before it (file order is id order unless a slot was reused)
    goes to an array, which stays sorted (8 bytes an id); only the others go to a set.
    A set of every id would take 7 MB at 100,000 tasks, at the peak of a load.
    """

    __slots__ = ("highest", "in_order", "others")

    def __init__(self) -> None:
        self.highest = -1
        self.in_order = array("Q")
        self.others: set[int] = set()

    def add(self, task_id: int) -> bool:
        """Remember a live record's id; False if one was met already."""
        if task_id > self.highest:
            self.highest = task_id
            self.in_order.append(task_id)
            return True
        position = bisect_left(self.in_order, task_id)
        if position < len(self.in_order) and self.in_order[position] == task_id:
            return False
        if task_id in self.others:
            return False
        self.others.add(task_id)
        return True


def _scan_body(
    scan: Scan,
    data: bytes | bytearray,
    offset: int,
    task_id: int,
    size: int,
    argv: list[bytes] | None,
) -> Slot:
    """The slot of a live record; one whose body does not decode becomes a free slot.

    `argv` is a list to decode the command line into (full scan), or None (lean).
    """
    start = offset + RECORD_HEAD_SIZE
    try:
        timing, used, command, command_end, extras = _parse_body(
            data, start, start + size, scan.version, argv, scan.timings
        )
    except RecordsError as error:
        scan.problems.append(
            f"freed the record of task id {task_id} at offset {offset}: its body does "
            f"not decode ({error})"
        )
        if argv is not None:
            argv.clear()
        return Slot(offset, size, None)
    if argv is None:
        return Slot(offset, size, task_id, timing, None, used, command, command_end)
    decoded = tuple(argv)
    argv.clear()
    return Slot(offset, size, task_id, timing, decoded, extras=extras)
