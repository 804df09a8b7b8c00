"""The saturnd <-> cassini wire protocol (PROTOCOL.md, docs/protocol.md), sans I/O.

This module owns how messages are written: `encode` (message -> bytes), the parsers
that `saturnd.decoding` drives over bytes as they arrive, the reply layouts, and the
names in the pipes directory. It never touches a file descriptor. What a message says
(opcodes, request and reply classes) is `messages`'s, the field types (string, timing,
commandline, and the whole task `encode_task` / `read_task` that the store's `cmds`
shares) are `wiretypes`'s: this module re-exports both, so callers import everything
from here. It holds the course's 7 requests and our extensions, which travel over the
socket only (docs/protocol.md): `VERSION` (`vr`), the whole-task requests CREATE-EX
(`cx`), LIST-EX (`lx`) and REPLACE (`rp`, all or nothing), and the error reply `ER EM`
that carries a message. Adding a request: its message class in `messages`, its
encoder, parser and reply layout here, its meaning in `handlers`, its command line in
cassini; nothing else.

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

from saturnd.messages import (
    COURSE_OPCODES,
    OP_CREATE,
    OP_CREATE_EX,
    OP_HISTORY,
    OP_KILL,
    OP_LIST,
    OP_LIST_EX,
    OP_OUTPUT_EX,
    OP_PAUSE,
    OP_REMOVE,
    OP_REPLACE,
    OP_RESUME,
    OP_RUN_NOW,
    OP_STDERR,
    OP_STDOUT,
    OP_TERMINATE,
    OP_TIMES_EXITCODES,
    OP_VERSION,
    CreateExRequest,
    CreateReply,
    CreateRequest,
    ErrorReply,
    HistoryReply,
    HistoryRequest,
    KillReply,
    KillRequest,
    ListExReply,
    ListExRequest,
    ListReply,
    ListRequest,
    Message,
    OkReply,
    OutputExReply,
    OutputExRequest,
    OutputReply,
    PauseRequest,
    RemoveRequest,
    ReplaceReply,
    ReplaceRequest,
    Reply,
    Request,
    ResumeRequest,
    Run,
    RunNowRequest,
    StderrRequest,
    StdoutRequest,
    TaskEntry,
    TaskRequest,
    TerminateRequest,
    TimesExitcodesReply,
    TimesExitcodesRequest,
    VersionReply,
    VersionRequest,
)
from saturnd.runrecord import RunRecord
from saturnd.wiretypes import (
    FLAG_DAYS_OR,
    FLAG_REBOOT,
    MAX_ARGC,
    MAX_ENV,
    MAX_ERROR_MESSAGE,
    MAX_STRING,
    MAX_ZONE,
    PFLAG_CATCH_UP,
    PFLAG_NO_OVERLAP,
    PFLAG_PAUSED,
    PFLAGS_OFFSET,
    POLICY_SIZE,
    RUN_RECORD_SIZE,
    ProtocolError,
    decode_run_record,
    encode_commandline,
    encode_extras,
    encode_run_record,
    encode_string,
    encode_task,
    encode_timing,
    encode_timing_ex,
    read_commandline,
    read_extras,
    read_string,
    read_task,
    read_timing,
    read_timing_ex,
    read_u32,
    read_u64,
)

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from typing import Any, Final

# The names of `messages` and `wiretypes` are this module's too: callers import them here.
__all__ = [
    "OP_RUN_NOW",
    "OP_PAUSE",
    "OP_RESUME",
    "OP_KILL",
    "OP_HISTORY",
    "OP_OUTPUT_EX",
    "RunNowRequest",
    "PauseRequest",
    "ResumeRequest",
    "KillRequest",
    "HistoryRequest",
    "OutputExRequest",
    "KillReply",
    "HistoryReply",
    "OutputExReply",
    "RUN_RECORD_SIZE",
    "decode_run_record",
    "encode_run_record",
    "PFLAGS_OFFSET",
    "PFLAG_CATCH_UP",
    "PFLAG_NO_OVERLAP",
    "PFLAG_PAUSED",
    "POLICY_SIZE",
    "CLIENT_LOCK",
    "COURSE_OPCODES",
    "ERR_MESSAGE",
    "ERR_NEVER_RAN",
    "ERR_NOT_FOUND",
    "EXITCODE_ABNORMAL",
    "FLAG_DAYS_OR",
    "FLAG_REBOOT",
    "MAX_ARGC",
    "MAX_ENV",
    "MAX_ERROR_MESSAGE",
    "MAX_REPLACE",
    "MAX_REPLY_STRING",
    "MAX_REQUEST",
    "MAX_STRING",
    "MAX_ZONE",
    "NEED_DATA",
    "OP_CREATE",
    "OP_CREATE_EX",
    "OP_LIST",
    "OP_LIST_EX",
    "OP_REMOVE",
    "OP_REPLACE",
    "OP_STDERR",
    "OP_STDOUT",
    "OP_TERMINATE",
    "OP_TIMES_EXITCODES",
    "OP_VERSION",
    "PIPES_LOCK",
    "REPLY_ERROR",
    "REPLY_OK",
    "REPLY_OPCODES",
    "REPLY_PIPE",
    "REQUEST_PIPE",
    "SOCKET_NAME",
    "CreateExRequest",
    "CreateReply",
    "CreateRequest",
    "ErrorReply",
    "ListExReply",
    "ListExRequest",
    "ListReply",
    "ListRequest",
    "Message",
    "NeedData",
    "OkReply",
    "OutputReply",
    "ProtocolError",
    "RemoveRequest",
    "ReplaceReply",
    "ReplaceRequest",
    "Reply",
    "Request",
    "Run",
    "StderrRequest",
    "StdoutRequest",
    "TaskEntry",
    "TaskRequest",
    "TerminateRequest",
    "TimesExitcodesReply",
    "TimesExitcodesRequest",
    "VersionReply",
    "VersionRequest",
    "encode",
    "encode_commandline",
    "encode_extras",
    "encode_runs",
    "encode_string",
    "encode_task",
    "encode_timing",
    "encode_timing_ex",
    "parse_reply",
    "parse_request",
    "read_commandline",
    "read_extras",
    "read_string",
    "read_task",
    "read_timing",
    "read_timing_ex",
    "read_u32",
    "read_u64",
]

MAX_REQUEST: Final = 4 << 20
"""Longest request in bytes (4 MiB; Linux's own ARG_MAX is 2 MiB)."""
MAX_REPLY_STRING: Final = 256 << 20
"""Longest OUTPUT string a client accepts (other daemons may not cap output)."""

EXITCODE_ABNORMAL: Final = 0xFFFF
"""EXITCODE of a run that did not exit normally (killed by a signal, ...)."""

REPLY_OK: Final = b"OK"
REPLY_ERROR: Final = b"ER"
ERR_NOT_FOUND: Final = b"NF"
ERR_NEVER_RAN: Final = b"NR"
ERR_MESSAGE: Final = b"EM"
"""Extension (socket only): an error whose reason follows as a `string` (UTF-8)."""
MAX_REPLACE: Final = 1_000_000
"""Most removals, or creations, in one REPLACE."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RUN = struct.Struct(">qH")
_OUTPUT_EX = struct.Struct(">QBq")  # TASKID, STREAM, START of an OUTPUT-EX request


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


# --- encoding -------------------------------------------------------------------


def encode_runs(runs: tuple[Run, ...]) -> bytes:
    """NBRUNS then (TIME, EXITCODE) pairs: the TX reply body and `times-exitcodes`."""
    return _U32.pack(len(runs)) + b"".join(_RUN.pack(r.time, r.exitcode) for r in runs)


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
    RunNowRequest: lambda m: OP_RUN_NOW + _U64.pack(m.task_id),
    PauseRequest: lambda m: OP_PAUSE + _U64.pack(m.task_id),
    ResumeRequest: lambda m: OP_RESUME + _U64.pack(m.task_id),
    KillRequest: lambda m: OP_KILL + _U64.pack(m.task_id),
    HistoryRequest: lambda m: OP_HISTORY + _U64.pack(m.task_id),
    OutputExRequest: lambda m: OP_OUTPUT_EX + _OUTPUT_EX.pack(m.task_id, m.stream, m.start),
    KillReply: lambda m: REPLY_OK + _U32.pack(m.count),
    HistoryReply: lambda m: (
        REPLY_OK + _U32.pack(len(m.runs)) + b"".join(encode_run_record(r) for r in m.runs)
    ),
    OutputExReply: lambda m: REPLY_OK + (b"\1" if m.cut else b"\0") + encode_string(m.output),
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


def _parse_create_ex() -> Generator[int, bytes, Request]:
    return CreateExRequest((yield from read_task()))


def _parse_replace() -> Generator[int, bytes, Request]:
    count = yield from read_u32()
    if count > MAX_REPLACE:
        raise ProtocolError(f"{count} removals exceed the limit of {MAX_REPLACE}")
    remove = []
    for _ in range(count):
        remove.append((yield from read_u64()))
    count = yield from read_u32()
    if count > MAX_REPLACE:
        raise ProtocolError(f"{count} creations exceed the limit of {MAX_REPLACE}")
    create = []
    for _ in range(count):
        create.append((yield from read_task()))
    return ReplaceRequest(tuple(remove), tuple(create))


def _parse_version() -> Generator[int, bytes, Request]:
    return VersionRequest((yield from read_string(MAX_ERROR_MESSAGE)))


def _parse_create() -> Generator[int, bytes, Request]:
    timing = yield from read_timing()
    argv = yield from read_commandline(MAX_ARGC, MAX_STRING)
    return CreateRequest(timing, argv)


def _parse_output_ex() -> Generator[int, bytes, Request]:
    task_id, stream, start = _OUTPUT_EX.unpack((yield _OUTPUT_EX.size))
    if stream not in (1, 2):
        raise ProtocolError(f"output stream {stream} is neither 1 (stdout) nor 2 (stderr)")
    return OutputExRequest(task_id, stream, start)


def _parse_kill_reply() -> Generator[int, bytes, Reply]:
    return KillReply((yield from read_u32()))


def _parse_history_reply() -> Generator[int, bytes, Reply]:
    count = yield from read_u32()
    runs: list[RunRecord] = []
    for _ in range(count):  # grows as records arrive: nothing allocated from `count`
        runs.append(decode_run_record((yield RUN_RECORD_SIZE)))
    return HistoryReply(tuple(runs))


def _parse_output_ex_reply() -> Generator[int, bytes, Reply]:
    cut = yield 1
    if cut not in (b"\0", b"\1"):
        raise ProtocolError(f"cut flag {cut.hex()} is neither 0 nor 1")
    return OutputExReply(cut == b"\1", (yield from read_string(MAX_REPLY_STRING)))


def _task_id_parser(cls: type[TaskRequest]) -> Callable[[], Generator[int, bytes, Request]]:
    def parse() -> Generator[int, bytes, Request]:
        return cls((yield from read_u64()))

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
    OP_RUN_NOW: _task_id_parser(RunNowRequest),
    OP_PAUSE: _task_id_parser(PauseRequest),
    OP_RESUME: _task_id_parser(ResumeRequest),
    OP_KILL: _task_id_parser(KillRequest),
    OP_HISTORY: _task_id_parser(HistoryRequest),
    OP_OUTPUT_EX: _parse_output_ex,
}


def parse_request() -> Generator[int, bytes, Request]:
    """The parser of one request: its opcode, then the body the table gives for it."""
    opcode = yield 2
    parser = _REQUEST_PARSERS.get(opcode)
    if parser is None:
        raise ProtocolError(f"unknown opcode {opcode.hex(' ')}")
    return (yield from parser())


def _parse_list_reply() -> Generator[int, bytes, Reply]:
    count = yield from read_u32()
    tasks: list[TaskEntry] = []
    for _ in range(count):  # grows as entries arrive: nothing allocated from `count`
        task_id = yield from read_u64()
        timing = yield from read_timing()
        argv = yield from read_commandline(MAX_ARGC, MAX_STRING)
        tasks.append(TaskEntry(task_id, timing, argv))
    return ListReply(tuple(tasks))


def _parse_list_ex_reply() -> Generator[int, bytes, Reply]:
    count = yield from read_u32()
    tasks: list[TaskEntry] = []
    for _ in range(count):
        task_id = yield from read_u64()
        task = yield from read_task()
        tasks.append(TaskEntry(task_id, task.timing, task.argv, task.extras))
    return ListExReply(tuple(tasks))


def _parse_replace_reply() -> Generator[int, bytes, Reply]:
    count = yield from read_u32()
    if count > MAX_REPLACE:
        raise ProtocolError(f"{count} task ids in a REPLACE reply")
    task_ids = []
    for _ in range(count):
        task_ids.append((yield from read_u64()))
    return ReplaceReply(tuple(task_ids))


def _parse_runs_reply() -> Generator[int, bytes, Reply]:
    count = yield from read_u32()
    runs: list[Run] = []
    for _ in range(count):
        time, exitcode = _RUN.unpack((yield _RUN.size))
        runs.append(Run(time, exitcode))
    return TimesExitcodesReply(tuple(runs))


def _parse_create_reply() -> Generator[int, bytes, Reply]:
    return CreateReply((yield from read_u64()))


def _parse_output_reply() -> Generator[int, bytes, Reply]:
    return OutputReply((yield from read_string(MAX_REPLY_STRING)))


def _parse_version_reply() -> Generator[int, bytes, Reply]:
    version = yield from read_string(MAX_ERROR_MESSAGE)
    count = yield from read_u32()
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
    OP_RUN_NOW: (_parse_ok_reply, frozenset({ERR_NOT_FOUND})),
    OP_PAUSE: (_parse_ok_reply, frozenset({ERR_NOT_FOUND})),
    OP_RESUME: (_parse_ok_reply, frozenset({ERR_NOT_FOUND})),
    OP_KILL: (_parse_kill_reply, frozenset({ERR_NOT_FOUND})),
    OP_HISTORY: (_parse_history_reply, frozenset({ERR_NOT_FOUND})),
    OP_OUTPUT_EX: (_parse_output_ex_reply, frozenset({ERR_NOT_FOUND, ERR_NEVER_RAN})),
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
            text = yield from read_string(MAX_ERROR_MESSAGE)
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
