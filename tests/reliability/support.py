"""Shared tools of the fault-injection suite: scale, figures, daemons to attack, raw clients.

This module owns what every scenario of `tests/reliability/` needs:
- `LONG` and `scaled`: the short form (CI, every scenario in a few seconds to a minute)
  and the long form (`bench/reliability.py` sets SATURND_RELIABILITY=long);
- `Figures`: what a scenario measured (iterations, what was checked, worst latency),
  written as one JSON line to $SATURND_RELIABILITY_REPORT for the bench's table;
- `Target`: a real `saturnd -f --clock FILE` in its own session (so the whole process
  group can be killed at once), optionally with RLIMIT_FSIZE, or running as another
  user (`nobody`): forked from this interpreter after every module it needs is loaded,
  because that user cannot read the interpreter's own installation;
- raw protocol clients written from PROTOCOL.md, for hostile behaviours and for talking
  to a daemon of another user (cassini refuses FIFOs that are not its user's).

Rules: no test waits for a real minute; every wait polls with a deadline; everything a
test starts is stopped at its end, by process id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import json
import os
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from saturnd.decoding import ReplyDecoder
from saturnd.protocol import NEED_DATA, ProtocolError
from tests.daemon_harness import CASSINI, SATURND, Daemon, wait_for

LONG = os.environ.get("SATURND_RELIABILITY", "") == "long"
"""True when the long form runs (bench/reliability.py)."""

NOBODY = 65534
"""The other user of the permission cases: root ignores file modes."""

REQUEST_PIPE = "saturnd-request-pipe"
REPLY_PIPE = "saturnd-reply-pipe"
LOCK_FILE = "cassini.lock"


def scaled(short: int, long: int) -> int:
    """An iteration count: `short` in CI, `long` from bench/reliability.py."""
    return long if LONG else short


# --- figures for the table ------------------------------------------------------


@dataclass
class Figures:
    """What one scenario measured; the conftest writes it out with the test's result."""

    scenario: str
    checked: str = ""
    iterations: int = 0
    worst_latency: float | None = None
    notes: list[str] = field(default_factory=list)

    def latency(self, seconds: float) -> None:
        """Keep the worst latency seen."""
        if self.worst_latency is None or seconds > self.worst_latency:
            self.worst_latency = seconds

    def write(self, test: str, result: str) -> None:
        """Append one JSON line to $SATURND_RELIABILITY_REPORT, if the bench asked."""
        target = os.environ.get("SATURND_RELIABILITY_REPORT")
        if not target:
            return
        line = {
            "scenario": self.scenario,
            "test": test,
            "iterations": self.iterations,
            "checked": self.checked,
            "result": result,
            "worst_latency": self.worst_latency,
            "notes": self.notes,
            "long": LONG,
        }
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


# --- the daemon under attack ----------------------------------------------------


def _limit_fsize(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


class Target(Daemon):
    """A saturnd to attack: its own session, optional RLIMIT_FSIZE, parts by name.

    `as_user` runs it as that uid (and its primary group): forked from this process,
    which then calls saturnd's own entry point, since that user may not read the
    interpreter's files.
    """

    def __init__(
        self,
        root: Path,
        start: int,
        tz: str = "UTC",
        extra: Sequence[str] = (),
        *,
        fsize: int | None = None,
        as_user: int | None = None,
    ) -> None:
        super().__init__(root, start, tz, extra)
        self.fsize = fsize
        self.as_user = as_user
        self.forked_pid = 0
        self.log_offset = 0
        # Another user's daemon cannot open a lock file root creates in its directory.
        self.lock_clients = as_user is None

    @property
    def log_path(self) -> Path:
        return self.state / "saturnd.log"

    def argv(self) -> list[str]:
        return [
            "-f",
            "-p",
            str(self.pipes),
            "-s",
            str(self.state),
            "--clock",
            str(self.clock_file),
            *self.extra,
        ]

    def launch(self) -> None:
        """Start the process without waiting for it to answer."""
        self.stderr_path = self.root / "saturnd.stderr"
        if self.as_user is not None:
            self.forked_pid = _fork_as(self.as_user, self.argv(), self.env, self.stderr_path)
            self.proc = None
            return
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [SATURND, *self.argv()],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=None if self.fsize is None else _limit_fsize(self.fsize),
            )

    def start(self, wait_tick: bool = True) -> Target:
        """Start saturnd and wait until it answers (and, if asked, has ticked)."""
        self.launch()
        wait_for(self._alive_and_answering, timeout=15, what="the daemon to answer")
        if wait_tick:
            wait_for(lambda: self.handled_minute() == self.now // 60, what="the first tick")
        return self

    @property
    def pid(self) -> int:
        if self.proc is not None:
            return self.proc.pid
        return self.forked_pid

    def exited(self) -> int | None:
        """The supervisor's exit status once it has exited, else None."""
        if self.proc is not None:
            return self.proc.poll()
        if not self.forked_pid:
            return 0
        pid, status = os.waitpid(self.forked_pid, os.WNOHANG)
        if pid == 0:
            return None
        self.forked_pid = 0
        self._forked_status = os.waitstatus_to_exitcode(status)
        return self._forked_status

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the supervisor to exit; its status."""
        if self.proc is not None:
            return self.proc.wait(timeout=timeout)
        status: list[int] = []

        def done() -> bool:
            code = self.exited()
            if code is not None or not self.forked_pid:
                status.append(getattr(self, "_forked_status", 0) if code is None else code)
                return True
            return False

        wait_for(done, timeout=timeout, what="saturnd to exit")
        return status[0]

    def _alive_and_answering(self) -> bool:
        code = self.exited() if self.proc is None else self.proc.poll()
        if code is not None:
            raise AssertionError(
                f"saturnd exited with {code}: {self.stderr_path.read_text(errors='replace')}"
            )
        if not (self.pipes / REQUEST_PIPE).exists():
            return False
        return self.answers()

    def answers(self) -> bool:
        try:
            return self.exchange(b"LS", timeout=2.0).startswith(b"OK")
        except (OSError, TimeoutError):
            return False

    def exchange(self, request: bytes, timeout: float = 5.0) -> bytes:
        """A raw exchange with this daemon (works whoever it runs as)."""
        return raw_exchange(self.pipes, request, timeout=timeout, lock=self.lock_clients)

    def raw_create(
        self, argv: Sequence[bytes], timing: tuple[int, int, int] = (1, 1 << 8, 0x7F)
    ) -> bytes:
        """CREATE with a raw client; the raw reply (empty when not acknowledged)."""
        body = struct.pack(">QIBI", *timing, len(argv))
        body += b"".join(struct.pack(">I", len(arg)) + arg for arg in argv)
        return self.exchange(b"CR" + body)

    def raw_list(self) -> list[tuple[int, tuple[bytes, ...]]]:
        """(id, argv) of every task, with a raw client."""
        reply = decode_reply(b"LS", self.exchange(b"LS"))
        return [(task.task_id, task.argv) for task in reply.tasks]  # type: ignore[attr-defined]

    def parts(self) -> dict[str, int]:
        """The live listener and executor pids among the supervisor's children: as the
        log names them at their start, or, once the log has rotated, the listener being
        the one that holds the request FIFO open."""
        try:
            children = {child.pid for child in psutil.Process(self.pid).children()}
        except psutil.NoSuchProcess:
            return {}
        found: dict[str, int] = {}
        for name, pid in re.findall(r"(listener|executor) started \(pid (\d+)\)", self.log_text()):
            if int(pid) in children:
                found[name] = int(pid)
        if len(found) == len(children):
            return found
        request = str(self.pipes / REQUEST_PIPE)
        found = {}
        for pid in children:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
            except OSError:
                continue
            found["listener" if request in targets else "executor"] = pid
        return found

    def all_pids(self) -> list[int]:
        try:
            parent = psutil.Process(self.pid)
            return [parent.pid, *(child.pid for child in parent.children())]
        except psutil.NoSuchProcess:
            return []

    def kill_group(self) -> None:
        """SIGKILL the supervisor, the listener and the executor at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait_exit()
        self.proc = None
        self.forked_pid = 0
        # The supervisor is gone, but a listener or executor killed in the middle of an
        # fsync may take a moment to exit, and holds the pid file's lock until then: a
        # daemon started meanwhile would rightly say "already running".
        wait_for(lambda: not _locked(self.state / "saturnd.pid"), what="the parts to exit")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def new_log(self) -> str:
        """The log lines written since the last call."""
        text = self.log_text()
        if len(text) < self.log_offset:  # rotated
            self.log_offset = 0
        fresh = text[self.log_offset :]
        self.log_offset = len(text)
        return fresh

    def cassini(
        self, *args: str, check: bool = True, timeout: float = 10, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return super().cassini(*args, check=check, timeout=timeout, input=input)

    def stop(self) -> None:
        """TERMINATE if it answers, else kill the group; nothing is left."""
        if self.pid and self.exited() is None:
            with contextlib.suppress(OSError, TimeoutError):
                self.exchange(b"TM", timeout=3.0)
            try:
                self.wait_exit(timeout=10)
            except (AssertionError, subprocess.TimeoutExpired):
                self.kill_group()
        self.proc = None
        self.forked_pid = 0


def _fork_as(uid: int, argv: list[str], env: dict[str, str], stderr_path: Path) -> int:
    """Run `saturnd ARGV` as `uid` in a child of this process; its pid.

    Everything saturnd imports is loaded before the fork: after setuid the child may
    not read the interpreter's installation (here it lives in root's home).
    """
    import encodings.ascii
    import encodings.latin_1
    import encodings.utf_8  # noqa: F401
    import logging.handlers  # noqa: F401
    import pwd  # noqa: F401
    import traceback  # noqa: F401

    import saturnd.cli

    importlib.import_module("_strptime")  # what datetime.strptime loads on first use
    # The version in the usage text: importlib.metadata and what it loads on first use.
    saturnd.cli.build_parser()
    importlib.import_module("tomllib")
    import saturnd.clock
    import saturnd.executor
    import saturnd.listener
    import saturnd.spawn
    import saturnd.startup
    import saturnd.store
    import saturnd.supervisor

    stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.fork()
    if pid:
        os.close(stderr_fd)
        return pid
    code = 70
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(stderr_fd, 2)
        # pytest's capture replaced the streams: write to the descriptors again.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        time.tzset()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        os.chdir("/")
        code = saturnd.cli.main(argv)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.write(2, f"forked saturnd failed: {error!r}\n".encode())
    finally:
        os._exit(code)


# --- raw clients ------------------------------------------------------------------


def raw_exchange(pipes: Path, request: bytes, timeout: float = 5.0, lock: bool = True) -> bytes:
    """One exchange the way PROTOCOL.md describes it: reply FIFO open first, then the
    request in one write; read until the daemon closes its end. Raises TimeoutError.

    With `lock` (the default) it holds cassini.lock like cassini, so it can run beside
    real clients; without, it is a client that does not know the lock (C clients).
    """
    deadline = time.monotonic() + timeout
    lock_fd = -1
    if lock:
        lock_fd = os.open(pipes / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(lock_fd)
                    raise TimeoutError("cassini.lock stays locked") from None
                time.sleep(0.005)
    reply_fd = request_fd = -1
    try:
        reply_fd = os.open(pipes / REPLY_PIPE, os.O_RDONLY | os.O_NONBLOCK)
        while True:
            try:
                request_fd = os.open(pipes / REQUEST_PIPE, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as error:
                if error.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        os.set_blocking(request_fd, True)
        os.write(request_fd, request)
        chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete reply within {timeout} s")
            readable, _, _ = select.select([reply_fd], [], [], remaining)
            if not readable:
                continue
            data = os.read(reply_fd, 1 << 16)
            if not data:
                # select() reports a hang-up only once a writer has come and gone: the
                # reply is complete, or empty when the daemon acknowledged nothing.
                return b"".join(chunks)
            chunks.append(data)
    finally:
        for fd in (request_fd, reply_fd, lock_fd):
            if fd >= 0:
                os.close(fd)


def decode_reply(opcode: bytes, data: bytes) -> object:
    """The reply of a request of `opcode`, decoded strictly (trailing bytes refused)."""
    decoder = ReplyDecoder(opcode)
    decoder.feed(data)
    message = decoder.next_message()
    if message is NEED_DATA or decoder.buffered:
        raise ProtocolError(f"reply of {len(data)} bytes is not one whole reply")
    return message


@contextlib.contextmanager
def cassini_lock(pipes: Path) -> Iterator[None]:
    """Hold cassini.lock like cassini does (hostile clients that follow the lock)."""
    fd = os.open(pipes / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run_cassini(
    pipes: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, bytes, bytes, float]:
    """The real cassini: (exit status, stdout, stderr, seconds it took)."""
    started = time.monotonic()
    result = subprocess.run(
        [CASSINI, "-p", str(pipes), *args], capture_output=True, timeout=60, env=env
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def repair_lines(log: str) -> list[str]:
    """The `cmds` repair messages of a log, except dropping a torn tail."""
    found = []
    for line in log.splitlines():
        match = re.search(r"repairing \S*/cmds: (.*)$", line)
        if match and not match.group(1).startswith("dropped a torn tail"):
            found.append(line)
    return found


def temp_files(state: Path) -> list[str]:
    """Temporary files anywhere under the state directory."""
    return sorted(
        str(path.relative_to(state))
        for path in state.rglob("*")
        if path.name.endswith(".tmp") or path.name.startswith(".last-minute")
    )


def zombies_of(pids: Sequence[int]) -> int:
    """How many zombie children the given processes have."""
    count = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(pid).children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.status() == psutil.STATUS_ZOMBIE:
                        count += 1
    return count


def _locked(path: Path) -> bool:
    """Whether some process holds the flock of `path` (False if there is no file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False
