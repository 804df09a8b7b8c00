"""Tests of saturnd.taskdir: the names of a task directory's files, and finding and
publishing runs with real files (the history's appends are covered in test_store.py)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from saturnd import taskdir


def run_files(directory: Path) -> list[str]:
    """The course's files of a task directory and any leftover: without the rich
    history and the kept outputs (history.py), which tests of their own check."""
    return sorted(
        name for name in os.listdir(directory) if name != "history" and not name.startswith("kept.")
    )


def test_it_names_the_files_as_on_disk_before() -> None:
    assert taskdir.dir_name(26) == "task_26"
    assert taskdir.removed_name(26, "0a1b2c3d") == ".removed-26-0a1b2c3d"
    assert taskdir.temporary_names(4242, 3) == (b"stdout.4242.3.tmp", b"stderr.4242.3.tmp")
    assert taskdir.run_number(b"stdout.4242.3.tmp") == 3
    assert (taskdir.TIMES_EXITCODES, taskdir.STDOUT, taskdir.STDERR) == (
        "times-exitcodes",
        "stdout",
        "stderr",
    )


@pytest.mark.parametrize(
    ("name", "task_id"),
    [("task_0", 0), ("task_26", 26), ("task_", None), ("task_x", None), ("task_1.tmp", None)],
)
def test_it_reads_a_task_id_from_a_directory_name(name: str, task_id: int | None) -> None:
    assert taskdir.task_id_of(name) == task_id


def test_it_finds_runs_in_progress_by_their_temporary_stdout(tmp_path: Path) -> None:
    for name in ("stdout.12.1.tmp", "stderr.12.1.tmp", "stdout.13.tmp", "stdout", "x.1.tmp"):
        (tmp_path / name).write_bytes(b"")
    found = sorted(pid for pid, _changed in taskdir.run_temporaries(tmp_path))
    assert found == [12, 13]
    assert taskdir.run_temporaries(tmp_path / "gone") == []


def test_it_publishes_both_temporaries_over_the_outputs(tmp_path: Path) -> None:
    out, err = taskdir.temporary_names(99, 1)
    (tmp_path / os.fsdecode(out)).write_bytes(b"o")
    (tmp_path / os.fsdecode(err)).write_bytes(b"e")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        taskdir.lock_runs(fd)
        taskdir.publish(fd, out, err)
    finally:
        os.close(fd)
    assert run_files(tmp_path) == ["stderr", "stdout"]
    assert taskdir.read_file(tmp_path, "stdout") == b"o"
    assert taskdir.read_file(tmp_path, "stderr") == b"e"
    assert taskdir.read_file(tmp_path, taskdir.TIMES_EXITCODES) is None


def test_it_records_runs_in_the_course_format(tmp_path: Path) -> None:
    taskdir.append_run(tmp_path, 1_790_000_000, 126)
    data = (tmp_path / "times-exitcodes").read_bytes()
    assert data == bytes.fromhex("00000001000000006AB13B80007E")
    with pytest.raises(FileNotFoundError):
        taskdir.append_run(tmp_path / "removed", 0, 0)


# --- pending runs: a record the disk refused, kept in its outputs' names -----------------


def history(task_dir: Path) -> list[tuple[int, int]]:
    data = taskdir.read_file(task_dir, taskdir.TIMES_EXITCODES) or b""
    count = int.from_bytes(data[:4], "big") if data else 0
    return [struct.unpack_from(">qH", data, 4 + 10 * i) for i in range(count)]


def leave_pending(task_dir: Path, run: taskdir.PendingRun, text: bytes) -> None:
    """A run whose record failed: its temporaries, renamed by `pend`."""
    out, err = taskdir.temporary_names(run.pid, run.number)
    (task_dir / os.fsdecode(out)).write_bytes(text)
    (task_dir / os.fsdecode(err)).write_bytes(b"err " + text)
    fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        taskdir.pend(fd, out, err, run)
    finally:
        os.close(fd)


def flush(
    task_dir: Path,
    record: Callable[[Path, int, int], None] = taskdir.append_run,
    extra: Iterable[taskdir.PendingRun] = (),
    publish_last: bool = False,
) -> taskdir.Flushed:
    fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        taskdir.lock_runs(fd)
        return taskdir.flush_pending(fd, task_dir, record, extra, publish_last)
    finally:
        os.close(fd)


def test_it_keeps_a_pending_run_in_the_names_of_its_outputs(tmp_path: Path) -> None:
    run = taskdir.PendingRun(1_790_000_060, 4242, 2, 126, whole=False)
    leave_pending(tmp_path, run, b"o")
    assert run_files(tmp_path) == [
        "pending.1790000060.126.4242.2.c.stderr",
        "pending.1790000060.126.4242.2.c.stdout",
    ]
    assert taskdir.pending_runs(tmp_path) == [run]
    (found,) = taskdir.pending_runs(tmp_path)
    assert (found.exitcode, found.whole, found.on_disk, found.claimed) == (126, False, True, None)
    # Not a run in progress: status counts it apart.
    assert taskdir.run_temporaries(tmp_path) == []
    assert taskdir.parse_pending("recording.3." + os.fsdecode(run.names()[0])) == run
    assert taskdir.parse_pending("pending.1.2.3.4.x.stdout") is None
    assert taskdir.pending_runs(tmp_path / "gone") == []


def test_it_records_pending_runs_in_order_of_start_and_publishes_the_last(tmp_path: Path) -> None:
    taskdir.append_run(tmp_path, 100, 0)
    runs = [
        taskdir.PendingRun(300, 12, 1, 3, whole=True),
        taskdir.PendingRun(160, 11, 1, 1, whole=True),
        taskdir.PendingRun(220, 13, 1, 2, whole=True),
    ]
    for run in runs:
        leave_pending(tmp_path, run, b"%d" % run.start)
    in_memory = taskdir.PendingRun(200, 14, 1, 9, whole=False, on_disk=False)
    flushed = flush(tmp_path, extra=[in_memory], publish_last=True)
    assert flushed.error is None
    assert [run.start for run in flushed.recorded] == [160, 200, 220, 300]
    assert history(tmp_path) == [(100, 0), (160, 1), (200, 9), (220, 2), (300, 3)]
    assert run_files(tmp_path) == ["stderr", "stdout", "times-exitcodes"]
    assert taskdir.read_file(tmp_path, "stdout") == b"300"
    assert taskdir.read_file(tmp_path, "stderr") == b"err 300"


def test_it_deletes_pending_outputs_when_a_later_run_is_recorded_next(tmp_path: Path) -> None:
    leave_pending(tmp_path, taskdir.PendingRun(160, 11, 1, 1, whole=True), b"old")
    assert flush(tmp_path).error is None
    assert run_files(tmp_path) == ["times-exitcodes"]
    assert history(tmp_path) == [(160, 1)]


def test_it_stops_at_the_first_refused_record_and_keeps_the_rest_pending(tmp_path: Path) -> None:
    for start in (160, 220, 280):
        leave_pending(tmp_path, taskdir.PendingRun(start, 11, start, 0, whole=True), b"x")

    def full_after_one(task_dir: Path, time: int, exitcode: int) -> None:
        if history(task_dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taskdir.append_run(task_dir, time, exitcode)

    flushed = flush(tmp_path, full_after_one)
    assert [run.start for run in flushed.recorded] == [160]
    assert isinstance(flushed.error, OSError) and flushed.error.errno == errno.ENOSPC
    assert history(tmp_path) == [(160, 0)]
    assert [run.start for run in taskdir.pending_runs(tmp_path)] == [220, 280]
    # Space is back: the rest, once each.
    assert [run.start for run in flush(tmp_path).recorded] == [220, 280]
    assert history(tmp_path) == [(160, 0), (220, 0), (280, 0)]
    assert taskdir.pending_runs(tmp_path) == []


@pytest.mark.parametrize("appended", [False, True])
def test_it_records_a_run_exactly_once_across_a_crash_while_recording_it(
    tmp_path: Path, appended: bool
) -> None:
    taskdir.append_run(tmp_path, 100, 0)
    # A P5 died after naming the run "being recorded at NBRUNS 1", and maybe after the
    # append itself.
    run = taskdir.PendingRun(160, 11, 1, 4, whole=True, claimed=1)
    out, err = run.names()
    (tmp_path / os.fsdecode(out)).write_bytes(b"o")
    (tmp_path / os.fsdecode(err)).write_bytes(b"e")
    if appended:
        taskdir.append_run(tmp_path, 160, 4)
    flushed = flush(tmp_path, publish_last=True)
    assert flushed.error is None and [r.start for r in flushed.recorded] == [160]
    assert history(tmp_path) == [(100, 0), (160, 4)]
    assert run_files(tmp_path) == ["stderr", "stdout", "times-exitcodes"]
