"""The run chain's policies and outcomes with real P5s and real commands: history
records, timeouts, jitter, on-failure, stop requests (KILL), a command killed by
someone else, and a supervising process (P5) killed under its run.

Runs are recorded by the default recorder (taskdir.append_run) and read back with
taskdir.read_history. No test waits for a real minute: a timeout is 1 s, a grace 1 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from saturnd import liveruns, runpolicy, runsupervisor, taskdir
from saturnd.runrecord import (
    BY_HAND,
    CUT_STDOUT,
    EXITED,
    KILLED,
    NOT_STARTED,
    TIMED_OUT,
    RunRecord,
)
from saturnd.spawn import RunSpec, spawn_run, spawn_runs
from saturnd.task import NO_EXTRAS, Extras
from tests.conftest import NOW
from tests.daemon_harness import Daemon
from tests.test_spawn import gone

START = 1_795_248_000
TASK_ID = 3
DEADLINE = 8.0


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll `predicate`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    directory = tmp_path / f"task_{TASK_ID}"
    directory.mkdir(mode=0o700)
    return directory


def spawn(
    task_dir: Path,
    script: str,
    extras: Extras = NO_EXTRAS,
    start: int = START,
    flags: int = 0,
    **kwargs: Any,
) -> None:
    spawn_run(
        RunSpec(TASK_ID, task_dir, (b"sh", b"-c", script.encode()), start, extras, flags),
        **kwargs,
    )


def records(task_dir: Path, count: int, timeout: float = DEADLINE) -> tuple[RunRecord, ...]:
    """Wait until `count` runs are in the history and their outputs published."""

    def done() -> bool:
        names = os.listdir(task_dir)
        return len(taskdir.read_history(task_dir)) >= count and not any(
            name.endswith(".tmp") or name.startswith("running.") for name in names
        )

    wait_for(done, f"{count} runs recorded", timeout)
    return taskdir.read_history(task_dir)


def running(task_dir: Path) -> tuple[int, int]:
    """Wait for the one run in progress: (start, command pid)."""
    wait_for(lambda: taskdir.runs_in_progress(task_dir), "a run in progress")
    (run,) = taskdir.runs_in_progress(task_dir)
    return run


# --- the pure rules (runpolicy.py) -----------------------------------------------------

EXIT_3 = 3 << 8  # wait statuses
BY_SIGTERM = signal.SIGTERM
BY_SIGKILL = signal.SIGKILL


@pytest.mark.parametrize(
    ("pid", "status", "stopped", "exitcode", "expected"),
    [
        (10, EXIT_3, EXITED, 3, RunRecord(START, START + 2, 3, EXITED, 0, 10)),
        (10, BY_SIGKILL, EXITED, 0xFFFF, RunRecord(START, START + 2, 0xFFFF, KILLED, 0, 10)),
        (10, BY_SIGTERM, TIMED_OUT, 0xFFFF, RunRecord(START, START + 2, 0xFFFF, TIMED_OUT, 0, 10)),
        (10, 143 << 8, KILLED, 143, RunRecord(START, START + 2, 143, KILLED, 0, 10)),
        (-1, 127 << 8, EXITED, 127, RunRecord(START, START, 127, NOT_STARTED, 0, 0)),
        (-1, None, EXITED, 0xFFFF, RunRecord(START, START, 0xFFFF, NOT_STARTED, 0, 0)),
    ],
)
def test_it_derives_a_runs_record_from_how_it_ended(
    pid: int, status: int | None, stopped: int, exitcode: int, expected: RunRecord
) -> None:
    assert runpolicy.record_of(START, pid, status, stopped, 0, (False, False), exitcode, 2.7) == (
        expected
    )


def test_it_adds_the_cut_streams_to_the_specs_flags() -> None:
    record = runpolicy.record_of(START, 1, 0, EXITED, BY_HAND, (True, True), 0, 0.1)
    assert record.flags == BY_HAND | CUT_STDOUT | 2


def test_it_says_which_runs_failed_and_what_on_failure_gets() -> None:
    assert not runpolicy.failed(RunRecord(START, START, 0, EXITED))
    assert runpolicy.failed(RunRecord(START, START, 1, EXITED))
    assert runpolicy.failed(RunRecord(START, START, 0, KILLED))  # caught SIGTERM, exit 0
    env = runpolicy.failure_env(
        {b"HOME": b"/h", b"SATURND_OUTCOME": b"forged"},
        9,
        RunRecord(START, START + 1, 0xFFFF, TIMED_OUT),
        b"/o",
        b"/e",
    )
    assert env == {
        b"HOME": b"/h",
        b"SATURND_TASK_ID": b"9",
        b"SATURND_EXIT_CODE": b"65535",
        b"SATURND_OUTCOME": b"timed out",
        b"SATURND_START": b"%d" % START,
        b"SATURND_STDOUT": b"/o",
        b"SATURND_STDERR": b"/e",
    }
    assert (runpolicy.timeout_grace(1), runpolicy.timeout_grace(3600)) == (1.0, 10.0)


# --- history records ----------------------------------------------------------------


def test_it_records_an_exited_run_in_both_histories(task_dir: Path) -> None:
    spawn(task_dir, "echo hi; exit 3", flags=BY_HAND)
    (run,) = records(task_dir, 1)
    assert (run.start, run.exitcode, run.outcome, run.flags) == (START, 3, EXITED, BY_HAND)
    assert START <= run.end <= START + 2 and run.pid > 0
    data = (task_dir / "times-exitcodes").read_bytes()
    assert data == bytes.fromhex("00000001") + START.to_bytes(8, "big") + (3).to_bytes(2, "big")


def test_it_records_a_command_that_could_not_start(task_dir: Path) -> None:
    spawn_run(RunSpec(TASK_ID, task_dir, (b"no-such-program-anywhere",), START))
    (run,) = records(task_dir, 1)
    assert run == RunRecord(START, START, 127, NOT_STARTED, 0, 0)


def test_it_flags_an_output_cut_at_the_cap(task_dir: Path) -> None:
    spawn(task_dir, "printf 0123456789abcdef", max_output=10)
    (run,) = records(task_dir, 1)
    assert run.flags == CUT_STDOUT
    assert taskdir.kept_output(task_dir, "stdout", 0) == (True, b"0123456789")
    assert taskdir.kept_output(task_dir, "stderr", START) == (False, b"")


def test_it_records_a_command_killed_by_someone_else_as_killed(task_dir: Path) -> None:
    spawn(task_dir, "exec sleep 30")
    _, pid = running(task_dir)
    os.kill(pid, signal.SIGKILL)
    (run,) = records(task_dir, 1)
    assert (run.exitcode, run.outcome, run.pid) == (0xFFFF, KILLED, pid)


# --- timeout ------------------------------------------------------------------------


def test_it_stops_a_run_that_outlives_its_timeout(task_dir: Path) -> None:
    began = time.monotonic()
    spawn(task_dir, "exec sleep 30", Extras(timeout=1))
    (run,) = records(task_dir, 1)
    assert (run.exitcode, run.outcome) == (0xFFFF, TIMED_OUT)
    assert 1.0 <= time.monotonic() - began < 5
    assert run.end - run.start in (1, 2)


def test_it_kills_a_timed_out_run_that_ignores_sigterm_after_the_grace(task_dir: Path) -> None:
    began = time.monotonic()
    # The shell and its sleep ignore SIGTERM; SIGKILL to the group ends both.
    spawn(task_dir, "trap '' TERM; sleep 30; exit 0", Extras(timeout=1))
    (run,) = records(task_dir, 1)
    assert (run.exitcode, run.outcome) == (0xFFFF, TIMED_OUT)
    assert 2.0 <= time.monotonic() - began < 6  # 1 s timeout, then min(1, 10) s of grace


def test_it_leaves_a_run_within_its_timeout_alone(task_dir: Path) -> None:
    spawn(task_dir, "sleep 0.2; exit 4", Extras(timeout=5))
    (run,) = records(task_dir, 1)
    assert (run.exitcode, run.outcome) == (4, EXITED)


# --- jitter -------------------------------------------------------------------------


def test_it_delays_a_jittered_start_without_delaying_the_others(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The random delay is the largest the bound allows (P5 is forked from this process).
    monkeypatch.setattr(runsupervisor.random, "uniform", lambda low, high: high)
    other = tmp_path / "task_4"
    other.mkdir(mode=0o700)
    began = time.monotonic()
    spawn_runs(
        [
            RunSpec(TASK_ID, task_dir, (b"true",), START, Extras(jitter=2)),
            RunSpec(4, other, (b"true",), START),
        ]
    )
    (prompt,) = records(other, 1)
    assert time.monotonic() - began < 1.5 and prompt.start == START
    (late,) = records(task_dir, 1)
    assert time.monotonic() - began >= 2.0
    assert late.start == START + 2  # the real start, not the minute's


def test_it_starts_a_run_by_hand_at_once_whatever_its_jitter(task_dir: Path) -> None:
    began = time.monotonic()
    spawn_run(RunSpec(TASK_ID, task_dir, (b"true",), START, Extras(jitter=3600), BY_HAND))
    (run,) = records(task_dir, 1)
    assert time.monotonic() - began < 2 and run.start == START and run.flags == BY_HAND


def test_it_keeps_each_jittered_start_within_its_bound(task_dir: Path) -> None:
    spawn_runs([RunSpec(TASK_ID, task_dir, (b"true",), START, Extras(jitter=1))] * 6)
    runs = records(task_dir, 6)
    assert all(START <= run.start <= START + 1 for run in runs)


def test_a_run_waiting_for_its_jitter_is_in_progress_and_starts_under_its_pid(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen as in progress from the start (pid 0: no command yet), so that --no-overlap
    # skips the task's next start while it waits (executor.py reads the markers).
    monkeypatch.setattr(runsupervisor.random, "uniform", lambda low, high: high)
    spawn_run(RunSpec(TASK_ID, task_dir, (b"sleep", b"30"), START, Extras(jitter=3)))
    wait_for(lambda: taskdir.runs_in_progress(task_dir), "the waiting run's marker")
    assert taskdir.runs_in_progress(task_dir) == [(START, 0)]
    # Once it starts: its real start and its command's pid, under the same marker.
    wait_for(lambda: any(pid for _, pid in taskdir.runs_in_progress(task_dir)), "the command")
    ((start, pid),) = taskdir.runs_in_progress(task_dir)
    assert START + 3 <= start <= START + 4  # seconds after the minute, as P5 saw them
    wait_for(lambda: psutil.Process(pid).cmdline() == ["sleep", "30"], "the command's exec")
    assert taskdir.request_stop(task_dir) == 1
    (run,) = records(task_dir, 1)
    assert (run.start, run.outcome, run.pid) == (start, KILLED, pid)


def test_a_kill_cancels_a_run_waiting_for_its_jitter(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runsupervisor.random, "uniform", lambda low, high: high)
    ran = tmp_path / "ran"
    spawn(task_dir, f"touch {ran}", Extras(jitter=3600))
    wait_for(lambda: taskdir.runs_in_progress(task_dir), "the waiting run's marker")
    (p5,) = {run.p5_pid for run in liveruns.live_runs(task_dir)}
    assert taskdir.request_stop(task_dir) == 1
    # Recorded killed in the history only: no command ran, and TX lists runs that ran.
    (run,) = records(task_dir, 1)
    assert (run.start, run.exitcode, run.outcome, run.pid) == (START, 0xFFFF, KILLED, 0)
    assert not (task_dir / "times-exitcodes").exists() and not ran.exists()
    assert taskdir.runs_in_progress(task_dir) == [] and taskdir.request_stop(task_dir) == 0
    wait_for(lambda: gone(p5), "the supervising process to end")


def test_a_waiting_run_whose_supervisor_was_killed_is_recorded_killed_not_run(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runsupervisor.random, "uniform", lambda low, high: high)
    spawn(task_dir, "true", Extras(jitter=3600))
    wait_for(lambda: taskdir.runs_in_progress(task_dir), "the waiting run's marker")
    (p5,) = {run.p5_pid for run in liveruns.live_runs(task_dir)}
    os.kill(p5, signal.SIGKILL)
    wait_for(lambda: gone(p5), "the supervising process to die")
    assert taskdir.reap_abandoned(task_dir, START + 60) == 1
    assert taskdir.read_history(task_dir) == (RunRecord(START, START + 60, 0xFFFF, KILLED),)
    assert not (task_dir / "times-exitcodes").exists()


# --- on failure ---------------------------------------------------------------------


def hook_env(path: Path) -> dict[str, str]:
    wait_for(lambda: path.exists() and path.read_text().endswith("END\n"), "the hook's output")
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.startswith(("SATURND_", "HOME=")))


def test_it_runs_on_failure_with_the_runs_variables(task_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hook.env"
    hook = f'env > {out}.tmp; cat "$SATURND_STDOUT" >> {out}.tmp; echo END >> {out}.tmp; '
    hook += f"mv {out}.tmp {out}"
    spawn(task_dir, "echo failing; exit 6", Extras(on_failure=hook.encode(), env=((b"K", b"v"),)))
    records(task_dir, 1)
    env = hook_env(out)
    assert env["SATURND_TASK_ID"] == str(TASK_ID)
    assert env["SATURND_EXIT_CODE"] == "6"
    assert env["SATURND_OUTCOME"] == "exited"
    assert env["SATURND_START"] == str(START)
    assert Path(env["SATURND_STDOUT"]).read_bytes() == b"failing\n"
    assert Path(env["SATURND_STDERR"]).parent == task_dir
    assert "failing" in out.read_text()  # the kept output is there when the hook runs
    assert "K=v" in out.read_text().splitlines()  # on top of the task's environment


def test_it_runs_on_failure_after_a_timeout(task_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hook.env"
    hook = f"env > {out}.tmp; echo END >> {out}.tmp; mv {out}.tmp {out}"
    spawn(task_dir, "exec sleep 30", Extras(timeout=1, on_failure=hook.encode()))
    env = hook_env(out)
    assert (env["SATURND_OUTCOME"], env["SATURND_EXIT_CODE"]) == ("timed out", "65535")


def test_it_does_not_run_on_failure_after_a_success(task_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hook.env"
    spawn(task_dir, "exit 0", Extras(on_failure=f"touch {out}".encode()))
    spawn(task_dir, "exit 1", Extras(on_failure=f"touch {out}.second".encode()), start=START + 60)
    records(task_dir, 2)
    wait_for(lambda: Path(f"{out}.second").exists(), "the failed run's hook")
    assert not out.exists()


# --- kill ---------------------------------------------------------------------------


def test_it_stops_the_runs_in_progress_on_request(task_dir: Path) -> None:
    spawn(task_dir, "exec sleep 30", flags=BY_HAND)
    start, pid = running(task_dir)
    assert start == START and pid > 0
    assert taskdir.request_stop(task_dir) == 1
    (run,) = records(task_dir, 1)
    assert (run.outcome, run.exitcode, run.pid, run.flags) == (KILLED, 0xFFFF, pid, BY_HAND)
    # Its marker goes just after its record.
    wait_for(lambda: taskdir.runs_in_progress(task_dir) == [], "the run's marker to go")
    assert taskdir.request_stop(task_dir) == 0
    assert gone(pid)


def test_it_stops_only_the_runs_of_the_task_asked_for(task_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "task_4"
    other.mkdir(mode=0o700)
    spawn_runs(
        [
            RunSpec(TASK_ID, task_dir, (b"sleep", b"30"), START),
            RunSpec(4, other, (b"sleep", b"0.5"), START),
        ]
    )
    running(task_dir)
    assert taskdir.request_stop(task_dir) == 1
    (stopped,) = records(task_dir, 1)
    (other_run,) = records(other, 1)
    assert (stopped.outcome, other_run.outcome, other_run.exitcode) == (KILLED, EXITED, 0)


# --- P5's death -----------------------------------------------------------------------


def kill_p5(task_dir: Path) -> int:
    """Kill -9 the supervising process of the task's one run; its command's pid."""
    _, pid = running(task_dir)
    (live,) = liveruns.live_runs(task_dir)
    os.kill(live.p5_pid, signal.SIGKILL)
    wait_for(lambda: not taskdir.runs_in_progress(task_dir), "the run to be abandoned")
    return pid


def test_it_records_a_run_whose_supervisor_was_killed_at_the_next_run(task_dir: Path) -> None:
    spawn(task_dir, "exec sleep 30")
    pid = kill_p5(task_dir)
    assert taskdir.read_history(task_dir) == ()
    spawn(task_dir, "exit 0", start=START + 60)
    abandoned, following = records(task_dir, 2)
    assert abandoned == RunRecord(START, START + 60, 0xFFFF, KILLED, 0, pid)
    assert (following.start, following.outcome) == (START + 60, EXITED)
    wait_for(lambda: gone(pid), "the abandoned command to be killed")
    assert [name for name in os.listdir(task_dir) if name.startswith(("running.", "stop."))] == []


def test_it_records_a_run_whose_supervisor_was_killed_on_a_stop_request(task_dir: Path) -> None:
    spawn(task_dir, "echo partial; exec sleep 30")
    pid = kill_p5(task_dir)
    assert taskdir.request_stop(task_dir, now=START + 5) == 1
    (run,) = taskdir.read_history(task_dir)
    assert run == RunRecord(START, START + 5, 0xFFFF, KILLED, 0, pid)
    assert (task_dir / "stdout").read_bytes() == b"partial\n"
    wait_for(lambda: gone(pid), "the abandoned command to be killed")


def test_it_records_a_killed_supervisors_run_through_the_daemon(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    task_id = daemon.create("-m", "1,2", "-H", "8", "sleep", "60")  # 08:01 and 08:02
    task_dir = daemon.state / f"task_{task_id}"
    daemon.step_to(NOW + 60)
    pid = kill_p5(task_dir)
    daemon.step_to(NOW + 120)  # the task's next run notices it
    wait_for(lambda: taskdir.read_history(task_dir), "the abandoned run's record")
    assert taskdir.read_history(task_dir)[0] == RunRecord(
        NOW + 60, NOW + 120, 0xFFFF, KILLED, 0, pid
    )
    assert daemon.runs(task_id)[0][1] == 0xFFFF  # cassini -x lists it, course format
    wait_for(lambda: gone(pid), "the abandoned command to be killed")
    running(task_dir)
    assert taskdir.request_stop(task_dir) == 1
    records(task_dir, 2)


# --- skipped ------------------------------------------------------------------------


def test_it_records_a_skipped_run_in_the_history_only(task_dir: Path) -> None:
    taskdir.record_skipped(task_dir, START)
    (run,) = taskdir.read_history(task_dir)
    assert (run.start, run.end, run.exitcode, run.outcome_name) == (START, START, 0xFFFF, "skipped")
    assert not (task_dir / "times-exitcodes").exists()
    with pytest.raises(FileNotFoundError):
        taskdir.record_skipped(task_dir.parent / "task_999", START)


def test_it_does_not_record_twice_a_run_whose_supervisor_died_after_recording_it(
    task_dir: Path,
) -> None:
    # A P5 killed between the run's records and the unlinking of its marker: the
    # marker is free (no P5 holds it) and names a run the history already has.
    append = taskdir.append_run
    append(task_dir, START, 0)
    dir_fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        runsupervisor.history.append_history(
            dir_fd, RunRecord(START, START + 1, 0, EXITED, 0, 4_000_000)
        )
    finally:
        os.close(dir_fd)
    (task_dir / liveruns.marker_name(4_000_001, 1, START, 4_000_000, 0)).write_bytes(b"")
    assert taskdir.runs_in_progress(task_dir) == []  # its lock is free: abandoned
    assert taskdir.reap_abandoned(task_dir, START + 60) == 1
    assert taskdir.read_history(task_dir) == (RunRecord(START, START + 1, 0, EXITED, 0, 4_000_000),)
    assert (task_dir / "times-exitcodes").read_bytes()[:4] == b"\x00\x00\x00\x01"
    assert sorted(os.listdir(task_dir)) == ["history", "times-exitcodes"]
