"""TIMES_EXITCODES replies sent from the history file (sendfile), under the listener's
rules for every reply: byte-exact, bounded when the client stalls, abandoned when the
client goes, the history's descriptor closed on every path, and the same bytes when
sendfile is refused (read and written instead).

Histories are written in the file format directly (NBRUNS uint32, then TIME int64 and
EXITCODE uint16 per run, big-endian: the reply's layout, PROTOCOL.md), not with
saturnd's encoder, so the expected bytes do not come from the code under test.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saturnd.listener import (
    REPLY_STALL_TIMEOUT,
    SMALL_REPLY,
    FileReply,
    Listener,
    StopFlag,
)
from saturnd.protocol import TimesExitcodesRequest
from saturnd.store import Store
from saturnd.taskdir import append_run
from saturnd.timing import Timing
from tests.conftest import NOW
from tests.daemon_harness import CASSINI, Daemon, wait_for

MakeDaemon = Callable[..., Daemon]

REQUEST_PIPE = "saturnd-request-pipe"
REPLY_PIPE = "saturnd-reply-pipe"
LOCK_FILE = "cassini.lock"
PIPE_CAPACITY = 1 << 16
LARGE = 100_000
STALL = REPLY_STALL_TIMEOUT - 0.3
"""A pause the daemon must wait out: just under its stall timeout."""


# --- histories ---------------------------------------------------------------------


def history(count: int, first: int = NOW - 10 * 365 * 86400) -> list[tuple[int, int]]:
    """`count` runs a minute apart; every exit code 0-255 and 0xFFFF appear."""
    return [
        (first + 60 * index, 0xFFFF if index % 257 == 256 else index % 257)
        for index in range(count)
    ]


def runs_file(runs: list[tuple[int, int]], tail: bytes = b"") -> bytes:
    """A `times-exitcodes` file of `runs`, then `tail` (an unfinished append)."""
    return struct.pack(">I", len(runs)) + b"".join(struct.pack(">qH", t, c) for t, c in runs) + tail


def tx_reply(runs: list[tuple[int, int]]) -> bytes:
    return b"OK" + runs_file(runs)


def tx_request(task_id: int) -> bytes:
    return b"TX" + struct.pack(">Q", task_id)


def cassini_lines(runs: list[tuple[int, int]]) -> list[str]:
    """What `cassini -x` prints for `runs` with TZ=UTC."""
    return [f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S} {code}" for t, code in runs]


def task_with_history(daemon: Daemon, runs: list[tuple[int, int]], tail: bytes = b"") -> int:
    """A task that never runs during the test, whose history is `runs`."""
    task_id = daemon.create("-m", "0", "-H", "0", "-d", "1", "true")  # Mondays 00:00
    (daemon.state / f"task_{task_id}" / "times-exitcodes").write_bytes(runs_file(runs, tail))
    return task_id


def log_of(daemon: Daemon) -> str:
    return (daemon.state / "saturnd.log").read_text(errors="replace")


def listener_pid(daemon: Daemon) -> int:
    text = log_of(daemon)
    marker = "listener started (pid "
    return int(text[text.rindex(marker) + len(marker) :].split(")", 1)[0])


# --- a raw client that follows cassini.lock and reads at its own pace ---------------


class RawClient:
    """One exchange by hand: the lock, the reply FIFO, then the request in one write;
    the test decides how fast the reply is read, and when the client goes away."""

    def __init__(self, pipes: Path, request: bytes) -> None:
        self.lock_fd = os.open(pipes / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.reply_fd = os.open(pipes / REPLY_PIPE, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.request_fd = os.open(pipes / REQUEST_PIPE, os.O_WRONLY | os.O_CLOEXEC)
        os.write(self.request_fd, request)
        self.received = bytearray()
        self.ended = False

    def read(self, at_least: int, timeout: float = 10.0, chunk: int = PIPE_CAPACITY) -> None:
        """Read until `at_least` more bytes came (or the reply ended), `chunk` at most
        at a time."""
        goal = len(self.received) + at_least
        deadline = time.monotonic() + timeout
        while len(self.received) < goal and not self.ended:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(self.received)} bytes after {timeout} s"
            readable, _, _ = select.select([self.reply_fd], [], [], remaining)
            if not readable:
                continue
            try:
                data = os.read(self.reply_fd, min(chunk, goal - len(self.received)))
            except BlockingIOError:
                continue
            if not data:
                self.ended = True
            self.received += data

    def read_to_end(self, timeout: float = 10.0) -> bytes:
        self.read(1 << 62, timeout)
        return bytes(self.received)

    def close_reply(self) -> None:
        os.close(self.reply_fd)
        self.reply_fd = -1

    def release(self) -> None:
        os.close(self.lock_fd)
        self.lock_fd = -1

    def close(self) -> None:
        for fd in (self.reply_fd, self.request_fd, self.lock_fd):
            if fd >= 0:
                os.close(fd)
        self.reply_fd = self.request_fd = self.lock_fd = -1


@pytest.fixture
def large(make_daemon: MakeDaemon) -> tuple[Daemon, int, list[tuple[int, int]]]:
    """A daemon and a task with LARGE runs (an unfinished append after them)."""
    daemon = make_daemon()
    runs = history(LARGE)
    task_id = task_with_history(daemon, runs, tail=struct.pack(">qH", 1, 2)[:7])
    return daemon, task_id, runs


# --- through the real daemon -------------------------------------------------------


def test_a_large_history_comes_back_byte_exact(
    large: tuple[Daemon, int, list[tuple[int, int]]],
) -> None:
    daemon, task_id, runs = large
    client = RawClient(daemon.pipes, tx_request(task_id))
    try:
        assert client.read_to_end() == tx_reply(runs)  # the unfinished append is not sent
    finally:
        client.close()
    assert daemon.cassini("-x", str(task_id), timeout=60).stdout.decode().splitlines() == (
        cassini_lines(runs)
    )
    assert "reply dropped" not in log_of(daemon)


def test_small_and_boundary_histories_come_back_byte_exact(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    # Up to SMALL_REPLY bytes the reply is one write; one run more, it is sent from the file.
    largest_small = (SMALL_REPLY - 6) // 10
    for count in (0, 1, largest_small, largest_small + 1, PIPE_CAPACITY // 10 + 1):
        runs = history(count)
        task_id = task_with_history(daemon, runs)
        client = RawClient(daemon.pipes, tx_request(task_id))
        try:
            assert client.read_to_end() == tx_reply(runs), count
        finally:
            client.close()


def test_a_slow_reader_gets_every_byte_and_not_the_runs_appended_meanwhile(
    large: tuple[Daemon, int, list[tuple[int, int]]],
) -> None:
    daemon, task_id, runs = large
    expected = tx_reply(runs)
    task_dir = daemon.state / f"task_{task_id}"
    client = RawClient(daemon.pipes, tx_request(task_id))
    try:
        for _ in range(3):
            client.read(PIPE_CAPACITY)
            time.sleep(STALL)  # the daemon waits, with the pipe full
        # Runs recorded while the reply is on its way are not part of it: one before
        # the file's last page is sent, one while that page sits in the pipe (sendfile
        # puts the page itself there; the append writes into it, after the runs sent).
        append_run(task_dir, NOW, 9)
        client.read(len(expected) - 60_000 - len(client.received))
        time.sleep(STALL)  # the daemon sends the rest, which fits in the pipe
        append_run(task_dir, NOW + 60, 10)
        assert client.read_to_end() == expected
    finally:
        client.close()
    assert "reply dropped" not in log_of(daemon)
    lines = daemon.cassini("-x", str(task_id), timeout=60).stdout.decode().splitlines()
    assert lines == cassini_lines([*runs, (NOW, 9), (NOW + 60, 10)])


def test_a_reader_that_stalls_too_long_is_dropped_and_the_next_one_served(
    large: tuple[Daemon, int, list[tuple[int, int]]],
) -> None:
    daemon, task_id, runs = large
    listener = listener_pid(daemon)
    client = RawClient(daemon.pipes, tx_request(task_id))
    try:
        client.read(PIPE_CAPACITY)
        wait_for(
            lambda: "client stopped reading" in log_of(daemon), timeout=REPLY_STALL_TIMEOUT + 5
        )
    finally:
        client.close()
    assert daemon.cassini("-x", str(task_id), timeout=60).stdout.decode().splitlines() == (
        cassini_lines(runs)
    )
    assert listener_pid(daemon) == listener and "died unexpectedly" not in log_of(daemon)


def test_a_reader_that_goes_away_mid_reply_leaves_the_daemon_serving(
    large: tuple[Daemon, int, list[tuple[int, int]]],
) -> None:
    daemon, task_id, runs = large
    listener = listener_pid(daemon)
    client = RawClient(daemon.pipes, tx_request(task_id))
    try:
        client.read(3 * PIPE_CAPACITY)
        client.close_reply()  # no reader left: the daemon's next write fails
        wait_for(lambda: "client closed the reply FIFO" in log_of(daemon), what="the drop")
    finally:
        client.close()
    assert daemon.cassini("-x", str(task_id), timeout=60).stdout.decode().splitlines() == (
        cassini_lines(runs)
    )
    after = RawClient(daemon.pipes, tx_request(task_id))
    try:
        assert after.read_to_end() == tx_reply(runs)
    finally:
        after.close()
    assert listener_pid(daemon) == listener and "died unexpectedly" not in log_of(daemon)


def _has_open(pid: int, path: Path) -> bool:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == str(path):
                return True
        except OSError:
            continue
    return False


def test_a_reply_is_abandoned_when_its_client_hands_the_lock_to_the_next(
    large: tuple[Daemon, int, list[tuple[int, int]]],
) -> None:
    """The next cassini opens the reply FIFO while the first client still has it open:
    no broken pipe tells the daemon, only the lock changing hands. The rest of the old
    reply must not reach the new client."""
    daemon, task_id, runs = large
    client = RawClient(daemon.pipes, tx_request(task_id))
    waiting: subprocess.Popen[bytes] | None = None
    # Read a little now and then, so that the daemon goes on writing (never stalled for
    # long) until the next cassini waits for the lock.
    trickling = threading.Event()
    trickling.set()

    def trickle() -> None:
        while trickling.is_set() and not client.ended:
            client.read(4096, chunk=4096)
            time.sleep(0.05)

    reader = threading.Thread(target=trickle)
    reader.start()
    try:
        waiting = subprocess.Popen(
            [CASSINI, "-p", str(daemon.pipes), "-x", str(task_id)],
            env=daemon.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        next_client = waiting
        wait_for(
            lambda: _has_open(next_client.pid, daemon.pipes / LOCK_FILE),
            what="the next cassini to wait for the lock",
        )
        time.sleep(0.05)
        trickling.clear()
        reader.join()
        assert not client.ended
        client.release()
        wait_for(
            lambda: (
                _has_open(next_client.pid, daemon.pipes / REPLY_PIPE)
                or next_client.poll() is not None
            ),
            what="the next cassini to open the reply FIFO",
        )
        client.close_reply()
        out, err = waiting.communicate(timeout=60)
    finally:
        trickling.clear()
        reader.join()
        client.close()
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert out.decode().splitlines() == cassini_lines(runs)
    assert "reply dropped: its client left" in log_of(daemon)


def test_the_listener_memory_stays_flat_for_a_long_history(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    runs = history(500_000)
    task_id = task_with_history(daemon, runs)
    size = 4 + 10 * len(runs)
    pid = listener_pid(daemon)

    def peak() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    before = peak()
    for _ in range(2):
        client = RawClient(daemon.pipes, tx_request(task_id))
        try:
            assert len(client.read_to_end()) == 2 + size
        finally:
            client.close()
    # Reading the file whole would add at least its size (the old path: three times it).
    assert peak() - before < size // 2


# --- in this process: the paths a real daemon cannot be made to take ----------------


class Bench:
    """A Listener on a real store and real FIFOs, and a reader thread for its replies."""

    def __init__(self, root: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.pipes = root / "pipes"
        self.pipes.mkdir(mode=0o700)
        state = root / "state"
        state.mkdir(mode=0o700)
        self.log = logging.getLogger("test.listener_replies")
        caplog.set_level(logging.INFO, logger=self.log.name)
        self.caplog = caplog
        self.store = Store.open(state, self.log)
        self.listener = Listener(self.pipes, self.store, self.log, StopFlag())
        self.listener.open()

    def task(self, runs: list[tuple[int, int]]) -> int:
        task_id = self.store.create(Timing.parse("0", "0", "1"), (b"true",))
        (self.store.task_dir(task_id) / "times-exitcodes").write_bytes(runs_file(runs))
        return task_id

    def exchange(self, send: Callable[[], object]) -> bytes:
        """Call `send` (the listener writing a reply) while a reader takes it all."""
        reply_fd = os.open(self.pipes / REPLY_PIPE, os.O_RDONLY | os.O_NONBLOCK)
        received: list[bytes] = []

        deadline = time.monotonic() + 10.0

        def read() -> None:
            while time.monotonic() < deadline:
                select.select([reply_fd], [], [], 0.5)
                try:
                    data = os.read(reply_fd, PIPE_CAPACITY)
                except BlockingIOError:
                    continue
                if not data:
                    return
                received.append(data)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            send()
        finally:
            reader.join()
            os.close(reply_fd)
        return b"".join(received)

    def messages(self) -> str:
        return "\n".join(record.getMessage() for record in self.caplog.records)

    def renew(self) -> None:
        """A new Listener in place of this one (to see what it finds at start)."""
        self._close_listener()
        self.listener = Listener(self.pipes, self.store, self.log, StopFlag())
        self.listener.open()

    def _close_listener(self) -> None:
        for fd in (self.listener.request_fd, self.listener.watch_fd, self.listener.lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)

    def close(self) -> None:
        self._close_listener()
        self.store.close()


@pytest.fixture
def bench(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Bench]:
    made = Bench(tmp_path, caplog)
    yield made
    made.close()


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as error:
        return error.errno == errno.EBADF
    return False


@pytest.fixture
def history_fds(monkeypatch: pytest.MonkeyPatch, bench: Bench) -> list[int]:
    """The descriptors the store opened for histories, recorded as it hands them out."""
    opened: list[int] = []
    original = bench.store.open_runs

    def spy(task_id: int) -> tuple[int, int] | None:
        result = original(task_id)
        if result is not None:
            opened.append(result[0])
        return result

    monkeypatch.setattr(bench.store, "open_runs", spy)
    return opened


def test_a_small_history_goes_out_in_one_write_and_a_large_one_by_sendfile(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int]
) -> None:
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    small = history((SMALL_REPLY - 6) // 10)
    task_id = bench.task(small)
    assert bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id))) == (
        tx_reply(small)
    )
    assert calls == [] and all(closed(fd) for fd in history_fds)
    runs = history(LARGE)
    task_id = bench.task(runs)
    assert bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id))) == (
        tx_reply(runs)
    )
    assert calls and calls[0] == 10 * LARGE and all(closed(fd) for fd in history_fds)


def test_a_store_failure_is_no_acknowledgement(bench: Bench, history_fds: list[int]) -> None:
    task_id = bench.task([])
    history_path = bench.store.task_dir(task_id) / "times-exitcodes"
    history_path.unlink()
    history_path.mkdir()  # not a regular file: open_runs refuses it
    assert bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id))) == b""
    assert f"TimesExitcodes {task_id} failed" in bench.messages()


@pytest.mark.parametrize("refused_after", [0, 1, 3])
def test_refused_sendfile_falls_back_to_the_same_bytes(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int], refused_after: int
) -> None:
    """Refused at once, or after some pieces went out by sendfile: the rest is read and
    written from where sendfile stopped, and the client gets exactly the reply."""
    calls: list[int] = []
    real = os.sendfile

    def refusing(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > refused_after:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", refusing)
    runs = history(LARGE)
    task_id = bench.task(runs)
    assert bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id))) == (
        tx_reply(runs)
    )
    assert len(calls) == refused_after + 1 and bench.listener.use_sendfile is False
    assert "sendfile refused" in bench.messages()
    assert all(closed(fd) for fd in history_fds)
    # Not tried again: the next large reply is read and written from the start.
    assert bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id))) == (
        tx_reply(runs)
    )
    assert len(calls) == refused_after + 1 and all(closed(fd) for fd in history_fds)


def test_a_read_error_drops_the_reply_and_keeps_sendfile(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int]
) -> None:
    real = os.sendfile
    calls: list[int] = []

    def failing(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", failing)
    runs = history(LARGE)
    task_id = bench.task(runs)
    got = bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id)))
    assert tx_reply(runs).startswith(got) and len(got) < len(tx_reply(runs))
    assert "reply dropped: Input/output error" in bench.messages()
    assert bench.listener.use_sendfile is True and all(closed(fd) for fd in history_fds)


def test_a_file_reply_is_closed_when_nobody_reads(bench: Bench) -> None:
    runs = history(LARGE)
    task_id = bench.task(runs)
    opened = bench.store.open_runs(task_id)
    assert opened is not None
    fd, count = opened
    reply = FileReply(b"OK" + struct.pack(">I", count), fd, 4, 10 * count)
    assert bench.listener.send(reply) is False  # no reader ever opens the reply FIFO
    assert closed(fd)


def test_a_file_reply_is_closed_when_the_reader_stalls_or_goes(bench: Bench) -> None:
    runs = history(LARGE)
    task_id = bench.task(runs)
    for goes in (False, True):
        opened = bench.store.open_runs(task_id)
        assert opened is not None
        fd, count = opened
        reply = FileReply(b"OK" + struct.pack(">I", count), fd, 4, 10 * count)
        reply_fd = os.open(bench.pipes / REPLY_PIPE, os.O_RDONLY | os.O_NONBLOCK)
        if goes:
            timer = threading.Timer(0.2, os.close, (reply_fd,))
            timer.start()
        started = time.monotonic()
        try:
            assert bench.listener.send(reply) is False
        finally:
            if goes:
                timer.join()
            else:
                os.close(reply_fd)
        assert closed(fd)
        assert time.monotonic() - started < REPLY_STALL_TIMEOUT + 1
    assert "client stopped reading" in bench.messages()
    assert "client closed the reply FIFO" in bench.messages()


def test_without_sendfile_a_large_history_is_read_and_written(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int]
) -> None:
    monkeypatch.delattr(os, "sendfile")
    bench.renew()
    assert bench.listener.use_sendfile is False
    runs = history(LARGE)
    task_id = bench.task(runs)
    assert bench.exchange(lambda: bench.listener.serve(TimesExitcodesRequest(task_id))) == (
        tx_reply(runs)
    )
    assert all(closed(fd) for fd in history_fds)
