"""The executor's run policies through the real daemon and the fake clock (issue 14):
a paused task, overlapping starts with and without --no-overlap, a 10-hour and a 2-day
stop (the fake clock moved while the daemon is down) and a 10-hour suspend with and
without --catch-up, pause, resume and run by hand over the socket. Tasks with policies
are created with CREATE-EX on the socket."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cassini.transport import exchange
from saturnd import taskdir
from saturnd.protocol import (
    KillReply,
    KillRequest,
    OkReply,
    PauseRequest,
    ResumeRequest,
    RunNowRequest,
)
from saturnd.runrecord import BY_HAND, CAUGHT_UP, SKIPPED
from saturnd.task import Extras, Task
from saturnd.timing import Timing
from tests.conftest import NOW
from tests.daemon_harness import Daemon, wait_for
from tests.test_cron_year import create_ex
from tests.test_spawn import read_runs

EVERY = Timing.cron("* * * * *")
NOON = Timing.cron("0 12 * * *")  # NOW is 08:00 UTC


def recorded(state: Path, task_id: int) -> list[int]:
    """The start TIME of each finished run of a task whose history record is written
    too (the two files are written one after the other, while runs may end)."""
    task_dir = state / f"task_{task_id}"
    ran = sum(1 for run in taskdir.read_history(task_dir) if run.outcome != SKIPPED)
    return [time for time, _exitcode in read_runs(task_dir)][:ran]


def log_lines(daemon: Daemon, word: str) -> list[str]:
    """The lines of the daemon's log (state directory) that contain `word`."""
    text = (daemon.state / "saturnd.log").read_text(errors="replace")
    return [line for line in text.splitlines() if word in line]


def test_it_never_starts_a_paused_task(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    paused = create_ex(daemon.pipes, Task(EVERY, (b"true",), Extras(paused=True)))
    running = create_ex(daemon.pipes, Task(EVERY, (b"true",)))
    moments = list(daemon.steps(NOW + 60, 3))
    wait_for(lambda: recorded(daemon.state, running) == moments, what="the runs")
    assert recorded(daemon.state, paused) == []


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[Callable[[str], list[int]]]:
    """The pids that `sh -c 'echo $$ >> FILE; exec sleep 20'` runs wrote to FILE, by
    name; every one still alive is killed at the end."""
    files: list[Path] = []

    def pids(name: str) -> list[int]:
        path = tmp_path / name
        if path not in files:
            files.append(path)
        try:
            return [int(line) for line in path.read_text().split()]
        except FileNotFoundError:
            return []

    yield pids
    for path in files:
        for pid in pids(path.name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def sleeper(tmp_path: Path, name: str) -> tuple[bytes, ...]:
    return (b"sh", b"-c", b"echo $$ >> '%s'; exec sleep 20" % bytes(tmp_path / name))


def test_it_skips_overlapping_starts_only_with_no_overlap(
    make_daemon: Callable[..., Daemon], tmp_path: Path, sleepers: Callable[[str], list[int]]
) -> None:
    daemon = make_daemon()
    single = create_ex(
        daemon.pipes, Task(EVERY, sleeper(tmp_path, "single"), Extras(no_overlap=True))
    )
    create_ex(daemon.pipes, Task(EVERY, sleeper(tmp_path, "overlapping")))
    for _moment in daemon.steps(NOW + 60, 3):
        pass
    wait_for(lambda: len(sleepers("overlapping")) == 3, what="three overlapping runs")
    wait_for(lambda: len(log_lines(daemon, "skipped")) == 2, what="two skipped starts")
    assert len(sleepers("single")) == 1
    assert all(f"start of task {single} " in line for line in log_lines(daemon, "skipped"))
    # Only the history has the skipped starts (times-exitcodes lists runs that ran).
    runs = taskdir.read_history(daemon.state / f"task_{single}")
    assert [(run.start, run.outcome_name) for run in runs] == [
        (NOW + 120, "skipped"),
        (NOW + 180, "skipped"),
    ]


def test_a_start_waiting_for_its_jitter_counts_for_no_overlap_and_kill(
    make_daemon: Callable[..., Daemon],
) -> None:
    # A jitter of 10**6 s: the first start waits (it would start within this test with a
    # chance of about 1 in 100,000); the next two minutes' starts are skipped for it.
    daemon = make_daemon()
    task_id = create_ex(
        daemon.pipes, Task(EVERY, (b"true",), Extras(jitter=10**6, no_overlap=True))
    )
    task_dir = daemon.state / f"task_{task_id}"
    for moment in daemon.steps(NOW + 60, 3):
        if moment == NOW + 60:
            wait_for(lambda: taskdir.runs_in_progress(task_dir), what="the waiting run")
    wait_for(lambda: len(log_lines(daemon, "skipped")) == 2, what="two skipped starts")
    assert taskdir.runs_in_progress(task_dir) == [(NOW + 60, 0)]
    assert exchange(str(daemon.pipes), KillRequest(task_id)) == KillReply(1)
    wait_for(lambda: len(taskdir.read_history(task_dir)) == 3, what="the cancelled run")
    runs = taskdir.read_history(task_dir)
    assert [(run.start, run.outcome_name, run.pid) for run in runs] == [
        (NOW + 120, "skipped", 0),
        (NOW + 180, "skipped", 0),
        (NOW + 60, "killed", 0),
    ]
    assert read_runs(task_dir) == []  # no command ran


@pytest.mark.parametrize("stop", [10 * 3600, 2 * 86400], ids=["10 hours", "2 days"])
def test_it_catches_up_once_after_a_long_stop_only_with_catch_up(
    make_daemon: Callable[..., Daemon], stop: int
) -> None:
    daemon = make_daemon()
    caught = create_ex(daemon.pipes, Task(NOON, (b"true",), Extras(catch_up=True)))
    missed = create_ex(daemon.pipes, Task(NOON, (b"true",)))
    daemon.stop()
    back = NOW + stop + 30 * 60 + 15  # 18:30:15, or 08:30:15 two days later
    daemon.set_time(back)
    daemon.start()
    wait_for(lambda: recorded(daemon.state, caught) == [back], what="the catch-up run")
    for _moment in daemon.steps(back - 15 + 60, 3):
        pass
    assert recorded(daemon.state, caught) == [back]
    assert recorded(daemon.state, missed) == []
    assert len(log_lines(daemon, "--catch-up")) == 1
    assert f"catch-up run of task {caught} (--catch-up" in log_lines(daemon, "--catch-up")[0]
    (run,) = taskdir.read_history(daemon.state / f"task_{caught}")
    assert run.flags == CAUGHT_UP


def test_it_runs_a_catch_up_task_by_its_schedule_after_catching_up(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    hourly = create_ex(
        daemon.pipes, Task(Timing.cron("0 * * * *"), (b"true",), Extras(catch_up=True))
    )
    daemon.stop()
    back = NOW + 10 * 3600 + 59 * 60  # 18:59: 09:00 to 18:00 missed, one run for them
    daemon.set_time(back)
    daemon.start()
    wait_for(lambda: recorded(daemon.state, hourly) == [back], what="the catch-up run")
    daemon.step_to(back + 60)  # 19:00, by the schedule
    wait_for(lambda: recorded(daemon.state, hourly) == [back, back + 60], what="the 19:00 run")


def test_it_catches_up_once_after_the_machine_slept(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    caught = create_ex(daemon.pipes, Task(NOON, (b"true",), Extras(catch_up=True)))
    missed = create_ex(daemon.pipes, Task(NOON, (b"true",)))
    awake = NOW + 10 * 3600 + 5 * 60  # a suspend from 08:00 to 18:05: the clock jumps
    daemon.step_to(awake)
    wait_for(lambda: recorded(daemon.state, caught) == [awake], what="the catch-up run")
    for _moment in daemon.steps(awake + 60, 2):
        pass
    assert recorded(daemon.state, caught) == [awake]
    assert recorded(daemon.state, missed) == []
    (line,) = log_lines(daemon, "--catch-up")
    assert line.endswith(
        f"catch-up run of task {caught} (--catch-up: missed its starts since "
        "2026-11-21T08:00) after a clock jump"
    )


# --- acting on a task over the socket (Q1's handlers, Q3's executor) ------------


def test_it_pauses_resumes_and_runs_a_task_by_hand(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    task_id = create_ex(daemon.pipes, Task(EVERY, (b"true",)))
    daemon.step_to(NOW + 60)
    wait_for(lambda: recorded(daemon.state, task_id) == [NOW + 60], what="the 08:01 run")
    assert exchange(str(daemon.pipes), PauseRequest(task_id)) == OkReply()
    for _moment in daemon.steps(NOW + 120, 3):
        pass
    # By hand while paused: it runs, at the daemon's clock, flagged so.
    daemon.set_time(NOW + 185)
    assert exchange(str(daemon.pipes), RunNowRequest(task_id)) == OkReply()
    wait_for(lambda: recorded(daemon.state, task_id) == [NOW + 60, NOW + 185], what="by hand")
    assert exchange(str(daemon.pipes), ResumeRequest(task_id)) == OkReply()
    daemon.step_to(NOW + 240)
    wait_for(
        lambda: recorded(daemon.state, task_id) == [NOW + 60, NOW + 185, NOW + 240],
        what="the 08:04 run",
    )
    runs = taskdir.read_history(daemon.state / f"task_{task_id}")
    assert [(run.start, run.flags) for run in runs] == [
        (NOW + 60, 0),
        (NOW + 185, BY_HAND),
        (NOW + 240, 0),
    ]


def test_it_skips_a_start_by_hand_while_a_no_overlap_run_goes_on(
    make_daemon: Callable[..., Daemon], tmp_path: Path, sleepers: Callable[[str], list[int]]
) -> None:
    daemon = make_daemon()
    task_id = create_ex(
        daemon.pipes, Task(NOON, sleeper(tmp_path, "single"), Extras(no_overlap=True))
    )
    assert exchange(str(daemon.pipes), RunNowRequest(task_id)) == OkReply()
    wait_for(lambda: len(sleepers("single")) == 1, what="the first run by hand")
    daemon.set_time(NOW + 10)
    assert exchange(str(daemon.pipes), RunNowRequest(task_id)) == OkReply()
    wait_for(
        lambda: taskdir.read_history(daemon.state / f"task_{task_id}"), what="the skipped start"
    )
    (run,) = taskdir.read_history(daemon.state / f"task_{task_id}")
    assert (run.start, run.outcome_name, run.flags) == (NOW + 10, "skipped", BY_HAND)
    assert len(sleepers("single")) == 1
