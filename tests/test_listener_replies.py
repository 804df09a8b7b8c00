"""TIMES_EXITCODES replies sent from the history file (sendfile), under the listener's
rules for every reply, over the socket and over the FIFOs alike: byte-exact, bounded
when the client stalls, abandoned when the client goes, the history's descriptor closed
on every path, and the same bytes when sendfile is refused (read and written instead).

Histories are written in the file format directly (NBRUNS uint32, then TIME int64 and
EXITCODE uint16 per run, big-endian: the reply's layout, PROTOCOL.md), not with
saturnd's encoder, so the expected bytes do not come from the code under test.
Clients are written here by hand from PROTOCOL.md; the FIFO one follows cassini.lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saturnd import history as run_history
from saturnd.clock import SystemClock
from saturnd.handlers import FileReply
from saturnd.listener import REPLY_OPEN_TIMEOUT, REPLY_STALL_TIMEOUT, Listener, StopFlag
from saturnd.outgoing import SMALL_REPLY, Outgoing
from saturnd.runcontrol import ServedStore
from saturnd.store import Store
from saturnd.taskdir import append_run
from saturnd.timing import Timing
from tests.conftest import NOW
from tests.daemon_harness import Daemon, wait_for

MakeDaemon = Callable[..., Daemon]

REQUEST_PIPE = "saturnd-request-pipe"
REPLY_PIPE = "saturnd-reply-pipe"
SOCKET_FILE = "saturnd.sock"
LOCK_FILE = "cassini.lock"
PIPE_CAPACITY = 1 << 16
LARGE = 100_000
STALL = REPLY_STALL_TIMEOUT - 0.3
"""A pause the daemon must wait out: just under its stall timeout."""
TRANSPORTS = ["fifo", "socket"]


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


# --- raw clients that read at the test's pace --------------------------------------


class Client:
    """One exchange by hand; the test decides how fast the reply is read, and when the
    client goes away. Subclasses say how the request goes and where the reply comes."""

    reply_fd: int

    def __init__(self) -> None:
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
        """Stop reading for good: the daemon's next write finds no reader."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FifoClient(Client):
    """cassini's way on the FIFOs: the lock, the reply FIFO, then the request in one
    write; the request FIFO is held until the end."""

    def __init__(self, pipes: Path, request: bytes) -> None:
        super().__init__()
        self.lock_fd = os.open(pipes / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        self.reply_fd = os.open(pipes / REPLY_PIPE, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.request_fd = os.open(pipes / REQUEST_PIPE, os.O_WRONLY | os.O_CLOEXEC)
        os.write(self.request_fd, request)

    def close_reply(self) -> None:
        os.close(self.reply_fd)
        self.reply_fd = -1

    def close(self) -> None:
        for fd in (self.reply_fd, self.request_fd, self.lock_fd):
            if fd >= 0:
                os.close(fd)
        self.reply_fd = self.request_fd = self.lock_fd = -1


def connect(pipes: Path) -> socket.socket:
    """A connection to the daemon's socket, through the directory's descriptor when the
    path is too long for sun_path (pytest's temporary paths can be)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(pipes, os.O_PATH | os.O_DIRECTORY)
    try:
        client.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_FILE}")
    except BaseException:
        client.close()
        raise
    finally:
        os.close(dir_fd)
    return client


class SocketClient(Client):
    """One request on its own connection, then the write side shut: the daemon closes
    the connection once the reply is out, so the end of the reply is seen."""

    def __init__(self, pipes: Path, request: bytes) -> None:
        super().__init__()
        self.sock: socket.socket | None = connect(pipes)
        self.sock.sendall(request)
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.setblocking(False)
        self.reply_fd = self.sock.fileno()

    def close_reply(self) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.reply_fd = -1


CLIENTS: dict[str, Callable[[Path, bytes], Client]] = {
    "fifo": FifoClient,
    "socket": SocketClient,
}


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once per transport; cassini uses the same one."""
    name: str = request.param
    monkeypatch.setenv("CASSINI_TRANSPORT", name)
    return name


@pytest.fixture
def large(make_daemon: MakeDaemon) -> tuple[Daemon, int, list[tuple[int, int]]]:
    """A daemon and a task with LARGE runs (an unfinished append after them)."""
    daemon = make_daemon()
    runs = history(LARGE)
    task_id = task_with_history(daemon, runs, tail=struct.pack(">qH", 1, 2)[:7])
    return daemon, task_id, runs


# --- through the real daemon -------------------------------------------------------


def test_it_sends_a_large_history_byte_exact(
    large: tuple[Daemon, int, list[tuple[int, int]]], transport: str
) -> None:
    daemon, task_id, runs = large
    client = CLIENTS[transport](daemon.pipes, tx_request(task_id))
    try:
        assert client.read_to_end() == tx_reply(runs)  # the unfinished append is not sent
    finally:
        client.close()
    assert daemon.cassini("-x", str(task_id), timeout=60).stdout.decode().splitlines() == (
        cassini_lines(runs)
    )
    assert "reply dropped" not in log_of(daemon)


def test_it_sends_small_and_boundary_histories_byte_exact(
    make_daemon: MakeDaemon, transport: str
) -> None:
    daemon = make_daemon()
    # Up to SMALL_REPLY bytes the reply is one write; one run more, it is sent from the file.
    largest_small = (SMALL_REPLY - 6) // 10
    for count in (0, 1, largest_small, largest_small + 1, PIPE_CAPACITY // 10 + 1):
        runs = history(count)
        task_id = task_with_history(daemon, runs)
        client = CLIENTS[transport](daemon.pipes, tx_request(task_id))
        try:
            assert client.read_to_end() == tx_reply(runs), count
        finally:
            client.close()


def test_it_gives_a_slow_reader_every_byte_and_not_the_runs_appended_meanwhile(
    large: tuple[Daemon, int, list[tuple[int, int]]],
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The history written for this test is past the bound a run's append compacts to.
    monkeypatch.setattr(run_history, "HISTORY_KEEP", 1 << 30)
    daemon, task_id, runs = large
    expected = tx_reply(runs)
    task_dir = daemon.state / f"task_{task_id}"
    client = CLIENTS[transport](daemon.pipes, tx_request(task_id))
    try:
        for _ in range(3):
            client.read(PIPE_CAPACITY)
            time.sleep(STALL)  # the daemon waits, with the pipe (socket buffer) full
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


def test_it_drops_a_reader_that_stalls_too_long_and_serves_the_next(
    large: tuple[Daemon, int, list[tuple[int, int]]], transport: str
) -> None:
    daemon, task_id, runs = large
    listener = listener_pid(daemon)
    client = CLIENTS[transport](daemon.pipes, tx_request(task_id))
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


def test_it_keeps_serving_when_a_reader_goes_away_mid_reply(
    large: tuple[Daemon, int, list[tuple[int, int]]], transport: str
) -> None:
    daemon, task_id, runs = large
    listener = listener_pid(daemon)
    client = CLIENTS[transport](daemon.pipes, tx_request(task_id))
    try:
        client.read(3 * PIPE_CAPACITY)
        client.close_reply()  # no reader left: the daemon's next write fails
        wait_for(lambda: "reply dropped" in log_of(daemon), what="the drop")
    finally:
        client.close()
    assert "client stopped reading" not in log_of(daemon)  # dropped at once, not timed out
    assert daemon.cassini("-x", str(task_id), timeout=60).stdout.decode().splitlines() == (
        cassini_lines(runs)
    )
    after = CLIENTS[transport](daemon.pipes, tx_request(task_id))
    try:
        assert after.read_to_end() == tx_reply(runs)
    finally:
        after.close()
    assert listener_pid(daemon) == listener and "died unexpectedly" not in log_of(daemon)


def test_it_keeps_the_listener_memory_flat_for_a_long_history(
    make_daemon: MakeDaemon, transport: str
) -> None:
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
        client = CLIENTS[transport](daemon.pipes, tx_request(task_id))
        try:
            assert len(client.read_to_end()) == 2 + size
        finally:
            client.close()
    # Reading the file whole would add at least its size.
    assert peak() - before < size // 2


# --- in this process: a real Listener in a thread, for what a daemon cannot be made to do


class Bench:
    """A Listener on a real store, real FIFOs and a real socket, run in a thread."""

    def __init__(self, root: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.pipes = root / "pipes"
        self.pipes.mkdir(mode=0o700)
        state = root / "state"
        state.mkdir(mode=0o700)
        self.log = logging.getLogger("test.listener_replies")
        caplog.set_level(logging.INFO, logger=self.log.name)
        self.caplog = caplog
        self.store = Store.open(state, self.log)
        self.stop = StopFlag()
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        served = ServedStore(self.store, SystemClock(), self.log)
        self.listener = Listener(self.pipes, served, self.log, self.stop, self.wake_read)
        self.listener.open()
        self.thread = threading.Thread(target=self.listener.run, daemon=True)
        self.thread.start()

    def task(self, runs: list[tuple[int, int]]) -> int:
        task_id = self.store.create(Timing.parse("0", "0", "1"), (b"true",))
        (self.store.task_dir(task_id) / "times-exitcodes").write_bytes(runs_file(runs))
        return task_id

    def exchange(self, transport: str, request: bytes) -> bytes:
        client = CLIENTS[transport](self.pipes, request)
        try:
            return client.read_to_end()
        finally:
            client.close()

    def messages(self) -> str:
        return "\n".join(record.getMessage() for record in self.caplog.records)

    def close(self) -> None:
        self.stop.stopping = True
        os.write(self.wake_write, b"x")
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        os.close(self.wake_read)
        os.close(self.wake_write)
        self.store.close()


@pytest.fixture
def bench(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Bench]:
    # The refusal of sendfile is remembered for the process: not from one test to the next.
    monkeypatch.setattr(Outgoing, "use_sendfile", hasattr(os, "sendfile"))
    made = Bench(tmp_path, caplog)
    yield made
    made.close()


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as error:
        return error.errno == errno.EBADF
    return False


def all_closed(fds: list[int]) -> None:
    """Wait until the listener has closed every one of `fds` (it closes a history just
    after its last byte is out: the client may see the end first)."""
    wait_for(lambda: all(closed(fd) for fd in fds), timeout=3, what=f"{fds} to be closed")


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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_it_sends_a_small_history_in_one_write_and_a_large_one_by_sendfile(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int], transport: str
) -> None:
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    small = history((SMALL_REPLY - 6) // 10)
    task_id = bench.task(small)
    assert bench.exchange(transport, tx_request(task_id)) == tx_reply(small)
    all_closed(history_fds)
    assert calls == [] and len(history_fds) == 1
    runs = history(LARGE)
    task_id = bench.task(runs)
    assert bench.exchange(transport, tx_request(task_id)) == tx_reply(runs)
    all_closed(history_fds)
    assert calls and calls[0] == 10 * LARGE


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_it_acknowledges_nothing_when_the_store_fails(
    bench: Bench, history_fds: list[int], transport: str
) -> None:
    task_id = bench.task([])
    history_path = bench.store.task_dir(task_id) / "times-exitcodes"
    history_path.unlink()
    history_path.mkdir()  # not a regular file: open_runs refuses it
    reply = bench.exchange(transport, tx_request(task_id))
    if transport == "fifo":
        assert reply == b""  # the reply FIFO opened and closed empty: the course has no error
    else:
        assert reply[:4] == b"EREM"
        (length,) = struct.unpack(">I", reply[4:8])
        assert length == len(reply) - 8 > 0
    assert f"TimesExitcodes {task_id} not acknowledged" in bench.messages()
    assert history_fds == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("refused_after", [0, 1, 3])
def test_it_falls_back_to_the_same_bytes_when_sendfile_is_refused(
    bench: Bench,
    monkeypatch: pytest.MonkeyPatch,
    history_fds: list[int],
    refused_after: int,
    transport: str,
) -> None:
    """Refused at once, or after some pieces went out by sendfile: the rest is read and
    written from where sendfile stopped, and the client gets exactly the reply."""
    calls: list[int] = []
    real = os.sendfile

    def refusing(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > refused_after:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        # Small pieces, so that some go out before the refusal.
        return real(out_fd, in_fd, offset, min(count, 4096))

    monkeypatch.setattr(os, "sendfile", refusing)
    runs = history(LARGE)
    task_id = bench.task(runs)
    assert bench.exchange(transport, tx_request(task_id)) == tx_reply(runs)
    assert len(calls) == refused_after + 1 and Outgoing.use_sendfile is False
    all_closed(history_fds)
    # Not tried again: the next large reply is read and written from the start.
    assert bench.exchange(transport, tx_request(task_id)) == tx_reply(runs)
    assert len(calls) == refused_after + 1
    all_closed(history_fds)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_it_drops_the_reply_on_a_read_error_and_keeps_sendfile(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int], transport: str
) -> None:
    real = os.sendfile
    calls: list[int] = []

    def failing(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(out_fd, in_fd, offset, min(count, 4096))

    monkeypatch.setattr(os, "sendfile", failing)
    runs = history(LARGE)
    task_id = bench.task(runs)
    got = bench.exchange(transport, tx_request(task_id))
    assert tx_reply(runs).startswith(got) and len(got) < len(tx_reply(runs))
    assert "reply dropped: Input/output error" in bench.messages()
    assert Outgoing.use_sendfile is True
    all_closed(history_fds)


def test_it_closes_a_history_when_nobody_opens_the_reply_fifo(
    bench: Bench, history_fds: list[int]
) -> None:
    task_id = bench.task(history(LARGE))
    started = time.monotonic()
    request_fd = os.open(bench.pipes / REQUEST_PIPE, os.O_WRONLY)
    try:
        os.write(request_fd, tx_request(task_id))  # and never open the reply FIFO
        wait_for(lambda: "no client opened the reply FIFO" in bench.messages(), timeout=5)
    finally:
        os.close(request_fd)
    assert time.monotonic() - started < REPLY_OPEN_TIMEOUT + 1
    all_closed(history_fds)
    assert len(history_fds) == 1


def test_it_closes_a_history_when_the_socket_client_leaves_before_the_reply(
    bench: Bench, history_fds: list[int]
) -> None:
    task_id = bench.task(history(LARGE))
    client = connect(bench.pipes)
    client.sendall(tx_request(task_id))
    client.close()  # the reply finds nobody: dropped at once
    wait_for(lambda: len(history_fds) == 1, timeout=3, what="the request to be served")
    all_closed(history_fds)
    assert bench.exchange("socket", b"LS") == bench.store.list_reply()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("goes", [False, True], ids=["stalls", "goes"])
def test_it_closes_a_history_when_the_reader_stalls_or_goes(
    bench: Bench, history_fds: list[int], transport: str, goes: bool
) -> None:
    task_id = bench.task(history(LARGE))
    client = CLIENTS[transport](bench.pipes, tx_request(task_id))
    started = time.monotonic()
    try:
        client.read(PIPE_CAPACITY)
        if goes:
            client.close_reply()
        wait_for(lambda: "reply dropped" in bench.messages(), timeout=REPLY_STALL_TIMEOUT + 2)
        all_closed(history_fds)
    finally:
        client.close()
    assert time.monotonic() - started < REPLY_STALL_TIMEOUT + 1
    assert ("client stopped reading" in bench.messages()) is not goes
    # The next client is served.
    assert bench.exchange(transport, tx_request(task_id)) == tx_reply(history(LARGE))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_it_reads_and_writes_a_large_history_without_sendfile(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, history_fds: list[int], transport: str
) -> None:
    # Where os.sendfile does not exist, Outgoing starts without it.
    monkeypatch.delattr(os, "sendfile")
    monkeypatch.setattr(Outgoing, "use_sendfile", False)
    runs = history(LARGE)
    task_id = bench.task(runs)
    assert bench.exchange(transport, tx_request(task_id)) == tx_reply(runs)
    all_closed(history_fds)


def test_it_closes_a_small_file_reply_that_cannot_be_read_whole(tmp_path: Path) -> None:
    # A history shorter than its NBRUNS says (cut by a full disk): read at once because it
    # is small, it fails in Outgoing's constructor, which must still close the file.
    path = tmp_path / "times-exitcodes"
    path.write_bytes(runs_file(history(3))[:-5])
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(OSError, match="ended before"):
        Outgoing(FileReply(b"OK" + struct.pack(">I", 3), fd, 4, 30))
    assert closed(fd)
