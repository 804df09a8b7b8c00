"""End-to-end tests of cassini: the real console script against a fake daemon.

Each test runs `cassini` (the console script next to the interpreter) in a subprocess,
talking over real FIFOs to `tests.fake_daemon.FakeDaemon`, and checks the exact request
bytes (written here by hand, from PROTOCOL.md), stdout, stderr and the exit status.
"""

from __future__ import annotations

import calendar
import fcntl
import os
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cassini import transport
from saturnd.messages import CreateRequest
from saturnd.timing import Timing
from tests.conftest import open_fds
from tests.fake_daemon import REPLY_PIPE, REQUEST_PIPE, Exchange, FakeDaemon, make_pipes

CASSINI = Path(sys.executable).parent / "cassini"
ROOT = Path(__file__).resolve().parent.parent

FULL_TIMING = "0f ff ff ff ff ff ff ff  00 ff ff ff  7f"  # `* * *`


def h(text: str) -> bytes:
    """Bytes from hex text; spaces and newlines are only for the reader."""
    return bytes.fromhex(text)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def string(data: bytes) -> bytes:
    return u32(len(data)) + data


def commandline(*argv: bytes) -> bytes:
    return u32(len(argv)) + b"".join(string(arg) for arg in argv)


def not_found(program: str) -> str:
    """cassini -c's warning for a program not in PATH (the task is created all the same)."""
    return (
        f"cassini: warning: no program {program!r} in the task's PATH (/usr/bin:/bin): "
        "the task will fail with exit code 127\n"
    )


@dataclass
class Result:
    stdout: bytes
    stderr: str
    status: int
    seconds: float


def cassini(pipes: Path, *args: str, tz: str = "UTC", timeout: float = 15) -> Result:
    """Run the cassini console script with `-p pipes` and `args`."""
    env = dict(os.environ, TZ=tz)
    start = time.monotonic()
    done = subprocess.run(
        [str(CASSINI), "-p", str(pipes), *args],
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return Result(
        done.stdout,
        done.stderr.decode(errors="replace"),
        done.returncode,
        time.monotonic() - start,
    )


def one_line(text: str) -> str:
    """The only line of `text`; fails if there is not exactly one."""
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text[:-1]


@pytest.fixture
def pipes(tmp_path: Path) -> Path:
    return make_pipes(tmp_path / "pipes")


def exchange(pipes: Path, reply: bytes, *args: str, tz: str = "UTC") -> tuple[bytes, Result]:
    """One cassini run against a fake daemon answering `reply`: (request bytes, result)."""
    with FakeDaemon(pipes, [Exchange(reply)]) as fake:
        result = cassini(pipes, *args, tz=tz)
    assert len(fake.requests) == 1
    assert fake.unexpected == b""
    return fake.requests[0], result


# --- every request with every reply ----------------------------------------------

NF = "45 52 4e 46"
NR = "45 52 4e 52"

REQUESTS_AND_REPLIES = [
    # (args, request hex, reply hex, stdout, stderr, status)
    ([], "4c 53", "4f 4b 00 00 00 00", b"", "", 0),
    (["-l"], "4c 53", "4f 4b 00 00 00 00", b"", "", 0),
    (
        ["-l"],
        "4c 53",
        "4f 4b 00 00 00 01  00 00 00 00 00 00 00 05" + FULL_TIMING + "00 00 00 01 00 00 00 01 78",
        b"5: * * * x\n",
        "",
        0,
    ),
    (
        ["-c", "true"],
        "43 52" + FULL_TIMING + "00 00 00 01  00 00 00 04 74 72 75 65",
        "4f 4b 00 00 00 00 00 00 00 2a",
        b"42\n",
        "",
        0,
    ),
    (["-r", "7"], "52 4d 00 00 00 00 00 00 00 07", "4f 4b", b"", "", 0),
    (["-r", "7"], "52 4d 00 00 00 00 00 00 00 07", NF, b"", "cassini: no task with id 7\n", 1),
    (["-x", "3"], "54 58 00 00 00 00 00 00 00 03", "4f 4b 00 00 00 00", b"", "", 0),
    (
        ["-x", "3"],
        "54 58 00 00 00 00 00 00 00 03",
        "4f 4b 00 00 00 01  00 00 00 00 6a e0 e6 a0  00 02",
        b"2026-10-27 18:00:00 2\n",
        "",
        0,
    ),
    (["-x", "3"], "54 58 00 00 00 00 00 00 00 03", NF, b"", "cassini: no task with id 3\n", 1),
    (
        ["-o", "18446744073709551615"],
        "53 4f ff ff ff ff ff ff ff ff",
        "4f 4b 00 00 00 03 61 62 63",
        b"abc",
        "",
        0,
    ),
    (["-o", "4"], "53 4f 00 00 00 00 00 00 00 04", NF, b"", "cassini: no task with id 4\n", 1),
    (["-o", "4"], "53 4f 00 00 00 00 00 00 00 04", NR, b"", "cassini: task 4 has not run yet\n", 1),
    (["-e", "0"], "53 45 00 00 00 00 00 00 00 00", "4f 4b 00 00 00 02 0a 0a", b"\n\n", "", 0),
    (["-e", "0"], "53 45 00 00 00 00 00 00 00 00", NF, b"", "cassini: no task with id 0\n", 1),
    (["-e", "0"], "53 45 00 00 00 00 00 00 00 00", NR, b"", "cassini: task 0 has not run yet\n", 1),
    (["-q"], "54 4d", "4f 4b", b"", "", 0),
]


@pytest.mark.parametrize(
    ("args", "request_hex", "reply_hex", "stdout", "stderr", "status"),
    REQUESTS_AND_REPLIES,
    ids=[f"{' '.join(case[0]) or 'none'}:{case[2][:11]}" for case in REQUESTS_AND_REPLIES],
)
def test_it_sends_each_request_and_prints_each_reply(
    pipes: Path,
    args: list[str],
    request_hex: str,
    reply_hex: str,
    stdout: bytes,
    stderr: str,
    status: int,
) -> None:
    request, result = exchange(pipes, h(reply_hex), *args)
    assert request == h(request_hex)
    assert (result.stdout, result.stderr, result.status) == (stdout, stderr, status)


# --- PROTOCOL.md's examples ---------------------------------------------------------


def test_it_sends_the_worked_example_byte_for_byte(pipes: Path) -> None:
    request, result = exchange(
        pipes,
        h("4f 4b 00 00 00 00 00 00 00 1a"),
        *["-c", "-m", "0", "-H", "9,14", "-d", "3", "echo", "test-1"],
    )
    assert request == h(
        """
        43 52
        00 00 00 00 00 00 00 01
        00 00 42 00
        08
        00 00 00 02
        00 00 00 04 65 63 68 6f
        00 00 00 06 74 65 73 74 2d 31
        """
    )
    assert (result.stdout, result.stderr, result.status) == (b"26\n", "", 0)


def test_it_plays_the_example_session(pipes: Path) -> None:
    session = [
        # (args, request, reply, stdout, stderr, status)
        (
            ["-c", "echo", "coucou"],
            "43 52  0f ff ff ff ff ff ff ff  00 ff ff ff  7f  00 00 00 02"
            "  00 00 00 04 65 63 68 6f  00 00 00 06 63 6f 75 63 6f 75",
            "4f 4b 00 00 00 00 00 00 00 00",
            b"0\n",
            "",
            0,
        ),
        (
            ["-c", "-m", "0-2,5,10", "toto.sh"],
            "43 52  00 00 00 00 00 00 04 27  00 ff ff ff  7f  00 00 00 01"
            "  00 00 00 07 74 6f 74 6f 2e 73 68",
            "4f 4b 00 00 00 00 00 00 00 01",
            b"1\n",
            not_found("toto.sh"),
            0,
        ),
        (
            ["-l"],
            "4c 53",
            "4f 4b  00 00 00 02"
            "  00 00 00 00 00 00 00 00  0f ff ff ff ff ff ff ff  00 ff ff ff  7f"
            "  00 00 00 02  00 00 00 04 65 63 68 6f  00 00 00 06 63 6f 75 63 6f 75"
            "  00 00 00 00 00 00 00 01  00 00 00 00 00 00 04 27  00 ff ff ff  7f"
            "  00 00 00 01  00 00 00 07 74 6f 74 6f 2e 73 68",
            b"0: * * * echo coucou\n1: 0-2,5,10 * * toto.sh\n",
            "",
            0,
        ),
        (
            ["-x", "1"],
            "54 58 00 00 00 00 00 00 00 01",
            "4f 4b  00 00 00 02  00 00 00 00 6a e0 e6 a0  00 00  00 00 00 00 6a e0 e6 dc  00 00",
            b"2026-10-27 18:00:00 0\n2026-10-27 18:01:00 0\n",
            "",
            0,
        ),
        (
            ["-o", "0"],
            "53 4f 00 00 00 00 00 00 00 00",
            "4f 4b  00 00 00 07  63 6f 75 63 6f 75 0a",
            b"coucou\n",
            "",
            0,
        ),
        (["-r", "0"], "52 4d 00 00 00 00 00 00 00 00", "4f 4b", b"", "", 0),
        (
            ["-o", "0"],
            "53 4f 00 00 00 00 00 00 00 00",
            "45 52 4e 46",
            b"",
            "cassini: no task with id 0\n",
            1,
        ),
    ]
    script = [Exchange(h(reply)) for _, _, reply, _, _, _ in session]
    with FakeDaemon(pipes, script) as fake:
        results = [cassini(pipes, *args) for args, *_ in session]
    assert fake.requests == [h(request) for _, request, *_ in session]
    for result, (_, _, _, stdout, stderr, status) in zip(results, session, strict=True):
        assert (result.stdout, result.stderr, result.status) == (stdout, stderr, status)


# --- command lines and timings ----------------------------------------------------------


def test_it_gives_the_options_after_the_command_to_the_command(pipes: Path) -> None:
    request, result = exchange(pipes, h("4f 4b 00 00 00 00 00 00 00 03"), "-c", "ls", "-l", "/tmp")
    assert request == h(
        "43 52" + FULL_TIMING + "00 00 00 03  00 00 00 02 6c 73  00 00 00 02 2d 6c"
        "  00 00 00 04 2f 74 6d 70"
    )
    assert (result.stdout, result.status) == (b"3\n", 0)


def test_it_sends_arguments_byte_for_byte(pipes: Path) -> None:
    # Not UTF-8, and empty: arguments are bytes, passed through unchanged.
    weird = os.fsdecode(b"\xff\xfe caf\xc3\xa9")
    request, result = exchange(pipes, h("4f 4b 00 00 00 00 00 00 00 00"), "-c", "x", weird, "")
    assert request == h("43 52" + FULL_TIMING) + commandline(b"x", b"\xff\xfe caf\xc3\xa9", b"")
    assert result.status == 0


@pytest.mark.parametrize(
    ("fields", "timing_hex"),
    [
        ([], FULL_TIMING),
        (["-m", "4-10,45"], "00 00 20 00 00 00 07 f0  00 ff ff ff  7f"),
        (["-d", "2-4,6"], "0f ff ff ff ff ff ff ff  00 ff ff ff  5c"),
        (["-m", "4,10", "-d", "1,3"], "00 00 00 00 00 00 04 10  00 ff ff ff  0a"),
        (["-m", "1,3-6,9-15", "-H", "1,3,5,7"], "00 00 00 00 00 00 fe 7a  00 00 00 aa  7f"),
        (["-m", "0-1", "-H", "9"], "00 00 00 00 00 00 00 03  00 00 02 00  7f"),
        (["-m", "59", "-H", "23", "-d", "0"], "08 00 00 00 00 00 00 00  00 80 00 00  01"),
    ],
)
def test_it_encodes_timings(pipes: Path, fields: list[str], timing_hex: str) -> None:
    request, result = exchange(pipes, h("4f 4b 00 00 00 00 00 00 00 00"), "-c", *fields, "t")
    assert request == h("43 52" + timing_hex + "00 00 00 01 00 00 00 01 74")
    assert result.status == 0


def test_it_prints_timings_canonically(pipes: Path) -> None:
    tasks = [
        (0, FULL_TIMING, "* * *"),
        (1, "00 00 00 00 00 00 04 10  00 ff ff ff  0a", "4,10 * 1,3"),
        (2, "00 00 00 00 00 00 fe 7a  00 00 00 aa  7f", "1,3-6,9-15 1,3,5,7 *"),
        (3, "00 00 00 00 00 00 00 03  00 00 02 00  7f", "0-1 9 *"),
    ]
    reply = h("4f 4b") + u32(len(tasks))
    for task_id, timing_hex, _ in tasks:
        reply += u64(task_id) + h(timing_hex) + commandline(b"echo", b"a", b"b c")
    _, result = exchange(pipes, reply, "-l")
    expected = b"".join(b"%d: %s echo a b c\n" % (i, text.encode()) for i, _, text in tasks)
    assert (result.stdout, result.stderr, result.status) == (expected, "", 0)


# --- times in local time ------------------------------------------------------------

RUNS_REPLY = (
    h("4f 4b 00 00 00 03")
    + u64(calendar.timegm((2026, 7, 14, 10, 0, 0))) + h("00 00")
    + u64(calendar.timegm((2026, 10, 27, 17, 0, 0))) + h("00 01")
    + u64(calendar.timegm((2026, 10, 27, 17, 1, 0))) + h("ff ff")
)  # fmt: skip


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (
            "Europe/Paris",  # UTC+2 in July, UTC+1 after the last Sunday of October
            b"2026-07-14 12:00:00 0\n2026-10-27 18:00:00 1\n2026-10-27 18:01:00 65535\n",
        ),
        (
            "UTC",
            b"2026-07-14 10:00:00 0\n2026-10-27 17:00:00 1\n2026-10-27 17:01:00 65535\n",
        ),
        (
            "America/New_York",  # UTC-4 in July and until November
            b"2026-07-14 06:00:00 0\n2026-10-27 13:00:00 1\n2026-10-27 13:01:00 65535\n",
        ),
    ],
)
def test_it_prints_run_times_in_local_time(pipes: Path, tz: str, expected: bytes) -> None:
    request, result = exchange(pipes, RUNS_REPLY, "-x", "12", tz=tz)
    assert request == h("54 58 00 00 00 00 00 00 00 0c")
    assert (result.stdout, result.stderr, result.status) == (expected, "", 0)


# --- output ---------------------------------------------------------------------------


def test_it_writes_output_with_nul_bytes_and_no_trailing_newline(pipes: Path) -> None:
    _, result = exchange(pipes, h("4f 4b 00 00 00 06 61 00 62 00 0a 00"), "-o", "1")
    assert (result.stdout, result.stderr, result.status) == (b"a\x00b\x00\n\x00", "", 0)


def test_it_writes_a_mebibyte_of_output(pipes: Path) -> None:
    output = bytes(range(256)) * 4096
    _, result = exchange(pipes, h("4f 4b") + string(output), "-e", "1")
    assert result.stdout == output
    assert (result.stderr, result.status) == ("", 0)


def test_it_lists_a_thousand_tasks(pipes: Path) -> None:
    reply = h("4f 4b") + u32(1000)
    expected = []
    for task_id in range(1000):
        argv = (b"echo", b"task-%d" % task_id)
        reply += u64(task_id * 3) + h(FULL_TIMING) + commandline(*argv)
        expected.append(b"%d: * * * echo task-%d\n" % (task_id * 3, task_id))
    _, result = exchange(pipes, reply, "-l")
    assert result.stdout == b"".join(expected)
    assert (result.stderr, result.status) == ("", 0)


# --- the transport ------------------------------------------------------------------


def test_it_keeps_the_request_pipe_open_until_the_reply(pipes: Path) -> None:
    script = [Exchange(h("4f 4b 00 00 00 00 00 00 00 05"), only_while_held=True)]
    with FakeDaemon(pipes, script) as fake:
        result = cassini(pipes, "-c", "true")
    assert fake.held == [True]
    assert (result.stdout, result.stderr, result.status) == (b"5\n", "", 0)


def test_it_takes_bytes_already_in_the_reply_pipe_as_the_reply(pipes: Path) -> None:
    # The course's harness writes its reply as soon as the reply FIFO has a reader, so
    # whatever is in the FIFO once cassini opens it is the reply: nothing is drained.
    # (The old rule, "stale bytes" drained before the request, lost such replies.)
    holder = os.open(pipes / REPLY_PIPE, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(holder, h("4f 4b 00 00 00 00 00 00 00 63"))
        request, result = exchange(pipes, h("4f 4b 00 00 00 00 00 00 00 1a"), "-c", "x")
    finally:
        os.close(holder)
    assert request == h("43 52" + FULL_TIMING + "00 00 00 01 00 00 00 01 78")
    assert (result.stdout, result.stderr, result.status) == (b"99\n", not_found("x"), 0)


def test_it_gives_up_when_no_daemon_reads(pipes: Path) -> None:
    result = cassini(pipes, "-l")
    assert result.status == 1
    assert result.stdout == b""
    line = one_line(result.stderr)
    assert line.startswith("cassini: no daemon")
    assert str(pipes) in line
    assert 1.5 <= result.seconds <= 4


@pytest.mark.parametrize(
    ("exchange_", "message"),
    [
        (Exchange(h("4f 4b 00 00 00 00 00 00 00 01"), truncate_at=6), "cassini: truncated reply"),
        (Exchange(h("4f 4b 00 00 00 00 00 00 00 01"), truncate_at=0), "cassini: the daemon closed"),
        (Exchange(h("58 59 5a 5a 5a")), "cassini: malformed reply from daemon: "),
        (Exchange(h("45 52 4e 52")), "cassini: malformed reply from daemon: "),  # NR to CR
    ],
)
def test_it_reports_a_bad_reply_in_one_line(pipes: Path, exchange_: Exchange, message: str) -> None:
    with FakeDaemon(pipes, [exchange_]):
        result = cassini(pipes, "-c", "x")
    assert (result.stdout, result.status) == (b"", 1)
    assert one_line(result.stderr).startswith(message)
    assert result.seconds < 5


def test_it_gives_up_on_a_daemon_that_never_answers(pipes: Path) -> None:
    from cassini.transport import TransportError, exchange
    from saturnd.protocol import ListRequest

    with FakeDaemon(pipes, [Exchange(never_answer=True)]) as fake:
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"no complete reply .* within 0\.3 s"):
            exchange(str(pipes), ListRequest(), reply_timeout=0.3)
        assert 0.25 <= time.monotonic() - start < 2
    assert fake.requests == [h("4c 53")]


def start_cassini(pipes: Path, *args: str, **options: Any) -> subprocess.Popen[bytes]:
    """Start cassini without waiting for it."""
    return subprocess.Popen(
        [str(CASSINI), "-p", str(pipes), *args],
        stdout=options.pop("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        env=dict(os.environ, TZ="UTC"),
        **options,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_it_waits_for_the_lock(pipes: Path) -> None:
    lock = os.open(pipes / "cassini.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with FakeDaemon(pipes, [Exchange(h("4f 4b 00 00 00 00 00 00 00 02"))]) as fake:
            process = start_cassini(pipes, "-c", "x")
            time.sleep(0.4)  # time enough to start and send, were it not for the lock
            assert process.poll() is None
            assert fake.requests == []
            fcntl.flock(lock, fcntl.LOCK_UN)
            stdout, stderr = process.communicate(timeout=10)
    finally:
        os.close(lock)
    assert (stdout, stderr.decode(), process.returncode) == (b"2\n", not_found("x"), 0)
    assert len(fake.requests) == 1


class LockHog:
    """Threads that take cassini.lock with a blocking flock, hold it a while, let go and
    come back after a short pause, in turns: the lock is free only for the instants
    between one's release and the other's grab (clients with a blocking flock, like
    the hostile ones of tests/reliability)."""

    def __init__(self, pipes: Path, threads: int = 2, hold: float = 0.025) -> None:
        self.pipes = pipes
        self.hold = hold
        self.stop = threading.Event()
        self.turns = 0
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        fd = os.open(self.pipes / "cassini.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while not self.stop.wait(0.003):
                fcntl.flock(fd, fcntl.LOCK_EX)
                self.turns += 1
                time.sleep(self.hold)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> LockHog:
        for thread in self.threads:
            thread.start()
        while self.turns < 2:
            time.sleep(0.001)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


def test_it_waits_for_the_lock_in_the_kernels_queue(
    pipes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that only tried the lock from time to time lost every hand-over to the
    # queued ones and waited until its timeout (it did: 40 s in CI's storm).
    from cassini import fifos

    monkeypatch.setattr(fifos, "LOCK_TIMEOUT", 5.0)
    handler = signal.getsignal(signal.SIGALRM)
    with LockHog(pipes) as hog:
        start = time.monotonic()
        fd = fifos._lock(str(pipes))
        waited = time.monotonic() - start
        turns = hog.turns
        time.sleep(0.2)
        assert hog.turns == turns  # ours: the lock is held for as long as we keep it
        assert fd is not None
        os.close(fd)
    # A turn or two of the others (25 ms each), far from the 5 s of a timeout.
    assert waited < 1.0, waited
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_it_gives_up_on_the_lock_after_its_time(
    pipes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cassini import fifos

    monkeypatch.setattr(fifos, "LOCK_TIMEOUT", 0.3)
    handler = signal.getsignal(signal.SIGALRM)
    # A parent may hand cassini a blocked SIGALRM: the timer must still end the wait.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    lock = os.open(pipes / "cassini.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = open_fds()
        start = time.monotonic()
        with pytest.raises(
            transport.TransportError,
            match=r"cassini\.lock is still locked by another cassini after 0\.3 s$",
        ):
            fifos._lock(str(pipes))
        assert 0.25 <= time.monotonic() - start < 2
        assert open_fds() == before
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask | {signal.SIGALRM}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(lock)
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_it_exits_quietly_on_ctrl_c_while_waiting_for_the_lock(pipes: Path) -> None:
    lock = os.open(pipes / "cassini.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with FakeDaemon(pipes, []) as fake:
            process = start_cassini(pipes, "-l")
            time.sleep(0.4)  # started, and waiting for the lock
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=10)
    finally:
        os.close(lock)
    assert (stdout, stderr, process.returncode) == (b"", b"", 130)
    assert fake.requests == []


def test_it_creates_the_lock_file_private(pipes: Path) -> None:
    exchange(pipes, h("4f 4b"), "-q")
    assert stat.S_IMODE((pipes / "cassini.lock").lstat().st_mode) == 0o600


def test_it_refuses_a_symbolic_link_as_lock_file(pipes: Path, tmp_path: Path) -> None:
    (pipes / "cassini.lock").symlink_to(tmp_path / "elsewhere")
    with FakeDaemon(pipes, []) as fake:
        result = cassini(pipes, "-l")
    assert (result.stdout, result.status) == (b"", 1)
    assert "cassini.lock is a symbolic link" in one_line(result.stderr)
    assert not (tmp_path / "elsewhere").exists()
    assert fake.requests == []


def test_it_exits_quietly_when_its_reader_goes_away(pipes: Path) -> None:
    output = b"y\n" * (1 << 19)  # more than a pipe holds: cassini is still writing
    with FakeDaemon(pipes, [Exchange(h("4f 4b") + string(output))]):
        process = start_cassini(pipes, "-o", "1")
        assert process.stdout is not None
        assert process.stdout.read(2) == b"y\n"
        process.stdout.close()
        _, stderr = process.communicate(timeout=10)
    assert (stderr, process.returncode) == (b"", 1)


def test_it_exits_quietly_on_ctrl_c(pipes: Path) -> None:
    with FakeDaemon(pipes, [Exchange(never_answer=True)]) as fake:
        process = start_cassini(pipes, "-l")
        wait_for(lambda: bool(fake.requests))
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    assert (stdout, stderr, process.returncode) == (b"", b"", 130)


def test_it_serialises_concurrent_clients(pipes: Path) -> None:
    # Eight clients at once: each must get its own reply (the lock keeps them apart).
    count = 8
    script = [Exchange(h("4f 4b") + u64(100 + i)) for i in range(count)]
    results: list[Result] = []
    with FakeDaemon(pipes, script) as fake:
        threads = [
            threading.Thread(target=lambda: results.append(cassini(pipes, "-c", "x")))
            for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(fake.requests) == count
    assert sorted(r.stdout for r in results) == [b"%d\n" % (100 + i) for i in range(count)], [
        (r.status, r.stderr) for r in results
    ]
    assert {r.status for r in results} == {0}


class LateWriterDaemon:
    """A daemon whose writer of the previous reply still holds the reply FIFO when the
    client opens it, and lets go at a chosen moment of the next exchange: before or
    after reading the request. Then it answers with `reply` (b"": opened, closed empty)
    after `delay` seconds."""

    def __init__(self, pipes: Path, *, let_go: str, reply: bytes, delay: float = 0.0):
        self.pipes, self.let_go, self.reply, self.delay = pipes, let_go, reply, delay
        # O_RDWR opens a FIFO without waiting for a peer: here it is the late writer.
        self.late = os.open(pipes / REPLY_PIPE, os.O_RDWR)
        self.request_fd = os.open(pipes / REQUEST_PIPE, os.O_RDONLY | os.O_NONBLOCK)
        self.request = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def unread(self) -> int:
        answer = fcntl.ioctl(self.request_fd, termios.FIONREAD, b"\0" * 4)
        return int.from_bytes(answer, sys.byteorder)

    def serve(self) -> None:
        deadline = time.monotonic() + 10
        while self.unread() == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        if self.let_go == "before the request is read":
            os.close(self.late)
            time.sleep(0.2)  # the client sees the hang-up with its request still unread
        self.request = os.read(self.request_fd, 1 << 16)
        if self.let_go == "after the request is read":
            os.close(self.late)
        time.sleep(self.delay)
        fd = os.open(self.pipes / REPLY_PIPE, os.O_WRONLY | os.O_NONBLOCK)
        if self.reply:
            os.write(fd, self.reply)
        os.close(fd)

    def join(self) -> bytes:
        self.thread.join(15)
        assert not self.thread.is_alive()
        os.close(self.request_fd)
        return self.request


@pytest.mark.parametrize("let_go", ["before the request is read", "after the request is read"])
@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_a_late_writer_of_the_last_reply_is_not_taken_for_an_answer(
    pipes: Path, let_go: str, delay: float
) -> None:
    # The daemon wrote the last client's reply and was slow to close the FIFO: the next
    # client, which opened it meanwhile, sees that close as a hang-up. Taken as "not
    # done", it failed, and its own reply went to the client after it (seen in CI).
    daemon = LateWriterDaemon(pipes, let_go=let_go, reply=h("4f 4b") + u64(42), delay=delay)
    result = cassini(pipes, "-c", "x")
    assert daemon.join() == h("43 52" + FULL_TIMING) + commandline(b"x")
    assert (result.stdout, result.status) == (b"42\n", 0), result.stderr


@pytest.mark.parametrize("late", [False, True])
def test_a_reply_fifo_closed_empty_is_the_daemons_no(pipes: Path, late: bool) -> None:
    # The daemon could not store the task: it opens the reply FIFO and closes it empty.
    if late:
        daemon = LateWriterDaemon(pipes, let_go="after the request is read", reply=b"")
        result = cassini(pipes, "-c", "x")
        daemon.join()
    else:
        with FakeDaemon(pipes, [Exchange(b"")]):
            result = cassini(pipes, "-c", "x")
    assert (result.stdout, result.status) == (b"", 1)
    assert (
        one_line(result.stderr)
        == f"cassini: the daemon closed {pipes / REPLY_PIPE} without replying"
    )
    # After transport.REOPEN_GRACE (1 s) when it cannot tell at once.
    assert result.seconds < 6


def test_a_reply_fifo_closed_empty_with_no_late_writer_is_told_at_once(pipes: Path) -> None:
    # Timed in this process, without a cassini's start-up: no grace is waited.
    with FakeDaemon(pipes, [Exchange(b"")]):
        began = time.monotonic()
        with pytest.raises(transport.TransportError, match="without replying"):
            transport.exchange(str(pipes), CreateRequest(Timing(), (b"x",)))
        assert time.monotonic() - began < transport.REOPEN_GRACE / 2


@pytest.mark.parametrize("missing", ["directory", REQUEST_PIPE, REPLY_PIPE])
def test_it_names_a_missing_path(tmp_path: Path, missing: str) -> None:
    pipes = tmp_path / "pipes"
    if missing != "directory":
        make_pipes(pipes)
        (pipes / missing).unlink()
    result = cassini(pipes, "-l")
    assert (result.stdout, result.status) == (b"", 1)
    line = one_line(result.stderr)
    assert line.startswith("cassini: ")
    assert str(pipes if missing == "directory" else pipes / missing) in line
    assert result.seconds < 2


def test_it_refuses_a_pipe_that_is_not_a_fifo(tmp_path: Path) -> None:
    pipes = make_pipes(tmp_path / "pipes")
    (pipes / REPLY_PIPE).unlink()
    (pipes / REPLY_PIPE).write_bytes(b"OK")
    result = cassini(pipes, "-l")
    assert (result.stdout, result.status) == (b"", 1)
    assert one_line(result.stderr) == f"cassini: {pipes / REPLY_PIPE} is not a FIFO"


# --- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["-r"],
        ["-r", "-1"],
        ["-r", "+1"],
        ["-r", " 1"],
        ["-r", "1 "],
        ["-r", "0x10"],
        ["-r", ""],
        ["-x", "18446744073709551616"],
        ["-o", "1_0"],
        ["-e", "\u0661"],  # ARABIC-INDIC DIGIT ONE
        ["-l", "-r", "1"],
        ["-o", "1", "-e", "1"],
        ["-q", "-l"],
        ["-c"],
        ["-c", ""],
        ["echo", "hi"],
        ["-l", "extra"],
        ["-x", "1", "extra"],
        ["-m", "1"],
        ["-l", "-H", "1"],
        ["-c", "-m", "60", "x"],
        ["-c", "-H", "24", "x"],
        ["-c", "-d", "8", "x"],
        ["-c", "-m", "5-3", "x"],
        ["-c", "-m", "", "x"],
        ["-c", "-m", "1", "-m", "2", "x"],
        ["-Z"],
        ["--list"],
        ["-r", "49", "0"],
    ],
)
def test_it_sends_nothing_for_invalid_arguments(pipes: Path, args: list[str]) -> None:
    with FakeDaemon(pipes, []) as fake:
        result = cassini(pipes, *args)
    assert (result.stdout, result.status) == (b"", 1)
    first, _, rest = result.stderr.partition("\n")
    assert first.startswith("cassini: ")
    assert rest == "Try 'cassini -h' for more information.\n"  # not the whole usage
    assert "Traceback" not in result.stderr
    assert (fake.requests, fake.unexpected, fake.writers_without_data) == ([], b"", 0)


def test_it_prints_the_usage_for_h(pipes: Path) -> None:
    with FakeDaemon(pipes, []) as fake:
        result = cassini(pipes, "-h")
    assert result.stdout.startswith(b"usage: cassini")
    assert (result.stderr, result.status) == ("", 0)
    assert (fake.requests, fake.unexpected, fake.writers_without_data) == ([], b"", 0)


# --- imports ---------------------------------------------------------------------------

DAEMON_ONLY = ("daemon", "psutil", "croniter", "cron_descriptor")


def imported_modules(*args: str) -> set[str]:
    """Modules imported by `python -X importtime ARGS` (its stderr lists each one)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    assert names, done.stderr
    return names


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "import cassini.__main__, cassini.cli, cassini.transport"),
        ("-m", "cassini", "-p", "/nonexistent/pipes", "-c", "-m", "1", "true"),
    ],
)
def test_it_imports_no_daemon_module(args: tuple[str, ...]) -> None:
    modules = imported_modules(*args)
    assert "saturnd.protocol" in modules  # the check below looks at the right list
    for name in modules:
        assert name.split(".")[0] not in DAEMON_ONLY, name
        if name.startswith("saturnd."):
            assert name in (
                "saturnd.protocol",
                "saturnd.messages",
                "saturnd.wiretypes",
                "saturnd.decoding",
                "saturnd.timing",
                "saturnd.task",
                "saturnd.runrecord",
            ), name


def test_it_starts_light_for_h() -> None:
    # `cassini -h` must not load the codec and what it pulls in (see bench/).
    baseline = imported_modules("-c", "pass")
    heavy = {"saturnd.protocol", "saturnd.messages", "saturnd.timing", "dataclasses", "typing"}
    heavy |= {"datetime"}
    loaded = imported_modules("-m", "cassini", "-h") - baseline
    assert "cassini.cli" in loaded
    assert loaded & heavy == set()


# What cassini's own code must not load on the way to a reply: each costs a good share of
# the interpreter's start-up (bench/cassini_roundtrip.py measures the whole).
SLOW_TO_IMPORT = ("typing", "dataclasses", "inspect", "re", "datetime")

# cassini's main() in a bare interpreter: -S (no site), so that nothing a .pth file
# preloads hides an import, and without the console-script wrapper pip generates, which
# imports `re` before our code runs. Prints the modules it loaded as its last line.
MAIN_LISTING_IMPORTS = """\
import sys
before = set(sys.modules)
sys.path.insert(0, sys.argv.pop(1))
from cassini.__main__ import main
status = main(sys.argv[1:])
sys.stderr.write("\\nloaded: " + " ".join(sorted(set(sys.modules) - before)) + "\\n")
sys.exit(status)
"""


def loaded_by_main(*args: str) -> tuple[set[str], subprocess.CompletedProcess[bytes]]:
    """Modules cassini's main(ARGS) loads from the source tree, and the process's outcome."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", MAIN_LISTING_IMPORTS, str(ROOT), *args],
        capture_output=True,
        timeout=30,
        check=False,
    )
    last = done.stderr.decode(errors="replace").rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("loaded: "), done.stderr
    return set(last.split()[1:]), done


@pytest.fixture(scope="module")
def modules_of_a_list(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What a whole `cassini -l` exchange loads: arguments, codec, transport, output."""
    pipes = make_pipes(tmp_path_factory.mktemp("imports") / "pipes")
    reply = h(
        "4f 4b 00 00 00 01  00 00 00 00 00 00 00 05" + FULL_TIMING + "00 00 00 01 00 00 00 01 78"
    )
    with FakeDaemon(pipes, [Exchange(reply)]) as fake:
        loaded, done = loaded_by_main("-p", str(pipes), "-l")
    assert (done.returncode, done.stdout) == (0, b"5: * * * x\n"), done.stderr
    assert fake.requests == [b"LS"]
    assert {"saturnd.protocol", "saturnd.timing", "cassini.transport"} <= loaded
    return loaded


@pytest.mark.parametrize("module", [*SLOW_TO_IMPORT, "getopt", "gettext"])
def test_it_loads_nothing_slow_for_a_list(modules_of_a_list: set[str], module: str) -> None:
    assert module not in modules_of_a_list


def test_it_loads_only_struct_for_the_codec() -> None:
    # saturnd.protocol and saturnd.timing, used as cassini uses them, need nothing but
    # `struct` beyond what a bare interpreter has loaded (and `__future__`, whose import
    # every `from __future__ import annotations` performs).
    code = (
        "import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]);"
        "from saturnd.decoding import ReplyDecoder, decode_reply;"
        "from saturnd.protocol import ListRequest, encode;"
        "from saturnd.timing import Timing;"
        "assert encode(ListRequest()) == b'LS';"
        "ReplyDecoder(b'LS').feed(b'OK');"
        "decode_reply(b'CR', b'OK' + bytes(8));"
        "print(Timing.parse('1-5,*/20', '9', 'mon-fri').format());"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    formatted, modules = done.stdout.splitlines()
    assert formatted == "0-5,20,40 9 1-5"
    allowed = {
        "__future__",
        "struct",
        "_struct",
        "saturnd",
        "saturnd.protocol",
        "saturnd.messages",
        "saturnd.wiretypes",
        "saturnd.decoding",
        "saturnd.timing",
        "saturnd.task",
        "saturnd.runrecord",
    }
    assert set(modules.split()) - allowed == set()
