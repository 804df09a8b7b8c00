"""Start-up and shutdown: one daemon per pipes directory (saturnd.lock), the checks of
the default pipes path before anything is created, SATURND_PIPES_DIR, and a stop that
does not wait out the supervisor's grace period."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from saturnd.startup import (
    PIPES_HINT,
    DaemonError,
    parse_pipes_owner,
    pipes_dir_choice,
    secure_dir,
)
from tests.conftest import NOW
from tests.daemon_harness import SATURND, Daemon, owner_name, wait_for

MakeDaemon = Callable[..., Daemon]
NOBODY = 65534


def _saturnd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SATURND, *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def _lock_is_free(path: Path) -> bool:
    """Whether a new open of `path` gets its flock at once (as a new daemon would)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


# --- one daemon per pipes directory ---------------------------------------------------


def test_it_names_itself_in_the_pipes_lock(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    lock = daemon.pipes / "saturnd.lock"
    assert lock.read_bytes() == f"{daemon.pids()[0]}\n{daemon.state}\n".encode()
    assert lock.lstat().st_mode & 0o777 == 0o600
    assert not _lock_is_free(lock)


def test_it_refuses_a_second_daemon_on_the_same_pipes_directory(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon()
    other_state = tmp_path / "other-state"
    started = time.monotonic()
    result = _saturnd("-f", "-p", str(daemon.pipes), "-s", str(other_state), env=daemon.env)
    waited = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr == (
        f"saturnd: pipes directory {daemon.pipes} is in use by another saturnd "
        f"(pid {daemon.pids()[0]}, state directory {daemon.state})\n"
    )
    assert waited >= 1.0  # it gave a stopping cassini -q its second
    # It let go of its own state directory, and the first daemon still answers.
    assert _lock_is_free(other_state / "saturnd.pid")
    assert daemon.cassini("-l").returncode == 0


def test_it_still_says_already_running_for_the_same_state_directory(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon()
    for pipes in (daemon.pipes, tmp_path / "other-pipes"):
        result = _saturnd("-f", "-p", str(pipes), "-s", str(daemon.state), env=daemon.env)
        assert result.returncode == 0
        assert result.stderr == (
            f"saturnd: already running (pid {daemon.pids()[0]}) for {daemon.state}\n"
        )


def _p5_and_runs(state: Path) -> list[psutil.Process]:
    """The runs' supervisors (P5) named in `stdout.<P5 pid>.<n>.tmp`, and their children."""
    found = []
    for temporary in state.glob("task_*/stdout.*.tmp"):
        p5 = psutil.Process(int(temporary.name.split(".")[1]))
        found += [p5, *p5.children(recursive=True)]
    return found


def test_it_releases_both_locks_at_terminate_while_a_run_goes_on(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon()
    daemon.create("sleep", "30")
    daemon.step_to(NOW + 60)
    wait_for(lambda: len(_p5_and_runs(daemon.state)) == 2, what="the run to start")
    runs = _p5_and_runs(daemon.state)
    lock = daemon.pipes / "saturnd.lock"
    for process in runs:  # no run holds either lock file open
        held = {Path(f.path) for f in process.open_files()}
        assert not held & {lock, daemon.state / "saturnd.pid"}, process
    assert daemon.cassini("-q").returncode == 0
    assert daemon.proc is not None and daemon.proc.wait(timeout=10) == 0
    daemon.proc = None
    assert all(process.is_running() for process in runs)  # the run goes on
    assert _lock_is_free(lock) and not (daemon.state / "saturnd.pid").exists()
    # `cassini -q && saturnd`: a new daemon starts at once on both directories.
    again = make_daemon(start=NOW + 60)
    assert again.cassini("-l").returncode == 0
    for process in runs:
        process.kill()


def test_it_stops_at_once_when_stopped_just_after_start(tmp_path: Path) -> None:
    """A SIGTERM that reached a part before it had its own handlers was lost, and the
    supervisor waited 5 s before killing that part (14 stops in 15, before the fix)."""
    for attempt in range(3):
        root = tmp_path / str(attempt)
        daemon = subprocess.Popen(
            [SATURND, "-f", "-p", str(root / "pipes"), "-s", str(root / "state")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            supervisor = psutil.Process(daemon.pid)
            wait_for(lambda s=supervisor: len(s.children()) == 2, what="the parts to fork")
            daemon.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert daemon.wait(timeout=10) == 0
            assert time.monotonic() - started < 2.0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()


# --- directories ------------------------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A directory another user created where ours was to be (as /tmp/<USERNAME>)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user (uid 65534)")
    base = tmp_path / "alice"
    base.mkdir(mode=0o777)
    os.chown(base, NOBODY, NOBODY)
    return base


def test_it_checks_the_default_path_before_creating_anything(planted: Path) -> None:
    notes: list[str] = []
    with pytest.raises(DaemonError) as raised:
        secure_dir(planted / "saturnd" / "pipes", planted, notes, PIPES_HINT)
    assert str(raised.value) == (
        f"{planted} is owned by {owner_name(NOBODY)}, not by you; choose another pipes "
        "directory with -p DIR or SATURND_PIPES_DIR=DIR (both saturnd and cassini read it)"
    )
    assert os.listdir(planted) == []  # nothing of ours in another user's directory


def test_it_checks_a_planted_directory_further_down_too(planted: Path, tmp_path: Path) -> None:
    ours = tmp_path / "bob"
    ours.mkdir(mode=0o700)
    (ours / "saturnd").mkdir(mode=0o700)
    os.chown(ours / "saturnd", NOBODY, NOBODY)
    with pytest.raises(DaemonError, match="saturnd is owned by"):
        secure_dir(ours / "saturnd" / "pipes", ours, [], PIPES_HINT)
    assert os.listdir(ours / "saturnd") == []


def test_it_refuses_a_planted_pipes_directory_in_one_line(planted: Path, tmp_path: Path) -> None:
    result = _saturnd("-f", "-p", str(planted), "-s", str(tmp_path / "state"))
    assert result.returncode == 1
    assert result.stderr == (
        f"saturnd: {planted} is owned by {owner_name(NOBODY)}, not by you; {PIPES_HINT}\n"
    )


def test_it_takes_p_then_the_variable_then_the_default(tmp_path: Path) -> None:
    env = {"SATURND_PIPES_DIR": "relative/pipes"}
    assert pipes_dir_choice("/x", env, "alice") == (Path("/x"), None)
    assert pipes_dir_choice(None, env, "alice") == (Path(os.path.abspath("relative/pipes")), None)
    default = (Path("/tmp/alice/saturnd/pipes"), Path("/tmp/alice"))
    assert pipes_dir_choice(None, {"SATURND_PIPES_DIR": ""}, "alice") == default
    assert pipes_dir_choice(None, {}, "alice") == default


def test_it_reads_the_pipes_directory_from_the_environment(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon()
    env = {**daemon.env, "SATURND_PIPES_DIR": str(daemon.pipes)}
    # Another saturnd on the same pipes directory, chosen through the variable only.
    result = _saturnd("-f", "-s", str(tmp_path / "other-state"), env=env)
    assert result.returncode == 1 and "is in use by another saturnd" in result.stderr
    # -p beats the variable.
    result = _saturnd(
        "-p", str(tmp_path / "p"), "-s", str(daemon.state), "status", "--json", env=env
    )
    assert json.loads(result.stdout)["pipes_dir"] == str(tmp_path / "p")
    result = _saturnd("-s", str(daemon.state), "status", "--json", env=env)
    assert result.returncode == 0
    assert json.loads(result.stdout)["pipes_dir"] == str(daemon.pipes)


def test_it_replaces_a_symlink_where_its_pipes_lock_goes(tmp_path: Path) -> None:
    pipes, target = tmp_path / "pipes", tmp_path / "target"
    pipes.mkdir(mode=0o700)
    target.write_bytes(b"keep")
    (pipes / "saturnd.lock").symlink_to(target)
    daemon = Daemon(tmp_path, NOW)
    try:
        daemon.start()
        assert not (pipes / "saturnd.lock").is_symlink()
        assert target.read_bytes() == b"keep"
        assert "was not a regular file; replaced it" in (daemon.state / "saturnd.log").read_text()
    finally:
        daemon.stop()


def test_it_reads_who_holds_a_pipes_lock() -> None:
    assert parse_pipes_owner(b"123\n/x/y\n") == (123, Path("/x/y"))
    for partial in (b"", b"123\n", b"123\n/x/y", b"x\n/x/y\n", b"123\n\n", b"1\n/a\n/b\n"):
        assert parse_pipes_owner(partial) is None
