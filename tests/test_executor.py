"""Tests of the executor's `last-minute` mark, with real files."""

from __future__ import annotations

import logging
import os
from datetime import datetime
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
