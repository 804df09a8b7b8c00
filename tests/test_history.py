"""A task's rich history (`history`) and kept outputs (history.py, through taskdir):
the format, a torn tail, the bound on both histories, and which outputs are kept."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from saturnd import history, liveruns, taskdir
from saturnd.clock import SystemClock
from saturnd.records import decode_runs, runs_body
from saturnd.runcontrol import ServedStore
from saturnd.runrecord import EXITED, KILLED, RunRecord
from saturnd.spawn import RunSpec, spawn_run
from saturnd.store import Store
from saturnd.timing import Timing

START = 1_795_248_000


def append(task_dir: Path, start: int, exitcode: int = 0) -> None:
    """Record a run as P5 does: both histories, under the run lock."""
    dir_fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        taskdir.lock_runs(dir_fd)
        taskdir.append_run(task_dir, start, exitcode)
        history.append_history(dir_fd, RunRecord(start, start + 1, exitcode, EXITED))
    finally:
        os.close(dir_fd)


def test_it_reads_back_what_it_appends_oldest_first(tmp_path: Path) -> None:
    assert taskdir.read_history(tmp_path) == ()
    assert taskdir.read_history(tmp_path / "gone") == ()
    append(tmp_path, START, 0)
    append(tmp_path, START + 60, 2)
    assert taskdir.read_history(tmp_path) == (
        RunRecord(START, START + 1, 0, EXITED),
        RunRecord(START + 60, START + 61, 2, EXITED),
    )
    data = (tmp_path / "history").read_bytes()
    assert data[:8] == b"SATH\x00\x00\x00\x01" and len(data) == 8 + 2 * 24
    assert (tmp_path / "history").stat().st_mode & 0o777 == 0o600


def test_it_ignores_a_torn_tail_and_overwrites_it(tmp_path: Path) -> None:
    append(tmp_path, START)
    with open(tmp_path / "history", "ab") as file:
        file.write(b"\x01" * 10)  # a crash in the middle of an append
    assert len(taskdir.read_history(tmp_path)) == 1
    append(tmp_path, START + 60, 9)
    assert [run.exitcode for run in taskdir.read_history(tmp_path)] == [0, 9]


def test_it_refuses_a_history_of_another_format(tmp_path: Path) -> None:
    (tmp_path / "history").write_bytes(b"SATH\x00\x00\x00\x07" + bytes(24))
    with pytest.raises(history.HistoryError, match="version 1"):
        taskdir.read_history(tmp_path)


def test_it_bounds_both_histories_to_the_last_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "HISTORY_KEEP", 3)
    for index in range(6):
        append(tmp_path, START + index)
    assert len(taskdir.read_history(tmp_path)) == 6  # up to twice the bound: untouched
    append(tmp_path, START + 6)  # past twice the bound: back to the last 3
    assert [run.start for run in taskdir.read_history(tmp_path)] == [
        START + 4,
        START + 5,
        START + 6,
    ]
    runs = decode_runs(runs_body((tmp_path / "times-exitcodes").read_bytes()))
    assert [run.time for run in runs] == [START + 4, START + 5, START + 6]
    append(tmp_path, START + 7)
    assert len(taskdir.read_history(tmp_path)) == 4
    assert sorted(os.listdir(tmp_path)) == ["history", "times-exitcodes"]  # no temporary left


# --- kept outputs ---------------------------------------------------------------------


def run_at(task_dir: Path, start: int, script: bytes, keep: int) -> None:
    before = len(taskdir.read_history(task_dir))
    spawn_run(RunSpec(1, task_dir, (b"sh", b"-c", script), start), keep_outputs=keep)
    deadline = time.monotonic() + 5
    while len(taskdir.read_history(task_dir)) == before or any(
        name.endswith(".tmp") for name in os.listdir(task_dir)
    ):
        assert time.monotonic() < deadline, "the run was not recorded"
        time.sleep(0.01)


def test_it_keeps_the_outputs_of_the_last_runs(tmp_path: Path) -> None:
    for index in range(5):
        run_at(tmp_path, START + 60 * index, b"echo out %d; echo err %d >&2" % (index, index), 3)
    for index in (2, 3, 4):
        start = START + 60 * index
        assert taskdir.kept_output(tmp_path, "stdout", start) == (False, b"out %d\n" % index)
        assert taskdir.kept_output(tmp_path, "stderr", start) == (False, b"err %d\n" % index)
    assert taskdir.kept_output(tmp_path, "stdout", START) is None
    assert taskdir.kept_output(tmp_path, "stdout", START + 60) is None
    assert taskdir.kept_output(tmp_path, "stdout", 0) == (False, b"out 4\n")
    kept = [name for name in os.listdir(tmp_path) if name.startswith("kept.")]
    assert len(kept) == 6  # three runs, two streams, hard links (no copy)
    assert (tmp_path / "stdout").read_bytes() == b"out 4\n"
    assert (tmp_path / "stdout").stat().st_nlink == 2


def test_it_keeps_only_the_last_output_with_keep_outputs_1(tmp_path: Path) -> None:
    run_at(tmp_path, START, b"echo first", 1)
    run_at(tmp_path, START + 60, b"echo second", 1)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("kept.")]
    assert taskdir.kept_output(tmp_path, "stdout", 0) == (False, b"second\n")
    assert taskdir.kept_output(tmp_path, "stdout", START + 60) == (False, b"second\n")
    assert taskdir.kept_output(tmp_path, "stdout", START) is None


def test_it_says_no_output_is_kept_for_a_task_without_runs(tmp_path: Path) -> None:
    assert taskdir.kept_output(tmp_path, "stdout", 0) is None
    assert taskdir.kept_output(tmp_path / "gone", "stderr", 0) is None
    with pytest.raises(ValueError, match="stdin"):
        taskdir.kept_output(tmp_path, "stdin", 0)


def test_it_records_a_pending_run_in_the_history_when_it_is_flushed(tmp_path: Path) -> None:
    run = taskdir.PendingRun(START, 4242, 1, 0xFFFF, whole=True)
    out, err = run.names()
    (tmp_path / os.fsdecode(out)).write_bytes(b"")
    (tmp_path / os.fsdecode(err)).write_bytes(b"")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        taskdir.lock_runs(dir_fd)
        flushed = taskdir.flush_pending(dir_fd, tmp_path, taskdir.append_run, publish_last=True)
    finally:
        os.close(dir_fd)
    assert flushed.error is None
    assert taskdir.read_history(tmp_path) == (RunRecord(START, START, 0xFFFF, KILLED),)


def test_it_takes_the_number_of_kept_outputs_from_the_daemons_command_line() -> None:
    from saturnd.cli import build_parser, parse

    assert parse(build_parser(), []).keep_outputs == history.DEFAULT_KEEP_OUTPUTS == 5
    assert parse(build_parser(), ["--keep-outputs", "1"]).keep_outputs == 1
    with pytest.raises(SystemExit) as exit_info:
        parse(build_parser(), ["--keep-outputs", "0"])
    assert exit_info.value.code == 2


def test_it_shows_a_run_once_between_its_record_and_its_marker_going(tmp_path: Path) -> None:
    # P5 records a run, then drops its marker: a HISTORY request between the two must
    # not list the run both ended and in progress.
    log = logging.getLogger("test.history")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = Store.open(state, log)
    try:
        task_id = store.create(Timing.parse("0", "0", "1"), (b"true",))
        task_dir = store.task_dir(task_id)
        dir_fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # Two runs in progress, each marked and locked as its P5 does it.
            ended = liveruns.create_marker(dir_fd, os.getpid(), 1, START, 4_000_000, 0)
            going = liveruns.create_marker(dir_fd, os.getpid(), 2, START + 60, 4_000_001, 0)
            served = ServedStore(store, SystemClock(), log)
            assert [(run.start, run.end) for run in served.history(task_id)] == [
                (START, 0),
                (START + 60, 0),
            ]
            history.append_history(dir_fd, RunRecord(START, START + 1, 0, EXITED, 0, 4_000_000))
            assert served.history(task_id) == (
                RunRecord(START, START + 1, 0, EXITED, 0, 4_000_000),
                RunRecord(START + 60, 0, 0xFFFF, EXITED, 0, 4_000_001),
            )
            liveruns.drop_marker(dir_fd, ended)
            liveruns.drop_marker(dir_fd, going)
        finally:
            os.close(dir_fd)
    finally:
        store.close()
