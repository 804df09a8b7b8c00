"""A real `saturnd -f --clock FILE` for end-to-end tests, and the real `cassini`.

Tests step the fake clock a minute at a time and wait until the executor has handled
that minute (it writes `last-minute` in the state directory before starting the runs),
so a day of schedule takes seconds and no test waits for a real minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
SATURND = str(BIN / "saturnd")
CASSINI = str(BIN / "cassini")


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it is true, or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


class Daemon:
    """One saturnd in the foreground with a fake clock, in a private directory."""

    def __init__(self, root: Path, start: int, tz: str = "UTC", extra: Sequence[str] = ()):
        self.root = root
        self.pipes = root / "pipes"
        self.state = root / "state"
        self.clock_file = root / "clock"
        self.tz = tz
        self.extra = list(extra)
        self.now = start
        self.proc: subprocess.Popen[bytes] | None = None
        self.set_time(start)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TZ"] = self.tz
        env["HOME"] = str(self.root)
        return env

    def start(self) -> Daemon:
        """Start saturnd -f and wait until it answers."""
        self.stderr_path = self.root / "saturnd.stderr"
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [
                    SATURND,
                    "-f",
                    "-p",
                    str(self.pipes),
                    "-s",
                    str(self.state),
                    "--clock",
                    str(self.clock_file),
                    *self.extra,
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_for(lambda: self._answers(), timeout=15, what="the daemon to answer")
        # The executor has handled the start minute once `last-minute` names it.
        wait_for(lambda: self.handled_minute() == self.now // 60, what="the first tick")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"saturnd exited with {self.proc.returncode}: "
                f"{self.stderr_path.read_text(errors='replace')}"
            )
        if not (self.pipes / "saturnd-request-pipe").exists():
            return False
        return self.cassini("-l", check=False, timeout=5).returncode == 0

    def cassini(
        self, *args: str, check: bool = True, timeout: float = 10, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real cassini against this daemon."""
        result = subprocess.run(
            [CASSINI, "-p", str(self.pipes), *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"cassini {' '.join(args)} exited {result.returncode}: {result.stderr!r}"
            )
        return result

    def create(self, *args: str) -> int:
        """cassini -c ARGS; the new task id."""
        return int(self.cassini("-c", *args).stdout)

    def runs(self, task_id: int) -> list[tuple[str, int]]:
        """The run history as cassini -x prints it: (time text, exit code)."""
        lines = self.cassini("-x", str(task_id)).stdout.decode().splitlines()
        return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in lines]

    def set_time(self, epoch: int) -> None:
        """Write the fake clock atomically."""
        self.now = epoch
        temporary = self.clock_file.with_suffix(".tmp")
        temporary.write_text(f"{epoch}\n")
        os.replace(temporary, self.clock_file)

    def handled_minute(self) -> int | None:
        try:
            return int((self.state / "last-minute").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def step_to(self, epoch: int) -> None:
        """Move the clock and wait until the executor has handled the new minute."""
        self.set_time(epoch)
        wait_for(lambda: self.handled_minute() == epoch // 60, what=f"minute {epoch // 60}")

    def steps(self, start: int, count: int, stride: int = 60) -> Iterator[int]:
        for index in range(count):
            moment = start + index * stride
            self.step_to(moment)
            yield moment

    def pids(self) -> list[int]:
        """The supervisor and its children (listener, executor)."""
        assert self.proc is not None
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [child.pid for child in parent.children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """TERMINATE if it still answers, then make sure nothing is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.cassini("-q", check=False, timeout=5)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def owner_name(uid: int) -> str:
    """How saturnd names the owner `uid` of a directory it refuses."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def crontab_field(text: str, high: int) -> frozenset[int]:
    """`*`, `N`, `A-B`, `*/S` and comma lists: the values of a crontab field.

    Written the simple way, independently of saturnd.timing, so that tests can use it
    as an oracle for what the daemon runs.
    """
    if text == "*":
        return frozenset(range(high + 1))
    values: set[int] = set()
    for part in text.split(","):
        if part.startswith("*/"):
            values.update(range(0, high + 1, int(part[2:])))
        elif "-" in part:
            low, top = part.split("-")
            values.update(range(int(low), int(top) + 1))
        else:
            values.add(int(part))
    return frozenset(values)
