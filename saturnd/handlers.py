"""What each request means: request + task table -> reply bytes or an action to carry out.

This module owns the semantics of the 7 requests of PROTOCOL.md, with no I/O: the
listener asks `decide()` what to do, carries out the action against the store (the only
part that touches disk), then builds the reply with the `reply_*` functions here.

Rules:
- Requests about a task that does not exist are answered `ER NF` here, without I/O.
- STDOUT / STDERR of a task that never finished a run is `ER NR`.
- A table keyed by request type, not an if-chain.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Final, Union

from saturnd import protocol
from saturnd.protocol import (
    ERR_NEVER_RAN,
    ERR_NOT_FOUND,
    CreateReply,
    CreateRequest,
    ErrorReply,
    ListRequest,
    OkReply,
    OutputReply,
    RemoveRequest,
    Request,
    StderrRequest,
    StdoutRequest,
    TerminateRequest,
    TimesExitcodesRequest,
)
from saturnd.records import encode_nbruns
from saturnd.timing import Timing


@dataclass(frozen=True, slots=True)
class Answer:
    """Reply at once with these bytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ListTasks:
    """Reply with the store's encoded task list."""


@dataclass(frozen=True, slots=True)
class CreateTask:
    """Store a new task durably, then reply with its id."""

    timing: Timing
    argv: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RemoveTask:
    """Remove a task (known to exist), then reply OK."""

    task_id: int


@dataclass(frozen=True, slots=True)
class ReadRuns:
    """Reply with the task's run history."""

    task_id: int


@dataclass(frozen=True, slots=True)
class ReadOutput:
    """Reply with what the task's last finished run wrote on `stream`."""

    task_id: int
    stream: str


@dataclass(frozen=True, slots=True)
class Terminate:
    """Reply OK, then stop the daemon."""


Action = Union[Answer, ListTasks, CreateTask, RemoveTask, ReadRuns, ReadOutput, Terminate]

NOT_FOUND: Final = protocol.encode(ErrorReply(ERR_NOT_FOUND))
NEVER_RAN: Final = protocol.encode(ErrorReply(ERR_NEVER_RAN))
OK: Final = protocol.encode(OkReply())


def _existing(task_id: int, tasks: Container[int], action: Action) -> Action:
    return action if task_id in tasks else Answer(NOT_FOUND)


# Each entry gets a request of the type it is keyed by, and the set of live ids.
_DECIDE: Final[dict[type, Callable[[Any, Container[int]], Action]]] = {
    ListRequest: lambda r, tasks: ListTasks(),
    CreateRequest: lambda r, tasks: CreateTask(r.timing, r.argv),
    RemoveRequest: lambda r, tasks: _existing(r.task_id, tasks, RemoveTask(r.task_id)),
    TimesExitcodesRequest: lambda r, tasks: _existing(r.task_id, tasks, ReadRuns(r.task_id)),
    StdoutRequest: lambda r, tasks: _existing(r.task_id, tasks, ReadOutput(r.task_id, "stdout")),
    StderrRequest: lambda r, tasks: _existing(r.task_id, tasks, ReadOutput(r.task_id, "stderr")),
    TerminateRequest: lambda r, tasks: Terminate(),
}


def decide(request: Request, tasks: Container[int]) -> Action:
    """What to do for `request`, given the ids of the live tasks."""
    return _DECIDE[type(request)](request, tasks)


def reply_created(task_id: int) -> bytes:
    """CREATE's reply."""
    return protocol.encode(CreateReply(task_id))


def reply_runs_head(count: int) -> bytes:
    """The start of TIMES_EXITCODES' reply: OK, then NBRUNS = `count`.

    The `count` runs follow as `times-exitcodes` stores them (its layout is the reply's,
    records.py), so the listener sends them straight from the file.
    """
    return protocol.REPLY_OK + encode_nbruns(count)


def reply_output(output: bytes | None) -> bytes:
    """STDOUT / STDERR's reply; None means the task has not finished a run yet."""
    if output is None:
        return NEVER_RAN
    return protocol.encode(OutputReply(output))


def describe(request: Request) -> str:
    """A short text for the log: the request's name and its task id, if any."""
    name = type(request).__name__.removesuffix("Request")
    task_id = getattr(request, "task_id", None)
    return name if task_id is None else f"{name} {task_id}"
