"""The saturnd <-> cassini wire protocol (PROTOCOL.md), sans I/O.

This module owns the typed requests and replies, `encode` (message -> bytes) and the
incremental decoders (bytes as they arrive -> message | NEED_DATA | ProtocolError).
It never touches a file descriptor: the listener and cassini's transport feed it.

Rules:
- All integers are big-endian; layouts are tables keyed by opcode, not if-chains.
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
    "decode_reply",
    "decode_request",
    "encode_runs",
    "encode_string",
    "CreateReply",
    "CreateRequest",
    "ErrorReply",
    "ListReply",
    "ListRequest",
    "OkReply",
    "OutputReply",
    "ProtocolError",
    "RemoveRequest",
    "Reply",
    "ReplyDecoder",
    "Request",
    "RequestDecoder",
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

REPLY_OK: Final = b"OK"
REPLY_ERROR: Final = b"ER"
ERR_NOT_FOUND: Final = b"NF"
ERR_NEVER_RAN: Final = b"NR"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TIMING = struct.Struct(">QIB")
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


Request = (
    ListRequest
    | CreateRequest
    | RemoveRequest
    | TimesExitcodesRequest
    | StdoutRequest
    | StderrRequest
    | TerminateRequest
)
TaskRequest = RemoveRequest | TimesExitcodesRequest | StdoutRequest | StderrRequest

# --- replies --------------------------------------------------------------------


class TaskEntry(Frozen):
    """One task as LIST reports it."""

    __slots__ = __match_args__ = ("task_id", "timing", "argv")
    task_id: int
    timing: Timing
    argv: tuple[bytes, ...]

    def __init__(self, task_id: int, timing: Timing, argv: tuple[bytes, ...]) -> None:
        object.__setattr__(self, "task_id", task_id)
        object.__setattr__(self, "timing", timing)
        object.__setattr__(self, "argv", argv)


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
    """`ER` and an error code (`NF` or `NR`)."""

    __slots__ = __match_args__ = ("code",)
    code: bytes

    def __init__(self, code: bytes) -> None:
        object.__setattr__(self, "code", code)


class ListReply(Frozen):
    """LIST's `OK`: the tasks by increasing id."""

    __slots__ = __match_args__ = ("tasks",)
    tasks: tuple[TaskEntry, ...]

    def __init__(self, tasks: tuple[TaskEntry, ...]) -> None:
        object.__setattr__(self, "tasks", tasks)


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


Reply = OkReply | ErrorReply | ListReply | CreateReply | TimesExitcodesReply | OutputReply
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


def _list_reply_body(reply: ListReply) -> bytes:
    parts = [REPLY_OK, _U32.pack(len(reply.tasks))]
    for task in reply.tasks:
        parts.append(_U64.pack(task.task_id))
        parts.append(encode_timing(task.timing))
        parts.append(encode_commandline(task.argv))
    return b"".join(parts)


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
    ErrorReply: lambda m: REPLY_ERROR + m.code,
    ListReply: _list_reply_body,
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


def _parse_create() -> Generator[int, bytes, Request]:
    timing = yield from _read_timing()
    argv = yield from _read_commandline(MAX_ARGC, MAX_STRING)
    return CreateRequest(timing, argv)


def _task_id_parser(cls: type[TaskRequest]) -> Callable[[], Generator[int, bytes, Request]]:
    def parse() -> Generator[int, bytes, Request]:
        return cls((yield from _read_u64()))

    return parse


def _no_body(cls: type[ListRequest | TerminateRequest]) -> Callable[[], RequestParser]:
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
}


def _parse_request() -> Generator[int, bytes, Request]:
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
}


def _parse_reply(opcode: bytes) -> Generator[int, bytes, Reply]:
    parse_ok, errors = _REPLY_LAYOUTS[opcode]
    reptype = yield 2
    if reptype == REPLY_OK:
        return (yield from parse_ok())
    if reptype == REPLY_ERROR:
        code = yield 2
        if code not in errors:
            raise ProtocolError(f"error code {code.hex(' ')} is not a reply to {opcode.decode()}")
        return ErrorReply(code)
    raise ProtocolError(f"unknown reply type {reptype.hex(' ')}")


class _Decoder:
    """Drives a parser generator over the bytes fed so far (h11's receive/next)."""

    _COMPACT_AT = 1 << 16

    def __init__(self, max_message: int | None) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._max_message = max_message
        self._parser: Generator[int, bytes, object] | None = None
        self._want = 0
        self._consumed = 0

    def _new_parser(self) -> Generator[int, bytes, object]:
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Add bytes that arrived."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet consumed by a complete message."""
        return len(self._buffer) - self._pos + self._consumed

    @property
    def in_message(self) -> bool:
        """True when some bytes of an unfinished message have been fed."""
        return self.buffered > 0

    @property
    def pending(self) -> int:
        """How many bytes were fed after the last complete message (between messages)."""
        return len(self._buffer) - self._pos

    def reset(self) -> None:
        """Forget every byte fed so far and any message in progress."""
        self._buffer = bytearray()
        self._pos = 0
        self._parser = None
        self._consumed = 0

    def next_message(self) -> object:
        """A complete message, or NEED_DATA; raises ProtocolError on bad bytes.

        After a ProtocolError the decoder must be `reset()` before it is used again.
        """
        if self._parser is None:
            if self._pos == len(self._buffer):
                return NEED_DATA  # between messages, nothing fed: no parser to start
            self._parser = self._new_parser()
            self._consumed = 0
            self._want = next(self._parser)
        while True:
            if self._max_message is not None and self._consumed + self._want > self._max_message:
                raise ProtocolError(f"message longer than the limit of {self._max_message} bytes")
            end = self._pos + self._want
            if end > len(self._buffer):
                return NEED_DATA
            chunk = bytes(self._buffer[self._pos : end])
            self._pos = end
            self._consumed += self._want
            try:
                self._want = self._parser.send(chunk)
            except StopIteration as done:
                self._parser = None
                self._consumed = 0
                self._compact()
                return done.value
            if self._pos >= self._COMPACT_AT:
                self._compact()

    def _compact(self) -> None:
        del self._buffer[: self._pos]
        self._pos = 0


def _fixed_request(cls: type[TaskRequest]) -> Callable[[bytearray, int], Request]:
    def build(buffer: bytearray, at: int) -> Request:
        return cls(_U64.unpack_from(buffer, at + 2)[0])

    return build


# Requests of a fixed size (opcode included), whole in the buffer: built at once, with
# no parser to start, resume and finish (the daemon's common case, one per exchange).
# They decode to what `_parse_request` gives for the same bytes (tests/test_protocol.py).
_FIXED_REQUESTS: Final[dict[bytes, tuple[int, Callable[[bytearray, int], Request]]]] = {
    OP_LIST: (2, lambda _buffer, _at: ListRequest()),
    OP_TERMINATE: (2, lambda _buffer, _at: TerminateRequest()),
    OP_REMOVE: (10, _fixed_request(RemoveRequest)),
    OP_TIMES_EXITCODES: (10, _fixed_request(TimesExitcodesRequest)),
    OP_STDOUT: (10, _fixed_request(StdoutRequest)),
    OP_STDERR: (10, _fixed_request(StderrRequest)),
}


class RequestDecoder(_Decoder):
    """Decodes requests (the daemon's side), within MAX_REQUEST bytes each."""

    def __init__(self) -> None:
        super().__init__(MAX_REQUEST)

    def _new_parser(self) -> Generator[int, bytes, object]:
        return _parse_request()

    def next_message(self) -> Request | _NeedData:
        """A complete request, or NEED_DATA; raises ProtocolError."""
        if self._parser is None:
            at = self._pos
            fixed = _FIXED_REQUESTS.get(bytes(self._buffer[at : at + 2]))
            if fixed is not None and len(self._buffer) - at >= fixed[0]:
                message = fixed[1](self._buffer, at)
                self._pos = at + fixed[0]
                self._compact()
                return message
        return super().next_message()  # type: ignore[return-value]


class ReplyDecoder(_Decoder):
    """Decodes the reply to one kind of request (the client's side)."""

    def __init__(self, opcode: bytes) -> None:
        if opcode not in _REPLY_LAYOUTS:
            raise ValueError(f"unknown opcode {opcode!r}")
        super().__init__(None)
        self._opcode = opcode

    def _new_parser(self) -> Generator[int, bytes, object]:
        return _parse_reply(self._opcode)

    def next_message(self) -> Reply | _NeedData:
        """The complete reply, or NEED_DATA; raises ProtocolError."""
        return super().next_message()  # type: ignore[return-value]


def decode_request(data: bytes) -> Request:
    """Decode exactly one whole request (tests, tools); raises ProtocolError."""
    decoder = RequestDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    if isinstance(message, _NeedData):
        raise ProtocolError("truncated request")
    if decoder.buffered:
        raise ProtocolError("bytes after the request")
    return message


def decode_reply(opcode: bytes, data: bytes) -> Reply:
    """Decode exactly one whole reply to a request of `opcode`; raises ProtocolError."""
    decoder = ReplyDecoder(opcode)
    decoder.feed(data)
    message = decoder.next_message()
    if isinstance(message, _NeedData):
        raise ProtocolError("truncated reply")
    if decoder.buffered:
        raise ProtocolError("bytes after the reply")
    return message


# --- names in the pipes directory (both programs use them) ---
REQUEST_PIPE: Final = "saturnd-request-pipe"
REPLY_PIPE: Final = "saturnd-reply-pipe"
SOCKET_NAME: Final = "saturnd.sock"
CLIENT_LOCK: Final = "cassini.lock"
PIPES_LOCK: Final = "saturnd.lock"
