"""@reboot: a task that runs once each time the daemon starts.

The executor's rule, with real runs (spawn's P4/P5/P6) over a small in-memory task
table and a clock that stops the loop at its first wait; the supervisor's side (only
its first executor is told it is the first) is checked through `Supervisor.parts`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from cassini.transport import exchange
from saturnd.executor import Executor, reboot_tasks
from saturnd.proc import StopFlag
from saturnd.proctitle import role_of
from saturnd.protocol import (
    CreateExRequest,
    CreateReply,
    TaskEntry,
    VersionReply,
    VersionRequest,
)
from saturnd.task import Task
from saturnd.timing import Timing
from tests.conftest import NOW as START
from tests.daemon_harness import SATURND, Daemon
from tests.test_spawn import read_runs, wait_for

LOG = logging.getLogger("test_reboot")
NOW = 1_795_248_030.0  # 30 s into a minute
REBOOT = Timing.cron("@reboot")
EVERY_MINUTE = Timing.cron("* * * * *")


class Table:
    """The part of Store the executor reads: timings, tasks, task directories."""

    def __init__(self, state: Path, tasks: Mapping[int, TaskEntry]) -> None:
        self.state = state
        self.tasks = dict(tasks)
        self.timings = {task_id: entry.timing for task_id, entry in tasks.items()}
        for task_id in tasks:
            self.task_dir(task_id).mkdir(mode=0o700, exist_ok=True)

    def task_dir(self, task_id: int) -> Path:
        return self.state / f"task_{task_id}"

    def refresh(self) -> bool:
        return False

    def paused_ids(self) -> frozenset[int]:
        return frozenset(i for i, entry in self.tasks.items() if entry.extras.paused)


class OneMinute:
    """A clock at NOW whose first wait stops the executor's loop."""

    def __init__(self, stop: StopFlag) -> None:
        self.stop = stop

    def now(self) -> float:
        return NOW

    def wait(self, deadline: float, wake_fd: int | None = None) -> None:
        self.stop.stopping = True


def executor(state: Path, table: Table, first_start: bool) -> Executor:
    stop = StopFlag()
    store: Any = table  # duck-typed: what the executor reads of a Store
    clock: Any = OneMinute(stop)
    return Executor(state, store, clock, LOG, stop, first_start=first_start)


def table_with_marker(tmp_path: Path) -> tuple[Table, Path]:
    """Task 1 @reboot appends a line to `marker`; task 2 runs every minute."""
    marker = tmp_path / "marker"
    line = f"echo ran >> '{marker}'".encode()
    table = Table(
        tmp_path,
        {
            1: TaskEntry(1, REBOOT, (b"/bin/sh", b"-c", line)),
            2: TaskEntry(2, EVERY_MINUTE, (b"/bin/sh", b"-c", b"echo minute")),
        },
    )
    return table, marker


def test_it_picks_the_reboot_tasks_in_id_order() -> None:
    timings = {4: REBOOT, 2: EVERY_MINUTE, 1: REBOOT, 9: Timing.cron("@daily")}
    assert reboot_tasks(dict(sorted(timings.items()))) == [1, 4]
    assert reboot_tasks({}) == []


def test_it_runs_reboot_tasks_once_on_the_first_start(tmp_path: Path) -> None:
    table, marker = table_with_marker(tmp_path)
    assert executor(tmp_path, table, first_start=True).run() == 0
    wait_for(lambda: read_runs(table.task_dir(1)), "the @reboot run")
    assert read_runs(table.task_dir(1)) == [(int(NOW), 0)]
    assert marker.read_text() == "ran\n"
    # The first start's own minute counts as handled: the minute task did not run.
    assert read_runs(table.task_dir(2)) == []


def test_it_never_runs_them_on_a_restart_or_by_the_clock(tmp_path: Path) -> None:
    table, marker = table_with_marker(tmp_path)
    assert executor(tmp_path, table, first_start=True).run() == 0
    wait_for(lambda: read_runs(table.task_dir(1)), "the @reboot run")
    # A restarted executor (the supervisor says it is not the first) handles the
    # minutes it owes, and the minute task runs: the @reboot task does not.
    restarted = executor(tmp_path, table, first_start=False)
    restarted.tick(int(NOW // 60) + 1, NOW + 60)
    wait_for(lambda: read_runs(table.task_dir(2)), "the minute task's run")
    assert restarted.run() == 0
    assert read_runs(table.task_dir(1)) == [(int(NOW), 0)]
    assert marker.read_text() == "ran\n"


def test_it_is_told_only_at_the_executor_s_first_start(tmp_path: Path) -> None:
    from saturnd.supervisor import Part

    part = Part("executor", lambda: 0)
    assert part.starts == 0  # what the first child sees
    part.starts += 1  # what _start counts once the child is forked
    assert part.starts != 0  # every later child is told it is not the first


# --- a real daemon: start, a part's restart, a second saturnd, stop and start -------


def supports_create_ex(daemon: Daemon) -> bool:
    """Whether the daemon takes CREATE-EX (the store of format 2 does)."""
    reply = exchange(str(daemon.pipes), VersionRequest(b"test_reboot"))
    return isinstance(reply, VersionReply) and b"cx" in reply.opcodes


def executor_pid(daemon: Daemon) -> int:
    """The pid of the daemon's executor, found by its process title."""
    for pid in daemon.pids()[1:]:
        try:
            if role_of(psutil.Process(pid).cmdline()) == "executor":
                return pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no executor")


def test_it_runs_a_reboot_task_once_per_daemon_start(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    if not supports_create_ex(daemon):
        pytest.skip("this daemon has no CREATE-EX (store format 2) to hold an @reboot task")
    marker = tmp_path / "marker"
    line = f"echo ran >> '{marker}'".encode()
    reply = exchange(str(daemon.pipes), CreateExRequest(Task(REBOOT, (b"/bin/sh", b"-c", line))))
    assert isinstance(reply, CreateReply)
    task_id = reply.task_id

    def runs() -> int:
        return len(daemon.runs(task_id))

    def settle(moment: int) -> None:
        """Let the executor handle another minute: a run it owed would have started."""
        daemon.step_to(moment)
        time.sleep(0.2)

    settle(START + 60)  # created after the start: nothing until the next start
    assert runs() == 0 and not marker.exists()

    daemon.stop()  # cassini -q
    daemon.start()
    wait_for(lambda: runs() == 1, what="the @reboot run")
    assert marker.read_text() == "ran\n"

    # The supervisor restarts a killed executor: no second run.
    victim = executor_pid(daemon)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(daemon.pids()) == 3 and victim not in daemon.pids(),
        what="the executor to be restarted",
    )
    settle(START + 120)
    # A second saturnd finds this one running: no run either.
    second = subprocess.run(
        [SATURND, "-f", "-p", str(daemon.pipes), "-s", str(daemon.state)],
        capture_output=True,
        timeout=10,
        env=daemon.env,
    )
    assert second.returncode == 0 and b"already running" in second.stderr
    settle(START + 180)
    assert runs() == 1 and marker.read_text() == "ran\n"

    daemon.stop()  # and a new start runs it again
    daemon.start()
    wait_for(lambda: runs() == 2, what="the second @reboot run")
    assert marker.read_text() == "ran\nran\n"
