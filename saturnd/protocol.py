"""The saturnd <-> cassini wire protocol (PROTOCOL.md, docs/protocol.md), sans I/O.

This module owns the typed requests and replies, `encode` (message -> bytes), and the
parsers that `saturnd.decoding` drives over bytes as they arrive. It never touches a
file descriptor. It holds the course's 7 requests and our extensions, which travel over
the socket only (docs/protocol.md): `VERSION` (`vr`), the whole-task requests CREATE-EX
(`cx`), LIST-EX (`lx`) and REPLACE (`rp`, all or nothing), and the error reply `ER EM`
that carries a message. A whole task's bytes (`encode_task`, `read_task`) are written
once, here: the wire and the store's `cmds` records share them. Adding a request: its
message class, encoder, parser and reply layout here, its meaning in `handlers`, its
command line in cassini; nothing else.

Rules:
- All integers are big-endian; layouts are tables keyed by opcode, not if-chains.
- The course's opcodes are two upper-case ASCII letters, ours start with a lower-case
  one: the two never meet, and a daemon serves ours on the socket only (COURSE_OPCODES).
- Hard limits are named constants and are checked *before* waiting for the bytes a
  length announces, so a hostile length never makes anyone allocate or wait for it.
- Decoding is resumable: a parser is a generator that asks for n bytes at a time, so
  a large message arriving in many reads is parsed once, not re-parsed per read.
- Import cost: cassini imports this module for every request, so at import time it
  uses only `struct` and what a bare interpreter has loaded (no `typing`,
  `dataclasses`, `collections`). Messages are `timing.Frozen` value classes, not frozen
  dataclasses, which made this import cost about 26 ms instead of 1.5 ms: more than the
  interpreter's own start-up (timing.py's docstring gives the figures).
"""

from __future__ import annotations

import struct

from saturnd.task import NO_EXTRAS, Extras, Task, check_extras
from saturnd.timing import Frozen, Timing

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from typing import Any, Final

__all__ = [
    "MAX_ARGC",
    "MAX_REPLY_STRING",
    "MAX_REQUEST",
    "MAX_STRING",
    "NEED_DATA",
    "EXITCODE_ABNORMAL",
    "NeedData",
    "encode_runs",
    "encode_string",
    "CreateExRequest",
    "CreateReply",
    "CreateRequest",
    "ListExReply",
    "ListExRequest",
    "ReplaceReply",
    "ReplaceRequest",
    "encode_task",
    "ErrorReply",
    "ListReply",
    "ListRequest",
    "OkReply",
    "OutputReply",
    "ProtocolError",
    "RemoveRequest",
    "Reply",
    "Request",
    "Run",
    "StderrRequest",
    "StdoutRequest",
    "TaskEntry",
    "TerminateRequest",
    "TimesExitcodesReply",
    "TimesExitcodesRequest",
    "encode",
    "encode_commandline",
    "encode_timing",
    "parse_reply",
    "parse_request",
    "VersionReply",
    "VersionRequest",
]

MAX_ARGC: Final = 65_536
"""Most arguments a command line may have."""
MAX_STRING: Final = 1 << 20
"""Longest string in a request (1 MiB)."""
MAX_REQUEST: Final = 4 << 20
"""Longest request in bytes (4 MiB; Linux's own ARG_MAX is 2 MiB)."""
MAX_REPLY_STRING: Final = 256 << 20
"""Longest OUTPUT string a client accepts (other daemons may not cap output)."""

EXITCODE_ABNORMAL: Final = 0xFFFF
"""EXITCODE of a run that did not exit normally (killed by a signal, ...)."""

OP_LIST: Final = b"LS"
OP_CREATE: Final = b"CR"
OP_REMOVE: Final = b"RM"
OP_TIMES_EXITCODES: Final = b"TX"
OP_STDOUT: Final = b"SO"
OP_STDERR: Final = b"SE"
OP_TERMINATE: Final = b"TM"
OP_VERSION: Final = b"vr"
OP_CREATE_EX: Final = b"cx"
OP_LIST_EX: Final = b"lx"
OP_REPLACE: Final = b"rp"
"""Extension (socket only): the daemon's version and the requests it serves."""

COURSE_OPCODES: Final = frozenset(
    {OP_LIST, OP_CREATE, OP_REMOVE, OP_TIMES_EXITCODES, OP_STDOUT, OP_STDERR, OP_TERMINATE}
)
"""The requests of PROTOCOL.md: all the FIFOs carry."""

REPLY_OK: Final = b"OK"
REPLY_ERROR: Final = b"ER"
ERR_NOT_FOUND: Final = b"NF"
ERR_NEVER_RAN: Final = b"NR"
ERR_MESSAGE: Final = b"EM"
"""Extension (socket only): an error whose reason follows as a `string` (UTF-8)."""
MAX_ERROR_MESSAGE: Final = 4096
"""Longest error message a client accepts."""
MAX_ZONE: Final = 256
"""Longest time-zone name in a TIMING-EX (IANA names are under 40 bytes)."""
MAX_ENV: Final = 4096
"""Most environment variables one task may carry."""
MAX_REPLACE: Final = 1_000_000
"""Most removals, or creations, in one REPLACE."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TIMING = struct.Struct(">QIB")
_TIMING_EX = struct.Struct(">IHB")  # DAYSOFMONTH, MONTHS, FLAGS after a TIMING
FLAG_DAYS_OR: Final = 1
FLAG_REBOOT: Final = 2
_RUN = struct.Struct(">qH")


class ProtocolError(Exception):
    """Bytes that are not a valid message (or that break a limit)."""


class _NeedData:
    """The decoder needs more bytes before it can say anything."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
NeedData = _NeedData
"""The type of NEED_DATA, for isinstance checks that type checkers understand."""


# --- requests -------------------------------------------------------------------


class ListRequest(Frozen):
    """LIST: every task."""

    __slots__ = __match_args__ = ()
    opcode = OP_LIST


class CreateRequest(Frozen):
    """CREATE a task running `argv` at `timing`."""

    __slots__ = __match_args__ = ("timing", "argv")
    timing: Timing
    argv: tuple[bytes, ...]
    opcode = OP_CREATE

    def __init__(self, timing: Timing, argv: tuple[bytes, ...]) -> None:
        object.__setattr__(self, "timing", timing)
        object.__setattr__(self, "argv", argv)


class _TaskIdRequest(Frozen):
    """A request about one task: the four that carry only a TASKID."""

    __slots__ = __match_args__ = ("task_id",)
    task_id: int

    def __init__(self, task_id: int) -> None:
        object.__setattr__(self, "task_id", task_id)


class RemoveRequest(_TaskIdRequest):
    """REMOVE a task."""

    __slots__ = ()
    opcode = OP_REMOVE


class TimesExitcodesRequest(_TaskIdRequest):
    """TIMES_EXITCODES: a task's run history."""

    __slots__ = ()
    opcode = OP_TIMES_EXITCODES


class StdoutRequest(_TaskIdRequest):
    """STDOUT of a task's last finished run."""

    __slots__ = ()
    opcode = OP_STDOUT


class StderrRequest(_TaskIdRequest):
    """STDERR of a task's last finished run."""

    __slots__ = ()
    opcode = OP_STDERR


class TerminateRequest(Frozen):
    """TERMINATE the daemon."""

    __slots__ = __match_args__ = ()
    opcode = OP_TERMINATE


class VersionRequest(Frozen):
    """VERSION (extension): the client's version text, for the daemon's log."""

    __slots__ = __match_args__ = ("client",)
    client: bytes
    opcode = OP_VERSION

    def __init__(self, client: bytes) -> None:
        object.__setattr__(self, "client", client)


class CreateExRequest(Frozen):
    """CREATE-EX (extension): a whole task, with the fields the course has no room for."""

    __slots__ = __match_args__ = ("task",)
    task: Task
    opcode = OP_CREATE_EX

    def __init__(self, task: Task) -> None:
        object.__setattr__(self, "task", task)


class ListExRequest(Frozen):
    """LIST-EX (extension): every task, whole."""

    __slots__ = __match_args__ = ()
    opcode = OP_LIST_EX


class ReplaceRequest(Frozen):
    """REPLACE (extension): remove the tasks `remove` and create `create`, all or none."""

    __slots__ = __match_args__ = ("remove", "create")
    remove: tuple[int, ...]
    create: tuple[Task, ...]
    opcode = OP_REPLACE

    def __init__(self, remove: tuple[int, ...], create: tuple[Task, ...]) -> None:
        object.__setattr__(self, "remove", tuple(remove))
        object.__setattr__(self, "create", tuple(create))


Request = (
    ListRequest
    | CreateRequest
    | RemoveRequest
    | TimesExitcodesRequest
    | StdoutRequest
    | StderrRequest
    | TerminateRequest
    | VersionRequest
    | CreateExRequest
    | ListExRequest
    | ReplaceRequest
)
TaskRequest = RemoveRequest | TimesExitcodesRequest | StdoutRequest | StderrRequest

# --- replies --------------------------------------------------------------------


class TaskEntry(Frozen):
    """One task as LIST reports it (LIST-EX: with the extended timing and its extras)."""

    __slots__ = __match_args__ = ("task_id", "timing", "argv", "extras")
    task_id: int
    timing: Timing
    argv: tuple[bytes, ...]
    extras: Extras

    def __init__(
        self,
        task_id: int,
        timing: Timing,
        argv: tuple[bytes, ...],
        extras: Extras = NO_EXTRAS,
    ) -> None:
        object.__setattr__(self, "task_id", task_id)
        object.__setattr__(self, "timing", timing)
        object.__setattr__(self, "argv", argv)
        object.__setattr__(self, "extras", extras)

    @property
    def task(self) -> Task:
        """The task without its id."""
        return Task(self.timing, self.argv, self.extras)


class Run(Frozen):
    """One finished run: start time (epoch seconds) and exit code."""

    __slots__ = __match_args__ = ("time", "exitcode")
    time: int
    exitcode: int

    def __init__(self, time: int, exitcode: int) -> None:
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "exitcode", exitcode)


class OkReply(Frozen):
    """`OK` with nothing after it (REMOVE, TERMINATE)."""

    __slots__ = __match_args__ = ()


class ErrorReply(Frozen):
    """`ER` and an error code: `NF`, `NR`, or (socket only) `EM` and its `message`."""

    __slots__ = __match_args__ = ("code", "message")
    code: bytes
    message: str

    def __init__(self, code: bytes, message: str = "") -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "message", message)


class ListReply(Frozen):
    """LIST's `OK`: the tasks by increasing id."""

    __slots__ = __match_args__ = ("tasks",)
    tasks: tuple[TaskEntry, ...]

    def __init__(self, tasks: tuple[TaskEntry, ...]) -> None:
        object.__setattr__(self, "tasks", tasks)


class ListExReply(Frozen):
    """LIST-EX's `OK`: the tasks by increasing id, whole."""

    __slots__ = __match_args__ = ("tasks",)
    tasks: tuple[TaskEntry, ...]

    def __init__(self, tasks: tuple[TaskEntry, ...]) -> None:
        object.__setattr__(self, "tasks", tasks)


class ReplaceReply(Frozen):
    """REPLACE's `OK`: the ids of the created tasks, in the request's order."""

    __slots__ = __match_args__ = ("task_ids",)
    task_ids: tuple[int, ...]

    def __init__(self, task_ids: tuple[int, ...]) -> None:
        object.__setattr__(self, "task_ids", tuple(task_ids))


class CreateReply(Frozen):
    """CREATE's `OK`: the new task's id."""

    __slots__ = __match_args__ = ("task_id",)
    task_id: int

    def __init__(self, task_id: int) -> None:
        object.__setattr__(self, "task_id", task_id)


class TimesExitcodesReply(Frozen):
    """TIMES_EXITCODES' `OK`: the finished runs, oldest first."""

    __slots__ = __match_args__ = ("runs",)
    runs: tuple[Run, ...]

    def __init__(self, runs: tuple[Run, ...]) -> None:
        object.__setattr__(self, "runs", runs)


class OutputReply(Frozen):
    """STDOUT / STDERR's `OK`: what the last finished run wrote."""

    __slots__ = __match_args__ = ("output",)
    output: bytes

    def __init__(self, output: bytes) -> None:
        object.__setattr__(self, "output", output)


class VersionReply(Frozen):
    """VERSION's `OK`: the daemon's version text and the opcodes it serves (socket)."""

    __slots__ = __match_args__ = ("version", "opcodes")
    version: bytes
    opcodes: tuple[bytes, ...]

    def __init__(self, version: bytes, opcodes: tuple[bytes, ...]) -> None:
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "opcodes", opcodes)


Reply = (
    OkReply
    | ErrorReply
    | ListReply
    | CreateReply
    | TimesExitcodesReply
    | OutputReply
    | VersionReply
    | ListExReply
    | ReplaceReply
)
Message = Request | Reply

# --- encoding -------------------------------------------------------------------


def encode_string(data: bytes) -> bytes:
    """A `string`: uint32 length, then the bytes."""
    return _U32.pack(len(data)) + data


def encode_timing(timing: Timing) -> bytes:
    """A `timing`: MINUTES uint64, HOURS uint32, DAYSOFWEEK uint8."""
    return _TIMING.pack(timing.minutes, timing.hours, timing.daysofweek)


def encode_commandline(argv: tuple[bytes, ...]) -> bytes:
    """A `commandline`: ARGC uint32, then ARGC strings."""
    return _U32.pack(len(argv)) + b"".join(encode_string(arg) for arg in argv)


def encode_runs(runs: tuple[Run, ...]) -> bytes:
    """NBRUNS then (TIME, EXITCODE) pairs: the TX reply body and `times-exitcodes`."""
    return _U32.pack(len(runs)) + b"".join(_RUN.pack(r.time, r.exitcode) for r in runs)


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
    """`extras`: NBENV uint32 and (NAME, VALUE) strings, STDIN string, then MAILTO:
    uint8 0 (not set) or 1 followed by a string."""
    parts = [_U32.pack(len(extras.env))]
    for name, value in extras.env:
        parts.append(encode_string(name))
        parts.append(encode_string(value))
    parts.append(encode_string(extras.stdin))
    if extras.mailto is None:
        parts.append(b"\0")
    else:
        parts.append(b"\1" + encode_string(extras.mailto))
    return b"".join(parts)


def encode_task(task: Task) -> bytes:
    """A `task`: TIMING-EX, COMMANDLINE, EXTRAS (CREATE-EX, LIST-EX, REPLACE, `cmds`)."""
    return (
        encode_timing_ex(task.timing) + encode_commandline(task.argv) + encode_extras(task.extras)
    )


def _list_ex_reply_body(reply: ListExReply) -> bytes:
    parts = [REPLY_OK, _U32.pack(len(reply.tasks))]
    for entry in reply.tasks:
        parts.append(_U64.pack(entry.task_id))
        parts.append(encode_task(entry.task))
    return b"".join(parts)


def _replace_body(request: ReplaceRequest) -> bytes:
    parts = [OP_REPLACE, _U32.pack(len(request.remove))]
    parts.extend(_U64.pack(task_id) for task_id in request.remove)
    parts.append(_U32.pack(len(request.create)))
    parts.extend(encode_task(task) for task in request.create)
    return b"".join(parts)


def _list_reply_body(reply: ListReply) -> bytes:
    parts = [REPLY_OK, _U32.pack(len(reply.tasks))]
    for task in reply.tasks:
        parts.append(_U64.pack(task.task_id))
        parts.append(encode_timing(task.timing))
        parts.append(encode_commandline(task.argv))
    return b"".join(parts)


def _error_reply(reply: ErrorReply) -> bytes:
    if reply.code == ERR_MESSAGE:
        text = reply.message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE]
        return REPLY_ERROR + ERR_MESSAGE + encode_string(text)
    return REPLY_ERROR + reply.code


# Each encoder gets a message of the type it is keyed by.
_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    ListRequest: lambda m: OP_LIST,
    TerminateRequest: lambda m: OP_TERMINATE,
    CreateRequest: lambda m: OP_CREATE + encode_timing(m.timing) + encode_commandline(m.argv),
    RemoveRequest: lambda m: OP_REMOVE + _U64.pack(m.task_id),
    TimesExitcodesRequest: lambda m: OP_TIMES_EXITCODES + _U64.pack(m.task_id),
    StdoutRequest: lambda m: OP_STDOUT + _U64.pack(m.task_id),
    StderrRequest: lambda m: OP_STDERR + _U64.pack(m.task_id),
    OkReply: lambda m: REPLY_OK,
    ErrorReply: _error_reply,
    VersionRequest: lambda m: OP_VERSION + encode_string(m.client),
    VersionReply: lambda m: (
        REPLY_OK + encode_string(m.version) + _U32.pack(len(m.opcodes)) + b"".join(m.opcodes)
    ),
    ListReply: _list_reply_body,
    CreateExRequest: lambda m: OP_CREATE_EX + encode_task(m.task),
    ListExRequest: lambda m: OP_LIST_EX,
    ReplaceRequest: _replace_body,
    ListExReply: _list_ex_reply_body,
    ReplaceReply: lambda m: (
        REPLY_OK + _U32.pack(len(m.task_ids)) + b"".join(_U64.pack(i) for i in m.task_ids)
    ),
    CreateReply: lambda m: REPLY_OK + _U64.pack(m.task_id),
    TimesExitcodesReply: lambda m: REPLY_OK + encode_runs(m.runs),
    OutputReply: lambda m: REPLY_OK + encode_string(m.output),
}


def encode(message: Message) -> bytes:
    """The exact bytes of a request or a reply."""
    return _ENCODERS[type(message)](message)


# --- decoding -------------------------------------------------------------------

# A parser is a generator: it yields how many bytes it needs next, is sent exactly
# that many, and returns the message. The driver (_Decoder) owns the buffer.
if TYPE_CHECKING:
    Parser = Generator[int, bytes, object]
    RequestParser = Generator[int, bytes, Request]
    ReplyParser = Generator[int, bytes, Reply]


def _read_u32() -> Generator[int, bytes, int]:
    value: int = _U32.unpack((yield 4))[0]
    return value


def _read_u64() -> Generator[int, bytes, int]:
    value: int = _U64.unpack((yield 8))[0]
    return value


def _read_timing() -> Generator[int, bytes, Timing]:
    minutes, hours, days = _TIMING.unpack((yield _TIMING.size))
    timing = Timing(minutes, hours, days)
    if not timing.is_valid():
        raise ProtocolError(
            f"timing has bits outside the fields' ranges "
            f"(minutes {minutes:#x}, hours {hours:#x}, days {days:#x})"
        )
    return timing


def _read_string(limit: int) -> Generator[int, bytes, bytes]:
    length = yield from _read_u32()
    if length > limit:
        raise ProtocolError(f"string of {length} bytes exceeds the limit of {limit}")
    return (yield length)


def _read_commandline(max_argc: int, max_string: int) -> Generator[int, bytes, tuple[bytes, ...]]:
    argc = yield from _read_u32()
    if argc == 0:
        raise ProtocolError("command line with ARGC 0")
    if argc > max_argc:
        raise ProtocolError(f"ARGC {argc} exceeds the limit of {max_argc}")
    argv: list[bytes] = []
    for _ in range(argc):
        argv.append((yield from _read_string(max_string)))
    if argv[0] == b"":
        raise ProtocolError("empty program name (ARGV[0])")
    return tuple(argv)


def _read_timing_ex() -> Generator[int, bytes, Timing]:
    course = yield from _read_timing()
    daysofmonth, months, flags = _TIMING_EX.unpack((yield _TIMING_EX.size))
    if flags & ~(FLAG_DAYS_OR | FLAG_REBOOT):
        raise ProtocolError(f"unknown timing flags {flags:#x}")
    zone = yield from _read_string(MAX_ZONE)
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


def _read_extras() -> Generator[int, bytes, Extras]:
    count = yield from _read_u32()
    if count > MAX_ENV:
        raise ProtocolError(f"{count} environment variables exceed the limit of {MAX_ENV}")
    env: list[tuple[bytes, bytes]] = []
    for _ in range(count):
        name = yield from _read_string(MAX_STRING)
        value = yield from _read_string(MAX_STRING)
        env.append((name, value))
    stdin = yield from _read_string(MAX_STRING)
    has_mailto = yield 1
    if has_mailto not in (b"\0", b"\1"):
        raise ProtocolError(f"MAILTO flag {has_mailto.hex()} is neither 0 nor 1")
    mailto = (yield from _read_string(MAX_ERROR_MESSAGE)) if has_mailto == b"\1" else None
    extras = Extras(tuple(env), stdin, mailto)
    problem = check_extras(extras)
    if problem is not None:
        raise ProtocolError(problem)
    return extras


def read_task() -> Generator[int, bytes, Task]:
    """The parser of a `task` (TIMING-EX, COMMANDLINE, EXTRAS)."""
    timing = yield from _read_timing_ex()
    argv = yield from _read_commandline(MAX_ARGC, MAX_STRING)
    extras = yield from _read_extras()
    return Task(timing, argv, extras)


def _parse_create_ex() -> Generator[int, bytes, Request]:
    return CreateExRequest((yield from read_task()))


def _parse_replace() -> Generator[int, bytes, Request]:
    count = yield from _read_u32()
    if count > MAX_REPLACE:
        raise ProtocolError(f"{count} removals exceed the limit of {MAX_REPLACE}")
    remove = []
    for _ in range(count):
        remove.append((yield from _read_u64()))
    count = yield from _read_u32()
    if count > MAX_REPLACE:
        raise ProtocolError(f"{count} creations exceed the limit of {MAX_REPLACE}")
    create = []
    for _ in range(count):
        create.append((yield from read_task()))
    return ReplaceRequest(tuple(remove), tuple(create))


def _parse_version() -> Generator[int, bytes, Request]:
    return VersionRequest((yield from _read_string(MAX_ERROR_MESSAGE)))


def _parse_create() -> Generator[int, bytes, Request]:
    timing = yield from _read_timing()
    argv = yield from _read_commandline(MAX_ARGC, MAX_STRING)
    return CreateRequest(timing, argv)


def _task_id_parser(cls: type[TaskRequest]) -> Callable[[], Generator[int, bytes, Request]]:
    def parse() -> Generator[int, bytes, Request]:
        return cls((yield from _read_u64()))

    return parse


def _no_body(
    cls: type[ListRequest | TerminateRequest | ListExRequest],
) -> Callable[[], RequestParser]:
    def parse() -> Generator[int, bytes, Request]:
        return cls()
        yield 0  # pragma: no cover - makes this function a generator

    return parse


_REQUEST_PARSERS: Final[dict[bytes, Callable[[], Generator[int, bytes, Request]]]] = {
    OP_LIST: _no_body(ListRequest),
    OP_CREATE: _parse_create,
    OP_REMOVE: _task_id_parser(RemoveRequest),
    OP_TIMES_EXITCODES: _task_id_parser(TimesExitcodesRequest),
    OP_STDOUT: _task_id_parser(StdoutRequest),
    OP_STDERR: _task_id_parser(StderrRequest),
    OP_TERMINATE: _no_body(TerminateRequest),
    OP_VERSION: _parse_version,
    OP_CREATE_EX: _parse_create_ex,
    OP_LIST_EX: _no_body(ListExRequest),
    OP_REPLACE: _parse_replace,
}


def parse_request() -> Generator[int, bytes, Request]:
    """The parser of one request: its opcode, then the body the table gives for it."""
    opcode = yield 2
    parser = _REQUEST_PARSERS.get(opcode)
    if parser is None:
        raise ProtocolError(f"unknown opcode {opcode.hex(' ')}")
    return (yield from parser())


def _parse_list_reply() -> Generator[int, bytes, Reply]:
    count = yield from _read_u32()
    tasks: list[TaskEntry] = []
    for _ in range(count):  # grows as entries arrive: nothing allocated from `count`
        task_id = yield from _read_u64()
        timing = yield from _read_timing()
        argv = yield from _read_commandline(MAX_ARGC, MAX_STRING)
        tasks.append(TaskEntry(task_id, timing, argv))
    return ListReply(tuple(tasks))


def _parse_list_ex_reply() -> Generator[int, bytes, Reply]:
    count = yield from _read_u32()
    tasks: list[TaskEntry] = []
    for _ in range(count):
        task_id = yield from _read_u64()
        task = yield from read_task()
        tasks.append(TaskEntry(task_id, task.timing, task.argv, task.extras))
    return ListExReply(tuple(tasks))


def _parse_replace_reply() -> Generator[int, bytes, Reply]:
    count = yield from _read_u32()
    if count > MAX_REPLACE:
        raise ProtocolError(f"{count} task ids in a REPLACE reply")
    task_ids = []
    for _ in range(count):
        task_ids.append((yield from _read_u64()))
    return ReplaceReply(tuple(task_ids))


def _parse_runs_reply() -> Generator[int, bytes, Reply]:
    count = yield from _read_u32()
    runs: list[Run] = []
    for _ in range(count):
        time, exitcode = _RUN.unpack((yield _RUN.size))
        runs.append(Run(time, exitcode))
    return TimesExitcodesReply(tuple(runs))


def _parse_create_reply() -> Generator[int, bytes, Reply]:
    return CreateReply((yield from _read_u64()))


def _parse_output_reply() -> Generator[int, bytes, Reply]:
    return OutputReply((yield from _read_string(MAX_REPLY_STRING)))


def _parse_version_reply() -> Generator[int, bytes, Reply]:
    version = yield from _read_string(MAX_ERROR_MESSAGE)
    count = yield from _read_u32()
    if count > 1024:
        raise ProtocolError(f"{count} opcodes in a VERSION reply")
    opcodes = []
    for _ in range(count):
        opcodes.append((yield 2))
    return VersionReply(version, tuple(opcodes))


def _parse_ok_reply() -> Generator[int, bytes, Reply]:
    return OkReply()
    yield 0  # pragma: no cover - makes this function a generator


# For each request: how its OK reply continues, and which error codes it may get.
_REPLY_LAYOUTS: Final[dict[bytes, tuple[Callable[[], ReplyParser], frozenset[bytes]]]] = {
    OP_LIST: (_parse_list_reply, frozenset()),
    OP_CREATE: (_parse_create_reply, frozenset()),
    OP_REMOVE: (_parse_ok_reply, frozenset({ERR_NOT_FOUND})),
    OP_TIMES_EXITCODES: (_parse_runs_reply, frozenset({ERR_NOT_FOUND})),
    OP_STDOUT: (_parse_output_reply, frozenset({ERR_NOT_FOUND, ERR_NEVER_RAN})),
    OP_STDERR: (_parse_output_reply, frozenset({ERR_NOT_FOUND, ERR_NEVER_RAN})),
    OP_TERMINATE: (_parse_ok_reply, frozenset()),
    OP_VERSION: (_parse_version_reply, frozenset()),
    OP_CREATE_EX: (_parse_create_reply, frozenset()),
    OP_LIST_EX: (_parse_list_ex_reply, frozenset()),
    OP_REPLACE: (_parse_replace_reply, frozenset()),
}
REPLY_OPCODES: Final = frozenset(_REPLY_LAYOUTS)
"""The requests whose replies `parse_reply` knows."""


def parse_reply(opcode: bytes) -> Generator[int, bytes, Reply]:
    """The parser of a reply to a request of `opcode` (a key of REPLY_OPCODES).

    `ER EM` and its message is accepted after any request: only our daemon sends it, and
    only on the socket."""
    parse_ok, errors = _REPLY_LAYOUTS[opcode]
    reptype = yield 2
    if reptype == REPLY_OK:
        return (yield from parse_ok())
    if reptype == REPLY_ERROR:
        code = yield 2
        if code == ERR_MESSAGE:
            text = yield from _read_string(MAX_ERROR_MESSAGE)
            return ErrorReply(code, text.decode("utf-8", "replace"))
        if code not in errors:
            raise ProtocolError(f"error code {code.hex(' ')} is not a reply to {opcode.decode()}")
        return ErrorReply(code)
    raise ProtocolError(f"unknown reply type {reptype.hex(' ')}")


# --- names in the pipes directory (both programs use them) ---
REQUEST_PIPE: Final = "saturnd-request-pipe"
REPLY_PIPE: Final = "saturnd-reply-pipe"
SOCKET_NAME: Final = "saturnd.sock"
CLIENT_LOCK: Final = "cassini.lock"
PIPES_LOCK: Final = "saturnd.lock"
