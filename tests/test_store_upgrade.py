"""Tests of the store's whole-file rewrites: the upgrade of a version 1 `cmds` at start,
and REPLACE, each killed at every step and at random moments (real files, forked
processes, SIGKILL), after which a fresh load finds exactly the old state or the new."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saturnd.cmdsupgrade import encode_body_v1, encode_body_v2
from saturnd.decoding import decode_reply
from saturnd.protocol import (
    CreateExRequest,
    CreateReply,
    ErrorReply,
    ListExReply,
    ListExRequest,
    ReplaceReply,
    ReplaceRequest,
    Reply,
    Request,
    TaskEntry,
    encode,
)
from saturnd.records import TOMBSTONE, encode_header, encode_record
from saturnd.store import CMDS_TEMP, Store
from saturnd.task import Extras, Task
from saturnd.taskdir import append_run
from saturnd.timing import Timing
from tests.daemon_harness import Daemon

LOG = logging.getLogger("test.store_upgrade")
EVERY_MINUTE = Timing()
AT_NINE = Timing.parse("0", "9", "1-5")
WHOLE = Task(Timing.cron("0 4 1 * *", zone="UTC"), (b"monthly",), Extras(((b"A", b"1"),)))

# The calls a rewrite makes, where a crash is injected.
STEPS = ("open", "pwrite", "fsync", "fdatasync", "rename", "close", "mkdir", "unlink", "rmdir")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def v1_record(task_id: int, timing: Timing, argv: tuple[bytes, ...], pad: int = 0) -> bytes:
    body = encode_body_v1(timing, argv)
    return encode_record(task_id, body, len(body) + pad)


def write_v1(state: Path, count: int = 3) -> dict[int, TaskEntry]:
    """A version 1 `cmds` as a version 1 daemon leaves it (a reused slot, a tombstone,
    padding, NEXT_ID above the highest id), with the live tasks' directories and a
    history in one of them; the tasks it holds."""
    tasks = {
        5: TaskEntry(5, AT_NINE, (b"echo", b"five")),
        1: TaskEntry(1, EVERY_MINUTE, (b"ls", b"-l")),
    }
    records = [
        v1_record(5, AT_NINE, (b"echo", b"five"), pad=20),  # reused the slot of task 0
        v1_record(1, EVERY_MINUTE, (b"ls", b"-l")),
        encode_record(TOMBSTONE, bytes(40), 40),
    ]
    for index in range(count):
        task_id = 10 + index
        argv = (b"task", str(task_id).encode())
        tasks[task_id] = TaskEntry(task_id, Timing(minutes=1 << (index % 60)), argv)
        records.append(v1_record(task_id, tasks[task_id].timing, argv))
    header = encode_header(10 + count + 2, version=1)
    (state / "cmds").write_bytes(header + b"".join(records))
    os.chmod(state / "cmds", 0o600)
    for task_id in tasks:
        (state / f"task_{task_id}").mkdir(mode=0o700)
    append_run(state / "task_5", 1_700_000_000, 3)
    return dict(sorted(tasks.items()))


def loaded(state: Path) -> tuple[dict[int, TaskEntry], int]:
    store = Store.open(state, LOG)
    store.close()
    return dict(store.tasks), store.next_id


def version_of(state: Path) -> int:
    value: int = struct.unpack_from(">I", (state / "cmds").read_bytes(), 4)[0]
    return value


def test_it_upgrades_a_version_1_cmds_in_place(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = write_v1(state)
    history = (state / "task_5" / "times-exitcodes").read_bytes()
    with caplog.at_level(logging.INFO):
        store = Store.open(state, LOG)
    assert "upgraded" in caplog.text
    assert version_of(state) == 3
    assert dict(store.tasks) == tasks
    assert store.next_id == 15
    assert store.list_reply() == Store.open(state, LOG, read_only=True).list_reply()
    # The store writes the new file from then on.
    assert store.create(EVERY_MINUTE, (b"new",)) == 15
    assert store.remove(1)
    store.close()
    after, next_id = loaded(state)
    assert list(after) == [5, 10, 11, 12, 15]
    assert next_id == 16
    assert (state / "task_5" / "times-exitcodes").read_bytes() == history
    assert not (state / CMDS_TEMP).exists()


def test_a_reader_reads_a_version_1_cmds_without_changing_it(state: Path) -> None:
    tasks = write_v1(state)
    before = (state / "cmds").read_bytes()
    reader = Store.open(state, LOG, read_only=True)
    assert dict(reader.tasks) == tasks
    assert reader.next_id == 15
    assert (state / "cmds").read_bytes() == before
    # The listener upgrades it: the reader follows, and sees the same tasks.
    Store.open(state, LOG).close()
    assert reader.refresh() is True
    assert dict(reader.tasks) == tasks


def test_it_deletes_a_rewrite_left_by_a_crash(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = write_v1(state)
    (state / CMDS_TEMP).write_bytes(b"half a file")
    with caplog.at_level(logging.WARNING):
        assert loaded(state) == (tasks, 15)
    assert not (state / CMDS_TEMP).exists()
    assert "interrupted rewrite" in caplog.text


# --- version 2 (0.3.0: extras without a policy) ----------------------------------

V2_TASKS = {
    3: TaskEntry(3, Timing.cron("0 4 1 * *", zone="UTC"), (b"monthly",), Extras(((b"A", b"1"),))),
    4: TaskEntry(4, AT_NINE, (b"echo", b"%"), Extras((), b"line\n", b"")),
    7: TaskEntry(7, EVERY_MINUTE, (b"true",)),
}


def write_v2(state: Path) -> dict[int, TaskEntry]:
    """A version 2 `cmds` as saturnd 0.3.0 leaves it (padding, a tombstone), with the
    live tasks' directories and a history in one of them; the tasks it holds."""
    records = []
    for task_id, entry in V2_TASKS.items():
        body = encode_body_v2(entry.task)
        records.append(encode_record(task_id, body, len(body) + task_id % 3))
        if task_id == 3:
            records.append(encode_record(TOMBSTONE, bytes(17), 17))
    (state / "cmds").write_bytes(encode_header(9, version=2) + b"".join(records))
    os.chmod(state / "cmds", 0o600)
    for task_id in V2_TASKS:
        (state / f"task_{task_id}").mkdir(mode=0o700)
    append_run(state / "task_4", 1_700_000_000, 0)
    return dict(V2_TASKS)


def test_it_upgrades_a_version_2_cmds_in_place_keeping_every_extra(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = write_v2(state)
    before = (state / "cmds").read_bytes()
    reader = Store.open(state, LOG, read_only=True)
    assert dict(reader.tasks) == tasks  # read as its upgrade, the file unchanged
    assert (state / "cmds").read_bytes() == before
    with caplog.at_level(logging.INFO):
        store = Store.open(state, LOG)
    assert "upgraded" in caplog.text and "from version 2 to version 3" in caplog.text
    assert version_of(state) == 3
    assert dict(store.tasks) == tasks
    assert store.next_id == 9
    assert store.set_paused(4, True)  # the POLICY is there to be written
    assert store.tasks[4].extras == tasks[4].extras.replace(paused=True)
    store.close()
    assert reader.refresh() is True
    assert reader.paused_ids() == {4}
    assert loaded(state)[0][3] == tasks[3]
    assert (state / "task_4" / "times-exitcodes").exists()


def test_a_version_2_upgrade_killed_at_any_step_loses_nothing(state: Path) -> None:
    tasks = write_v2(state)
    pristine = (state / "cmds").read_bytes()
    kill_at = 1
    while run_killed(upgrade(state), kill_at):
        assert loaded(state) == (tasks, 9), kill_at
        (state / "cmds").write_bytes(pristine)
        kill_at += 1
    assert kill_at > 5
    assert version_of(state) == 3


# --- killed at every step, and at random moments --------------------------------


def run_killed(action: Callable[[], object], kill_at: int | None, delay: float = 0.0) -> bool:
    """Run `action` in a forked child, SIGKILLed at its `kill_at`-th call of one of
    STEPS (or after `delay` seconds); True when it was killed before it finished."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            if kill_at is not None:
                calls = [0]
                for name in STEPS:
                    setattr(os, name, _killing(getattr(os, name), calls, kill_at))
            action()
            os._exit(0)
        finally:
            os._exit(1)
    if kill_at is None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, "the action failed"
        return False
    assert os.WTERMSIG(status) == signal.SIGKILL
    return True


def _killing(real: Callable[..., Any], calls: list[int], kill_at: int) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    return wrapper


def upgrade(state: Path) -> Callable[[], object]:
    return lambda: Store.open(state, LOG).close()


def test_an_upgrade_killed_at_any_step_loses_nothing(state: Path) -> None:
    tasks = write_v1(state)
    pristine = (state / "cmds").read_bytes()
    kill_at = 1
    while run_killed(upgrade(state), kill_at):
        assert loaded(state) == (tasks, 15), kill_at
        assert not (state / CMDS_TEMP).exists()
        (state / "cmds").write_bytes(pristine)  # the next try starts from version 1 again
        kill_at += 1
    assert kill_at > 5  # open, pwrite, fsync, rename, ... were all interrupted once
    assert version_of(state) == 3
    assert loaded(state) == (tasks, 15)


def test_an_upgrade_killed_at_random_moments_loses_nothing(state: Path) -> None:
    tasks = write_v1(state, count=3000)  # an upgrade long enough to be caught midway
    pristine = (state / "cmds").read_bytes()
    started = time.monotonic()
    upgrade(state)()
    took = time.monotonic() - started
    chance = random.Random(13)
    for _ in range(12):
        (state / "cmds").write_bytes(pristine)
        run_killed(upgrade(state), None, chance.uniform(0, took * 1.5))
        assert loaded(state) == (tasks, 3012)


def replace_of(state: Path) -> Callable[[], object]:
    def action() -> None:
        store = Store.open(state, LOG)
        store.replace([1, 10], [WHOLE, Task(AT_NINE, (b"second",))])
        store.close()

    return action


def test_a_replace_killed_at_any_step_gives_the_old_tasks_or_the_new(state: Path) -> None:
    old = write_v1(state)
    Store.open(state, LOG).close()  # upgraded: the replace alone is killed
    pristine = (state / "cmds").read_bytes()
    new = {key: entry for key, entry in old.items() if key not in (1, 10)}
    new[15] = TaskEntry(15, WHOLE.timing, WHOLE.argv, WHOLE.extras)
    new[16] = TaskEntry(16, AT_NINE, (b"second",))
    outcomes = set()
    kill_at = 1
    while run_killed(replace_of(state), kill_at):
        tasks, next_id = loaded(state)
        assert (tasks, next_id) in ((old, 15), (new, 17)), kill_at
        outcomes.add(next_id)
        # Whichever it is, the directories are exactly the live tasks'.
        dirs = sorted(p.name for p in state.iterdir() if p.name.startswith("task_"))
        assert dirs == sorted(f"task_{task_id}" for task_id in tasks), kill_at
        assert not (state / CMDS_TEMP).exists()
        for task_id in set(old) - set(tasks):  # recreated for the next try
            (state / f"task_{task_id}").mkdir(mode=0o700)
        for task_id in set(tasks) - set(old):
            (state / f"task_{task_id}").rmdir()
        (state / "cmds").write_bytes(pristine)
        kill_at += 1
    assert outcomes == {15, 17}  # killed before the commit, and after it
    assert loaded(state) == (new, 17)


# --- end to end: a daemon started on a version 1 state directory ------------------


def ask(daemon: Daemon, request: Request) -> Reply:
    """One request over the daemon's socket, the reply decoded."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(daemon.pipes / "saturnd.sock"))
        connection.sendall(encode(request))
        connection.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return decode_reply(request.opcode, data)


def test_a_daemon_upgrades_at_start_and_serves_whole_tasks(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, start=1_767_225_600)  # 2026-01-01 00:00 UTC
    daemon.state.mkdir(mode=0o700)
    tasks = write_v1(daemon.state)
    daemon.start()
    try:
        assert version_of(daemon.state) == 3
        listed = daemon.cassini("-l").stdout.decode().splitlines()
        assert [int(line.split(":")[0]) for line in listed] == list(tasks)
        assert listed[1] == "5: 0 9 1-5 echo five"
        assert ask(daemon, ListExRequest()) == ListExReply(tuple(tasks.values()))
        reply = ask(daemon, ReplaceRequest((1, 10), (WHOLE,)))
        assert reply == ReplaceReply((15,))
        refused = ask(daemon, ReplaceRequest((1,), (WHOLE,)))
        assert refused == ErrorReply(b"EM", "cannot replace: no task with id 1")
        assert ask(daemon, CreateExRequest(WHOLE)) == CreateReply(16)
        entries = ask(daemon, ListExRequest())
        assert isinstance(entries, ListExReply)
        assert [entry.task_id for entry in entries.tasks] == [5, 11, 12, 15, 16]
        assert entries.tasks[-1].task == WHOLE
        # cassini lists the new task too (how it shows the fields beyond the course's
        # is cassini's business).
        last = daemon.cassini("-l").stdout.decode().splitlines()[-1]
        assert last.startswith("16: 0 4 ") and last.endswith(" monthly")
    finally:
        daemon.stop()
    assert loaded(daemon.state)[1] == 17
