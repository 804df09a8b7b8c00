"""Benchmark 5: what an idle daemon costs, with 1,000 tasks none of which is due.

The tasks run at minute 0 of an hour twelve hours away, so none is due during the
measurement. After the daemon has started and handled its first minute, the CPU time
(user + system, psutil) and the voluntary context switches (each one is a sleep that
ended: a wake-up) of the supervisor, the listener and the executor are read, then again
after DURATION seconds (default 600, the target's 10 minutes). The kernel counts CPU
time in clock ticks (10 ms), so an idle process often shows "< 0.01 s".

Targets (judged by reading the table): <= 0.5 CPU seconds for all processes over 10
minutes; no more than about 2 wake-ups per minute per process. A shorter DURATION is
scaled to 10 minutes, and the table says so.

Usage: python bench/bench_idle.py [--quick] [--seconds DURATION] [--tasks N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CannotMeasure,
    Saturnd,
    machine,
    main_guard,
    populate,
    same_tasks,
    table,
    temporary_root,
    verdict,
)

from saturnd.timing import Timing

CPU_GOAL = 0.5
WAKE_GOAL = 2.0
WINDOW = 600.0
ROLES = ("supervisor", "listener", "executor")


def seconds_text(cpu: float) -> str:
    """CPU seconds as the kernel counts them: in clock ticks (10 ms with USER_HZ 100)."""
    tick = 1 / os.sysconf("SC_CLK_TCK")
    return f"< {tick:.2f} s (0 ticks)" if cpu < tick / 2 else f"{cpu:.2f} s"


def snapshot(roles: dict[str, int]) -> dict[str, tuple[float, int, int]]:
    """(CPU seconds, voluntary, involuntary context switches) of each process."""
    import psutil

    found = {}
    for role in ROLES:
        try:
            process = psutil.Process(roles[role])
            times = process.cpu_times()
            switches = process.num_ctx_switches()
        except psutil.NoSuchProcess as error:
            raise CannotMeasure(f"the {role} died during the measurement") from error
        cpu = times.user + times.system + times.children_user + times.children_system
        found[role] = (cpu, switches.voluntary, switches.involuntary)
    return found


def run(seconds: float, count: int) -> None:
    with temporary_root("idle") as root:
        print(machine(root))
        print()
        far_hour = (time.gmtime().tm_hour + 12) % 24
        daemon = Saturnd(root)
        populate(daemon.state, same_tasks(count, Timing.parse("0", str(far_hour), "*"), (b"true",)))
        daemon.start()
        try:
            daemon.wait_ticked()
            time.sleep(1.0)  # let start-up finish (logging, first tick)
            before = snapshot(daemon.roles)
            began = time.monotonic()
            time.sleep(seconds)
            after = snapshot(daemon.roles)
            elapsed = time.monotonic() - began
        finally:
            daemon.stop()
    minutes = elapsed / 60
    scale = WINDOW / elapsed
    print(
        f"{count} tasks, none due; measured over {elapsed:.0f} s"
        + ("" if abs(scale - 1) < 0.01 else f" and scaled to {WINDOW:.0f} s (x {scale:.1f})")
        + "."
    )
    print()
    rows = []
    total_cpu = 0.0
    worst_rate = 0.0
    for role in ROLES:
        cpu = after[role][0] - before[role][0]
        voluntary = after[role][1] - before[role][1]
        involuntary = after[role][2] - before[role][2]
        rate = voluntary / minutes
        total_cpu += cpu
        worst_rate = max(worst_rate, rate)
        rows.append(
            [
                role,
                seconds_text(cpu),
                seconds_text(cpu * scale),
                voluntary,
                involuntary,
                f"{rate:.2f}",
            ]
        )
    rows.append(["all", seconds_text(total_cpu), seconds_text(total_cpu * scale), "", "", ""])
    print(
        table(
            [
                "process",
                "CPU measured",
                "CPU per 10 min",
                "wake-ups (voluntary switches)",
                "involuntary switches",
                "wake-ups / min",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    "CPU of all processes per 10 min",
                    seconds_text(total_cpu * scale),
                    f"<= {CPU_GOAL} s",
                    verdict(total_cpu * scale <= CPU_GOAL),
                ],
                [
                    "wake-ups per minute, worst process",
                    f"{worst_rate:.2f}",
                    f"<= ~{WAKE_GOAL:.0f}",
                    verdict(worst_rate <= WAKE_GOAL + 0.5),
                ],
            ],
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 seconds, for CI")
    parser.add_argument("--seconds", type=float, default=None, help="measurement duration")
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else WINDOW)
    print("## 5. Idle cost: 1,000 tasks, none due")
    print()
    return main_guard(lambda: run(seconds, args.tasks))


if __name__ == "__main__":
    sys.exit(main())
