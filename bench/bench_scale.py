"""Benchmark 3: the daemon at 0, 10,000 and 100,000 tasks.

For each size, a state directory is filled with `common.populate` (the `cmds` file
written with `saturnd.records`, plus the task directories) and measured:
- start: from `saturnd -f` being started to its first answer (repeated; the median),
  and to the executor's first handled minute;
- CREATE latency: the daemons of all sizes run at once and CREATEs go to each in turn
  (interleaved), so the ratio at 100k / at 0 compares like with like; median, p90;
- LIST: time until the whole reply has arrived (the client does not decode while
  timed), and, for information, the time `decoding.decode_reply` takes on it;
- memory of each daemon process (psutil): RSS, USS (pages only it holds), VmHWM.

Targets (judged by reading the table): CREATE median at 100k <= 1.5 x at 0; LIST of
100k <= 0.5 s; start with 100k <= 2 s; RSS <= 60 MB per process.

Usage: python bench/bench_scale.py [--quick] [--sizes 0,10000,100000] [--creates N]
"""

from __future__ import annotations

import argparse
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
    ms,
    percentile,
    populate,
    same_tasks,
    table,
    temporary_root,
    verdict,
    vm_status,
)

from saturnd import decoding, protocol
from saturnd.timing import Timing

CREATE_GOAL = 1.5
LIST_GOAL = 0.5
START_GOAL = 2.0
RSS_GOAL = 60e6

QUIET = Timing.parse("0", "0", "0")  # Sunday 00:00 only: never due during the run
ARGV = (b"/usr/bin/true", b"--an-argument", b"and-another-one")
CREATE = protocol.encode(protocol.CreateRequest(QUIET, ARGV))


def timed_start(daemon: Saturnd) -> tuple[float, float]:
    """Start; (seconds to the first answer, seconds to the executor's first tick)."""
    last_minute = daemon.state / "last-minute"
    last_minute.unlink(missing_ok=True)
    began = time.perf_counter()
    daemon.start(timeout=120)
    answered = daemon.started_in
    daemon.wait_ticked(timeout=120)
    return answered, time.perf_counter() - began


def run(sizes: list[int], creates: int, starts: int, lists: int) -> None:
    with temporary_root("scale") as root:
        print(machine(root))
        print()
        daemons: dict[int, Saturnd] = {}
        fill: dict[int, float] = {}
        for size in sizes:
            began = time.perf_counter()
            populate(root / str(size) / "state", same_tasks(size, QUIET, ARGV))
            fill[size] = time.perf_counter() - began
            daemons[size] = Saturnd(root / str(size))

        start_times: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
        for _ in range(starts):
            for size in sizes:
                start_times[size].append(timed_start(daemons[size]))
                daemons[size].stop()

        create_times: dict[int, list[float]] = {size: [] for size in sizes}
        list_times: dict[int, list[float]] = {size: [] for size in sizes}
        decode_times: dict[int, float] = {}
        memory: dict[tuple[int, str], tuple[int, int, int]] = {}
        try:
            for size in sizes:
                daemons[size].start(timeout=120)
                daemons[size].wait_ticked(timeout=120)
            for size in sizes:  # warm-up
                daemons[size].client.exchange(CREATE)
            for _ in range(creates):
                for size in sizes:
                    client = daemons[size].client
                    began = time.perf_counter()
                    reply = client.exchange(CREATE)
                    create_times[size].append(time.perf_counter() - began)
                    if reply[:2] != b"OK":
                        raise CannotMeasure(f"CREATE answered {reply!r}")
            for _ in range(lists):
                for size in sizes:
                    client = daemons[size].client
                    began = time.perf_counter()
                    data = client.exchange(b"LS")
                    list_times[size].append(time.perf_counter() - began)
            for size in sizes:
                data = daemons[size].client.exchange(b"LS")
                began = time.perf_counter()
                listed = decoding.decode_reply(b"LS", data)
                decode_times[size] = time.perf_counter() - began
                expected = size + creates + 1
                found = len(listed.tasks) if isinstance(listed, protocol.ListReply) else -1
                if found != expected:
                    raise CannotMeasure(f"LIST has {found} tasks, not {expected}")
            memory = measure_memory(daemons)
        finally:
            for daemon in daemons.values():
                daemon.stop()
        report(sizes, fill, start_times, create_times, list_times, decode_times, memory)


def measure_memory(daemons: dict[int, Saturnd]) -> dict[tuple[int, str], tuple[int, int, int]]:
    """(RSS, USS, VmHWM) of each role of each daemon, after CREATEs and LISTs."""
    import psutil

    found = {}
    for size, daemon in daemons.items():
        for role, pid in daemon.roles.items():
            process = psutil.Process(pid)
            full = process.memory_full_info()
            found[(size, role)] = (full.rss, full.uss, vm_status(pid).get("VmHWM", 0))
    return found


def report(
    sizes: list[int],
    fill: dict[int, float],
    start_times: dict[int, list[tuple[float, float]]],
    create_times: dict[int, list[float]],
    list_times: dict[int, list[float]],
    decode_times: dict[int, float],
    memory: dict[tuple[int, str], tuple[int, int, int]],
) -> None:
    rows = []
    for size in sizes:
        answered = [a for a, _ in start_times[size]]
        ticked = [t for _, t in start_times[size]]
        rows.append(
            [
                f"{size:,}",
                f"{fill[size]:.2f} s",
                f"{median(answered):.3f} s",
                f"{median(ticked):.3f} s",
                ms(median(create_times[size])),
                ms(percentile(create_times[size], 0.9)),
                ms(median(list_times[size])),
                ms(decode_times[size]),
            ]
        )
    print(
        f"{len(next(iter(start_times.values())))} starts per size; "
        f"{len(create_times[sizes[0]])} CREATEs per size, interleaved; "
        f"{len(list_times[sizes[0]])} LISTs per size."
    )
    print()
    print(
        table(
            [
                "tasks",
                "fill (not timed)",
                "start: answers",
                "start: first tick",
                "CREATE median",
                "CREATE p90",
                "LIST median",
                "client decode of LIST",
            ],
            rows,
        )
    )
    print()
    mem_rows = []
    for size in sizes:
        for role in ("supervisor", "listener", "executor"):
            rss, uss, hwm = memory[(size, role)]
            mem_rows.append([f"{size:,}", role, mib(rss), mib(uss), mib(hwm)])
    print(table(["tasks", "process", "RSS", "USS", "VmHWM (peak RSS)"], mem_rows))
    print()
    big, small = max(sizes), min(sizes)
    create_ratio = median(create_times[big]) / median(create_times[small])
    list_big = median(list_times[big])
    start_big = median([a for a, _ in start_times[big]])
    rss_big = max(memory[(big, role)][0] for role in ("supervisor", "listener", "executor"))
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    f"CREATE median at {big:,} / at {small:,}",
                    f"{create_ratio:.2f} x",
                    f"<= {CREATE_GOAL} x",
                    verdict(create_ratio <= CREATE_GOAL),
                ],
                [
                    f"LIST of {big:,}",
                    f"{list_big:.3f} s",
                    f"<= {LIST_GOAL} s",
                    verdict(list_big <= LIST_GOAL),
                ],
                [
                    f"start with {big:,} (to first answer)",
                    f"{start_big:.3f} s",
                    f"<= {START_GOAL} s",
                    verdict(start_big <= START_GOAL),
                ],
                [
                    f"largest RSS of a process at {big:,}",
                    mib(rss_big),
                    f"<= {RSS_GOAL / 1e6:.0f} MB ({mib(RSS_GOAL)})",
                    verdict(rss_big <= RSS_GOAL),
                ],
            ],
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--sizes", default=None, help="comma-separated task counts")
    parser.add_argument("--creates", type=int, default=None)
    parser.add_argument("--starts", type=int, default=None)
    args = parser.parse_args()
    default_sizes = "0,100,1000" if args.quick else "0,10000,100000"
    sizes = sorted(int(part) for part in (args.sizes or default_sizes).split(","))
    creates = args.creates or (10 if args.quick else 200)
    starts = args.starts or (1 if args.quick else 3)
    lists = 2 if args.quick else 5
    print("## 3. Scale: 0, 10k and 100k tasks")
    print()
    return main_guard(lambda: run(sizes, creates, starts, lists))


if __name__ == "__main__":
    sys.exit(main())
