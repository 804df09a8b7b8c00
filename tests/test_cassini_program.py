"""cassini.program: the warning of `cassini -c` for a program the task will not find.

The rule is checked on a table with a fake file system, `probe` on real files, and the
whole on a real daemon: the task is created, stdout and the exit status are unchanged,
and one warning line goes to stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cassini.program import check, probe, shell_quote, warning
from tests.daemon_harness import Daemon

MakeDaemon = Callable[..., Daemon]

HOME = b"/home/me"
# A fake file system: path -> True (executable file), False (anything else).
FILES = {
    b"/bin/ls": True,
    b"/usr/bin/env": True,
    b"/home/me/hello.sh": True,
    b"/home/me/notes.txt": False,
    b"/home/me/bin/mine": True,
    b"/opt/tool": False,
}
FAILS = "the task will fail with exit code 127"


def look(path: bytes) -> bool | None:
    return FILES.get(os.path.normpath(path))


FOUND = [
    # (argv, PATH)
    ([b"ls", b"-l"], b"/usr/bin:/bin"),
    ([b"/bin/ls"], b""),
    ([b"./hello.sh"], b"/bin"),  # relative to $HOME, where tasks start
    ([b"hello.sh"], b"/bin:"),  # an empty PATH entry is the working directory: $HOME
    ([b"mine"], b"bin:/bin"),  # a relative PATH entry too
    ([b"../me/hello.sh"], b""),
]


@pytest.mark.parametrize(("argv", "path"), FOUND, ids=repr)
def test_it_says_nothing_when_the_program_will_be_found(argv: list[bytes], path: bytes) -> None:
    assert warning(argv, HOME, path, look) is None


NOT_FOUND = [
    # (argv, PATH, the warning)
    (
        [b"nosuchcommand"],
        b"/usr/bin:/bin",
        f"no program 'nosuchcommand' in the task's PATH (/usr/bin:/bin): {FAILS}",
    ),
    (
        [b"hello.sh"],
        b"/usr/bin:/bin",
        f"no program 'hello.sh' in the task's PATH (/usr/bin:/bin): {FAILS}",
    ),
    ([b"tool"], b"/opt", f"no program 'tool' in the task's PATH (/opt): {FAILS}"),  # not executable
    (
        [b"./nothere.sh"],
        b"/bin",
        f"no file '/home/me/nothere.sh' (relative paths start from $HOME): {FAILS}",
    ),
    (
        [b"notes.txt/x"],
        b"/bin",
        f"no file '/home/me/notes.txt/x' (relative paths start from $HOME): {FAILS}",
    ),
    ([b"/opt/none"], b"/bin", f"no file '/opt/none': {FAILS}"),
    ([b"/opt/tool"], b"/bin", f"'/opt/tool' is not an executable file: {FAILS}"),
    (
        [b"./notes.txt"],
        b"/bin",
        "'/home/me/notes.txt' is not an executable file (relative paths start from $HOME): "
        + FAILS,
    ),
    (
        [b"ls -l"],
        b"/bin",
        f"no program 'ls -l' in the task's PATH (/bin): {FAILS}; "
        "for a shell command line, give the command as: sh -c 'ls -l'",
    ),
    (
        [b"ls -l", b"/my dir", b"it's"],
        b"/bin",
        f"no program 'ls -l' in the task's PATH (/bin): {FAILS}; for a shell command line, "
        """give the command as: sh -c 'ls -l "$@"' sh '/my dir' 'it'\\''s'""",
    ),
    (
        [b"./run it"],
        b"/bin",
        f"no file '/home/me/run it' (relative paths start from $HOME): {FAILS}; "
        "for a shell command line, give the command as: sh -c './run it'",
    ),
]


@pytest.mark.parametrize(("argv", "path", "expected"), NOT_FOUND, ids=repr)
def test_it_says_why_the_program_will_not_be_found(
    argv: list[bytes], path: bytes, expected: str
) -> None:
    assert warning(argv, HOME, path, look) == expected


def test_it_searches_the_default_path_when_path_is_unset() -> None:
    assert os.defpath.split(":")[-1] == "/usr/bin"  # what the fake file system assumes
    assert warning([b"env"], HOME, None, look) is None
    assert warning([b"ls"], HOME, None, lambda path: None) is not None


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("ls", "ls"), ("a b", "'a b'"), ("it's", "'it'\\''s'"), ("", "''"), ("$x", "'$x'")],
)
def test_it_quotes_for_the_shell(text: str, quoted: str) -> None:
    assert shell_quote(text) == quoted
    done = subprocess.run(["sh", "-c", f"printf %s {quoted}"], capture_output=True, check=True)
    assert done.stdout == text.encode()


def test_it_probes_real_files(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o644)  # no execute bit for anyone: refused even to root
    (tmp_path / "dangling").symlink_to(tmp_path / "none")
    assert probe(os.fsencode(script)) is True
    assert probe(os.fsencode(plain)) is False
    assert probe(os.fsencode(tmp_path)) is False  # a directory
    assert probe(os.fsencode(tmp_path / "dangling")) is False
    assert probe(os.fsencode(tmp_path / "none")) is None
    assert probe(b"a\0b") is None


# --- on a real daemon ---------------------------------------------------------------------


def _create(
    daemon: Daemon, *argv: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`cassini -p PIPES -c ARGV` with the daemon's environment (HOME: its root)."""
    return subprocess.run(
        [sys.executable, "-m", "cassini", "-p", str(daemon.pipes), "-c", *argv],
        capture_output=True,
        text=True,
        env=daemon.env,
        cwd=cwd,
        timeout=30,
        check=False,
    )


def test_it_creates_the_task_and_warns(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    done = _create(daemon, "nosuchcommand")
    assert (done.stdout, done.returncode) == ("0\n", 0)
    expected = f"no program 'nosuchcommand' in the task's PATH (/usr/bin:/bin): {FAILS}"
    assert done.stderr == f"cassini: warning: {expected}\n"

    done = _create(daemon, "ls -l")
    assert (done.stdout, done.returncode) == ("1\n", 0)
    assert done.stderr.endswith("give the command as: sh -c 'ls -l'\n")
    assert done.stderr.count("\n") == 1
    assert daemon.cassini("-l").stdout == b"0: * * * nosuchcommand\n1: * * * ls -l\n"


def test_it_looks_for_a_relative_path_from_home(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    daemon = make_daemon(root=tmp_path / "home")
    here = tmp_path / "here"
    here.mkdir()
    script = here / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    # In the current directory, but tasks start in $HOME.
    done = _create(daemon, "./hello.sh", cwd=here)
    assert (done.stdout, done.returncode) == ("0\n", 0)
    expected = f"no file '{daemon.root}/hello.sh' (relative paths start from $HOME)"
    assert done.stderr == f"cassini: warning: {expected}: {FAILS}\n"

    script.rename(daemon.root / "hello.sh")
    (daemon.root / "hello.sh").chmod(0o644)
    done = _create(daemon, "./hello.sh", cwd=here)
    assert "is not an executable file" in done.stderr and done.returncode == 0

    (daemon.root / "hello.sh").chmod(0o755)
    done = _create(daemon, "./hello.sh", cwd=here)
    assert (done.stdout, done.stderr, done.returncode) == ("2\n", "", 0)


def test_it_says_nothing_for_a_program_in_path(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    done = _create(daemon, "-m", "0", "echo", "hi")
    assert (done.stdout, done.stderr, done.returncode) == ("0\n", "", 0)


def _bin_with(tmp_path: Path, name: str) -> Path:
    """A directory holding an executable script `name`."""
    directory = tmp_path / "mybin"
    directory.mkdir()
    script = directory / name
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    return directory


def test_it_looks_in_the_tasks_path_not_cassinis(tmp_path: Path) -> None:
    """The task gets cron's PATH, whatever PATH cassini was started with."""
    directory = _bin_with(tmp_path, "mytool")
    env = {"HOME": str(tmp_path), "PATH": f"{directory}:/usr/bin:/bin"}
    code = "import sys; from cassini.program import check; print(check([b'mytool']))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout == f"no program 'mytool' in the task's PATH (/usr/bin:/bin): {FAILS}\n"


def test_it_looks_in_the_path_the_task_sets(tmp_path: Path) -> None:
    directory = os.fsencode(_bin_with(tmp_path, "mytool"))
    assert check([b"mytool"], [(b"PATH", b"/nowhere"), (b"PATH", directory)]) is None
    # The last PATH wins, as in the task's environment.
    last = check([b"mytool"], [(b"PATH", directory), (b"PATH", b"/nowhere")])
    assert last == f"no program 'mytool' in the task's PATH (/nowhere): {FAILS}"
