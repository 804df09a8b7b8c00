"""What each request means: one table keyed by request type, request + store -> outcome.

This module owns the semantics of every request (the course's 7 and our extensions).
A handler asks the store (`TaskStore`, the only part that touches the disk) for what it
needs and says what goes back: reply bytes, a `FileReply` (a reply whose bulk is sent
from an open file), or `Stop` (reply, then the daemon shuts down). It does no I/O of its
own: the tests drive it with a store made of dicts. The listener runs `handle` for a
request from any transport and sends the outcome; it knows no request by name.

Rules:
- A request about a task that does not exist is answered `ER NF` without asking the
  store anything else; STDOUT / STDERR of a task that never finished a run is `ER NR`.
- A store failure is raised (StoreError or OSError) and never answered `OK`: the
  listener turns it into `ER EM` with the reason on the socket, and into no reply at
  all on the FIFOs (the course has no error for it).
- Extensions that take whole tasks (CREATE-EX, LIST-EX, REPLACE) come only from the
  socket (the framing drops them on the FIFOs), so their refusals can be `ER EM`:
  REPLACE naming a task that does not exist is refused whole, with nothing changed.
- PAUSE and RESUME are OK whether or not the task was already so. RUN returns once
  the run is started, never waiting for it; a paused task's RUN still runs (by hand).
  KILL says how many runs were told to stop (0: none was going). OUTPUT-EX of a run
  whose output is not kept is `ER NR`, like STDOUT of a task that never ran.
- Adding a request: its messages in `protocol`, one entry in HANDLERS, cassini's side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, Union

from saturnd import __version__, protocol
from saturnd.protocol import (
    ERR_MESSAGE,
    ERR_NEVER_RAN,
    ERR_NOT_FOUND,
    CreateExRequest,
    CreateReply,
    CreateRequest,
    ErrorReply,
    HistoryReply,
    HistoryRequest,
    KillReply,
    KillRequest,
    ListExRequest,
    ListRequest,
    OkReply,
    OutputExReply,
    OutputExRequest,
    OutputReply,
    PauseRequest,
    RemoveRequest,
    ReplaceReply,
    ReplaceRequest,
    Request,
    ResumeRequest,
    RunNowRequest,
    StderrRequest,
    StdoutRequest,
    TaskEntry,
    TerminateRequest,
    TimesExitcodesRequest,
    VersionReply,
    VersionRequest,
)
from saturnd.runrecord import RunRecord
from saturnd.runsfile import RUN_SIZE, RUNS_HEAD_SIZE, encode_nbruns
from saturnd.task import Task
from saturnd.timing import Timing


class TaskStore(Protocol):
    """What the handlers ask of the store (the listener's: runcontrol.ServedStore, a
    store.Store that can also start and stop runs)."""

    @property
    def tasks(self) -> Mapping[int, TaskEntry]: ...

    def list_reply(self) -> bytes: ...

    def list_ex_reply(self) -> bytes: ...

    def create(self, timing: Timing, argv: tuple[bytes, ...]) -> int: ...

    def create_task(self, task: Task) -> int: ...

    def replace(self, remove_ids: Iterable[int], tasks: Sequence[Task]) -> list[int]: ...

    def remove(self, task_id: int) -> bool: ...

    def open_runs(self, task_id: int) -> tuple[int, int] | None: ...

    def output(self, task_id: int, stream: str) -> bytes | None: ...

    def set_paused(self, task_id: int, paused: bool) -> bool: ...

    def history(self, task_id: int) -> tuple[RunRecord, ...]: ...

    def kept_output(self, task_id: int, stream: str, start: int) -> tuple[bool, bytes] | None: ...

    def run_now(self, task_id: int) -> bool: ...

    def stop_runs(self, task_id: int) -> int: ...


@dataclass(frozen=True, slots=True)
class FileReply:
    """A reply made of `head`, then the `length` bytes of the open file `fd` from
    `offset`, which do not change while they are sent. Whoever sends it closes `fd`."""

    head: bytes
    fd: int
    offset: int
    length: int

    @property
    def size(self) -> int:
        """Bytes of the whole reply."""
        return len(self.head) + self.length


@dataclass(frozen=True, slots=True)
class Stop:
    """Send `reply`, then stop the daemon (TERMINATE)."""

    reply: bytes


Outcome = Union[bytes, FileReply, Stop]

OK: Final = protocol.encode(OkReply())
NOT_FOUND: Final = protocol.encode(ErrorReply(ERR_NOT_FOUND))
NEVER_RAN: Final = protocol.encode(ErrorReply(ERR_NEVER_RAN))


def error_message(message: str) -> bytes:
    """`ER EM` with `message` (socket only): a failure the user must read."""
    return protocol.encode(ErrorReply(ERR_MESSAGE, message))


def reply_created(task_id: int) -> bytes:
    """CREATE's reply."""
    return protocol.encode(CreateReply(task_id))


def reply_runs_head(count: int) -> bytes:
    """The start of TIMES_EXITCODES' reply: OK, then NBRUNS = `count`.

    The `count` runs follow as `times-exitcodes` stores them (its layout is the reply's,
    records.py), so they are sent straight from the file.
    """
    return protocol.REPLY_OK + encode_nbruns(count)


def reply_output(output: bytes | None) -> bytes:
    """STDOUT / STDERR's reply; None means the task has not finished a run yet."""
    if output is None:
        return NEVER_RAN
    return protocol.encode(OutputReply(output))


def _list(request: ListRequest, store: TaskStore) -> Outcome:
    return store.list_reply()


def _create(request: CreateRequest, store: TaskStore) -> Outcome:
    return reply_created(store.create(request.timing, request.argv))


def _create_ex(request: CreateExRequest, store: TaskStore) -> Outcome:
    try:
        return reply_created(store.create_task(request.task))
    except ValueError as error:  # a task the store cannot keep: say why
        return error_message(f"cannot store the task: {error}")


def _list_ex(request: ListExRequest, store: TaskStore) -> Outcome:
    return store.list_ex_reply()


def _replace(request: ReplaceRequest, store: TaskStore) -> Outcome:
    tasks = store.tasks
    for task_id in request.remove:
        if task_id not in tasks:
            return error_message(f"cannot replace: no task with id {task_id}")
    try:
        created = store.replace(request.remove, request.create)
    except ValueError as error:
        return error_message(f"cannot store the tasks: {error}")
    return protocol.encode(ReplaceReply(tuple(created)))


def _remove(request: RemoveRequest, store: TaskStore) -> Outcome:
    return OK if store.remove(request.task_id) else NOT_FOUND


def _runs(request: TimesExitcodesRequest, store: TaskStore) -> Outcome:
    opened = store.open_runs(request.task_id)
    if opened is None:  # never finished a run
        return reply_runs_head(0)
    fd, count = opened
    return FileReply(reply_runs_head(count), fd, RUNS_HEAD_SIZE, count * RUN_SIZE)


def _output(stream: str) -> Callable[[StdoutRequest | StderrRequest, TaskStore], Outcome]:
    def handle(request: StdoutRequest | StderrRequest, store: TaskStore) -> Outcome:
        return reply_output(store.output(request.task_id, stream))

    return handle


def _pause(request: PauseRequest, store: TaskStore) -> Outcome:
    return OK if store.set_paused(request.task_id, True) else NOT_FOUND


def _resume(request: ResumeRequest, store: TaskStore) -> Outcome:
    return OK if store.set_paused(request.task_id, False) else NOT_FOUND


def _run_now(request: RunNowRequest, store: TaskStore) -> Outcome:
    return OK if store.run_now(request.task_id) else NOT_FOUND


def _kill(request: KillRequest, store: TaskStore) -> Outcome:
    return protocol.encode(KillReply(store.stop_runs(request.task_id)))


def _history(request: HistoryRequest, store: TaskStore) -> Outcome:
    return protocol.encode(HistoryReply(store.history(request.task_id)))


_STREAMS: Final = {1: "stdout", 2: "stderr"}  # OUTPUT-EX's STREAM (the decoder checks it)


def _output_ex(request: OutputExRequest, store: TaskStore) -> Outcome:
    kept = store.kept_output(request.task_id, _STREAMS[request.stream], request.start)
    if kept is None:
        return NEVER_RAN
    return protocol.encode(OutputExReply(*kept))


def _terminate(request: TerminateRequest, store: TaskStore) -> Outcome:
    return Stop(OK)


def _version(request: VersionRequest, store: TaskStore) -> Outcome:
    served = tuple(sorted(cls.opcode for cls in HANDLERS))
    return protocol.encode(VersionReply(f"saturnd {__version__}".encode(), served))


HANDLERS: Final[dict[type[Request], Callable[[Any, TaskStore], Outcome]]] = {
    ListRequest: _list,
    CreateRequest: _create,
    RemoveRequest: _remove,
    TimesExitcodesRequest: _runs,
    StdoutRequest: _output("stdout"),
    StderrRequest: _output("stderr"),
    TerminateRequest: _terminate,
    VersionRequest: _version,
    CreateExRequest: _create_ex,
    ListExRequest: _list_ex,
    ReplaceRequest: _replace,
    PauseRequest: _pause,
    ResumeRequest: _resume,
    RunNowRequest: _run_now,
    KillRequest: _kill,
    HistoryRequest: _history,
    OutputExRequest: _output_ex,
}
"""Each handler gets a request of the type it is keyed by."""

ABOUT_A_TASK: Final = frozenset(
    {
        RemoveRequest,
        TimesExitcodesRequest,
        StdoutRequest,
        StderrRequest,
        PauseRequest,
        ResumeRequest,
        RunNowRequest,
        KillRequest,
        HistoryRequest,
        OutputExRequest,
    }
)
"""Requests answered `ER NF` when their task does not exist."""


def handle(request: Request, store: TaskStore) -> Outcome:
    """The outcome of `request`; raises what the store raises when it fails."""
    if type(request) in ABOUT_A_TASK and request.task_id not in store.tasks:  # type: ignore[union-attr]
        return NOT_FOUND
    return HANDLERS[type(request)](request, store)


def describe(request: Request) -> str:
    """A short text for the log: the request's name and its task id, if any."""
    name = type(request).__name__.removesuffix("Request")
    task_id = getattr(request, "task_id", None)
    return name if task_id is None else f"{name} {task_id}"
