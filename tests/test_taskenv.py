"""What a task sees: the pure rule of saturnd.taskenv, then real runs (spawn_run, real
processes) printing their environment, umask, working directory and standard input."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from saturnd.spawn import identity
from saturnd.task import Extras
from saturnd.taskenv import Identity, environment
from tests.conftest import NOW
from tests.daemon_harness import Daemon, wait_for
from tests.test_spawn import TASK_ID, run

ME = Identity(b"alice", b"/home/alice")


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """An empty task directory, as store creates it."""
    directory = tmp_path / f"task_{TASK_ID}"
    directory.mkdir(mode=0o700)
    return directory


def user() -> bytes:
    try:
        return os.fsencode(pwd.getpwuid(os.getuid()).pw_name)
    except KeyError:
        return b"%d" % os.getuid()


def test_it_gives_cron_s_five_variables_in_order() -> None:
    assert list(environment(ME).items()) == [
        (b"HOME", b"/home/alice"),
        (b"LOGNAME", b"alice"),
        (b"USER", b"alice"),
        (b"SHELL", b"/bin/sh"),
        (b"PATH", b"/usr/bin:/bin"),
    ]


def test_it_adds_the_task_s_variables_in_order_and_a_later_one_wins() -> None:
    own = (
        (b"B", b"1"),
        (b"PATH", b"/opt/bin"),
        (b"A", b""),
        (b"B", b"2"),
        (b"SHELL", b"/bin/bash"),
    )
    assert environment(ME, own) == {
        b"HOME": b"/home/alice",
        b"LOGNAME": b"alice",
        b"USER": b"alice",
        b"SHELL": b"/bin/bash",
        b"PATH": b"/opt/bin",
        b"B": b"2",
        b"A": b"",
    }
    assert list(environment(ME, own))[5:] == [b"B", b"A"]


def test_it_shows_the_task_s_mailto_as_cron_does() -> None:
    assert environment(ME, (), b"")[b"MAILTO"] == b""
    assert environment(ME, (), b"bob")[b"MAILTO"] == b"bob"
    assert environment(ME, ((b"MAILTO", b"carol"),), b"bob")[b"MAILTO"] == b"carol"
    assert b"MAILTO" not in environment(ME, (), None)


def test_it_keeps_logname_and_user_the_user_s() -> None:
    own = ((b"LOGNAME", b"root"), (b"USER", b"root"), (b"HOME", b"/srv"))
    env = environment(ME, own)
    assert (env[b"LOGNAME"], env[b"USER"], env[b"HOME"]) == (b"alice", b"alice", b"/srv")


def test_it_takes_home_from_the_daemon_else_the_password_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert identity() == Identity(user(), os.fsencode(tmp_path))
    monkeypatch.delenv("HOME")
    try:
        home = os.fsencode(pwd.getpwuid(os.getuid()).pw_dir) or b"/"
    except KeyError:
        home = b"/"
    assert identity() == Identity(user(), home)


def test_it_runs_a_task_in_cron_s_environment_umask_and_home(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # What the shell that started the daemon had must not reach the task.
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("OLDPWD", "/somewhere")
    monkeypatch.setenv("LC_CTYPE", "C.UTF-8")
    monkeypatch.setenv("PATH", "/daemon/bin:/usr/bin:/bin")
    old = os.umask(0o077)  # the daemon's own
    try:
        code, out, err = run(task_dir, "/bin/sh", "-c", "env; umask; pwd -P")
    finally:
        os.umask(old)
    assert (code, err) == (0, b"")
    lines = out.splitlines()
    # dash's and bash's sh add PWD (and bash SHLVL, _) to what they were given.
    added = {b"PWD", b"SHLVL", b"_"}
    env = [line for line in lines[:-2] if line.split(b"=", 1)[0] not in added]
    me = user()
    home_bytes = os.fsencode(home)
    assert sorted(env) == sorted(
        [
            b"HOME=" + home_bytes,
            b"LOGNAME=" + me,
            b"USER=" + me,
            b"SHELL=/bin/sh",
            b"PATH=/usr/bin:/bin",
        ]
    )
    assert lines[-2:] == [b"0022", os.fsencode(home.resolve())]


def test_it_keeps_the_daemon_s_umask_for_the_runs_supervisor(task_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        # The command's parent is the runs' supervising process (P5).
        code, out, err = run(task_dir, "/bin/sh", "-c", "umask; grep Umask /proc/$PPID/status")
    finally:
        os.umask(old)
    assert (code, err) == (0, b"")
    assert out == b"0022\nUmask:\t0077\n"


def test_it_runs_a_task_with_its_own_variables_and_home(task_dir: Path, tmp_path: Path) -> None:
    own_home = tmp_path / "own home"
    own_home.mkdir()
    extras = Extras(
        env=(
            (b"HOME", os.fsencode(own_home)),
            (b"GREETING", b"hello world"),
            (b"LOGNAME", b"someone-else"),
        )
    )
    code, out, err = run(
        task_dir, "/bin/sh", "-c", 'echo "$GREETING|$LOGNAME|$HOME"; pwd -P', extras=extras
    )
    assert (code, err) == (0, b"")
    assert out == b"hello world|%s|%s\n%s\n" % (
        user(),
        os.fsencode(own_home),
        os.fsencode(own_home.resolve()),
    )


def test_it_feeds_the_task_s_input(task_dir: Path) -> None:
    text = b"first line\nsecond % line\n"
    assert run(task_dir, "cat", extras=Extras(stdin=text)) == (0, text, b"")
    # No input: /dev/null, as before.
    assert run(task_dir, "cat") == (0, b"", b"")


def test_it_feeds_a_big_input_that_the_command_never_reads(task_dir: Path) -> None:
    big = b"x" * (4 << 20)  # far more than a pipe holds
    assert run(task_dir, "true", extras=Extras(stdin=big)) == (0, b"", b"")
    assert run(task_dir, "wc", "-c", extras=Extras(stdin=big)) == (0, b"4194304\n", b"")


def test_it_gives_a_real_daemon_s_task_cron_s_world(
    make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shell that starts the daemon has its own junk; the task must see none of it.
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("OLDPWD", "/somewhere")
    monkeypatch.setenv("_", "/usr/bin/saturnd")
    daemon = make_daemon()
    task_id = daemon.create("-m", "1", "-H", "8", "/bin/sh", "-c", "env; umask; pwd -P; touch f")
    daemon.step_to(NOW + 60)
    wait_for(lambda: daemon.runs(task_id), what="the run to finish")
    assert daemon.runs(task_id) == [("2026-11-21 08:01:00", 0)]
    lines = daemon.cassini("-o", str(task_id)).stdout.splitlines()
    added = {b"PWD", b"SHLVL", b"_"}
    env = sorted(line for line in lines[:-2] if line.split(b"=", 1)[0] not in added)
    home = os.fsencode(daemon.root)
    me = user()
    assert env == sorted(
        [b"HOME=" + home, b"LOGNAME=" + me, b"USER=" + me, b"SHELL=/bin/sh", b"PATH=/usr/bin:/bin"]
    )
    assert lines[-2:] == [b"0022", os.fsencode(daemon.root.resolve())]
    # The daemon's own files stay private; what the task creates follows umask 022.
    assert (daemon.root / "f").stat().st_mode & 0o777 == 0o644
    assert (daemon.state / "cmds").stat().st_mode & 0o777 == 0o600


def test_it_refuses_an_environment_execve_cannot_pass_without_losing_the_batch(
    task_dir: Path,
) -> None:
    # The store refuses such a task; P5 must still never die of one (posix_spawn raises
    # ValueError, not OSError, and the batch's other runs would be lost).
    for bad in ((b"A=B", b"x"), (b"A", b"x\0y"), (b"", b"x")):
        assert run(task_dir, "true", extras=Extras(env=(bad,))) == (
            127,
            b"",
            b"saturnd: cannot execute 'true': invalid environment variable\n",
        )
    assert run(task_dir, "true", extras=Extras(env=((b"A", b"x"),)))[0] == 0
