"""Tests of saturnd.spawn with real forks, real files and real commands.

Runs are recorded by `record_run`, a small implementation of the `times-exitcodes`
format of DESIGN.md (NBRUNS uint32, then TIME int64 + EXITCODE uint16 per run,
big-endian) with the same locking as `taskdir.append_run`, so these tests do not depend
on it; `test_it_records_with_taskdir_by_default` checks the real default. No test
sleeps for long: each polls for what it waits for, with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import signal
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from saturnd.spawn import RunSpec, spawn_run, spawn_runs
from saturnd.task import NO_EXTRAS, Extras

START = 1_795_248_000  # a fixed start time: the history must show it, not the real clock
TASK_ID = 7
DEADLINE = 5.0
GLIBC_INTERNAL_SIGNALS = (1 << 31) | (1 << 32)  # signals 32 and 33, as /proc bit masks


def run_files(directory: Path) -> list[str]:
    """The course's files of a task directory and any leftover: without the rich
    history and the kept outputs (history.py), which tests of their own check."""
    return sorted(
        name for name in os.listdir(directory) if name != "history" and not name.startswith("kept.")
    )


def record_run(task_dir: Path, time: int, exitcode: int) -> None:
    """Append one run to `task_dir/times-exitcodes` (the format and lock of store)."""
    fd = os.open(task_dir / "times-exitcodes", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        header = os.pread(fd, 4, 0)
        count = struct.unpack(">I", header)[0] if len(header) == 4 else 0
        os.pwrite(fd, struct.pack(">qH", time, exitcode), 4 + 10 * count)
        os.pwrite(fd, struct.pack(">I", count + 1), 0)
    finally:
        os.close(fd)


def read_runs(task_dir: Path) -> list[tuple[int, int]]:
    """The (time, exitcode) records of `task_dir/times-exitcodes`, oldest first."""
    try:
        data = (task_dir / "times-exitcodes").read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < 4:
        return []  # created, header not written yet
    (count,) = struct.unpack_from(">I", data)
    # A longer file is a record being appended: NBRUNS is written after it.
    assert len(data) >= 4 + 10 * count
    return [struct.unpack_from(">qH", data, 4 + 10 * i) for i in range(count)]


def temp_files(directory: Path) -> list[str]:
    """Temporary output files left in `directory`."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll `predicate` every few milliseconds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.003)


def markers(directory: Path) -> list[str]:
    """Markers of runs in progress (liveruns.py): P5 unlinks one after recording it."""
    return sorted(name for name in os.listdir(directory) if "running." in name)


def wait_finished(task_dir: Path, count: int) -> list[tuple[int, int]]:
    """Wait until `count` runs are recorded, their outputs renamed and their markers
    gone (P5 drops a marker just after the record: a run is over only then)."""
    wait_for(
        lambda: (
            len(read_runs(task_dir)) == count and not temp_files(task_dir) and not markers(task_dir)
        ),
        f"{count} finished runs in {task_dir}",
    )
    return read_runs(task_dir)


def gone(pid: int) -> bool:
    """True once `pid` has exited (an orphan may stay a zombie: init may not reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """An empty task directory, as store creates it."""
    directory = tmp_path / f"task_{TASK_ID}"
    directory.mkdir(mode=0o700)
    return directory


def spawn(
    task_dir: Path,
    *argv: bytes | str,
    start: int = START,
    extras: Extras = NO_EXTRAS,
    **kwargs: Any,
) -> None:
    """spawn_run with the test recorder unless another is given."""
    kwargs.setdefault("record", record_run)
    args = tuple(os.fsencode(a) for a in argv)
    spawn_run(RunSpec(TASK_ID, task_dir, args, start, extras), **kwargs)


def run(task_dir: Path, *argv: bytes | str, **kwargs: Any) -> tuple[int, bytes, bytes]:
    """Spawn one run, wait for it: (exitcode, stdout, stderr)."""
    before = len(read_runs(task_dir))
    spawn(task_dir, *argv, **kwargs)
    runs = wait_finished(task_dir, before + 1)
    assert runs[-1][0] == START
    return runs[-1][1], (task_dir / "stdout").read_bytes(), (task_dir / "stderr").read_bytes()


_markers = itertools.count(1)


@pytest.fixture
def sleeper(task_dir: Path) -> Iterator[Callable[..., tuple[int, int]]]:
    """Start `sleep` runs found by a unique argument: (P5 pid, P6 pid); killed at the end."""
    started: list[int] = []

    def start(**kwargs: Any) -> tuple[int, int]:
        marker = f"4.{os.getpid()}{next(_markers):03d}"
        spawn(task_dir, "sleep", marker, **kwargs)
        found: list[psutil.Process] = []

        def exec_done() -> bool:
            found[:] = [
                p
                for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] == ["sleep", marker]
            ]
            return bool(found)

        wait_for(exec_done, f"sleep {marker}")
        p6 = found[0].pid
        started.append(p6)
        return found[0].ppid(), p6

    yield start
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_it_records_exit_0_with_exact_outputs(task_dir: Path) -> None:
    code, out, err = run(task_dir, "sh", "-c", "printf 'out\\n2'; printf 'err' >&2")
    assert (code, out, err) == (0, b"out\n2", b"err")
    assert read_runs(task_dir) == [(START, 0)]
    for name in ("stdout", "stderr", "times-exitcodes"):
        assert (task_dir / name).stat().st_mode & 0o777 == 0o600
    assert run_files(task_dir) == ["stderr", "stdout", "times-exitcodes"]


def test_it_records_exit_3(task_dir: Path) -> None:
    assert run(task_dir, "sh", "-c", "echo bye; exit 3") == (3, b"bye\n", b"")


def test_it_records_a_death_by_signal_as_ffff(task_dir: Path) -> None:
    assert run(task_dir, "sh", "-c", "echo before; kill -9 $$")[:2] == (0xFFFF, b"before\n")


def test_it_reports_a_missing_program_as_127(task_dir: Path) -> None:
    code, out, err = run(task_dir, "saturnd-no-such-program", "arg")
    assert (code, out) == (127, b"")
    assert err == b"saturnd: cannot execute 'saturnd-no-such-program': No such file or directory\n"


def test_it_reports_a_non_executable_file_as_126(task_dir: Path, tmp_path: Path) -> None:
    # As sh and cron: 126 for a file found but not executable, 127 only when not found.
    # Root too gets EACCES here: it needs at least one execute bit.
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho should-not-run\n")
    script.chmod(0o644)
    code, out, err = run(task_dir, str(script))
    assert (code, out) == (126, b"")
    assert err == f"saturnd: cannot execute '{script}': Permission denied\n".encode()


def test_it_reports_a_nul_byte_in_argv_as_127(task_dir: Path) -> None:
    code, _, err = run(task_dir, b"echo", b"a\0b")
    assert (code, err) == (127, b"saturnd: cannot execute 'echo': argument contains a NUL byte\n")


def test_it_runs_a_script_without_shebang_with_sh(task_dir: Path, tmp_path: Path) -> None:
    # What execvp does on ENOEXEC, and what a shell does.
    script = tmp_path / "plain-script"
    script.write_text('echo from-sh "$1"\n')
    script.chmod(0o755)
    assert run(task_dir, str(script), "x y") == (0, b"from-sh x y\n", b"")


def test_it_restores_sigpipe(task_dir: Path) -> None:
    # Python ignores SIGPIPE: inherited, `yes` would get EPIPE and complain on stderr.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    assert run(task_dir, "sh", "-c", "yes | head -1") == (0, b"y\n", b"")


def test_it_resets_ignored_and_blocked_signals(task_dir: Path) -> None:
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        code, out, _ = run(task_dir, "grep", "^Sig", "/proc/self/status")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGHUP, old_hup)
    fields = dict(line.split(":\t") for line in out.decode().splitlines())
    assert code == 0
    # glibc's posix_spawn leaves its own two internal signals (32 and 33, which no
    # program can use through glibc) ignored: every other one must be at its default.
    assert int(fields["SigIgn"], 16) & ~GLIBC_INTERNAL_SIGNALS == 0
    assert int(fields["SigIgn"], 16) & (1 << (signal.SIGHUP - 1)) == 0
    assert int(fields["SigBlk"], 16) == 0


def test_it_reads_stdin_from_dev_null(task_dir: Path) -> None:
    assert run(task_dir, "cat") == (0, b"", b"")
    assert run(task_dir, "readlink", "/proc/self/fd/0") == (0, b"/dev/null\n", b"")


def test_it_runs_in_home(task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert run(task_dir, "pwd", "-P") == (0, f"{home.resolve()}\n".encode(), b"")
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    assert run(task_dir, "pwd", "-P") == (0, b"/\n", b"")
    # A task's own HOME is its working directory, as cron's chdir to the entry's HOME.
    own = Extras(env=((b"HOME", os.fsencode(home)),))
    assert run(task_dir, "pwd", "-P", extras=own) == (0, f"{home.resolve()}\n".encode(), b"")


def test_it_runs_in_its_own_session(sleeper: Callable[..., tuple[int, int]]) -> None:
    p5, p6 = sleeper()
    ours = os.getsid(0)
    assert os.getsid(p5) == p5 != ours
    assert os.getsid(p6) == p6 != ours
    assert os.getpgid(p6) == p6


def test_it_does_not_leak_the_parents_fds(
    sleeper: Callable[..., tuple[int, int]], tmp_path: Path
) -> None:
    plain_path = tmp_path / "plain"
    locked_path = tmp_path / "pid-file"
    plain = os.open(plain_path, os.O_WRONLY | os.O_CREAT, 0o600)
    locked = os.open(locked_path, os.O_RDWR | os.O_CREAT, 0o600)
    # Inheritable, so that only spawn's own closing keeps them from the command too.
    os.set_inheritable(plain, True)
    os.set_inheritable(locked, True)
    fcntl.flock(locked, fcntl.LOCK_EX)
    try:
        p5, p6 = sleeper()
    finally:
        os.close(plain)
        os.close(locked)  # the flock is released unless a run holds a copy
    for pid in (p5, p6):
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert str(plain_path) not in targets
        assert str(locked_path) not in targets
    assert sorted(os.listdir(f"/proc/{p6}/fd")) == ["0", "1", "2"]
    again = os.open(locked_path, os.O_RDWR)
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if leaked
    finally:
        os.close(again)


def test_it_keeps_keep_fds_in_p5_only(
    sleeper: Callable[..., tuple[int, int]], tmp_path: Path
) -> None:
    kept_path = tmp_path / "kept"
    kept = os.open(kept_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        p5, p6 = sleeper(keep_fds=[kept])
        assert os.readlink(f"/proc/{p5}/fd/{kept}") == str(kept_path)
        assert sorted(os.listdir(f"/proc/{p6}/fd")) == ["0", "1", "2"]
    finally:
        os.close(kept)


def test_it_publishes_the_output_of_the_run_recorded_last(task_dir: Path) -> None:
    def slow_after_recording(directory: Path, start: int, exitcode: int) -> None:
        record_run(directory, start, exitcode)
        if exitcode == 5:
            # Run A has recorded and released the history's lock but not renamed yet:
            # without spawn's directory lock, run B would record and rename meanwhile,
            # and A's late rename would leave A's output after B's record.
            time.sleep(0.3)

    spawn(
        task_dir, "sh", "-c", "echo A; echo a >&2; exit 5", start=1000, record=slow_after_recording
    )
    wait_for(lambda: len(read_runs(task_dir)) == 1, "run A recorded")
    spawn(
        task_dir, "sh", "-c", "echo B; echo b >&2; exit 6", start=2000, record=slow_after_recording
    )
    assert wait_finished(task_dir, 2) == [(1000, 5), (2000, 6)]
    assert (task_dir / "stdout").read_bytes() == b"B\n"
    assert (task_dir / "stderr").read_bytes() == b"b\n"


def test_it_keeps_history_and_output_in_step_when_runs_end_together(task_dir: Path) -> None:
    for i in range(10):
        spawn(task_dir, "sh", "-c", f"sleep 0.2; echo {i}; echo {i} >&2; exit {i}", start=i)
    runs = wait_finished(task_dir, 10)
    assert sorted(runs) == [(i, i) for i in range(10)]
    last = runs[-1][1]
    assert (task_dir / "stdout").read_bytes() == f"{last}\n".encode()
    assert (task_dir / "stderr").read_bytes() == f"{last}\n".encode()


def test_it_leaves_nothing_when_the_task_is_removed_during_a_run(
    sleeper: Callable[..., tuple[int, int]], task_dir: Path
) -> None:
    p5, p6 = sleeper()
    assert len(temp_files(task_dir)) == 2
    shutil.rmtree(task_dir)
    os.kill(p6, signal.SIGKILL)
    wait_for(lambda: gone(p5), "P5 to exit")
    assert not task_dir.exists()


def test_it_leaves_nothing_when_the_task_directory_is_gone(tmp_path: Path) -> None:
    logger = file_logger(tmp_path / "log")
    missing = tmp_path / "task_99"
    spawn(missing, "sh", "-c", f"echo ran > {tmp_path}/ran", logger=logger)
    wait_for(lambda: b"task directory gone" in (tmp_path / "log").read_bytes(), "log line")
    assert not missing.exists()
    assert not (tmp_path / "ran").exists()


def test_it_returns_at_once_while_a_long_run_goes_on(task_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    before = time.monotonic()
    spawn(
        task_dir,
        "sh",
        "-c",
        f"echo $$ > {pid_file}.new; mv {pid_file}.new {pid_file}; exec sleep 5",
    )
    assert time.monotonic() - before < 0.2
    wait_for(pid_file.exists, "the run's pid file")
    assert read_runs(task_dir) == []
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert wait_finished(task_dir, 1) == [(START, 0xFFFF)]


def test_it_leaves_no_zombie_and_no_temporary_file(task_dir: Path) -> None:
    for _ in range(50):
        spawn(task_dir, "true")
    # P4 is reaped before spawn_run returns; P5 and P6 are not our children.
    assert psutil.Process().children() == []
    assert wait_finished(task_dir, 50) == [(START, 0)] * 50
    assert run_files(task_dir) == ["stderr", "stdout", "times-exitcodes"]


def test_it_passes_argv_bytes_unchanged(task_dir: Path) -> None:
    argv = (b"printf", b"%s|%s|%s", b"two  spaces", b"\xff\xfe not utf-8", b"")
    assert run(task_dir, *argv) == (0, b"two  spaces|\xff\xfe not utf-8|", b"")


def test_it_searches_path(task_dir: Path) -> None:
    path = b"/nonexistent-dir:/usr/bin:/bin"
    code, out, err = run(task_dir, "env", extras=Extras(env=((b"PATH", path),)))
    assert (code, err) == (0, b"")
    assert b"PATH=%s\n" % path in out


def test_it_goes_on_after_a_non_executable_match_in_path(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "bin1", tmp_path / "bin2"
    for directory, mode in ((first, 0o644), (second, 0o755)):
        directory.mkdir()
        (directory / "tool").write_text(f"#!/bin/sh\necho {directory.name}\n")
        (directory / "tool").chmod(mode)
    # The daemon's own PATH is not the task's: only the task's is searched.
    monkeypatch.setenv("PATH", f"{first}:{second}")
    assert run(task_dir, "tool")[0] == 127
    in_path = Extras(env=((b"PATH", os.fsencode(f"{first}:{second}")),))
    assert run(task_dir, "tool", extras=in_path) == (0, b"bin2\n", b"")
    in_path = Extras(env=((b"PATH", os.fsencode(f"{first}:{tmp_path}/none")),))
    assert run(task_dir, "tool", extras=in_path) == (
        126,
        b"",
        b"saturnd: cannot execute 'tool': Permission denied\n",
    )


def file_logger(path: Path) -> logging.Logger:
    """A logger writing to `path` only (its descriptor must survive in P5)."""
    logger = logging.getLogger(f"test_spawn.{path}")
    logger.handlers[:] = [logging.FileHandler(path)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_it_logs_one_line_per_finished_run(task_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    run(task_dir, "sh", "-c", "exit 3", logger=file_logger(log))
    wait_for(lambda: log.read_bytes().endswith(b"\n"), "a log line")
    (line,) = log.read_text().splitlines()
    assert f"task {TASK_ID}: run pid " in line
    assert "exit code 3 (exit status 3) after " in line


def test_it_logs_why_a_command_could_not_start(task_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    logger = file_logger(log)
    run(task_dir, str(script), logger=logger)
    run(task_dir, "saturnd-no-such-program", logger=logger)
    wait_for(lambda: log.read_text().count("\n") == 2, "two log lines")
    lines = log.read_text().splitlines()
    assert lines[0].endswith(f"task {TASK_ID}: could not start: Permission denied, exit code 126")
    assert lines[1].endswith(
        f"task {TASK_ID}: could not start: No such file or directory, exit code 127"
    )
    assert "pid -1" not in log.read_text()


def test_it_logs_a_run_it_cannot_record_with_its_start_and_exit_code(
    task_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"

    # Not an error that space coming back cures (those are kept pending: test_pending.py).
    def refused(task_dir: Path, time: int, exitcode: int) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    spawn(task_dir, "sh", "-c", "exit 5", record=refused, logger=file_logger(log))
    wait_for(lambda: log.exists() and log.read_bytes().endswith(b"\n"), "a log line")
    wait_for(lambda: not temp_files(task_dir), "the temporaries to be removed")
    (line,) = log.read_text().splitlines()
    assert f"task {TASK_ID}: run LOST, not recorded (start {START}, exit code 5, pid " in line
    assert line.endswith("Permission denied")


def failing_fork(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """Make the `nth` fork of a batch's chain fail with EAGAIN (1: the caller's, 2:
    P4's). The counter is copied into each child, so it counts along the chain."""
    real_fork = os.fork
    calls = [0]

    def fork() -> int:
        calls[0] += 1
        if calls[0] == nth:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)


def failing_spawn(monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    """Make P5's spawn of a command fail with `error`, as the kernel would."""

    def posix_spawn(*args: Any, **kwargs: Any) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "posix_spawn", posix_spawn)


def test_it_raises_when_p4_cannot_fork(task_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_fork(monkeypatch, 2)
    with pytest.raises(OSError) as raised:
        spawn(task_dir, "true")
    assert raised.value.errno == errno.EAGAIN
    assert psutil.Process().children() == []


@pytest.mark.parametrize("error", [errno.EAGAIN, errno.ENOMEM])
def test_it_records_a_command_p5_cannot_spawn_as_ffff(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    failing_spawn(monkeypatch, error)
    code, out, err = run(task_dir, "true")
    assert (code, out) == (0xFFFF, b"")
    assert err == f"saturnd: cannot start the command: {os.strerror(error)}\n".encode()


def test_it_rejects_an_empty_command_line(task_dir: Path) -> None:
    with pytest.raises(ValueError):
        spawn_run(RunSpec(TASK_ID, task_dir, (), START), record=record_run)
    with pytest.raises(ValueError):
        spawn_run(RunSpec(TASK_ID, task_dir, (b"",), START), record=record_run)


def test_it_records_with_taskdir_by_default(task_dir: Path) -> None:
    spawn_run(RunSpec(TASK_ID, task_dir, (b"sh", b"-c", b"echo hi; exit 4"), START))
    assert wait_finished(task_dir, 1) == [(START, 4)]
    assert (task_dir / "stdout").read_bytes() == b"hi\n"


# --- P5 relays the output: a cap, a leftover child, a file size limit --------------------


def test_it_caps_each_stream_at_max_output(task_dir: Path) -> None:
    code, out, err = run(
        task_dir, "sh", "-c", "printf 0123456789abcdef; printf ABCDEFGHIJKL >&2", max_output=10
    )
    assert (code, out, err) == (0, b"0123456789", b"ABCDEFGHIJ")


def test_it_discards_a_flood_past_the_cap_and_still_records(task_dir: Path) -> None:
    started = time.monotonic()
    code, out, err = run(
        task_dir, "sh", "-c", "head -c 200000000 /dev/zero; echo done >&2; exit 9", max_output=1000
    )
    assert (code, out, err) == (9, bytes(1000), b"done\n")
    assert time.monotonic() - started < DEADLINE


def test_it_keeps_no_output_with_a_cap_of_zero(task_dir: Path) -> None:
    assert run(task_dir, "sh", "-c", "echo out; echo err >&2", max_output=0) == (0, b"", b"")


def test_it_rejects_a_negative_cap(task_dir: Path) -> None:
    with pytest.raises(ValueError):
        spawn(task_dir, "true", max_output=-1)


def test_it_records_when_the_command_ends_though_a_child_holds_its_output(
    task_dir: Path, tmp_path: Path
) -> None:
    done = tmp_path / "child-done"
    p5_file = tmp_path / "p5"
    started = time.monotonic()
    spawn(
        task_dir,
        "sh",
        "-c",
        f"echo $PPID > {p5_file}; echo start;"
        f" (sleep 1; echo late; echo late >&2; touch {done}) & exit 4",
    )
    assert wait_finished(task_dir, 1) == [(START, 4)]
    assert time.monotonic() - started < 0.9, "it waited for the background child"
    assert (task_dir / "stdout").read_bytes() == b"start\n"
    p5 = int(p5_file.read_text())
    assert not gone(p5), "P5 must stay while the child holds the output"
    # The child wrote after the run ended and was not killed by SIGPIPE (else no touch).
    wait_for(done.exists, "the background child to write again")
    assert (task_dir / "stdout").read_bytes() == b"start\n"
    assert (task_dir / "stderr").read_bytes() == b""
    wait_for(lambda: gone(p5), "P5 to leave once the child is done")


def test_it_records_a_run_whose_output_exceeds_the_file_size_limit(
    task_dir: Path, tmp_path: Path
) -> None:
    import resource

    log = tmp_path / "log"
    logger = file_logger(log)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # The limit is inherited at fork: set it for the run only.
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))
    try:
        spawn(task_dir, "sh", "-c", "head -c 50000 /dev/zero; exit 6", logger=logger)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert wait_finished(task_dir, 1) == [(START, 6)]
    assert (task_dir / "stdout").read_bytes() == bytes(10_000)
    wait_for(lambda: b"stdout cut: File too large" in log.read_bytes(), "the log line")


def test_it_relays_without_a_sigchld_wakeup(
    task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = signal.set_wakeup_fd

    def refuse(fd: int, **kwargs: Any) -> int:
        if fd >= 0:
            raise ValueError("set_wakeup_fd only works in main thread")
        return real(fd, **kwargs)

    monkeypatch.setattr(signal, "set_wakeup_fd", refuse)
    assert run(task_dir, "sh", "-c", "echo polled; exit 2") == (2, b"polled\n", b"")


# --- batches: the runs of one minute share one P4 and one P5 ----------------------------


def make_task_dirs(tmp_path: Path, count: int) -> list[Path]:
    directories = [tmp_path / f"task_{i}" for i in range(count)]
    for directory in directories:
        directory.mkdir(mode=0o700)
    return directories


def test_a_batch_runs_every_spec_under_one_supervisor(tmp_path: Path) -> None:
    directories = make_task_dirs(tmp_path, 5)
    specs = [
        RunSpec(i, directory, (b"sh", b"-c", b"echo $PPID; echo err %d >&2; exit %d" % (i, i)), i)
        for i, directory in enumerate(directories)
    ]
    # The same task twice in one batch (minutes caught up after a clock jump).
    specs.append(RunSpec(9, directories[0], (b"sh", b"-c", b"echo $PPID; exit 9"), 100))
    spawn_runs(iter(specs), record=record_run)
    parents = set()
    for i, directory in enumerate(directories):
        expected = 2 if i == 0 else 1
        runs = wait_finished(directory, expected)
        assert (i, i) in runs
        parents.add((directory / "stdout").read_bytes())
    assert sorted(wait_finished(directories[0], 2)) == [(0, 0), (100, 9)]
    assert len(parents) == 1, "every command of a batch has the same supervisor"
    assert (directories[3] / "stderr").read_bytes() == b"err 3\n"


def test_a_batch_is_consumed_in_the_supervisor_only(tmp_path: Path) -> None:
    (directory,) = make_task_dirs(tmp_path, 1)
    consumed_here = []

    def specs() -> Iterator[RunSpec]:
        consumed_here.append(os.getpid())
        yield RunSpec(1, directory, (b"true",), START)

    spawn_runs(specs(), record=record_run)
    assert wait_finished(directory, 1) == [(START, 0)]
    assert consumed_here == [], "the generator ran in the caller"


def test_one_bad_spec_does_not_stop_the_others(tmp_path: Path) -> None:
    log = tmp_path / "log"
    good, other = make_task_dirs(tmp_path, 2)
    specs = [
        RunSpec(1, tmp_path / "task_gone", (b"true",), START),
        RunSpec(2, good, (), START),
        RunSpec(3, good, (b"no-such-program-anywhere",), START),
        RunSpec(4, other, (b"a\0b",), START),
        RunSpec(5, good, (b"sh", b"-c", b"echo fine"), START),
    ]
    spawn_runs(specs, record=record_run, logger=file_logger(log))
    assert sorted(wait_finished(good, 2)) == [(START, 0), (START, 127)]
    assert wait_finished(other, 1) == [(START, 127)]
    assert (other / "stderr").read_bytes() == (
        b"saturnd: cannot execute 'a\0b': argument contains a NUL byte\n"
    )
    text = log.read_text()
    assert "task 1: task directory gone, run not started" in text
    assert "task 2: empty command line, not run" in text


def test_commands_keep_the_daemons_open_file_limit(tmp_path: Path) -> None:
    import resource

    (directory,) = make_task_dirs(tmp_path, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves no room to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        spawn_runs(
            [RunSpec(1, directory, (b"sh", b"-c", b"ulimit -Sn"), START)] * 2, record=record_run
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert wait_finished(directory, 2) == [(START, 0)] * 2
    assert (directory / "stdout").read_bytes() == b"256\n"


def test_runs_beyond_the_descriptors_wait_for_earlier_ones(tmp_path: Path) -> None:
    import resource

    log = tmp_path / "log"
    directories = make_task_dirs(tmp_path, 30)
    pid = os.fork()
    if pid == 0:
        try:
            # P5 cannot raise past a hard limit of 128: room for about a dozen runs at
            # once. (Lowered in a child: only root could raise it again.)
            resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
            spawn_runs(
                [RunSpec(i, d, (b"sleep", b"0.2"), START) for i, d in enumerate(directories)],
                record=record_run,
                logger=file_logger(log),
            )
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    for directory in directories:
        assert wait_finished(directory, 1) == [(START, 0)]
    assert "the others wait for earlier ones to end" in log.read_text()


def test_commands_of_a_batch_hold_only_0_1_2(tmp_path: Path) -> None:
    directories = make_task_dirs(tmp_path, 3)
    marker = f"4.{os.getpid()}9{next(_markers):03d}"
    spawn_runs(
        [RunSpec(i, d, (b"sleep", marker.encode()), START) for i, d in enumerate(directories)],
        record=record_run,
    )
    found: list[psutil.Process] = []

    def all_started() -> bool:
        found[:] = [
            p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]
        ]
        return len(found) == 3

    try:
        wait_for(all_started, "three sleeps")
        for process in found:
            fds = os.listdir(f"/proc/{process.pid}/fd")
            assert sorted(fds) == ["0", "1", "2"], [
                os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in fds
            ]
    finally:
        for process in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    for directory in directories:
        assert wait_finished(directory, 1) == [(START, 0xFFFF)]
