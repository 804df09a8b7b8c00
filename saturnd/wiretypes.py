"""The field types of the saturnd <-> cassini wire (PROTOCOL.md "Field types",
docs/protocol.md "Whole tasks"), sans I/O: each type's encoder and resumable reader.

This module owns `string`, `timing`, `commandline`, and the whole task of our
extensions (`timing-ex`, `extras`, `task`: `encode_task`, `read_task`), with their
limits and `ProtocolError`. A whole task's bytes are written once, here: the wire
(`protocol`, which re-exports these names) and the store's `cmds` records share them.

Rules:
- All integers are big-endian. A reader is a generator that yields how many bytes it
  needs next and is sent exactly that many (`protocol` drives them).
- Hard limits are checked *before* waiting for the bytes a length announces.
- Import cost as `protocol`'s: `struct`, `task` and `timing` only at import time.
"""

from __future__ import annotations

import struct

from saturnd.runrecord import RunRecord
from saturnd.task import Extras, Task, check_extras
from saturnd.timing import Timing

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Final

__all__ = [
    "FLAG_DAYS_OR",
    "FLAG_REBOOT",
    "RUN_RECORD_SIZE",
    "decode_run_record",
    "encode_run_record",
    "extras_of",
    "PFLAGS_OFFSET",
    "PFLAG_CATCH_UP",
    "PFLAG_NO_OVERLAP",
    "PFLAG_PAUSED",
    "POLICY",
    "POLICY_SIZE",
    "MAX_ARGC",
    "MAX_ENV",
    "MAX_ERROR_MESSAGE",
    "MAX_STRING",
    "MAX_ZONE",
    "ProtocolError",
    "encode_commandline",
    "encode_extras",
    "encode_string",
    "encode_task",
    "encode_timing",
    "encode_timing_ex",
    "read_commandline",
    "read_extras",
    "read_string",
    "read_task",
    "read_timing",
    "read_timing_ex",
    "read_u32",
    "read_u64",
]

MAX_ARGC: Final = 65_536
"""Most arguments a command line may have."""
MAX_STRING: Final = 1 << 20
"""Longest string in a request (1 MiB)."""
MAX_ERROR_MESSAGE: Final = 4096
"""Longest error message a client accepts (and longest MAILTO)."""
MAX_ZONE: Final = 256
"""Longest time-zone name in a TIMING-EX (IANA names are under 40 bytes)."""
MAX_ENV: Final = 4096
"""Most environment variables one task may carry."""
FLAG_DAYS_OR: Final = 1
"""TIMING-EX FLAGS: the two day fields are OR-ed (cron's rule)."""
FLAG_REBOOT: Final = 2
"""TIMING-EX FLAGS: @reboot."""
PFLAG_NO_OVERLAP: Final = 1
"""EXTRAS PFLAGS: a start while the previous run goes on is skipped."""
PFLAG_CATCH_UP: Final = 2
"""EXTRAS PFLAGS: starts missed while the daemon was away run once when it is back."""
PFLAG_PAUSED: Final = 4
"""EXTRAS PFLAGS: the task keeps its schedule and history but does not run."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TIMING = struct.Struct(">QIB")
_TIMING_EX = struct.Struct(">IHB")  # DAYSOFMONTH, MONTHS, FLAGS after a TIMING
POLICY: Final = struct.Struct(">IIB")
"""TIMEOUT, JITTER and PFLAGS: the fixed start of EXTRAS (the store reads it in place)."""
_POLICY = POLICY
_RUN_RECORD = struct.Struct(">qqHBBi")
RUN_RECORD_SIZE: Final = _RUN_RECORD.size
"""Bytes of one `run-record` (24)."""
POLICY_SIZE: Final = _POLICY.size
"""Bytes of TIMEOUT, JITTER and PFLAGS, the fixed start of EXTRAS (9)."""
PFLAGS_OFFSET: Final = 8
"""Offset of PFLAGS in EXTRAS, i.e. from the end of the COMMANDLINE."""


class ProtocolError(Exception):
    """Bytes that are not a valid message (or that break a limit)."""


def encode_string(data: bytes) -> bytes:
    """A `string`: uint32 length, then the bytes."""
    return _U32.pack(len(data)) + data


def encode_timing(timing: Timing) -> bytes:
    """A `timing`: MINUTES uint64, HOURS uint32, DAYSOFWEEK uint8."""
    return _TIMING.pack(timing.minutes, timing.hours, timing.daysofweek)


def encode_commandline(argv: tuple[bytes, ...]) -> bytes:
    """A `commandline`: ARGC uint32, then ARGC strings."""
    return _U32.pack(len(argv)) + b"".join(encode_string(arg) for arg in argv)


def encode_timing_ex(timing: Timing) -> bytes:
    """A `timing-ex`: TIMING, then DAYSOFMONTH uint32, MONTHS uint16, FLAGS uint8
    (1: days OR-ed, 2: @reboot) and ZONE string."""
    flags = (FLAG_DAYS_OR if timing.days_or else 0) | (FLAG_REBOOT if timing.reboot else 0)
    return (
        encode_timing(timing)
        + _TIMING_EX.pack(timing.daysofmonth, timing.months, flags)
        + encode_string(timing.zone.encode())
    )


def encode_extras(extras: Extras) -> bytes:
    """`extras`: the POLICY (TIMEOUT uint32 and JITTER uint32 in seconds, PFLAGS uint8:
    1 no-overlap, 2 catch-up, 4 paused; ON_FAILURE string), then NBENV uint32 and
    (NAME, VALUE) strings, STDIN string, then MAILTO: uint8 0 (not set) or 1 followed
    by a string. The POLICY comes first so that PFLAGS sits at a fixed distance from
    the end of the COMMANDLINE (PAUSE rewrites that one byte in place)."""
    flags = (
        (PFLAG_NO_OVERLAP if extras.no_overlap else 0)
        | (PFLAG_CATCH_UP if extras.catch_up else 0)
        | (PFLAG_PAUSED if extras.paused else 0)
    )
    parts = [
        _POLICY.pack(extras.timeout, extras.jitter, flags),
        encode_string(extras.on_failure),
        _U32.pack(len(extras.env)),
    ]
    for name, value in extras.env:
        parts.append(encode_string(name))
        parts.append(encode_string(value))
    parts.append(encode_string(extras.stdin))
    if extras.mailto is None:
        parts.append(b"\0")
    else:
        parts.append(b"\1" + encode_string(extras.mailto))
    return b"".join(parts)


def encode_run_record(record: RunRecord) -> bytes:
    """A `run-record` (24 bytes): START int64, END int64, EXITCODE uint16, OUTCOME
    uint8, FLAGS uint8, PID int32 (HISTORY's reply and a task's `history` file)."""
    return _RUN_RECORD.pack(
        record.start, record.end, record.exitcode, record.outcome, record.flags, record.pid
    )


def decode_run_record(data: bytes | bytearray, offset: int = 0) -> RunRecord:
    """The `run-record` at `offset` of `data` (24 bytes must be there)."""
    return RunRecord(*_RUN_RECORD.unpack_from(data, offset))


def extras_of(
    env: tuple[tuple[bytes, bytes], ...],
    stdin: bytes,
    mailto: bytes | None,
    timeout: int,
    jitter: int,
    pflags: int,
    on_failure: bytes,
) -> Extras:
    """The `Extras` that decoded EXTRAS fields say (PFLAGS unpacked here, once)."""
    return Extras(
        env,
        stdin,
        mailto,
        timeout,
        jitter,
        bool(pflags & PFLAG_NO_OVERLAP),
        bool(pflags & PFLAG_CATCH_UP),
        on_failure,
        bool(pflags & PFLAG_PAUSED),
    )


def encode_task(task: Task) -> bytes:
    """A `task`: TIMING-EX, COMMANDLINE, EXTRAS (CREATE-EX, LIST-EX, REPLACE, `cmds`)."""
    return (
        encode_timing_ex(task.timing) + encode_commandline(task.argv) + encode_extras(task.extras)
    )


def read_u32() -> Generator[int, bytes, int]:
    value: int = _U32.unpack((yield 4))[0]
    return value


def read_u64() -> Generator[int, bytes, int]:
    value: int = _U64.unpack((yield 8))[0]
    return value


def read_timing() -> Generator[int, bytes, Timing]:
    minutes, hours, days = _TIMING.unpack((yield _TIMING.size))
    timing = Timing(minutes, hours, days)
    if not timing.is_valid():
        raise ProtocolError(
            f"timing has bits outside the fields' ranges "
            f"(minutes {minutes:#x}, hours {hours:#x}, days {days:#x})"
        )
    return timing


def read_string(limit: int) -> Generator[int, bytes, bytes]:
    length = yield from read_u32()
    if length > limit:
        raise ProtocolError(f"string of {length} bytes exceeds the limit of {limit}")
    return (yield length)


def read_commandline(max_argc: int, max_string: int) -> Generator[int, bytes, tuple[bytes, ...]]:
    argc = yield from read_u32()
    if argc == 0:
        raise ProtocolError("command line with ARGC 0")
    if argc > max_argc:
        raise ProtocolError(f"ARGC {argc} exceeds the limit of {max_argc}")
    argv: list[bytes] = []
    for _ in range(argc):
        argv.append((yield from read_string(max_string)))
    if argv[0] == b"":
        raise ProtocolError("empty program name (ARGV[0])")
    return tuple(argv)


def read_timing_ex() -> Generator[int, bytes, Timing]:
    course = yield from read_timing()
    daysofmonth, months, flags = _TIMING_EX.unpack((yield _TIMING_EX.size))
    if flags & ~(FLAG_DAYS_OR | FLAG_REBOOT):
        raise ProtocolError(f"unknown timing flags {flags:#x}")
    zone = yield from read_string(MAX_ZONE)
    try:
        zone_text = zone.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"time zone {zone!r} is not ASCII") from None
    timing = Timing(
        course.minutes,
        course.hours,
        course.daysofweek,
        daysofmonth,
        months,
        bool(flags & FLAG_DAYS_OR),
        bool(flags & FLAG_REBOOT),
        zone_text,
    )
    if not timing.is_valid():
        raise ProtocolError(
            f"timing has bits outside the fields' ranges "
            f"(days of month {daysofmonth:#x}, months {months:#x})"
        )
    return timing


def read_extras() -> Generator[int, bytes, Extras]:
    timeout, jitter, flags = _POLICY.unpack((yield _POLICY.size))
    if flags & ~(PFLAG_NO_OVERLAP | PFLAG_CATCH_UP | PFLAG_PAUSED):
        raise ProtocolError(f"unknown policy flags {flags:#x}")
    on_failure = yield from read_string(MAX_STRING)
    count = yield from read_u32()
    if count > MAX_ENV:
        raise ProtocolError(f"{count} environment variables exceed the limit of {MAX_ENV}")
    env: list[tuple[bytes, bytes]] = []
    for _ in range(count):
        name = yield from read_string(MAX_STRING)
        value = yield from read_string(MAX_STRING)
        env.append((name, value))
    stdin = yield from read_string(MAX_STRING)
    has_mailto = yield 1
    if has_mailto not in (b"\0", b"\1"):
        raise ProtocolError(f"MAILTO flag {has_mailto.hex()} is neither 0 nor 1")
    mailto = (yield from read_string(MAX_ERROR_MESSAGE)) if has_mailto == b"\1" else None
    extras = extras_of(tuple(env), stdin, mailto, timeout, jitter, flags, on_failure)
    problem = check_extras(extras)
    if problem is not None:
        raise ProtocolError(problem)
    return extras


def read_task() -> Generator[int, bytes, Task]:
    """The parser of a `task` (TIMING-EX, COMMANDLINE, EXTRAS)."""
    timing = yield from read_timing_ex()
    argv = yield from read_commandline(MAX_ARGC, MAX_STRING)
    extras = yield from read_extras()
    return Task(timing, argv, extras)
