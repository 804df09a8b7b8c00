"""Benchmark: how much longer `cassini -h` takes to start than a bare Python.

Prints the median wall time of `cassini -h` (the console script next to this
interpreter) and of `python -c pass` (this interpreter, same environment), run
interleaved, and their ratio; the goal is a ratio below 1.3. For information it also
times a real request's start-up, `cassini -p /nonexistent -l`, which parses its
arguments, loads the protocol codec and stops at the missing directory.

Each is measured twice: with the environment as it is, and with a bytecode cache
(PYTHONPYCACHEPREFIX in a temporary directory, PYTHONDONTWRITEBYTECODE unset), which is
how an installed cassini runs; a development shell with PYTHONDONTWRITEBYTECODE=1
compiles every project module on every start.

Usage: python bench/cassini_startup.py [RUNS]   (default 40). Exits non-zero only if it
could not measure.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.3
WARM_UP = 3


def run_once(command: list[str], env: dict[str, str], expected: int) -> float:
    """Seconds one run takes; raises RuntimeError if it exits with another status."""
    start = time.perf_counter()
    done = subprocess.run(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != expected:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-500:]}"
        )
    return elapsed


def measure(
    commands: dict[str, tuple[list[str], int]], env: dict[str, str], runs: int
) -> dict[str, float]:
    """Median seconds of each command, the runs interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for index in range(WARM_UP + runs):
        for name, (command, expected) in commands.items():
            elapsed = run_once(command, env, expected)
            if index >= WARM_UP:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    cassini = Path(sys.executable).parent / "cassini"
    if not cassini.exists():
        print(f"cannot measure: no console script {cassini}", file=sys.stderr)
        return 2
    commands = {
        "python -c pass": ([sys.executable, "-c", "pass"], 0),
        "cassini -h": ([str(cassini), "-h"], 0),
        "cassini -p /nonexistent -l": ([str(cassini), "-p", "/nonexistent/pipes", "-l"], 1),
    }
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()} ({sys.executable})"
    )
    print(f"{runs} runs of each, interleaved, after {WARM_UP} warm-up runs; medians:")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="cassini-bench-pycache-") as cache:
        as_is = dict(os.environ)
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache
        for label, env in (("environment as is", as_is), ("with a bytecode cache", cached)):
            try:
                medians = measure(commands, env, runs)
            except (OSError, RuntimeError) as error:
                print(f"cannot measure: {error}", file=sys.stderr)
                return 2
            base = medians["python -c pass"]
            print(f"  {label}:")
            for name, seconds in medians.items():
                print(f"    {name:28} {seconds * 1000:7.1f} ms   ratio {seconds / base:.2f}")
            worst = max(worst, medians["cassini -h"] / base)
    verdict = "meets" if worst < GOAL else "misses"
    print(f"cassini -h / python -c pass: worst ratio {worst:.2f} ({verdict} the goal < {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
