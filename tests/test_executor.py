"""Tests of the executor's `last-minute` mark, with real files."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saturnd import schedule, taskdir
from saturnd.clock import FileClock
from saturnd.executor import (
    STATE_FILE,
    Executor,
    Handled,
    catch_ups,
    load_handled,
    save_handled,
    start_by_hand,
)
from saturnd.listener import StopFlag
from saturnd.runrecord import BY_HAND, CAUGHT_UP
from saturnd.spawn import RunSpec
from saturnd.store import Store
from saturnd.task import Extras, Task
from saturnd.timing import Timing
from tests.test_spawn import read_runs, wait_for

LOG = logging.getLogger("test_executor")
FIRST = Handled(29_920_800, datetime(2026, 11, 21, 8, 0))
LATER = Handled(29_920_861, datetime(2026, 11, 21, 9, 1))


def test_a_durable_mark_replaces_the_file(tmp_path: Path) -> None:
    save_handled(tmp_path, FIRST)
    before = os.stat(tmp_path / STATE_FILE).st_ino
    save_handled(tmp_path, LATER)
    assert os.stat(tmp_path / STATE_FILE).st_ino != before
    assert load_handled(tmp_path, LOG) == LATER
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]
    assert os.stat(tmp_path / STATE_FILE).st_mode & 0o777 == 0o600


def test_an_idle_mark_is_written_in_place(tmp_path: Path) -> None:
    save_handled(tmp_path, FIRST)
    before = os.stat(tmp_path / STATE_FILE).st_ino
    save_handled(tmp_path, LATER, durable=False)
    assert os.stat(tmp_path / STATE_FILE).st_ino == before
    assert load_handled(tmp_path, LOG) == LATER


def test_an_idle_mark_never_leaves_older_bytes_behind(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("29920800 2026-11-21T08:00\n" + "x" * 40)
    save_handled(tmp_path, LATER, durable=False)
    assert load_handled(tmp_path, LOG) == LATER


def test_an_idle_mark_without_a_file_creates_one(tmp_path: Path) -> None:
    save_handled(tmp_path, LATER, durable=False)
    assert load_handled(tmp_path, LOG) == LATER


def test_an_idle_mark_replaces_a_planted_link_without_following_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not ours\n")
    (tmp_path / STATE_FILE).symlink_to(target)
    save_handled(tmp_path, LATER, durable=False)
    assert target.read_text() == "not ours\n"
    assert not (tmp_path / STATE_FILE).is_symlink()
    assert load_handled(tmp_path, LOG) == LATER


def _executor(state: Path, argv: tuple[bytes, ...]) -> Executor:
    """An executor over a real store holding one every-minute task."""
    store = Store.open(state, LOG)
    store.create(Timing.parse("*", "*", "*"), argv)
    return Executor(state, store, FileClock(state / "clock"), LOG, StopFlag())


def test_it_logs_the_runs_of_a_restart_as_catch_ups(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `cassini -q` at 10:30:40, a new saturnd at 10:31:10: 10:31's runs start late.
    last = 29_920_830  # 2026-11-21 10:30 UTC, as an epoch minute
    save_handled(tmp_path, Handled(last, schedule.local_minute(last, None)))
    executor = _executor(tmp_path, (b"true",))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        executor.tick(last + 1, (last + 1) * 60 + 30)
        executor.tick(last + 2, (last + 2) * 60 + 1)  # an ordinary minute after it
    minute = schedule.local_minute(last + 1, None).strftime("%H:%M")
    lines = [r.getMessage() for r in caplog.records if "catch-up" in r.getMessage()]
    assert lines == [f"catch-up run of task 0 for {minute} after a restart"]


def test_it_logs_a_skipped_minutes_runs_as_catch_ups(tmp_path: Path) -> None:
    current = datetime(2026, 11, 21, 10, 33)
    plan = schedule.Plan(
        ((datetime(2026, 11, 21, 10, 32), 4), (current, 4), (current, 5)), current, "catch-up"
    )
    assert catch_ups(plan, current, 0, restarted=False) == [(datetime(2026, 11, 21, 10, 32), 4)]
    assert catch_ups(plan, current, 0, restarted=True) == [(datetime(2026, 11, 21, 10, 32), 4)]
    assert len(catch_ups(plan, current, 12, restarted=True)) == 3
    assert len(catch_ups(plan, current, 12, restarted=False)) == 1


# --- one high-water mark per zone (issue 13) ------------------------------------

ZONED = Handled(
    29_920_861,
    datetime(2026, 11, 21, 9, 1),
    {"America/New_York": datetime(2026, 11, 21, 3, 1), "Asia/Tokyo": datetime(2026, 11, 21, 17, 1)},
)


@pytest.mark.parametrize("durable", [True, False])
def test_it_keeps_a_mark_per_zone(tmp_path: Path, durable: bool) -> None:
    save_handled(tmp_path, FIRST)
    save_handled(tmp_path, ZONED, durable=durable)
    assert load_handled(tmp_path, LOG) == ZONED
    save_handled(tmp_path, LATER, durable=durable)  # the zones' tasks are gone
    assert load_handled(tmp_path, LOG) == LATER


def test_it_reads_a_mark_without_zones_as_the_daemon_zones(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("29920861 2026-11-21T09:01\n")
    assert load_handled(tmp_path, LOG) == Handled(29_920_861, datetime(2026, 11, 21, 9, 1), {})


@pytest.mark.parametrize(
    "text",
    [
        "29920861 2026-11-21T09:01\n2026-11-21T03:01\n",
        "29920861 2026-11-21T09:01\nnoon Asia/Tokyo\n",
    ],
)
def test_it_treats_a_bad_zone_line_as_a_first_start(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)
    assert load_handled(tmp_path, LOG) is None


class ZonedStore:
    """The two things `Executor.tick` reads of a store, with tasks in several zones: the
    store of cmds version 1 cannot hold a zone."""

    def __init__(self, timings: dict[int, Timing]) -> None:
        self.timings = timings
        self.tasks: dict[int, object] = {}

    def refresh(self) -> bool:
        return False

    def paused_ids(self) -> frozenset[int]:
        return frozenset()


def test_it_plans_each_zone_and_logs_an_unknown_one_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        check_zones(tmp_path, caplog)
    finally:
        monkeypatch.undo()
        time.tzset()


def check_zones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    timings = {
        1: Timing.cron("* * * * *"),
        2: Timing.cron("* * * * *", "America/New_York"),
        3: Timing.cron("0 9 * * *", "Mars/Olympus_Mons"),
        4: Timing.cron("@reboot"),
    }
    store = ZonedStore(timings)
    executor = Executor(tmp_path, store, FileClock(tmp_path / "clock"), LOG, StopFlag())  # type: ignore[arg-type]
    nine = int(datetime(2026, 11, 21, 8, 0, tzinfo=UTC).timestamp()) // 60  # 09:00 in Paris
    with caplog.at_level(logging.INFO, logger=LOG.name):
        executor.tick(nine - 1, (nine - 1) * 60)
        executor.tick(nine, nine * 60)
        executor.tick(nine + 1, (nine + 1) * 60)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "unknown time zone 'Mars/Olympus_Mons' (No time zone found with key Mars/Olympus_Mons): "
        "its tasks run in the daemon's time zone"
    ]
    handled = load_handled(tmp_path, LOG)
    assert handled == Handled(
        nine + 1,
        datetime(2026, 11, 21, 9, 1),
        {"America/New_York": datetime(2026, 11, 21, 3, 1)},
    )
    # What ran at 09:00 Paris: the Paris and New York every-minute tasks, and the task
    # of the unknown zone, read in Paris time.
    plans = schedule.plan_zones(
        nine - 1,
        {"": datetime(2026, 11, 21, 8, 59), "America/New_York": datetime(2026, 11, 21, 2, 59)},
        nine,
        {"": schedule.ZoneGroup(None, timings, executor.daemon_zones), **executor.zoned},
    )
    assert sorted(task for z in plans.values() for _, task in z.plan.runs) == [1, 2, 3]


def test_it_keeps_a_zones_mark_across_a_restart_in_its_repeated_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New York falls back at 02:00 EDT on 2026-11-01. A task at 01:30 New York time runs
    at 01:30 EDT, and not again at 01:30 EST, although the daemon restarted at 01:10 EST:
    the new executor reads New York's high-water mark (01:59) from `last-minute`, where
    the wall minute of the last minute handled (01:09) would let 01:30 run twice."""
    started: list[tuple[datetime, int]] = []
    monkeypatch.setattr(
        "saturnd.executor._run_specs", lambda store, runs, start, log: [(start, runs)]
    )
    monkeypatch.setattr(
        "saturnd.executor.spawn_runs",
        lambda specs, **kwargs: started.extend(run[:2] for _, runs in specs for run in runs),
    )
    store = ZonedStore({7: Timing.cron("30 1 * * *", "America/New_York")})
    midnight = int(datetime(2026, 11, 1, 4, 0, tzinfo=UTC).timestamp()) // 60  # 00:00 EDT
    restart = midnight + 130  # 01:10 EST, the second time round

    def executor() -> Executor:
        return Executor(tmp_path, store, FileClock(tmp_path / "clock"), LOG, StopFlag())  # type: ignore[arg-type]

    first = executor()
    for minute in range(midnight, restart):
        first.tick(minute, minute * 60)
    second = executor()
    for minute in range(restart, midnight + 240):
        second.tick(minute, minute * 60)
    assert started == [(datetime(2026, 11, 1, 1, 30), 7)]


# --- run policies (issue 14): pause, catch-up, no-overlap, run by hand ----------

TEN = 29_920_800  # 2026-11-21 08:00 UTC, as an epoch minute: the last minute handled
NOON = Timing.cron("0 12 * * *")
EVERY = Timing.cron("* * * * *")


def policy_executor(
    state: Path, monkeypatch: pytest.MonkeyPatch, *tasks: Task
) -> tuple[Executor, list[RunSpec]]:
    """An executor over a real store holding `tasks` (ids 0, 1, ...), whose batches
    are collected (their specs computed as P5 would) instead of run."""
    store = Store.open(state, LOG)
    for task in tasks:
        store.create_task(task)
    started: list[RunSpec] = []
    monkeypatch.setattr(
        "saturnd.executor.spawn_runs", lambda specs, **kwargs: started.extend(specs)
    )
    return Executor(state, store, FileClock(state / "clock"), LOG, StopFlag()), started


def ran(started: list[RunSpec]) -> list[tuple[int, int]]:
    return [(spec.task_id, spec.flags) for spec in started]


def test_it_never_starts_a_paused_task_by_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, started = policy_executor(
        tmp_path,
        monkeypatch,
        Task(EVERY, (b"true",), Extras(paused=True)),
        Task(EVERY, (b"true",)),
        Task(EVERY, (b"true",), Extras(paused=True, catch_up=True)),
    )
    for minute in range(TEN, TEN + 3):
        executor.tick(minute, minute * 60)
    executor.tick(TEN + 600, (TEN + 600) * 60)  # a 10-hour jump: no catch-up either
    assert ran(started) == [(1, 0), (1, 0), (1, 0)]


def test_it_never_starts_a_paused_reboot_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reboot = Timing.cron("@reboot")
    executor, started = policy_executor(
        tmp_path,
        monkeypatch,
        Task(reboot, (b"true",), Extras(paused=True)),
        Task(reboot, (b"true",)),
    )
    executor.start_reboot_tasks(TEN * 60)
    assert ran(started) == [(1, 0)]


@pytest.mark.parametrize("stop", [10 * 60, 2 * 24 * 60], ids=["10 hours", "2 days"])
def test_it_catches_up_a_missed_task_once_after_a_long_stop(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stop: int,
) -> None:
    save_handled(tmp_path, Handled(TEN, schedule.local_minute(TEN, None)))
    executor, started = policy_executor(
        tmp_path,
        monkeypatch,
        Task(NOON, (b"true",), Extras(catch_up=True)),
        Task(NOON, (b"true",)),  # cron's default: a missed minute is not run
    )
    back = TEN + stop + 7
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for minute in range(back, back + 3):
            executor.tick(minute, minute * 60 + 2)
    assert ran(started) == [(0, CAUGHT_UP)]
    assert started[0].start_time == back * 60 + 2
    lines = [r.getMessage() for r in caplog.records if "--catch-up" in r.getMessage()]
    assert lines == [
        "catch-up run of task 0 (--catch-up: missed its starts since 2026-11-21T08:00) "
        "after a restart"
    ]


def test_it_leaves_a_short_stop_to_the_jump_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_handled(tmp_path, Handled(TEN, schedule.local_minute(TEN, None)))
    executor, started = policy_executor(
        tmp_path,
        monkeypatch,
        Task(Timing.cron("30 9 * * *"), (b"true",), Extras(catch_up=True)),
        Task(Timing.cron("30 9 * * *"), (b"true",)),
    )
    executor.tick(TEN + 180, (TEN + 180) * 60)  # 3 hours: 09:30 runs once by the rule
    assert ran(started) == [(0, CAUGHT_UP), (1, CAUGHT_UP)]


def test_it_skips_a_no_overlap_start_while_a_run_is_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    executor, started = policy_executor(
        tmp_path,
        monkeypatch,
        Task(EVERY, (b"true",), Extras(no_overlap=True)),
        Task(EVERY, (b"true",)),
    )
    going = {executor.store.task_dir(0), executor.store.task_dir(1)}
    skipped: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(
        "saturnd.taskdir.runs_in_progress",
        lambda task_dir: [(TEN * 60, 4242)] if Path(task_dir) in going else [],
    )
    monkeypatch.setattr(
        "saturnd.taskdir.record_skipped",
        lambda task_dir, start, flags: skipped.append((task_dir, start, flags)),
    )
    with caplog.at_level(logging.INFO, logger=LOG.name):
        executor.tick(TEN, TEN * 60)
        executor.tick(TEN + 1, (TEN + 1) * 60)
        going.clear()
        executor.tick(TEN + 2, (TEN + 2) * 60)
        # A restart 3 minutes late runs the 3 minutes at once: one run, two skipped.
        executor.tick(TEN + 5, (TEN + 5) * 60)
    # 08:00 is the first minute (nothing runs); 08:01: task 0 skipped; 08:02: both;
    # 08:03-08:05 in one batch: task 0 once (its first), task 1 three times.
    assert ran(started) == [
        (1, 0),
        (0, 0),
        (1, 0),
        (0, CAUGHT_UP),
        (1, CAUGHT_UP),
        (1, CAUGHT_UP),
        (1, 0),
    ]
    task0 = executor.store.task_dir(0)
    assert skipped == [
        (task0, (TEN + 1) * 60, 0),
        (task0, (TEN + 5) * 60, CAUGHT_UP),
        (task0, (TEN + 5) * 60, 0),
    ]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines[0] == (
        "start of task 0 for 2026-11-21T08:01 skipped: its previous run is still going "
        "(--no-overlap)"
    )
    assert len(lines) == 3


def test_it_starts_a_run_by_hand_flagged_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, started = policy_executor(
        tmp_path, monkeypatch, Task(NOON, (b"true",), Extras(paused=True))
    )
    assert start_by_hand(executor.store, 0, TEN * 60 + 5, logger=LOG)
    assert ran(started) == [(0, BY_HAND)]
    assert started[0].start_time == TEN * 60 + 5
    assert not start_by_hand(executor.store, 1, TEN * 60, logger=LOG)
    assert load_handled(tmp_path, LOG) is None  # the schedule's mark is untouched


def test_it_really_runs_a_task_by_hand(tmp_path: Path) -> None:
    store = Store.open(tmp_path, LOG)
    marker = tmp_path / "ran"
    task_id = store.create_task(Task(NOON, (b"touch", bytes(marker))))
    assert start_by_hand(store, task_id, TEN * 60, logger=LOG)
    wait_for(lambda: read_runs(store.task_dir(task_id)) == [(TEN * 60, 0)], "the run's record")
    assert marker.exists()
    wait_for(lambda: taskdir.read_history(store.task_dir(task_id)), "the run's history record")
    (run,) = taskdir.read_history(store.task_dir(task_id))
    assert (run.start, run.flags, run.outcome_name) == (TEN * 60, BY_HAND, "exited")
