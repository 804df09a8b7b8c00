"""Tests of the executor's `last-minute` mark, with real files."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saturnd import schedule
from saturnd.clock import FileClock
from saturnd.executor import (
    STATE_FILE,
    Executor,
    Handled,
    catch_ups,
    load_handled,
    save_handled,
)
from saturnd.listener import StopFlag
from saturnd.store import Store
from saturnd.timing import Timing

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
