"""Tests of the executor's `last-minute` mark, with real files."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from saturnd.executor import STATE_FILE, Handled, load_handled, save_handled

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
