"""Tests of P5 keeping the runs it cannot record (pendingruns.py, taskdir.py): real
P5 processes and files, and a recorder that refuses while a file says the disk is full."""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saturnd import pendingruns, taskdir
from saturnd.spawn import RunSpec, spawn_run

TASK_ID = 7
START = 1_795_248_000  # the history must show the run's start, not the real clock
DEADLINE = 10.0


def run_files(directory: Path) -> list[str]:
    """The course's files of a task directory and any leftover: without the rich
    history and the kept outputs (history.py), which tests of their own check."""
    return sorted(
        name for name in os.listdir(directory) if name != "history" and not name.startswith("kept.")
    )


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def history(task_dir: Path) -> list[tuple[int, int]]:
    data = taskdir.read_file(task_dir, taskdir.TIMES_EXITCODES) or b""
    count = int.from_bytes(data[:4], "big") if len(data) >= 4 else 0
    return [struct.unpack_from(">qH", data, 4 + 10 * i) for i in range(count)]


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    directory = tmp_path / f"task_{TASK_ID}"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Path]:
    """While this file exists, the disk refuses records (ENOSPC)."""
    flag = tmp_path / "disk-full"
    flag.write_bytes(b"")
    yield flag
    flag.unlink(missing_ok=True)  # no P5 is left retrying after the test


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "log"


def refusing(flag: Path) -> Callable[[Path, int, int], None]:
    def record(task_dir: Path, start: int, exitcode: int) -> None:
        if flag.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taskdir.append_run(task_dir, start, exitcode)

    return record


def logger_to(path: Path) -> logging.Logger:
    logger = logging.getLogger(f"test_pending.{path}")
    logger.handlers[:] = [logging.FileHandler(path)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def logged(log: Path, text: str) -> bool:
    return any(text in line for line in lines(log))


def hhmm(epoch: int) -> str:
    return time.strftime("%H:%M", time.localtime(epoch))


def start(task_dir: Path, flag: Path, log: Path, script: str, at: int) -> None:
    spec = RunSpec(TASK_ID, task_dir, (b"sh", b"-c", script.encode()), at)
    spawn_run(spec, record=refusing(flag), logger=logger_to(log))


def test_it_records_a_refused_run_itself_once_space_is_back(
    task_dir: Path, full: Path, log: Path
) -> None:
    start(task_dir, full, log, "echo out; echo err >&2; exit 5", START)
    wait_for(lambda: logged(log, "kept pending"), "the run to be kept pending")
    (kept,) = lines(log)
    assert (
        f"task {TASK_ID}: cannot record the run of {hhmm(START)} (start {START}, exit code 5"
        in kept
    )
    assert "No space left on device" in kept
    assert [(run.start, run.exitcode) for run in taskdir.pending_runs(task_dir)] == [(START, 5)]
    assert history(task_dir) == []
    full.unlink()  # space is back: P5's next retry (within 2 s) records it
    wait_for(lambda: history(task_dir) == [(START, 5)], "the pending run to be recorded")
    wait_for(lambda: logged(log, "recorded 1 run"), "the recovery's log line")
    assert lines(log)[1].endswith(
        f"recorded 1 run of task {TASK_ID} that could not be recorded earlier (from {hhmm(START)})"
    )
    # The run's marker goes just after its record.
    wait_for(
        lambda: run_files(task_dir) == ["stderr", "stdout", "times-exitcodes"],
        f"only the course's files in {task_dir}",
    )
    assert taskdir.read_file(task_dir, "stdout") == b"out\n"
    assert taskdir.read_file(task_dir, "stderr") == b"err\n"


def test_it_leaves_pending_runs_to_the_next_run_which_records_them_first(
    task_dir: Path, full: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pendingruns, "RETRY_FOR", 0.3)  # P5 gives up at once
    for minute in range(3):
        start(task_dir, full, log, f"echo {minute}; exit {minute}", START + 60 * minute)
        wait_for(lambda: logged(log, "after 0 s"), "the P5 to give up")
        os.truncate(log, 0)
    assert [run.start for run in taskdir.pending_runs(task_dir)] == [START, START + 60, START + 120]
    full.unlink()
    start(task_dir, full, log, "echo 3; exit 3", START + 180)
    wait_for(lambda: len(history(task_dir)) == 4, "four runs")
    assert history(task_dir) == [(START + 60 * m, m) for m in range(4)]
    wait_for(lambda: logged(log, "run pid"), "the run's own line")
    recovered, finished = lines(log)
    assert recovered.endswith(
        f"recorded 3 runs of task {TASK_ID} that could not be recorded earlier "
        f"(from {hhmm(START)} to {hhmm(START + 120)})"
    )
    assert "exit code 3" in finished
    assert run_files(task_dir) == ["stderr", "stdout", "times-exitcodes"]
    assert taskdir.read_file(task_dir, "stdout") == b"3\n"


def test_it_keeps_later_runs_pending_while_earlier_ones_cannot_be_recorded(
    task_dir: Path, full: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pendingruns, "RETRY_FOR", 0.3)
    start(task_dir, full, log, "exit 1", START)
    wait_for(lambda: logged(log, "after 0 s"), "the P5 to give up")
    # This P5's own record would succeed, but an earlier run is still refused: the
    # history must not take the later one first.
    calls: list[int] = []

    def refuses_the_first(task_dir: Path, at: int, exitcode: int) -> None:
        calls.append(at)
        if len(calls) == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        taskdir.append_run(task_dir, at, exitcode)

    spec = RunSpec(TASK_ID, task_dir, (b"sh", b"-c", b"exit 2"), START + 60)
    full.unlink()
    spawn_run(spec, record=refuses_the_first, logger=logger_to(log))
    wait_for(lambda: len(history(task_dir)) == 2, "both runs, on the retry")
    assert history(task_dir) == [(START, 1), (START + 60, 2)]


def refuse_renames(monkeypatch: pytest.MonkeyPatch) -> None:
    """P5 cannot even rename the run's outputs: only its memory holds the run."""

    def pend(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(taskdir, "pend", pend)


def test_it_holds_a_run_in_memory_when_its_outputs_cannot_be_kept(
    task_dir: Path, full: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_renames(monkeypatch)
    start(task_dir, full, log, "echo out; exit 4", START)
    wait_for(lambda: logged(log, "kept pending"), "the run to be kept pending")
    assert "kept pending in memory (its output is lost)" in lines(log)[0]
    assert run_files(task_dir) == []  # its temporaries are gone
    full.unlink()
    wait_for(lambda: history(task_dir) == [(START, 4)], "the run to be recorded")
    wait_for(lambda: logged(log, "recorded 1 run"), "the recovery's log line")
    assert lines(log)[1].endswith(
        f"recorded 1 run of task {TASK_ID} that could not be recorded earlier "
        f"(from {hhmm(START)}); output lost: {hhmm(START)}"
    )


def test_it_says_a_run_held_in_memory_is_lost_when_it_gives_up(
    task_dir: Path, full: Path, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_renames(monkeypatch)
    monkeypatch.setattr(pendingruns, "RETRY_FOR", 0.3)
    start(task_dir, full, log, "exit 4", START)
    wait_for(lambda: logged(log, "LOST"), "the run to be given up")
    kept, lost = lines(log)
    assert "in memory" in kept
    assert f"task {TASK_ID}: run LOST, not recorded (start {START}, exit code 4, pid " in lost
    assert history(task_dir) == [] and run_files(task_dir) == []
