"""Benchmark #1 of issue 5: what a real `cassini -l` costs next to a bare Python.

Starts a real `saturnd -f` with a fake clock in a temporary directory, creates 10
tasks, then times, interleaved (the order rotates every round, so drift and position
hit every command alike):

- `python -c pass`: the interpreter of the cassini console script, same environment;
- `cassini -p PIPES -l`: the console script, a whole LIST exchange with the daemon;
- `cassini -h`: the console script, no exchange;
- the same `-l` exchange started without the console script, through
  `python -c "from cassini.__main__ import main; ..."`: the difference with the row
  above is what the generated console-script wrapper costs (it imports `re`).

Each is measured twice: with a bytecode cache (PYTHONPYCACHEPREFIX in a temporary
directory, PYTHONDONTWRITEBYTECODE unset), which is how an installed cassini runs and
the figure that counts, and with the environment as it is. The goal is a median of
`cassini -l` at most 1.3 times that of `python -c pass`.

Usage: python bench/cassini_roundtrip.py [--runs N] [--cassini SCRIPT]
  --runs N         timed runs of each command (default 60, at least 50)
  --cassini SCRIPT the console script to measure (default: `cassini` next to this
                   interpreter); the daemon is always the `saturnd` next to this one.
Exits 0 whether or not the goal is met, non-zero only if it could not measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.3
WARM_UP = 5
MIN_RUNS = 50
TASKS = 10
NOW = 1_795_248_000  # Saturday 2026-11-21 08:00:00 UTC, the tests' fixed NOW
BIN = Path(sys.executable).parent
WITHOUT_WRAPPER = "import sys; from cassini.__main__ import main; sys.exit(main())"


class CannotMeasure(Exception):
    """Something the benchmark needs failed; the message says what."""


def interpreter_of(script: Path) -> str:
    """The interpreter named on a console script's `#!` line (this one if there is none)."""
    try:
        with open(script, "rb") as file:
            first = file.readline().decode(errors="replace").strip()
    except OSError as error:
        raise CannotMeasure(f"cannot read {script}: {error.strerror}") from None
    if first.startswith("#!") and " " not in first[2:].strip():
        return first[2:].strip()
    return sys.executable


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path`, as `stat -f` names it."""
    try:
        done = subprocess.run(
            ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def run_once(command: list[str], env: dict[str, str], expected: int, cwd: Path) -> float:
    """Seconds one run takes; CannotMeasure if it exits with another status."""
    start = time.perf_counter()
    done = subprocess.run(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != expected:
        raise CannotMeasure(
            f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-500:]}"
        )
    return elapsed


def measure(
    commands: dict[str, tuple[list[str], int]], env: dict[str, str], runs: int, cwd: Path
) -> dict[str, list[float]]:
    """Seconds of each run of each command, interleaved, the order rotating each round.

    `cwd` matters: `python -c` puts it first on sys.path, and a source tree there would
    be imported instead of the installed package.
    """
    names = list(commands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(WARM_UP + runs):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            command, expected = commands[name]
            elapsed = run_once(command, env, expected, cwd)
            if index >= WARM_UP:
                times[name].append(elapsed)
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


class Daemon:
    """`saturnd -f` with a fake clock in `root`, driven through the measured cassini."""

    def __init__(self, root: Path, cassini: Path, env: dict[str, str]) -> None:
        self.root = root
        self.pipes = root / "pipes"
        self.state = root / "state"
        self.clock = root / "clock"
        self.cassini = cassini
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def client(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                [str(self.cassini), "-p", str(self.pipes), *args],
                env=self.env,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CannotMeasure(f"cassini {' '.join(args)}: {error}") from None

    def start(self) -> None:
        saturnd = BIN / "saturnd"
        if not saturnd.exists():
            raise CannotMeasure(f"no console script {saturnd}")
        self.clock.write_text(f"{NOW}\n")
        command = [str(saturnd), "-f", "-p", str(self.pipes), "-s", str(self.state)]
        with open(self.root / "saturnd.stderr", "wb") as stderr:
            self.process = subprocess.Popen(
                [*command, "--clock", str(self.clock)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.root / "saturnd.stderr").read_text(errors="replace")
                raise CannotMeasure(f"saturnd exited {self.process.returncode}: {log[-500:]}")
            if (self.pipes / "saturnd-request-pipe").exists() and (
                self.client("-l", timeout=5).returncode == 0
            ):
                return
            time.sleep(0.02)
        raise CannotMeasure("saturnd did not answer within 15 s")

    def create_tasks(self, count: int) -> None:
        for index in range(count):
            done = self.client("-c", "-m", f"{index * 5}", "-H", "9,14", "echo", f"task-{index}")
            if done.returncode != 0:
                raise CannotMeasure(f"cassini -c failed: {done.stderr.decode().strip()}")
        listed = self.client("-l").stdout.decode().splitlines()
        if len(listed) != count:
            raise CannotMeasure(f"cassini -l lists {len(listed)} tasks, not {count}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.client("-q", timeout=5)
            except CannotMeasure:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def report(label: str, times: dict[str, list[float]]) -> float:
    """Print one table; return the ratio of `cassini -l` to `python -c pass`."""
    base = statistics.median(times["python -c pass"])
    print(f"\n{label}:")
    print(f"| {'command':46} | median ms | p90 ms | ratio |")
    print(f"|{'-' * 48}|-----------|--------|-------|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name:46} | {median * 1000:9.1f} | {p90(values) * 1000:6.1f} "
            f"| {median / base:5.2f} |"
        )
    return statistics.median(times["cassini -l"]) / base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--cassini", type=Path, default=BIN / "cassini")
    args = parser.parse_args()
    runs = max(args.runs, MIN_RUNS)
    cassini: Path = args.cassini.absolute()
    try:
        if not cassini.exists():
            raise CannotMeasure(f"no console script {cassini}")
        python = interpreter_of(cassini)
        with tempfile.TemporaryDirectory(prefix="cassini-roundtrip-") as temporary:
            root = Path(temporary)
            env = {**os.environ, "TZ": "UTC", "HOME": str(root)}
            daemon = Daemon(root, cassini, env)
            try:
                daemon.start()
                daemon.create_tasks(TASKS)
                pipes = str(daemon.pipes)
                commands = {
                    "python -c pass": ([python, "-c", "pass"], 0),
                    "cassini -l": ([str(cassini), "-p", pipes, "-l"], 0),
                    "cassini -h": ([str(cassini), "-h"], 0),
                    "cassini -l without the console-script wrapper": (
                        [python, "-c", WITHOUT_WRAPPER, "-p", pipes, "-l"],
                        0,
                    ),
                }
                print(
                    f"machine: {os.cpu_count()} CPUs, {platform.machine()}, "
                    f"{platform.system()} {platform.release()}; "
                    f"Python {platform.python_version()} ({python}); "
                    f"state directory on {filesystem_of(daemon.state)}"
                )
                print(f"cassini: {cassini}; {TASKS} tasks listed by each `cassini -l`")
                print(f"{runs} runs of each, interleaved, after {WARM_UP} warm-up rounds")
                cache = root / "pycache"
                cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
                cached["PYTHONPYCACHEPREFIX"] = str(cache)
                ratio = report(
                    "with a bytecode cache (as installed; the figure that counts)",
                    measure(commands, cached, runs, root),
                )
                report("environment as is", measure(commands, env, runs, root))
            finally:
                daemon.stop()
    except (CannotMeasure, OSError) as error:
        print(f"cannot measure: {error}", file=sys.stderr)
        return 2
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"\ncassini -l / python -c pass = {ratio:.2f} with bytecode ({verdict} the goal {GOAL})")
    print()
    print("| target | measured | goal | verdict |")
    print("|---|---|---|---|")
    print(
        f"| cassini -l / python -c pass (medians, with bytecode) | {ratio:.2f} x "
        f"| <= {GOAL} x | {'met' if ratio <= GOAL else '**missed**'} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
