"""Benchmark 4: 1,000 tasks due in the same minute, on the real clock.

Every task runs `date +%s.%N`, which prints a nanosecond timestamp as the command
starts; the daemon leaves it in `task_<ID>/stdout`. The lateness of a run is that
timestamp minus the minute boundary it was due at.

The floor: a minimal Python process (`python -I -S`) starting the same 1,000 commands,
with the same redirections (stdin /dev/null, stdout and stderr to a file each), by a
bare `os.posix_spawn` loop, then waiting for them; lateness there is counted from the
moment before the loop. The floor runs just before and just after the daemon's minute
(interleaved), and the table shows both.

Targets (judged by reading the table): the daemon's first start <= 50 ms after the
boundary; its p99 lateness <= 2 x the floor's time for all 1,000 (its last start).

With --quick the daemon reads a fake clock (`--clock FILE`) stepped to the boundary by
the benchmark, and lateness counts from that step: a smoke test, not the real figure.

Usage: python bench/bench_punctuality.py [--quick] [--tasks N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CannotMeasure,
    Saturnd,
    machine,
    main_guard,
    median,
    ms,
    percentile,
    populate,
    same_tasks,
    table,
    temporary_root,
    verdict,
)

from saturnd.timing import Timing

FIRST_GOAL = 0.050
P99_GOAL = 2.0
DATE = "/usr/bin/date"
MARGIN = 8.0
"""Seconds the daemon needs before the target minute: fill, start, first tick."""

_FLOOR: Final = r"""
import os, sys, time
program, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
argv = [program, "+%s.%N"]
env = dict(os.environ)
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
actions = [
    [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, f"{directory}/out.{n}", flags, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, f"{directory}/err.{n}", flags, 0o600),
    ]
    for n in range(count)
]
began = time.time()
pids = [os.posix_spawn(program, argv, env, file_actions=actions[n]) for n in range(count)]
for pid in pids:
    os.waitpid(pid, 0)
print(repr(began))
"""


def floor_run(root: Path, count: int) -> list[float]:
    """Lateness of each start of the bare posix_spawn loop, from just before the loop."""
    directory = root / f"floor-{time.monotonic_ns()}"
    directory.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _FLOOR, DATE, str(directory), str(count)],
        capture_output=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise CannotMeasure(f"the floor loop failed: {done.stderr.decode()[-500:]}")
    began = float(done.stdout)
    return sorted(float((directory / f"out.{n}").read_text()) - began for n in range(count))


def wait_for_runs(daemon: Saturnd, count: int, timeout: float) -> list[float]:
    """The start timestamps the `count` runs wrote, once every one has finished."""
    stamps: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(stamps) < count:
        for task_id in range(count):
            if task_id in stamps:
                continue
            try:
                text = (daemon.state / f"task_{task_id}" / "stdout").read_text()
            except FileNotFoundError:
                continue
            stamps[task_id] = float(text)
        if len(stamps) < count:
            if time.monotonic() > deadline:
                raise CannotMeasure(
                    f"only {len(stamps)} of {count} runs finished within {timeout:g} s"
                )
            time.sleep(0.2)
    return sorted(stamps.values())


def daemon_run_real(root: Path, count: int) -> list[float]:
    """Lateness of each run after the real minute boundary it was due at."""
    now = time.time()
    target = int(now // 60) + 1
    if target * 60 - now < MARGIN:
        target += 1
    boundary = target * 60
    moment = time.gmtime(boundary)
    timing = Timing.parse(str(moment.tm_min), str(moment.tm_hour), "*")
    daemon = Saturnd(root / "daemon")
    populate(daemon.state, same_tasks(count, timing, (DATE.encode(), b"+%s.%N")))
    daemon.start()
    try:
        daemon.wait_ticked()
        if time.time() >= boundary:
            raise CannotMeasure("the daemon started too late for the target minute")
        wait = boundary - time.time()
        print(f"waiting {wait:.0f} s for the minute boundary ...", file=sys.stderr)
        stamps = wait_for_runs(daemon, count, timeout=(boundary - time.time()) + 240)
    finally:
        daemon.stop()
    return [stamp - boundary for stamp in stamps]


def daemon_run_fake(root: Path, count: int) -> list[float]:
    """Like daemon_run_real, but the boundary is a step of the fake clock."""
    start = 1_795_248_000 + 30  # Saturday 2026-11-21 08:00:30 UTC
    clock = root / "clock"
    clock.write_text(f"{start}\n")
    timing = Timing.parse("1", "8", "*")
    daemon = Saturnd(root / "daemon", clock_file=clock)
    populate(daemon.state, same_tasks(count, timing, (DATE.encode(), b"+%s.%N")))
    daemon.start()
    try:
        daemon.wait_ticked()
        temporary = root / "clock.tmp"
        temporary.write_text(f"{start + 30}\n")
        stepped = time.time()
        os.replace(temporary, clock)
        stamps = wait_for_runs(daemon, count, timeout=120)
    finally:
        daemon.stop()
    return [stamp - stepped for stamp in stamps]


def run(quick: bool, count: int) -> None:
    with temporary_root("punctuality") as root:
        print(machine(root))
        print()
        floor_before = floor_run(root, count)
        ours = daemon_run_fake(root, count) if quick else daemon_run_real(root, count)
        floor_after = floor_run(root, count)
    clock = "fake clock (--quick: a smoke test)" if quick else "real clock"
    print(f"{count} tasks due in one minute, {clock}; each runs `{DATE} +%s.%N`.")
    print()
    rows = []
    for name, values in (
        ("saturnd, after the boundary", ours),
        ("floor before, after loop start", floor_before),
        ("floor after, after loop start", floor_after),
    ):
        rows.append(
            [
                name,
                ms(values[0]),
                ms(median(values)),
                ms(percentile(values, 0.99)),
                ms(values[-1]),
            ]
        )
    print(table(["starts", "first", "median", "p99", "last (all started)"], rows))
    print()
    floor_all = median([floor_before[-1], floor_after[-1]])
    p99 = percentile(ours, 0.99)
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    "first start after the boundary",
                    ms(ours[0]),
                    f"<= {ms(FIRST_GOAL)}",
                    verdict(ours[0] <= FIRST_GOAL),
                ],
                [
                    "p99 lateness vs floor's time for all",
                    f"{ms(p99)} = {p99 / floor_all:.1f} x {ms(floor_all)}",
                    f"<= {P99_GOAL:.0f} x",
                    verdict(p99 <= P99_GOAL * floor_all),
                ],
            ],
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fake clock, 20 tasks, for CI")
    parser.add_argument("--tasks", type=int, default=None)
    args = parser.parse_args()
    count = args.tasks or (20 if args.quick else 1000)
    print("## 4. Punctuality: 1,000 tasks due in the same minute")
    print()
    if not os.access(DATE, os.X_OK):
        print(f"cannot measure: {DATE} is missing", file=sys.stderr)
        return 2
    return main_guard(lambda: run(args.quick, count))


if __name__ == "__main__":
    sys.exit(main())
