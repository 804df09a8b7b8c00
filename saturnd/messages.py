"""The messages of the saturnd <-> cassini protocol: opcodes, typed requests and replies.

This module owns what a message says: the opcodes that name the requests, and the
value classes of every request and reply (the course's 7 and our extensions). How they
are written is `protocol`'s, which re-exports every name here: callers import them from
`protocol` (split from it when it passed 600 lines: what a message says and how its
bytes go are two jobs).

Rules: pure, and as cheap to import as `protocol` (cassini loads it for every request):
it imports `task` and `timing` only, no `typing`, `dataclasses` or `collections` at
import time, and messages are `timing.Frozen` value classes.
"""

from __future__ import annotations

from saturnd.runrecord import RunRecord
from saturnd.task import NO_EXTRAS, Extras, Task
from saturnd.timing import Frozen, Timing

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "OP_LIST",
    "OP_CREATE",
    "OP_REMOVE",
    "OP_TIMES_EXITCODES",
    "OP_STDOUT",
    "OP_STDERR",
    "OP_TERMINATE",
    "OP_VERSION",
    "OP_CREATE_EX",
    "OP_LIST_EX",
    "OP_REPLACE",
    "OP_RUN_NOW",
    "OP_PAUSE",
    "OP_RESUME",
    "OP_KILL",
    "OP_HISTORY",
    "OP_OUTPUT_EX",
    "COURSE_OPCODES",
    "ListRequest",
    "CreateRequest",
    "RemoveRequest",
    "TimesExitcodesRequest",
    "StdoutRequest",
    "StderrRequest",
    "TerminateRequest",
    "VersionRequest",
    "CreateExRequest",
    "ListExRequest",
    "ReplaceRequest",
    "RunNowRequest",
    "PauseRequest",
    "ResumeRequest",
    "KillRequest",
    "HistoryRequest",
    "OutputExRequest",
    "TaskEntry",
    "Run",
    "OkReply",
    "ErrorReply",
    "ListReply",
    "ListExReply",
    "ReplaceReply",
    "CreateReply",
    "TimesExitcodesReply",
    "OutputReply",
    "VersionReply",
    "KillReply",
    "HistoryReply",
    "OutputExReply",
    "Request",
    "TaskRequest",
    "Reply",
    "Message",
]

OP_LIST: Final = b"LS"
OP_CREATE: Final = b"CR"
OP_REMOVE: Final = b"RM"
OP_TIMES_EXITCODES: Final = b"TX"
OP_STDOUT: Final = b"SO"
OP_STDERR: Final = b"SE"
OP_TERMINATE: Final = b"TM"
OP_VERSION: Final = b"vr"
"""Extension (socket only): the daemon's version and the requests it serves."""
OP_CREATE_EX: Final = b"cx"
"""Extension (socket only): create a whole task."""
OP_LIST_EX: Final = b"lx"
"""Extension (socket only): every task, whole."""
OP_REPLACE: Final = b"rp"
"""REPLACE (extension): remove some tasks and create others, all or nothing."""
OP_RUN_NOW: Final = b"ru"
"""RUN (extension): start a run of a task now, by hand."""
OP_PAUSE: Final = b"pa"
"""PAUSE (extension): a task keeps its schedule and history but does not run."""
OP_RESUME: Final = b"rs"
"""RESUME (extension): a paused task runs again."""
OP_KILL: Final = b"ki"
"""KILL (extension): stop a task's runs in progress (SIGTERM, then SIGKILL)."""
OP_HISTORY: Final = b"hx"
"""HISTORY (extension): a task's runs, whole (run-records)."""
OP_OUTPUT_EX: Final = b"ox"
"""OUTPUT-EX (extension): the stdout or stderr of one kept run, and whether it was cut."""
"""Extension (socket only): remove some tasks and create others, all or nothing."""

COURSE_OPCODES: Final = frozenset(
    {OP_LIST, OP_CREATE, OP_REMOVE, OP_TIMES_EXITCODES, OP_STDOUT, OP_STDERR, OP_TERMINATE}
)
"""The requests of PROTOCOL.md: all the FIFOs carry."""

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
    """A request about one task that carries only a TASKID."""

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


class RunNowRequest(_TaskIdRequest):
    """RUN (extension): start a run now; OK, or NF."""

    __slots__ = ()
    opcode = OP_RUN_NOW


class PauseRequest(_TaskIdRequest):
    """PAUSE (extension); OK (also when already paused), or NF."""

    __slots__ = ()
    opcode = OP_PAUSE


class ResumeRequest(_TaskIdRequest):
    """RESUME (extension); OK (also when not paused), or NF."""

    __slots__ = ()
    opcode = OP_RESUME


class KillRequest(_TaskIdRequest):
    """KILL (extension): stop the task's runs in progress; KillReply, or NF."""

    __slots__ = ()
    opcode = OP_KILL


class HistoryRequest(_TaskIdRequest):
    """HISTORY (extension): the task's runs, whole; HistoryReply, or NF."""

    __slots__ = ()
    opcode = OP_HISTORY


class OutputExRequest(Frozen):
    """OUTPUT-EX (extension): `stream` (1 stdout, 2 stderr) of the kept run that
    started at `start` (0: the last finished run); OutputExReply, NF or NR."""

    __slots__ = __match_args__ = ("task_id", "stream", "start")
    task_id: int
    stream: int
    start: int
    opcode = OP_OUTPUT_EX

    def __init__(self, task_id: int, stream: int, start: int = 0) -> None:
        object.__setattr__(self, "task_id", task_id)
        object.__setattr__(self, "stream", stream)
        object.__setattr__(self, "start", start)


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
    | RunNowRequest
    | PauseRequest
    | ResumeRequest
    | KillRequest
    | HistoryRequest
    | OutputExRequest
)
TaskRequest = (
    RemoveRequest
    | TimesExitcodesRequest
    | StdoutRequest
    | StderrRequest
    | RunNowRequest
    | PauseRequest
    | ResumeRequest
    | KillRequest
    | HistoryRequest
)

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


class KillReply(Frozen):
    """KILL's `OK`: how many runs in progress were told to stop (0: none was running)."""

    __slots__ = __match_args__ = ("count",)
    count: int

    def __init__(self, count: int) -> None:
        object.__setattr__(self, "count", count)


class HistoryReply(Frozen):
    """HISTORY's `OK`: the task's runs kept in its history, oldest first."""

    __slots__ = __match_args__ = ("runs",)
    runs: tuple[RunRecord, ...]

    def __init__(self, runs: tuple[RunRecord, ...]) -> None:
        object.__setattr__(self, "runs", tuple(runs))


class OutputExReply(Frozen):
    """OUTPUT-EX's `OK`: whether the output was cut at the cap, and the output."""

    __slots__ = __match_args__ = ("cut", "output")
    cut: bool
    output: bytes

    def __init__(self, cut: bool, output: bytes) -> None:
        object.__setattr__(self, "cut", bool(cut))
        object.__setattr__(self, "output", output)


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
    | KillReply
    | HistoryReply
    | OutputExReply
)
Message = Request | Reply
