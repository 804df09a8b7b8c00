"""Shared helpers of the benchmarks in `bench/`: a daemon under test, a client, a floor.

This module owns what every benchmark needs and nothing a benchmark measures itself:
- `machine()`: the description printed above every table (CPU count and model, kernel,
  Python, the filesystem of the state directory, the load when the run started);
- `Saturnd`: a real `saturnd -f` in a private temporary directory, started from the
  same environment as the benchmark, with the pids of its three processes;
- `Client`: an in-process client that does exactly the FIFO sequence of one exchange
  (open the reply FIFO, open the request FIFO, one write, read until end of file,
  close both) and nothing else, so a persistent client costs no process start;
- `Floor`: a minimal Python process (`python -I -S`) that does the daemon's side of
  the same sequence with canned replies: the physical floor of an exchange here;
- `populate()`: a state directory with N tasks written straight into `cmds` with the
  `saturnd.records` encoders (one sequential write, no fsync per task) and their
  `task_<ID>/` directories, instead of N CREATE exchanges, which would take minutes
  at 100,000 tasks; `write_runs()` likewise writes a `times-exitcodes` history;
- `table()`: a Markdown table, and `CannotMeasure` / `main_guard()`: a benchmark exits
  non-zero only when it could not measure, never because a target was missed.

Every figure is measured in the run that prints it; nothing here caches results.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

try:  # the installed package (README: `pip install .`), else the work tree
    import saturnd  # noqa: F401
except ImportError:  # pragma: no cover - only without an install
    sys.path.insert(0, str(ROOT))
    _CHILD_PYTHONPATH: str | None = str(ROOT)
else:
    _CHILD_PYTHONPATH = None

from saturnd import decoding, protocol, records  # noqa: E402
from saturnd.task import Task  # noqa: E402
from saturnd.timing import Timing  # noqa: E402

REQUEST_PIPE: Final = "saturnd-request-pipe"
REPLY_PIPE: Final = "saturnd-reply-pipe"
READ_SIZE: Final = 1 << 16
NO_SUCH_TASK: Final = (1 << 63) - 1
"""A task id no benchmark creates: TIMES_EXITCODES of it is the cheapest request."""


class CannotMeasure(Exception):
    """The benchmark could not measure (not: a target was missed)."""


# --- the machine -------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """`TYPE on MOUNTPOINT (DEVICE)` of the filesystem holding `path`."""
    import psutil

    path = path.resolve()
    best: tuple[int, str] = (-1, "unknown")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > best[0]:
            best = (len(mount), f"{part.fstype} on {mount} ({part.device})")
    return best[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(state_dir: Path | None = None) -> str:
    """One paragraph describing where the figures were measured."""
    where = state_dir or Path(tempfile.gettempdir())
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()} "
        f"({platform.python_implementation()}, {sys.executable}); state directory "
        f"filesystem: {filesystem_of(where)}; load average at start: {load}"
    )


# --- tables and statistics -----------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (every cell already formatted, or str() of it)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def verdict(met: bool) -> str:
    """The last column of a target row."""
    return "met" if met else "**missed**"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        raise CannotMeasure("no values to take a percentile of")
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    if not values:
        raise CannotMeasure("no values to take a median of")
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    """`min-max` of `values` times `scale`: the noise between interleaved rounds."""
    return f"{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f}"


def main_guard(body: Callable[[], None]) -> int:
    """Run a benchmark's body; 0 if it measured, 2 (and why on stderr) if it could not."""
    try:
        body()
    except CannotMeasure as error:
        print(f"cannot measure: {error}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("cannot measure: the benchmark failed (traceback above)", file=sys.stderr)
        return 2
    return 0


# --- populating a state directory ------------------------------------------------------


def populate(state_dir: Path, tasks: Sequence[tuple[Timing, tuple[bytes, ...]]]) -> None:
    """Write `cmds` holding `tasks` (ids 0..N-1) and create their directories.

    The file is exactly what N CREATEs would leave on a fresh store (header with
    NEXT_ID N, then one record per task with SIZE = its body length), written with
    `saturnd.records` in one go: creating 100,000 tasks through the daemon would take
    minutes of fsyncs, and the benchmarks measure the daemon at that size, not the
    filling. The daemon checks the file on load like any other.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    parts = [records.encode_header(len(tasks))]
    for task_id, (timing, argv) in enumerate(tasks):
        body = records.encode_body(Task(timing, argv))
        parts.append(records.encode_record(task_id, body, len(body)))
    path = state_dir / "cmds"
    path.write_bytes(b"".join(parts))
    os.chmod(path, 0o600)
    for task_id in range(len(tasks)):
        os.mkdir(state_dir / f"task_{task_id}", 0o700)


def write_runs(task_dir: Path, count: int, first_time: int = 1_700_000_000) -> None:
    """A `times-exitcodes` of `count` runs, one a minute, exit codes 0..255 in turn."""
    body = b"".join(records.encode_run(first_time + 60 * n, n % 256) for n in range(count))
    path = task_dir / "times-exitcodes"
    path.write_bytes(records.encode_nbruns(count) + body)
    os.chmod(path, 0o600)


def same_tasks(
    count: int, timing: Timing, argv: tuple[bytes, ...]
) -> list[tuple[Timing, tuple[bytes, ...]]]:
    """`count` tasks with the same timing and command line."""
    return [(timing, argv)] * count


# --- the client --------------------------------------------------------------------


def _open_request(path: Path, timeout: float) -> int:
    """Open the request FIFO for writing, waiting for a reader to hold it open."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            if error.errno not in (errno.ENXIO, errno.ENOENT) or time.monotonic() > deadline:
                raise
        time.sleep(0.005)


class Client:
    """One exchange at a time over the two FIFOs of `pipes_dir`, in this process.

    The sequence is the protocol's and cassini's minus its lock and stale-reply drain:
    open the reply FIFO (read, non-blocking), open the request FIFO (write), one write,
    read until end of file, close both. The reply's end is the writer's close, so the
    client never decodes while timing (`decoding.decode_reply` is there for checks).
    """

    def __init__(self, pipes_dir: Path, timeout: float = 30.0) -> None:
        self.request_path = pipes_dir / REQUEST_PIPE
        self.reply_path = pipes_dir / REPLY_PIPE
        self.timeout = timeout

    def exchange(self, request: bytes) -> bytes:
        """Send one request (bytes), return the whole reply (bytes)."""
        reply_fd = os.open(self.reply_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            request_fd = _open_request(self.request_path, self.timeout)
            try:
                os.write(request_fd, request)
                chunks: list[bytes] = []
                deadline = time.monotonic() + self.timeout
                while True:
                    # select first: a read before any writer came would be end of file,
                    # while select only reports the FIFO once a writer came (and went).
                    remaining = deadline - time.monotonic()
                    readable, _, _ = select.select([reply_fd], [], [], max(0.0, remaining))
                    if not readable:
                        raise CannotMeasure(
                            f"no reply within {self.timeout:g} s to {request[:2]!r}"
                        )
                    try:
                        chunk = os.read(reply_fd, READ_SIZE)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
            finally:
                os.close(request_fd)
        finally:
            os.close(reply_fd)

    def request(self, message: protocol.Request) -> protocol.Reply:
        """Encode, exchange, decode (for set-up and checks, not in timed loops)."""
        data = self.exchange(protocol.encode(message))
        return decoding.decode_reply(message.opcode, data)


def cheap_request() -> bytes:
    """TIMES_EXITCODES of a task that does not exist: answered `ER NF` without I/O."""
    return protocol.encode(protocol.TimesExitcodesRequest(NO_SUCH_TASK))


# --- the daemon under test -----------------------------------------------------------


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TZ"] = "UTC"
    if _CHILD_PYTHONPATH is not None:
        env["PYTHONPATH"] = _CHILD_PYTHONPATH
    if extra:
        env.update(extra)
    return env


def saturnd_command() -> list[str]:
    """The console script next to this interpreter, else `python -m saturnd`."""
    script = Path(sys.executable).parent / "saturnd"
    if script.exists():
        return [str(script)]
    found = shutil.which("saturnd")
    if found and _CHILD_PYTHONPATH is None:
        return [found]
    return [sys.executable, "-m", "saturnd"]


@dataclass
class Saturnd:
    """A real `saturnd -f` in `root` (pipes in `root/pipes`, state in `root/state`).

    Runs in UTC with HOME=`root`. `clock_file` selects `--clock FILE`.
    """

    root: Path
    clock_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0
    roles: dict[str, int] = field(default_factory=dict)

    @property
    def pipes(self) -> Path:
        return self.root / "pipes"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def client(self) -> Client:
        return Client(self.pipes)

    def start(self, timeout: float = 60.0) -> Saturnd:
        """Start it; `started_in` is the time until it answered its first request."""
        command = [*saturnd_command(), "-f", "-p", str(self.pipes), "-s", str(self.state)]
        if self.clock_file is not None:
            command += ["--clock", str(self.clock_file)]
        log = open(self.root / "saturnd.stderr", "ab")  # noqa: SIM115 - closed below
        began = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                command,
                env=_child_env({"HOME": str(self.root)}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.root,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        probe = Client(self.pipes, timeout=timeout)
        while True:
            if self.proc.poll() is not None:
                raise CannotMeasure(f"saturnd exited with {self.proc.returncode}: {self.tail()}")
            if (self.pipes / REQUEST_PIPE).exists():
                try:
                    probe.exchange(cheap_request())
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise CannotMeasure(f"saturnd did not answer within {timeout:g} s")
            time.sleep(0.002)
        self.started_in = time.perf_counter() - began
        self.roles = self._find_roles(deadline)
        return self

    def tail(self, count: int = 1500) -> str:
        try:
            return (self.root / "saturnd.stderr").read_text(errors="replace")[-count:]
        except OSError:
            return "(no stderr)"

    def _find_roles(self, deadline: float) -> dict[str, int]:
        """Pids of the supervisor, listener and executor (the children log their start)."""
        assert self.proc is not None
        roles = {"supervisor": self.proc.pid}
        log = self.state / "saturnd.log"
        while time.monotonic() < deadline:
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = ""
            for role in ("listener", "executor"):
                marker = f"{role} started (pid "
                at = text.rfind(marker)
                if at >= 0:
                    roles[role] = int(text[at + len(marker) :].split(")", 1)[0])
            if len(roles) == 3:
                return roles
            time.sleep(0.01)
        raise CannotMeasure(f"could not find the daemon's processes in {log}")

    def wait_ticked(self, timeout: float = 30.0) -> None:
        """Wait until the executor has handled a minute (`last-minute` exists)."""
        deadline = time.monotonic() + timeout
        while not (self.state / "last-minute").exists():
            if time.monotonic() > deadline:
                raise CannotMeasure("the executor never handled its first minute")
            time.sleep(0.005)

    def stop(self) -> None:
        """TERMINATE, then make sure the process is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                Client(self.pipes, timeout=10).exchange(
                    protocol.encode(protocol.TerminateRequest())
                )
            except (OSError, CannotMeasure):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextmanager
def temporary_root(prefix: str) -> Iterator[Path]:
    """A private temporary directory (under $TMPDIR), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"saturnd-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running(*daemons: Saturnd) -> Iterator[tuple[Saturnd, ...]]:
    """Start the daemons (in order) and stop every started one at the end."""
    started: list[Saturnd] = []
    try:
        for daemon in daemons:
            started.append(daemon.start())
        yield daemons
    finally:
        for daemon in started:
            daemon.stop()


# --- the floor ---------------------------------------------------------------------

# The daemon's side of an exchange and nothing else: hold the request FIFO open, read a
# request, open the reply FIFO, write the canned reply for its opcode, close. With
# `sync`, a CREATE (`CR`) costs two pwrite+fdatasync and a REMOVE (`RM`) one, like the
# store's durable writes. Replies come from a file of records: opcode (2 bytes),
# length (uint32), bytes.
_FLOOR_SERVER: Final = r"""
import os, sys
request_path, reply_path, replies_path, sync_path = sys.argv[1:5]
data = open(replies_path, "rb").read()
replies = {}
at = 0
while at < len(data):
    size = int.from_bytes(data[at + 2 : at + 6], "big")
    replies[data[at : at + 2]] = data[at + 6 : at + 6 + size]
    at += 6 + size
busy = float(sys.argv[5]) / 1e6
if busy:
    from time import perf_counter
syncs = {b"CR": 2, b"RM": 1} if sync_path else {}
sync_fd = os.open(sync_path, os.O_RDWR | os.O_CREAT, 0o600) if sync_path else -1
request_fd = os.open(request_path, os.O_RDWR)
os.write(1, b"ready\n")
while True:
    request = os.read(request_fd, 65536)
    opcode = request[:2]
    for _ in range(syncs.get(opcode, 0)):
        os.pwrite(sync_fd, request[:8], 0)
        os.fdatasync(sync_fd)
    if busy:
        began = perf_counter()
        while perf_counter() - began < busy:
            pass
    reply_fd = os.open(reply_path, os.O_WRONLY)
    os.write(reply_fd, replies[opcode])
    os.close(reply_fd)
    if opcode == b"TM":
        break
"""


class Floor:
    """A minimal Python process answering with canned replies over its own FIFOs.

    `replies` maps an opcode (b"LS", ...) to the exact reply bytes the daemon gave, so
    both sides move the same byte counts. The client is the same `Client`. `busy_us`
    adds that much CPU (a busy loop) to every request: a floor that costs a little more,
    to show how the scheduler places a server that is not almost free.
    """

    def __init__(
        self,
        root: Path,
        replies: Mapping[bytes, bytes],
        sync: bool = False,
        busy_us: float = 0.0,
    ) -> None:
        self.root = root
        self.pipes = root / "floor-pipes"
        self.replies = dict(replies)
        self.replies.setdefault(b"TM", b"OK")
        self.sync = sync
        self.busy_us = busy_us
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client(self) -> Client:
        return Client(self.pipes)

    def __enter__(self) -> Floor:
        self.pipes.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in (REQUEST_PIPE, REPLY_PIPE):
            if not (self.pipes / name).exists():
                os.mkfifo(self.pipes / name, 0o600)
        replies_file = self.root / "floor-replies"
        replies_file.write_bytes(
            b"".join(op + len(r).to_bytes(4, "big") + r for op, r in self.replies.items())
        )
        sync_path = str(self.root / "floor-sync") if self.sync else ""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _FLOOR_SERVER,
                str(self.pipes / REQUEST_PIPE),
                str(self.pipes / REPLY_PIPE),
                str(replies_file),
                sync_path,
                str(self.busy_us),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            raise CannotMeasure("the floor server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                Client(self.pipes, timeout=5).exchange(b"TM")
                self.proc.wait(timeout=5)
            except (OSError, CannotMeasure, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


# --- processes ---------------------------------------------------------------------


def cpu_ns(pid: int) -> int | None:
    """CPU time process `pid` has used, in nanoseconds (/proc/PID/schedstat: exact,
    where /proc/PID/stat counts 10 ms ticks); None where the kernel does not say."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def context_switches(pid: int) -> int | None:
    """Voluntary plus involuntary context switches of process `pid` so far."""
    try:
        fields = status_fields(pid)
        return int(fields["voluntary_ctxt_switches"][0]) + int(
            fields["nonvoluntary_ctxt_switches"][0]
        )
    except (OSError, KeyError, IndexError, ValueError):
        return None


def status_fields(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status as {field: the words after its colon}."""
    fields: dict[str, list[str]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = rest.split()
    return fields


@dataclass(frozen=True)
class Placement:
    """Where the benchmark's own process (the client) and the servers run: `client`
    and `servers` are CPU sets, None for "wherever the scheduler puts them"."""

    name: str
    client: frozenset[int] | None
    servers: frozenset[int] | None

    def apply(self, client_pid: int, server_pids: Iterable[int]) -> None:
        """Pin them; "wherever" is every CPU this process was allowed when it started
        (asked now, the answer would be the last placement's own pinning)."""
        os.sched_setaffinity(client_pid, self.client or _ALLOWED_AT_START)
        for pid in server_pids:
            os.sched_setaffinity(pid, self.servers or _ALLOWED_AT_START)


_ALLOWED_AT_START: Final = (
    frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
)


def placements() -> list[Placement]:
    """The placements this machine allows: as the scheduler places them (first, while
    no pinning has moved anyone), everything on one CPU (the client and the server it
    talks to take turns on it, so no wake-up crosses CPUs), and the client and the
    servers on two different CPUs (every wake-up crosses). Without sched_setaffinity,
    or with one CPU, only the first."""
    cpus = sorted(_ALLOWED_AT_START)
    found = [Placement("as scheduled", None, None)]
    if hasattr(os, "sched_setaffinity") and len(cpus) >= 2:
        # The last CPU: the first usually takes the most device interrupts.
        one = frozenset({cpus[-1]})
        found.append(Placement("one CPU", one, one))
        found.append(Placement("two CPUs", frozenset({cpus[0]}), one))
    return found


def vm_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...), in bytes."""
    return {
        name: int(parts[0]) * 1024
        for name, parts in status_fields(pid).items()
        if len(parts) == 2 and parts[1] == "kB"
    }


def mib(count: float) -> str:
    return f"{count / (1 << 20):.1f} MiB"
