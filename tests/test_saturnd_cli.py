"""saturnd's command line: --version, the help's sub-commands, short usage errors, and
`saturnd stop` against real daemons."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil

import saturnd
from tests.daemon_harness import SATURND, Daemon

ROOT = Path(__file__).resolve().parent.parent


def _saturnd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SATURND, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


# --- version, help and usage errors -------------------------------------------------------


def test_it_prints_its_version() -> None:
    # One version for both programs (saturnd/__init__.py), the installed one included.
    from importlib import metadata

    assert metadata.version("saturnd") == saturnd.__version__
    result = _saturnd("--version")
    expected = f"saturnd {saturnd.__version__}\n"
    assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


def test_it_lists_its_sub_commands_in_the_help() -> None:
    result = _saturnd("-h")
    assert result.returncode == 0
    assert "positional arguments" not in result.stdout and "[status]" not in result.stdout
    commands = result.stdout.split("\ncommands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in commands if line.startswith("  ") and line[2] != " "] == [
        "status",
        "stop",
    ]
    assert "saturnd [-p PIPES_DIR] [-s STATE_DIR] stop\n" in result.stdout


def test_it_tells_a_sub_command_error_with_that_sub_command_usage() -> None:
    for command, bad in (("status", "--jsn"), ("stop", "--now")):
        result = _saturnd(command, bad)
        assert result.returncode == 2 and result.stdout == ""
        usage, error = result.stderr.splitlines()
        assert usage.startswith(f"usage: saturnd {command} [-h] [-p PIPES_DIR]")
        assert error == (
            f"saturnd {command}: unrecognized arguments: {bad} (see `saturnd {command} -h`)"
        )


def test_it_blames_the_main_command_line_for_what_came_before_the_sub_command() -> None:
    result = _saturnd("--bogus", "status")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "saturnd: unrecognized arguments: --bogus (see `saturnd -h`)"
    )
    result = _saturnd("-f", "stop")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "saturnd stop: does not take -f (see `saturnd stop -h`)"
    )


# --- saturnd stop -----------------------------------------------------------------------


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie that only waits for its parent (us)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _lock_is_free(pid_file: Path) -> bool:
    fd = os.open(pid_file, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_it_stops_the_daemon_and_returns_once_it_has_exited(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    pids = daemon.pids()
    assert len(pids) == 3  # supervisor, listener, executor
    where = ("-p", str(daemon.pipes), "-s", str(daemon.state))
    result = _saturnd("stop", *where, env=daemon.env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"stopped saturnd (pid {pids[0]}) of {daemon.state}\n"
    # No waiting here: all of it is already true when `stop` returns.
    assert [pid for pid in pids if not _gone(pid)] == []
    assert _lock_is_free(daemon.state / "saturnd.pid")

    again = _saturnd(*where, "stop", env=daemon.env)
    assert (again.returncode, again.stdout) == (3, "")
    assert again.stderr == f"saturnd: no saturnd runs for {daemon.state}\n"


def test_it_says_so_when_no_daemon_runs(tmp_path: Path) -> None:
    result = _saturnd("stop", "-p", str(tmp_path / "pipes"), "-s", str(tmp_path / "state"))
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == f"saturnd: no saturnd runs for {tmp_path / 'state'}\n"
    assert list(tmp_path.iterdir()) == []  # it creates nothing


def test_it_never_stops_another_daemon_through_the_wrong_pipes(
    tmp_path: Path, make_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_daemon(root=tmp_path / "a")
    second = make_daemon(root=tmp_path / "b")
    # The state directory of the first, the pipes of the second.
    result = _saturnd("stop", "-s", str(first.state), "-p", str(second.pipes), env=first.env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"saturnd: the saturnd of {first.state} (pid {first.pids()[0]}) does not listen "
        f"in {second.pipes} (give its -p)\n"
    )
    missing = _saturnd("stop", "-s", str(first.state), "-p", str(tmp_path), env=first.env)
    assert missing.returncode == 1 and "no saturnd-request-pipe there" in missing.stderr
    assert len(first.pids()) == len(second.pids()) == 3  # both still run
    assert first.cassini("-l").returncode == second.cassini("-l").returncode == 0
