"""Tests of saturnd.taskdir: the names of a task directory's files, and finding and
publishing runs with real files (the history's appends are covered in test_store.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saturnd import taskdir


def test_it_names_the_files_as_on_disk_before() -> None:
    assert taskdir.dir_name(26) == "task_26"
    assert taskdir.removed_name(26, "0a1b2c3d") == ".removed-26-0a1b2c3d"
    assert taskdir.temporary_names(4242, 3) == (b"stdout.4242.3.tmp", b"stderr.4242.3.tmp")
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
    found = sorted(pid for pid, _changed in taskdir.runs_in_progress(tmp_path))
    assert found == [12, 13]
    assert taskdir.runs_in_progress(tmp_path / "gone") == []


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
    assert sorted(os.listdir(tmp_path)) == ["stderr", "stdout"]
    assert taskdir.read_file(tmp_path, "stdout") == b"o"
    assert taskdir.read_file(tmp_path, "stderr") == b"e"
    assert taskdir.read_file(tmp_path, taskdir.TIMES_EXITCODES) is None


def test_it_records_runs_in_the_course_format(tmp_path: Path) -> None:
    taskdir.append_run(tmp_path, 1_790_000_000, 126)
    data = (tmp_path / "times-exitcodes").read_bytes()
    assert data == bytes.fromhex("00000001000000006AB13B80007E")
    with pytest.raises(FileNotFoundError):
        taskdir.append_run(tmp_path / "removed", 0, 0)
