"""saturnd.proc: the one wait-status decoder, forks that keep a stop signal, libc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from saturnd import proc


@pytest.mark.parametrize(
    ("status", "exitcode", "text"),
    [
        (0x0000, 0, "exit status 0"),
        (0x0300, 3, "exit status 3"),
        (0xFF00, 255, "exit status 255"),
        (0x0009, 0xFFFF, "killed by SIGKILL"),
        (0x008B, 0xFFFF, "killed by SIGSEGV (core dumped)"),
        (0x007E, 0xFFFF, "killed by signal 126"),
        (0x137F, 0xFFFF, "ended abnormally"),  # stopped by SIGSTOP
        (0xFFFF, 0xFFFF, "ended abnormally"),  # continued
        (None, 0xFFFF, "not started"),
    ],
)
def test_it_decodes_wait_statuses(status: int | None, exitcode: int, text: str) -> None:
    assert proc.decode_status(status) == (exitcode, text)


def test_it_decodes_a_real_process_end() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert proc.decode_status(status) == proc.Ended(7, "exit status 7")
    pid = os.fork()
    if pid == 0:
        try:
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert proc.decode_status(status) == proc.Ended(0xFFFF, "killed by SIGKILL")


def test_it_opens_the_c_library_once() -> None:
    first = proc.libc()
    if first is None:
        pytest.skip("no C library can be loaded here")
    assert proc.libc() is first
    assert hasattr(first, "malloc_trim") or sys.platform != "linux"


# A supervisor with its own stop handlers forks a part; a SIGTERM reaches the part
# before the part has installed its own handlers (while it imports and loads). The part
# must still see it once its handlers are in place. FORK is the fork under test.
_RACE = textwrap.dedent(
    """
    import os, select, sys, time
    from saturnd import proc

    fork = proc.fork_for_part if sys.argv[1] == "fork_for_part" else os.fork
    proc.install_stop_handlers(proc.StopFlag())  # the supervisor's own
    ready_read, ready_write = os.pipe()
    pid = fork()
    if pid == 0:
        code = 2
        try:
            os.write(ready_write, b"x")
            time.sleep(0.3)  # a part's start-up: the signal arrives now
            stop = proc.StopFlag()
            wake = proc.install_stop_handlers(stop)
            select.select([wake], [], [], 2.0)
            code = 0 if stop.stopping else 1
        finally:
            os._exit(code)
    os.read(ready_read, 1)
    os.kill(pid, proc.STOP_SIGNALS[0])
    _, status = os.waitpid(pid, 0)
    print(proc.decode_status(status).text)
    """
)


def test_it_keeps_a_stop_signal_that_arrives_before_the_child_is_ready() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _RACE, "fork_for_part"], capture_output=True, timeout=30
    )
    assert result.stdout.decode().strip() == "exit status 0", result.stderr


def test_it_shows_the_race_with_a_plain_fork() -> None:
    """The control: with os.fork the part loses the signal (what the supervisor did)."""
    result = subprocess.run(
        [sys.executable, "-c", _RACE, "os.fork"], capture_output=True, timeout=30
    )
    assert result.stdout.decode().strip() == "exit status 1", result.stderr


def test_it_leaves_the_parents_signal_mask_as_it_was() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    pid = proc.fork_for_part()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_it_wakes_and_drains_on_the_wake_up_pipe() -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    try:
        os.write(write_fd, b"abc")
        proc.wait_readable(read_fd, 5.0)
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 1)
    finally:
        os.close(read_fd)
        os.close(write_fd)
