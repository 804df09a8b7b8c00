"""handlers: what each request means, against a store made of dicts (no disk, no forks).

Replies are checked as raw bytes written here from PROTOCOL.md and docs/protocol.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

from saturnd import __version__, handlers
from saturnd.handlers import FileReply, Stop
from saturnd.protocol import (
    COURSE_OPCODES,
    CreateExRequest,
    CreateRequest,
    HistoryRequest,
    KillRequest,
    ListExRequest,
    ListRequest,
    OutputExRequest,
    PauseRequest,
    RemoveRequest,
    ReplaceRequest,
    Request,
    ResumeRequest,
    RunNowRequest,
    StderrRequest,
    StdoutRequest,
    TaskEntry,
    TerminateRequest,
    TimesExitcodesRequest,
    VersionRequest,
)
from saturnd.runrecord import BY_HAND, CUT_STDOUT, KILLED, RunRecord
from saturnd.store import StoreError
from saturnd.task import Extras, Task
from saturnd.timing import Timing

TIMING = Timing.parse("0", "9", "3")


class DictStore:
    """The handlers' view of the store, in memory; records what was asked of it."""

    def __init__(self, tmp: Path) -> None:
        self._tasks = {
            0: TaskEntry(0, TIMING, (b"echo", b"hi")),
            3: TaskEntry(3, TIMING, (b"true",)),
            7: TaskEntry(7, TIMING, (b"date",)),
        }
        self.outputs = {(0, "stdout"): b"hi\n", (0, "stderr"): b""}
        self.runs = {7: tmp / "runs7"}
        (tmp / "runs7").write_bytes(bytes.fromhex("00000001 0000000069ffc2e0 0003"))
        self.next_id = 8
        self.paused = {3}
        self.histories = {
            7: (RunRecord(1_700_000_000, 1_700_000_090, 0, 0, CUT_STDOUT | BY_HAND, 4321),),
            3: (RunRecord(-1, 2, 0xFFFF, KILLED),),
        }
        # (task, stream, start) -> (cut, bytes) of the kept outputs; start 0: the last.
        self.kept = {(7, "stdout", 0): (True, b"cut"), (7, "stderr", 1_700_000_000): (False, b"")}
        self.going = {3: 2}  # runs in progress
        self.started: list[int] = []
        self.calls: list[str] = []
        self.fail: str | None = None

    @property
    def tasks(self) -> Mapping[int, TaskEntry]:
        return self._tasks

    def list_reply(self) -> bytes:
        self.calls.append("list")
        return b"OK<list>"

    def list_ex_reply(self) -> bytes:
        self.calls.append("list_ex")
        return b"OK<list-ex>"

    def create(self, timing: Timing, argv: tuple[bytes, ...]) -> int:
        self.calls.append("create")
        return self._create(Task(timing, argv))

    def create_task(self, task: Task) -> int:
        self.calls.append("create_task")
        return self._create(task)

    def _create(self, task: Task) -> int:
        if self.fail:
            raise StoreError(self.fail)
        if task.argv[0] == b"refused":
            raise ValueError("ARGV[0] says so")
        task_id, self.next_id = self.next_id, self.next_id + 1
        self._tasks[task_id] = TaskEntry(task_id, task.timing, task.argv, task.extras)
        return task_id

    def replace(self, remove_ids: Iterable[int], tasks: Sequence[Task]) -> list[int]:
        self.calls.append("replace")
        for task_id in remove_ids:
            del self._tasks[task_id]
        return [self._create(task) for task in tasks]

    def remove(self, task_id: int) -> bool:
        self.calls.append("remove")
        return self._tasks.pop(task_id, None) is not None

    def open_runs(self, task_id: int) -> tuple[int, int] | None:
        self.calls.append("runs")
        path = self.runs.get(task_id)
        if path is None:
            return None
        return os.open(path, os.O_RDONLY), 1

    def output(self, task_id: int, stream: str) -> bytes | None:
        self.calls.append(stream)
        return self.outputs.get((task_id, stream))

    def set_paused(self, task_id: int, paused: bool) -> bool:
        self.calls.append("pause" if paused else "resume")
        if task_id not in self._tasks:
            return False
        if paused:
            self.paused.add(task_id)
        else:
            self.paused.discard(task_id)
        return True

    def history(self, task_id: int) -> tuple[RunRecord, ...]:
        self.calls.append("history")
        return self.histories.get(task_id, ())

    def kept_output(self, task_id: int, stream: str, start: int) -> tuple[bool, bytes] | None:
        self.calls.append(f"kept {stream} {start}")
        return self.kept.get((task_id, stream, start))

    def run_now(self, task_id: int) -> bool:
        self.calls.append("run")
        if task_id not in self._tasks:
            return False
        self.started.append(task_id)
        return True

    def stop_runs(self, task_id: int) -> int:
        self.calls.append("kill")
        return self.going.pop(task_id, 0)


@pytest.fixture
def store(tmp_path: Path) -> DictStore:
    return DictStore(tmp_path)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# (request, reply bytes, what the store was asked)
ANSWERS: list[tuple[Request, bytes, list[str]]] = [
    (ListRequest(), b"OK<list>", ["list"]),
    (CreateRequest(TIMING, (b"echo",)), h("4f4b 0000000000000008"), ["create"]),
    (RemoveRequest(3), h("4f4b"), ["remove"]),
    (RemoveRequest(4), h("4552 4e46"), []),
    (TimesExitcodesRequest(3), h("4f4b 00000000"), ["runs"]),
    (TimesExitcodesRequest(2**64 - 1), h("4552 4e46"), []),
    (StdoutRequest(0), h("4f4b 00000003") + b"hi\n", ["stdout"]),
    (StderrRequest(0), h("4f4b 00000000"), ["stderr"]),
    (StdoutRequest(3), h("4552 4e52"), ["stdout"]),
    (StderrRequest(5), h("4552 4e46"), []),
    (CreateExRequest(Task(TIMING, (b"echo",))), h("4f4b 0000000000000008"), ["create_task"]),
    (ListExRequest(), b"OK<list-ex>", ["list_ex"]),
    (
        ReplaceRequest((0, 3), (Task(TIMING, (b"a",)), Task(TIMING, (b"b",)))),
        h("4f4b 00000002 0000000000000008 0000000000000009"),
        ["replace"],
    ),
    (ReplaceRequest((), ()), h("4f4b 00000000"), ["replace"]),
    (
        ReplaceRequest((0, 4), (Task(TIMING, (b"a",)),)),
        h("4552 454d 00000021") + b"cannot replace: no task with id 4",
        [],
    ),
    (
        CreateExRequest(Task(TIMING, (b"refused",))),
        h("4552 454d 00000026") + b"cannot store the task: ARGV[0] says so",
        ["create_task"],
    ),
    # Issue 14's requests (docs/protocol.md).
    (PauseRequest(0), h("4f4b"), ["pause"]),
    (PauseRequest(3), h("4f4b"), ["pause"]),  # already paused: OK all the same
    (PauseRequest(4), h("4552 4e46"), []),
    (ResumeRequest(3), h("4f4b"), ["resume"]),
    (ResumeRequest(0), h("4f4b"), ["resume"]),  # not paused: OK all the same
    (ResumeRequest(2**64 - 1), h("4552 4e46"), []),
    (RunNowRequest(3), h("4f4b"), ["run"]),  # paused, and yet it runs: by hand
    (RunNowRequest(5), h("4552 4e46"), []),
    (KillRequest(3), h("4f4b 00000002"), ["kill"]),
    (KillRequest(0), h("4f4b 00000000"), ["kill"]),  # nothing going
    (KillRequest(1), h("4552 4e46"), []),
    (HistoryRequest(0), h("4f4b 00000000"), ["history"]),
    (
        HistoryRequest(7),
        h("4f4b 00000001  000000006553f100 000000006553f15a 0000 00 05 000010e1"),
        ["history"],
    ),
    (
        HistoryRequest(3),
        h("4f4b 00000001  ffffffffffffffff 0000000000000002 ffff 02 00 00000000"),
        ["history"],
    ),
    (HistoryRequest(4), h("4552 4e46"), []),
    (OutputExRequest(7, 1), h("4f4b 01 00000003") + b"cut", ["kept stdout 0"]),
    (OutputExRequest(7, 2, 1_700_000_000), h("4f4b 00 00000000"), ["kept stderr 1700000000"]),
    (OutputExRequest(7, 2), h("4552 4e52"), ["kept stderr 0"]),  # not kept
    (OutputExRequest(0, 1, 5), h("4552 4e52"), ["kept stdout 5"]),
    (OutputExRequest(9, 1), h("4552 4e46"), []),
]


@pytest.mark.parametrize(("request_", "reply", "calls"), ANSWERS)
def test_it_answers_each_request(
    store: DictStore, request_: Request, reply: bytes, calls: list[str]
) -> None:
    assert handlers.handle(request_, store) == reply
    assert store.calls == calls


def test_it_sends_a_history_from_its_file(store: DictStore) -> None:
    outcome = handlers.handle(TimesExitcodesRequest(7), store)
    assert isinstance(outcome, FileReply)
    try:
        assert outcome.head == h("4f4b 00000001")
        assert (outcome.offset, outcome.length, outcome.size) == (4, 10, 16)
        assert os.pread(outcome.fd, outcome.length, outcome.offset) == h("0000000069ffc2e0 0003")
    finally:
        os.close(outcome.fd)


def test_it_stops_after_terminate(store: DictStore) -> None:
    assert handlers.handle(TerminateRequest(), store) == Stop(h("4f4b"))


def test_it_lets_a_store_failure_through_unacknowledged(store: DictStore) -> None:
    store.fail = "cannot store the task: No space left on device"
    with pytest.raises(StoreError, match="No space left"):
        handlers.handle(CreateRequest(TIMING, (b"echo",)), store)
    assert 8 not in store.tasks


def test_it_words_an_error_message_reply() -> None:
    assert handlers.error_message("disk full") == h("4552 454d 00000009") + b"disk full"


def test_it_tells_its_version_and_every_request_it_serves(store: DictStore) -> None:
    reply = handlers.handle(VersionRequest(b"cassini 9"), store)
    assert isinstance(reply, bytes)
    version = f"saturnd {__version__}".encode()
    assert reply.startswith(h("4f4b") + len(version).to_bytes(4, "big") + version)
    count = int.from_bytes(reply[6 + len(version) : 10 + len(version)], "big")
    opcodes = reply[10 + len(version) :]
    assert len(opcodes) == 2 * count
    served = {opcodes[i : i + 2] for i in range(0, len(opcodes), 2)}
    assert served == COURSE_OPCODES | {b"vr", b"cx", b"lx", b"rp"} | {
        b"ru",
        b"pa",
        b"rs",
        b"ki",
        b"hx",
        b"ox",
    }


def test_it_has_one_handler_per_request_type() -> None:
    assert set(handlers.HANDLERS) == {
        ListRequest,
        CreateRequest,
        RemoveRequest,
        TimesExitcodesRequest,
        StdoutRequest,
        StderrRequest,
        TerminateRequest,
        VersionRequest,
        CreateExRequest,
        ListExRequest,
        ReplaceRequest,
        RunNowRequest,
        PauseRequest,
        ResumeRequest,
        KillRequest,
        HistoryRequest,
        OutputExRequest,
    }


def test_it_pauses_and_resumes_in_the_store(store: DictStore) -> None:
    handlers.handle(PauseRequest(7), store)
    assert store.paused == {3, 7}
    handlers.handle(ResumeRequest(3), store)
    assert store.paused == {7}


def test_it_starts_a_run_by_hand_and_kills_once(store: DictStore) -> None:
    assert handlers.handle(RunNowRequest(0), store) == h("4f4b")
    assert store.started == [0]
    assert handlers.handle(KillRequest(3), store) == h("4f4b 00000002")
    assert handlers.handle(KillRequest(3), store) == h("4f4b 00000000")


def test_it_lets_a_failure_to_start_a_run_through(store: DictStore) -> None:
    def fail(task_id: int) -> bool:
        raise StoreError("cannot start a run of task 0: Resource temporarily unavailable")

    store.run_now = fail  # type: ignore[method-assign]
    with pytest.raises(StoreError, match="cannot start a run"):
        handlers.handle(RunNowRequest(0), store)


def test_a_refused_replace_changes_nothing(store: DictStore) -> None:
    before = dict(store.tasks)
    reply = handlers.handle(ReplaceRequest((7, 12), (Task(TIMING, (b"a",)),)), store)
    assert reply == handlers.error_message("cannot replace: no task with id 12")
    assert dict(store.tasks) == before


def test_it_creates_a_whole_task(store: DictStore) -> None:
    task = Task(Timing.cron("@reboot"), (b"x",), Extras(((b"A", b"1"),), b"in", b""))
    assert handlers.handle(CreateExRequest(task), store) == h("4f4b 0000000000000008")
    assert store.tasks[8].task == task


def test_it_describes_requests_for_the_log() -> None:
    assert handlers.describe(RemoveRequest(3)) == "Remove 3"
    assert handlers.describe(ListRequest()) == "List"
