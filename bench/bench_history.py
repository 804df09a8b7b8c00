"""Benchmark 6: TIMES_EXITCODES of a task with 500,000 recorded runs.

The task's `times-exitcodes` is written directly (`common.write_runs`: the layout of
`saturnd.records`, 10 bytes a run, about 5 MB). Measured:
- the exchange: from the request to the last byte of the reply (the client reads until
  end of file and does not decode while timed); median over interleaved rounds;
- the floor: the same client and the same reply bytes from a minimal Python process
  (`common.Floor`): what moving these bytes through a FIFO costs here;
- the listener's memory: VmRSS before and after, and VmHWM (its peak RSS) before and
  after the requests. "Memory flat" means the peak does not grow with the history: a
  daemon that reads the whole file into memory shows a peak growth of several times
  the file's size;
- for information, `decoding.decode_reply` on the reply (what cassini -x would add).

Targets (judged by reading the table): the exchange <= 0.2 s, memory flat.

Usage: python bench/bench_history.py [--quick] [--runs N] [--rounds K]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CannotMeasure,
    Client,
    Floor,
    Saturnd,
    machine,
    main_guard,
    median,
    mib,
    ms,
    populate,
    same_tasks,
    table,
    temporary_root,
    verdict,
    vm_status,
    write_runs,
)

from saturnd import decoding, protocol
from saturnd.timing import Timing

TIME_GOAL = 0.2
FLAT_GOAL = 1.0
"""Peak growth allowed, as a fraction of the history's size: "flat" with some slack."""


def timed(client: Client, request: bytes, expected_length: int) -> float:
    began = time.perf_counter()
    data = client.exchange(request)
    elapsed = time.perf_counter() - began
    if len(data) != expected_length:
        raise CannotMeasure(f"a reply of {len(data)} bytes, expected {expected_length}")
    return elapsed


def run(runs: int, rounds: int) -> None:
    with temporary_root("history") as root:
        print(machine(root))
        print()
        daemon = Saturnd(root)
        populate(daemon.state, same_tasks(1, Timing.parse("0", "0", "0"), (b"true",)))
        write_runs(daemon.state / "task_0", runs)
        file_size = (daemon.state / "task_0" / "times-exitcodes").stat().st_size
        request = protocol.encode(protocol.TimesExitcodesRequest(0))
        daemon.start()
        try:
            listener = daemon.roles["listener"]
            small = daemon.client.exchange(b"LS")  # touch the code paths once
            del small
            before = vm_status(listener)
            ours: list[float] = []
            floor: list[float] = []
            reply = daemon.client.exchange(request)
            expected = 2 + 4 + 10 * runs
            if len(reply) != expected:
                raise CannotMeasure(f"the reply has {len(reply)} bytes, expected {expected}")
            with Floor(root, {b"TX": reply}) as floor_server:
                timed(floor_server.client, request, expected)  # warm-up
                for index in range(rounds):
                    pair = [(ours, daemon.client), (floor, floor_server.client)]
                    for values, client in pair if index % 2 == 0 else reversed(pair):
                        values.append(timed(client, request, expected))
            after = vm_status(listener)
        finally:
            daemon.stop()
    began = time.perf_counter()
    decoded = decoding.decode_reply(b"TX", reply)
    decode_time = time.perf_counter() - began
    if not isinstance(decoded, protocol.TimesExitcodesReply) or len(decoded.runs) != runs:
        raise CannotMeasure("the reply does not decode to every run")

    growth = after["VmHWM"] - before["VmRSS"]
    print(
        f"{runs:,} runs ({file_size:,} bytes on disk, reply {expected:,} bytes); "
        f"{rounds} interleaved rounds."
    )
    print()
    print(
        table(
            ["side", "median", "min", "max"],
            [
                ["saturnd", ms(median(ours)), ms(min(ours)), ms(max(ours))],
                ["floor", ms(median(floor)), ms(min(floor)), ms(max(floor))],
                ["client decode (information)", ms(decode_time), "", ""],
            ],
        )
    )
    print()
    print(
        table(
            ["listener memory", "before the requests", "after"],
            [
                ["VmRSS", mib(before["VmRSS"]), mib(after["VmRSS"])],
                ["VmHWM (peak RSS)", mib(before["VmHWM"]), mib(after["VmHWM"])],
            ],
        )
    )
    print()
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    f"TIMES_EXITCODES of {runs:,} runs",
                    f"{ms(median(ours))} ({median(ours) / median(floor):.1f} x floor)",
                    f"<= {TIME_GOAL} s",
                    verdict(median(ours) <= TIME_GOAL),
                ],
                [
                    "listener peak growth over its RSS before",
                    f"{mib(growth)} = {growth / file_size:.1f} x the history",
                    f"flat (< {FLAT_GOAL:.0f} x the history)",
                    verdict(growth < FLAT_GOAL * file_size),
                ],
            ],
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 runs, for CI")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    runs = args.runs or (20_000 if args.quick else 500_000)
    rounds = args.rounds or (3 if args.quick else 11)
    print("## 6. History: TIMES_EXITCODES of a task with 500,000 runs")
    print()
    return main_guard(lambda: run(runs, rounds))


if __name__ == "__main__":
    sys.exit(main())
