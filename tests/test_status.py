"""`saturnd status`: the report's format, how a daemon and its runs are found, and the
real command against a real daemon (before, during a run, after)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from saturnd import liveruns, status, taskdir
from saturnd.spawn import RunSpec, spawn_runs
from saturnd.startup import Paths
from saturnd.status import ProcessInfo, RunInfo, Status
from tests.conftest import NOW
from tests.daemon_harness import SATURND, Daemon, wait_for

MakeDaemon = Callable[..., Daemon]

STARTED = 1_795_248_000.0  # 2026-11-21 08:00:00 UTC


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC for the duration of a test."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _status(running: bool = True, **changes: object) -> Status:
    fields: dict[str, object] = {
        "pipes_dir": Path("/tmp/u/saturnd/pipes"),
        "state_dir": Path("/home/u/.local/state/saturnd"),
        "log_file": Path("/home/u/.local/state/saturnd/saturnd.log"),
        "processes": (
            (
                ProcessInfo(100, STARTED, 30 << 20, 10 << 20, 0.5, "supervisor"),
                ProcessInfo(101, STARTED + 1, 20 << 20, 6 << 20, 0.25, "listener"),
                ProcessInfo(102, STARTED + 1, 20 << 20, 5 << 20, 0.0, "executor"),
            )
            if running
            else ()
        ),
        "tasks": 3,
        "runs": (RunInfo(2, 555, STARTED + 3600, "runs of 09:00", (556,)),),
    }
    fields.update(changes)
    return Status(**fields)  # type: ignore[arg-type]


def _parse_text(text: str) -> dict[str, str]:
    """The text report as {key: value}, checking that the values are aligned."""
    pairs = {}
    columns = set()
    for line in text.splitlines():
        key, rest = line.split(":", 1)
        columns.add(len(line) - len(rest.lstrip(" ")))
        pairs[key] = rest.strip()
    assert len(columns) == 1, text
    return pairs


# --- formatting --------------------------------------------------------------------


def test_it_writes_a_running_daemon_as_aligned_lines(utc: None) -> None:
    text = status.to_text(_status(), now=STARTED + 2 * 86400 + 3723.9)
    assert text == (
        "status:           running\n"
        "pid:              100\n"
        "started:          2026-11-21 08:00:00 (up 2 days, 1:02:03)\n"
        "processes:        100 (supervisor), 101 (listener), 102 (executor)\n"
        "memory:           70.0 MiB RSS, 21.0 MiB PSS\n"
        "cpu:              0.75 s\n"
        "tasks:            3\n"
        "runs in progress: 1: task 2 (pid 555 runs of 09:00, command 556, "
        "since 2026-11-21 09:00:00)\n"
        "pipes directory:  /tmp/u/saturnd/pipes\n"
        "state directory:  /home/u/.local/state/saturnd\n"
        "log file:         /home/u/.local/state/saturnd/saturnd.log\n"
    )


def test_it_says_what_it_knows_when_no_daemon_runs(utc: None) -> None:
    report = _status(running=False, runs=(), tasks=None, problems=("cmds: bad magic",))
    pairs = _parse_text(status.to_text(report, now=STARTED))
    assert pairs == {
        "status": "not running",
        "tasks": "unknown",
        "runs in progress": "0",
        "pipes directory": "/tmp/u/saturnd/pipes",
        "state directory": "/home/u/.local/state/saturnd",
        "log file": "/home/u/.local/state/saturnd/saturnd.log",
        "problem": "cmds: bad magic",
    }
    assert status.exit_status(report) == status.EXIT_NOT_RUNNING == 3


def test_it_writes_one_json_document_with_the_same_facts() -> None:
    report = _status()
    document = json.loads(status.to_json(report, now=STARTED + 60.5))
    assert document == {
        "running": True,
        "pid": 100,
        "started": STARTED,
        "uptime_seconds": 60.5,
        "processes": [100, 101, 102],
        "process_roles": {"100": "supervisor", "101": "listener", "102": "executor"},
        "memory_rss_bytes": 70 << 20,
        "memory_pss_bytes": 21 << 20,
        "cpu_seconds": 0.75,
        "tasks": 3,
        "runs_in_progress": [
            {
                "task": 2,
                "pid": 555,
                "role": "runs of 09:00",
                "commands": [556],
                "started": STARTED + 3600,
            }
        ],
        "pipes_dir": "/tmp/u/saturnd/pipes",
        "state_dir": "/home/u/.local/state/saturnd",
        "log_file": "/home/u/.local/state/saturnd/saturnd.log",
        "problems": [],
        "runs_not_recorded": 0,
    }
    assert status.exit_status(report) == status.EXIT_RUNNING == 0
    stopped = json.loads(status.to_json(_status(running=False), now=STARTED))
    assert stopped["running"] is False
    assert [stopped[k] for k in ("pid", "started", "uptime_seconds", "cpu_seconds")] == [None] * 4


def test_it_leaves_out_pss_when_a_process_has_none(utc: None) -> None:
    processes = (ProcessInfo(100, STARTED, 1 << 20, None, 0.0),)
    report = _status(processes=processes)
    assert report.pss is None
    assert "memory:           1.0 MiB RSS\n" in status.to_text(report, now=STARTED)


# --- finding the daemon and its runs ---------------------------------------------------


def test_it_finds_the_process_that_holds_the_pid_file_open(tmp_path: Path) -> None:
    pid_file = tmp_path / "saturnd.pid"
    assert status.find_daemon(pid_file) is None  # no file
    with open(pid_file, "w") as held:
        held.write(f"{os.getpid()}\n")
        held.flush()
        assert status.find_daemon(pid_file) == os.getpid()
    # The same pid, but nobody holds the file any more: a daemon killed with -9
    # whose pid was reused.
    assert status.find_daemon(pid_file) is None
    pid_file.write_text("not a pid\n")
    assert status.find_daemon(pid_file) is None


def test_it_changes_nothing_on_disk(tmp_path: Path) -> None:
    state = tmp_path / "state"
    report = status.gather(Paths(tmp_path / "pipes", state))
    assert not report.running and report.tasks == 0 and report.runs == ()
    assert list(tmp_path.iterdir()) == []
    state.mkdir()
    status.gather(Paths(tmp_path / "pipes", state))
    assert list(state.iterdir()) == []


def test_it_reports_an_unreadable_task_table_as_a_problem(tmp_path: Path) -> None:
    (tmp_path / "cmds").write_bytes(b"NOPE" + bytes(12))
    report = status.gather(Paths(tmp_path / "pipes", tmp_path))
    assert report.tasks is None and len(report.problems) == 1
    assert str(tmp_path / "cmds") in report.problems[0]


def test_it_reports_runs_not_recorded_yet_until_they_are(tmp_path: Path, utc: None) -> None:
    paths = Paths(tmp_path / "pipes", tmp_path)
    directories = {task: tmp_path / taskdir.dir_name(task) for task in (3, 12)}
    for directory in directories.values():
        directory.mkdir()
    for task, at, number in ((12, STARTED + 120, 1), (3, STARTED + 60, 2), (12, STARTED + 180, 3)):
        # As P5 leaves a run whose record the disk refused (taskdir.pend's names).
        for name in taskdir.PendingRun(int(at), 4242, number, 0, whole=True).names():
            (directories[task] / os.fsdecode(name)).write_bytes(b"")
    report = status.gather(paths)
    problem = (
        "3 runs of tasks 3, 12 not recorded yet, the oldest from 2026-11-21 08:01:00: "
        "the disk refused them; they are recorded when it has room again"
    )
    assert report.problems == (problem,) and report.pending == 3
    assert f"problem:          {problem}" in status.to_text(report, now=NOW)
    assert json.loads(status.to_json(report, now=NOW))["runs_not_recorded"] == 3
    running = Status(**{**report.__dict__, "processes": (ProcessInfo(1, NOW, 0, 0, 0.0),)})
    assert status.exit_status(running) == status.EXIT_CANNOT_RECORD
    for directory in directories.values():
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert taskdir.flush_pending(fd, directory, taskdir.append_run).error is None
        finally:
            os.close(fd)
    report = status.gather(paths)
    assert report.problems == () and report.pending == 0
    assert status.exit_status(Status(**{**report.__dict__, "processes": running.processes})) == 0


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours, standing for a run's supervisor."""
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_it_counts_the_runs_whose_supervisor_is_alive(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, files in {
        "task_3": [f"stdout.{sleeper.pid}.tmp", f"stderr.{sleeper.pid}.tmp", "stdout"],
        "task_4": [f"stdout.{dead.pid}.tmp"],  # left behind by a killed supervisor
        "task_6": [f"stdout.{sleeper.pid}.12.tmp"],  # the 12th run of a minute's batch
        "task_x": [f"stdout.{sleeper.pid}.tmp"],  # not a task directory
    }.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"")
    (tmp_path / "task_5").symlink_to(tmp_path / "task_3")  # never followed
    runs = status.runs_in_progress(tmp_path)
    assert [(run.task_id, run.pid) for run in runs] == [(3, sleeper.pid), (6, sleeper.pid)]
    assert runs[0].started == pytest.approx(
        status.start_time(psutil.Process(sleeper.pid)), abs=0.01
    )


def test_it_shows_when_a_run_started_to_a_clock_tick(tmp_path: Path) -> None:
    # psutil's create_time() is off by the fraction of a second of the boot time
    # (up to 1 s early): a run started at 12:00:00 showed as started at 11:59:59.
    before = time.time()
    process = subprocess.Popen(["sleep", "30"])
    after = time.time()
    try:
        (tmp_path / "task_3").mkdir()
        (tmp_path / "task_3" / f"stdout.{process.pid}.1.tmp").write_bytes(b"")
        (run,) = status.runs_in_progress(tmp_path)
        tick = 1 / os.sysconf("SC_CLK_TCK")
        assert before - tick - 0.005 <= run.started <= after + 0.005
        (me,) = status.measure_daemon(os.getpid())[:1]
        assert me.started == pytest.approx(status.start_time(psutil.Process()), abs=0.001)
    finally:
        process.kill()
        process.wait()


def test_it_ignores_a_reused_pid_younger_than_the_output_file(
    sleeper: subprocess.Popen[bytes],
) -> None:
    started = status.start_time(psutil.Process(sleeper.pid))
    assert status._run_of(1, sleeper.pid, file_changed=started + 0.5) is not None
    assert status._run_of(1, sleeper.pid, file_changed=started - 10) is None


# --- the command -----------------------------------------------------------------------


def _saturnd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SATURND, *args], capture_output=True, text=True, timeout=30, env=env or dict(os.environ)
    )


def test_it_takes_the_directories_before_or_after_status(tmp_path: Path) -> None:
    pipes, state, other = tmp_path / "pipes", tmp_path / "state", tmp_path / "other"
    for args in (
        ("-p", str(pipes), "-s", str(state), "status", "--json"),
        ("status", "-p", str(pipes), "-s", str(state), "--json"),
        ("-p", str(other), "status", "-s", str(state), "-p", str(pipes), "--json"),
    ):
        result = _saturnd(*args)
        assert result.returncode == 3, result.stderr
        document = json.loads(result.stdout)
        assert (document["pipes_dir"], document["state_dir"]) == (str(pipes), str(state))
        assert document["log_file"] == str(state / "saturnd.log")


def test_it_refuses_daemon_options_with_status() -> None:
    for args in (("-f", "status"), ("--clock", "x", "status"), ("status", "-f")):
        result = _saturnd(*args)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_it_fails_in_one_line_when_it_cannot_tell(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # ELOOP: neither "running" nor "not running" can be said
    result = _saturnd("status", "-s", str(loop))
    assert result.returncode == 1
    assert result.stdout == "" and result.stderr.startswith("saturnd: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def _report(daemon: Daemon) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(exit status, text report, JSON report) of `saturnd status` for this daemon."""
    where = ("-p", str(daemon.pipes), "-s", str(daemon.state))
    text = _saturnd("status", *where, env=daemon.env)
    as_json = _saturnd(*where, "status", "--json", env=daemon.env)
    assert text.returncode == as_json.returncode, (text, as_json)
    assert text.stderr == as_json.stderr == ""
    return text.returncode, _parse_text(text.stdout), json.loads(as_json.stdout)


def _agree(pairs: dict[str, str], document: dict[str, Any]) -> None:
    """The text and the JSON document say the same thing."""
    assert pairs["status"] == ("running" if document["running"] else "not running")
    assert pairs.get("pid") == (None if document["pid"] is None else str(document["pid"]))
    assert pairs["tasks"] == str(document["tasks"])
    runs = document["runs_in_progress"]
    assert pairs["runs in progress"].split(":")[0] == str(len(runs))
    for run in runs:
        commands = "".join(f", command {pid}" for pid in run["commands"])
        described = f"task {run['task']} (pid {run['pid']} {run['role']}{commands}, since"
        assert described in pairs["runs in progress"]
    assert pairs["pipes directory"] == document["pipes_dir"]
    assert pairs["state directory"] == document["state_dir"]
    assert pairs["log file"] == document["log_file"]
    if document["running"]:
        roles = document["process_roles"]
        pids = ", ".join(f"{pid} ({roles[str(pid)]})" for pid in document["processes"])
        assert pairs["processes"] == pids


def test_it_reports_a_real_daemon_before_during_a_run_and_after(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    probe = Daemon(tmp_path, NOW)  # the same directories, not started yet
    code, pairs, document = _report(probe)
    assert code == 3 and document["running"] is False and document["tasks"] == 0
    _agree(pairs, document)

    daemon = make_daemon()
    assert daemon.proc is not None
    daemon.create("-m", "1", "-H", "8", "sleep", "60")  # 08:01 only
    daemon.create("-m", "30", "true")
    daemon.create("-H", "23", "true")
    code, pairs, document = _report(daemon)
    assert code == 0 and document["running"] is True
    assert document["pid"] == daemon.proc.pid
    assert document["processes"] == daemon.pids()
    assert list(document["process_roles"].values()) == ["supervisor", "listener", "executor"]
    assert document["tasks"] == 3 and document["runs_in_progress"] == []
    assert isinstance(document["memory_rss_bytes"], int) and document["memory_rss_bytes"] > 0
    assert isinstance(document["uptime_seconds"], float) and document["uptime_seconds"] < 60
    _agree(pairs, document)

    daemon.step_to(NOW + 60)  # 08:01: the sleep starts

    def one_run() -> bool:
        return len(_report(daemon)[2]["runs_in_progress"]) == 1

    wait_for(one_run, what="status to show the run")
    code, pairs, document = _report(daemon)
    _agree(pairs, document)
    (run,) = document["runs_in_progress"]
    assert run["task"] == 0
    supervisor = psutil.Process(run["pid"])  # the run's P5: not one of the daemon's
    assert run["pid"] not in daemon.pids()
    assert run["role"] == "runs of 08:01"
    assert " ".join(supervisor.cmdline()).rstrip() == "saturnd: runs of 08:01"
    (command,) = supervisor.children()
    assert command.cmdline() == ["sleep", "60"]
    assert run["commands"] == [command.pid]

    # A wedged listener does not stop a status: it never touches the pipes.
    stopped = daemon.pids()[1:]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert _report(daemon)[0] == 0
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    command.kill()
    wait_for(lambda: daemon.runs(0), what="the killed run to be recorded")
    wait_for(lambda: not _report(daemon)[2]["runs_in_progress"], what="no run in progress")

    daemon.stop()
    code, pairs, document = _report(daemon)
    assert code == 3 and document["running"] is False and document["pid"] is None
    assert document["tasks"] == 3
    _agree(pairs, document)


def test_it_runs_with_python_dash_m(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saturnd", "status", "-s", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3 and "status:" in result.stdout


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_it_reports_a_full_state_directory_as_a_problem(small_tmpfs: Path) -> None:
    paths = Paths(small_tmpfs / "pipes", small_tmpfs / "state")
    paths.state_dir.mkdir()
    assert status.disk_full(paths.state_dir) is None
    filler = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(filler, b"\0" * 4096)
    finally:
        os.close(filler)
    problem = status.disk_full(paths.state_dir)
    assert problem is not None and "runs are not being recorded" in problem
    report = status.gather(paths)
    assert report.problems == (problem,)
    assert json.loads(status.to_json(report, now=NOW))["problems"] == [problem]
    assert f"problem:          {problem}" in status.to_text(report, now=NOW)
    running = Status(**{**report.__dict__, "processes": (ProcessInfo(1, NOW, 0, 0, 0.0),)})
    assert status.exit_status(running) == status.EXIT_CANNOT_RECORD == 4
    assert status.exit_status(report) == status.EXIT_NOT_RUNNING


def test_it_shows_each_runs_own_command_and_the_runs_whose_supervisor_was_killed(
    tmp_path: Path,
) -> None:
    for task_id in (3, 4):
        (tmp_path / f"task_{task_id}").mkdir(mode=0o700)
    spawn_runs(
        [
            RunSpec(task_id, tmp_path / f"task_{task_id}", (b"sleep", b"30"), NOW)
            for task_id in (3, 4)
        ]
    )
    try:
        wait_for(lambda: len(status.runs_in_progress(tmp_path)) == 2, what="two runs")
        wait_for(
            lambda: all(taskdir.runs_in_progress(tmp_path / f"task_{i}") for i in (3, 4)),
            what="both commands marked",
        )
        commands = {i: taskdir.runs_in_progress(tmp_path / f"task_{i}")[0][1] for i in (3, 4)}
        runs = status.runs_in_progress(tmp_path)
        # One P5 supervises both; each run shows its own command only.
        assert {run.task_id: run.commands for run in runs} == {3: (commands[3],), 4: (commands[4],)}
        assert status.abandoned_runs(tmp_path) is None
        (live,) = liveruns.live_runs(tmp_path / "task_3")
        os.kill(live.p5_pid, signal.SIGKILL)
        wait_for(lambda: status.abandoned_runs(tmp_path), what="the abandoned runs")
        problem = status.abandoned_runs(tmp_path)
        assert problem is not None
        assert f"task 3 (command {commands[3]})" in problem
        assert f"task 4 (command {commands[4]})" in problem
    finally:
        for task_id in (3, 4):
            taskdir.request_stop(tmp_path / f"task_{task_id}", now=NOW + 60)
    assert status.abandoned_runs(tmp_path) is None
