"""@reboot: a task that runs once each time the daemon starts.

The executor's rule, with real runs (spawn's P4/P5/P6) over a small in-memory task
table and a clock that stops the loop at its first wait; the supervisor's side (only
its first executor is told it is the first) is checked through `Supervisor.parts`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saturnd.executor import Executor, reboot_tasks
from saturnd.proc import StopFlag
from saturnd.protocol import TaskEntry
from saturnd.timing import Timing
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
