"""Benchmark 2: exchanges per second from one persistent in-process client.

Measures, against a real daemon holding 10 tasks (task 0 with 10 recorded runs):
- LIST (10 tasks), TIMES_EXITCODES (task 0), and CREATE+REMOVE pairs (every task is
  fdatasync'ed by the store before its OK: that is the store's contract, not a mode);
- the floor: the same client against a minimal Python process that does only the
  daemon's side of the FIFO sequence with the same reply bytes (`common.Floor`);
- for CREATE+REMOVE, also a "durable floor": the floor plus the store's three
  pwrite+fdatasync per pair, i.e. the price of durability on this filesystem.

The sides are interleaved: each round runs a block of each (kind, side) in a rotated
order, and ratios are the median of per-round ratios. Targets (judged by reading the
table): LIST >= 0.5 x floor; CREATE+REMOVE >= 500 pairs/s.

Usage: python bench/bench_throughput.py [--quick] [--rounds N] [--block N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
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
    populate,
    running,
    same_tasks,
    spread,
    table,
    temporary_root,
    verdict,
    write_runs,
)

from saturnd import protocol
from saturnd.timing import Timing

LIST_GOAL = 0.5
PAIRS_GOAL = 500.0

# Never due in a benchmark's lifetime: Sunday 00:00 only.
QUIET = Timing.parse("0", "0", "0")
CREATE = protocol.encode(protocol.CreateRequest(QUIET, (b"true",)))


def list_block(client: Client, count: int, expected: bytes) -> float:
    began = time.perf_counter()
    for _ in range(count):
        if client.exchange(b"LS") != expected:
            raise CannotMeasure("LIST reply changed during the run")
    return count / (time.perf_counter() - began)


def tx_block(client: Client, count: int, request: bytes, expected: bytes) -> float:
    began = time.perf_counter()
    for _ in range(count):
        if client.exchange(request) != expected:
            raise CannotMeasure("TIMES_EXITCODES reply changed during the run")
    return count / (time.perf_counter() - began)


def pairs_block(client: Client, count: int) -> float:
    """CREATE, then REMOVE of the id it returned: pairs per second."""
    remove = protocol.encode(protocol.RemoveRequest(0))[:2]
    began = time.perf_counter()
    for _ in range(count):
        reply = client.exchange(CREATE)
        if len(reply) != 10 or reply[:2] != b"OK":
            raise CannotMeasure(f"CREATE answered {reply!r}")
        if client.exchange(remove + reply[2:]) != b"OK":
            raise CannotMeasure("REMOVE did not answer OK")
    return count / (time.perf_counter() - began)


def run(quick: bool, rounds: int, block: int) -> None:
    with temporary_root("throughput") as root:
        state = root / "state"
        populate(state, same_tasks(10, QUIET, (b"true",)))
        write_runs(state / "task_0", 10)
        print(machine(state))
        print()
        daemon = Saturnd(root)
        with running(daemon):
            ours = daemon.client
            list_reply = ours.exchange(b"LS")
            tx_request = protocol.encode(protocol.TimesExitcodesRequest(0))
            tx_reply = ours.exchange(tx_request)
            listed = protocol.decode_reply(b"LS", list_reply)
            if not isinstance(listed, protocol.ListReply) or len(listed.tasks) != 10:
                raise CannotMeasure("the daemon does not list 10 tasks")
            replies = {
                b"LS": list_reply,
                b"TX": tx_reply,
                b"CR": b"OK" + bytes(8),
                b"RM": b"OK",
            }
            with Floor(root, replies) as floor, Floor(root / "durable", replies, True) as durable:
                sides: dict[str, Client] = {
                    "saturnd": ours,
                    "floor": floor.client,
                    "durable floor": durable.client,
                }
                kinds: dict[str, tuple[Callable[[Client], float], tuple[str, ...]]] = {
                    "LIST (10 tasks)": (
                        lambda c: list_block(c, block, list_reply),
                        ("saturnd", "floor"),
                    ),
                    "TIMES_EXITCODES (10 runs)": (
                        lambda c: tx_block(c, block, tx_request, tx_reply),
                        ("saturnd", "floor"),
                    ),
                    "CREATE+REMOVE pairs": (
                        lambda c: pairs_block(c, max(1, block // 4)),
                        ("saturnd", "floor", "durable floor"),
                    ),
                }
                rates = measure(kinds, sides, rounds)
        report(rates, kinds, rounds, block, len(list_reply), len(tx_reply))


def measure(
    kinds: dict[str, tuple[Callable[[Client], float], tuple[str, ...]]],
    sides: dict[str, Client],
    rounds: int,
) -> dict[tuple[str, str], list[float]]:
    """Rates per (kind, side), one per round; the order of sides rotates every round."""
    rates: dict[tuple[str, str], list[float]] = {}
    for block, names in kinds.values():  # warm-up, not kept
        for name in names:
            block(sides[name])
    for index in range(rounds):
        for kind, (block, names) in kinds.items():
            rotated = names[index % len(names) :] + names[: index % len(names)]
            for name in rotated:
                rates.setdefault((kind, name), []).append(block(sides[name]))
    return rates


def report(
    rates: dict[tuple[str, str], list[float]],
    kinds: dict[str, tuple[Callable[[Client], float], tuple[str, ...]]],
    rounds: int,
    block: int,
    list_bytes: int,
    tx_bytes: int,
) -> None:
    print(
        f"{rounds} interleaved rounds; a block is {block} exchanges ({max(1, block // 4)} "
        f"pairs); reply sizes: LIST {list_bytes} B, TIMES_EXITCODES {tx_bytes} B."
    )
    print()
    rows = []
    for kind, (_, names) in kinds.items():
        ours = rates[(kind, "saturnd")]
        for name in names:
            values = rates[(kind, name)]
            ratio = ""
            if name != "saturnd":
                per_round = [a / b for a, b in zip(ours, values, strict=True)]
                ratio = f"{median(per_round):.2f} ({spread(per_round, digits=2)})"
            rows.append([kind, name, f"{median(values):,.0f}", spread(values), ratio])
    print(table(["exchange", "side", "median /s", "range over rounds /s", "saturnd / side"], rows))
    print()
    list_ratio = median(
        [
            a / b
            for a, b in zip(
                rates[("LIST (10 tasks)", "saturnd")],
                rates[("LIST (10 tasks)", "floor")],
                strict=True,
            )
        ]
    )
    pairs = median(rates[("CREATE+REMOVE pairs", "saturnd")])
    print(
        table(
            ["target", "measured", "goal", "verdict"],
            [
                [
                    "LIST vs floor",
                    f"{list_ratio:.2f} x",
                    f">= {LIST_GOAL} x",
                    verdict(list_ratio >= LIST_GOAL),
                ],
                [
                    "CREATE+REMOVE, durable",
                    f"{pairs:,.0f} pairs/s",
                    f">= {PAIRS_GOAL:.0f} pairs/s",
                    verdict(pairs >= PAIRS_GOAL),
                ],
            ],
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--block", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 15)
    block = args.block or (40 if args.quick else 500)
    print("## 2. Daemon throughput (one persistent in-process client)")
    print()
    return main_guard(lambda: run(args.quick, rounds, block))


if __name__ == "__main__":
    sys.exit(main())
