"""Benchmark 7: what a minute's runs' supervising process (P5) costs in memory.

Each minute that still has a run going keeps one P5, a fork of the executor. A real
daemon (fake clock, UTC) with TASKS tasks, one of which runs `sleep` every minute and
the others never, is stepped to a minute boundary; once the run's P5 exists (found
by its temporary output, `stdout.<P5 pid>.<n>.tmp`, and named `saturnd: runs of
HH:MM`), its memory is read with psutil: RSS (every page it maps), PSS (shared pages
divided among their users) and USS (its own pages: what it frees when it ends). P5
shares most of its pages with the executor it was forked from, so USS is what each
extra minute with a run going really costs; RSS is what `ps` shows.

Target (judged by reading): USS of one P5 <= 4 MiB.

Usage: python bench/bench_run_memory.py [--quick] [--tasks N] [--samples K]
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
    median,
    mib,
    populate,
    table,
    temporary_root,
    verdict,
)

from saturnd.timing import Timing

USS_GOAL = 4 << 20
START = 1_795_248_030  # 2026-11-21 08:00:30 UTC: the first tick runs nothing
SETTLE = 0.5  # seconds after P5 appears, so its start-up is over when it is read


def find_p5(task_dir: Path, timeout: float = 30.0) -> int:
    """The pid of the P5 relaying a run of this task (from its temporary's name)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in os.listdir(task_dir):
            if name.startswith("stdout.") and name.endswith(".tmp"):
                return int(name.split(".")[1])
        time.sleep(0.002)
    raise CannotMeasure("no run started")


def measure_one(tasks: int) -> tuple[int, int, int, str]:
    """(RSS, PSS, USS, title) of one P5, in a fresh daemon."""
    import psutil

    with temporary_root("run-memory") as root:
        clock = root / "clock"
        clock.write_text(f"{START}\n")
        daemon = Saturnd(root, clock_file=clock)
        idle = (Timing.parse("0", "20", "*"), (b"true",))
        populate(daemon.state, [(Timing.parse("*", "*", "*"), (b"sleep", b"30")), *[idle] * tasks])
        daemon.start()
        try:
            daemon.wait_ticked()
            clock.write_text(f"{START + 30}\n")  # 08:01:00: the sleep is due
            pid = find_p5(daemon.state / "task_0")
            time.sleep(SETTLE)
            process = psutil.Process(pid)
            info = process.memory_full_info()
            title = " ".join(process.cmdline()).strip()
            for child in process.children():
                child.kill()
        finally:
            daemon.stop()
    return info.rss, info.pss, info.uss, title


def run(tasks: int, samples: int) -> None:
    with temporary_root("run-memory-machine") as root:
        print(machine(root))
    print()
    measured = [measure_one(tasks) for _ in range(samples)]
    rss, pss, uss = (median([float(m[i]) for m in measured]) for i in range(3))
    print(f"{tasks + 1} tasks, one `sleep 30` due; median of {samples} daemons.")
    print(f"P5's title: `{measured[0][3]}`.")
    print()
    print(
        table(
            ["process", "RSS", "PSS", "USS (its own pages)"],
            [["P5, one run going", mib(rss), mib(pss), mib(uss)]],
        )
    )
    print()
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [["USS of one P5", mib(uss), f"<= {mib(USS_GOAL)}", verdict(uss <= USS_GOAL)]],
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one daemon, for CI")
    parser.add_argument("--tasks", type=int, default=1000, help="idle tasks besides the run")
    parser.add_argument("--samples", type=int, default=None, help="daemons to measure")
    args = parser.parse_args()
    samples = args.samples or (1 if args.quick else 5)
    print("## 7. Memory of a minute's runs (P5)")
    print()
    return main_guard(lambda: run(args.tasks, samples))


if __name__ == "__main__":
    sys.exit(main())
