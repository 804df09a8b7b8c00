"""Benchmark 8: LIST and CREATE+REMOVE through the socket and through the FIFOs.

Side by side in one run, interleaved round by round, against:
- this tree's daemon, through the socket (a new connection per exchange, as cassini
  makes one, and one connection kept for every exchange) and through the FIFOs;
- the daemon of an earlier tree (`--before REV`, default the last commit before the
  socket, c305be3) through the FIFOs, its only transport: "before";
- the floor: a minimal process that only does the FIFO side of an exchange with the
  same reply bytes (common.Floor).
Each daemon holds 10 tasks. Client and servers are pinned to one CPU (the cost of the
exchange itself; BENCHMARKS.md benchmark 2 says why). Figures: exchanges (or pairs) per
second, median of the rounds, and the ratio to the floor's LIST.

Usage: python bench/bench_transport.py [--rounds N] [--block N] [--before REV]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    CannotMeasure,
    Client,
    Floor,
    Saturnd,
    machine,
    main_guard,
    median,
    populate,
    table,
    temporary_root,
)

from saturnd import protocol
from saturnd.timing import Timing

LIST = protocol.encode(protocol.ListRequest())
CREATE = protocol.encode(protocol.CreateRequest(Timing.parse("0", "3", "*"), (b"true",)))


class SocketClient:
    """Exchanges over the daemon's socket: a connection per exchange, or one kept."""

    def __init__(self, path: Path, keep: bool) -> None:
        self.path = os.fspath(path)
        self.keep = keep
        self.sock: socket.socket | None = None

    def _connection(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(self.path)
        return self.sock

    def exchange(self, request: bytes, size: int) -> bytes:
        """Send `request`, read a reply of `size` bytes (known from a first exchange)."""
        sock = self._connection()
        sock.sendall(request)
        data = b""
        while len(data) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise CannotMeasure("the daemon closed the connection")
            data += chunk
        if not self.keep:
            sock.close()
            self.sock = None
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _fifo_pairs(client: Client) -> Callable[[int], None]:
    def pairs(count: int) -> None:
        for _ in range(count):
            reply = client.exchange(CREATE)
            client.exchange(
                protocol.encode(protocol.RemoveRequest(int.from_bytes(reply[2:], "big")))
            )

    return pairs


def _socket_pairs(client: SocketClient) -> Callable[[int], None]:
    def pairs(count: int) -> None:
        for _ in range(count):
            reply = client.exchange(CREATE, 10)
            task = int.from_bytes(reply[2:], "big")
            client.exchange(protocol.encode(protocol.RemoveRequest(task)), 2)

    return pairs


def _old_daemon(root: Path, tree: Path) -> subprocess.Popen[bytes]:
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); "
        "from saturnd.cli import main; sys.exit(main())"
    )
    env = dict(os.environ, TZ="UTC", HOME=str(root))
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [sys.executable, "-c", code, "-f", "-p", str(root / "pipes"), "-s", str(root / "state")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_answering(client: Client) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client.exchange(LIST)
            return
        except (OSError, CannotMeasure):
            if time.monotonic() > deadline:
                raise CannotMeasure("the daemon of the earlier tree did not answer") from None
            time.sleep(0.01)


def run(rounds: int, block: int, before: str) -> None:
    tasks = [(Timing.parse("0", "3", "*"), (b"echo", b"task %d" % i)) for i in range(10)]
    with temporary_root("transport") as root, tempfile.TemporaryDirectory() as old_tree:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", old_tree, before],
            check=True,
        )
        try:
            _measure(root, Path(old_tree), tasks, rounds, block)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", old_tree])


def _measure(root: Path, old_tree: Path, tasks: list, rounds: int, block: int) -> None:  # type: ignore[type-arg]
    new = Saturnd(root / "new")
    (root / "new").mkdir()
    populate(new.state, tasks)
    (root / "old").mkdir()
    populate(root / "old" / "state", tasks)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children inherit it
    old = _old_daemon(root / "old", old_tree)
    new.start()
    old_client = Client(root / "old" / "pipes")
    try:
        _wait_answering(old_client)
        list_reply = new.client.exchange(LIST)
        with Floor(root, {b"LS": list_reply, b"CR": b"OK" + bytes(8), b"RM": b"OK"}) as floor:
            fresh = SocketClient(new.pipes / "saturnd.sock", keep=False)
            kept = SocketClient(new.pipes / "saturnd.sock", keep=True)
            size = len(list_reply)
            sides: dict[str, Callable[[int], None]] = {
                "LIST floor (FIFOs)": lambda n: (
                    [floor.client.exchange(LIST) for _ in range(n)] and None
                ),
                "LIST before (FIFOs)": lambda n: (
                    [old_client.exchange(LIST) for _ in range(n)] and None
                ),
                "LIST after, FIFOs": lambda n: (
                    [new.client.exchange(LIST) for _ in range(n)] and None
                ),
                "LIST after, socket (a connection each)": lambda n: (
                    [fresh.exchange(LIST, size) for _ in range(n)] and None
                ),
                "LIST after, socket (one connection)": lambda n: (
                    [kept.exchange(LIST, size) for _ in range(n)] and None
                ),
                "CREATE+REMOVE before (FIFOs)": _fifo_pairs(old_client),
                "CREATE+REMOVE after, FIFOs": _fifo_pairs(new.client),
                "CREATE+REMOVE after, socket": _socket_pairs(fresh),
            }
            rates: dict[str, list[float]] = {name: [] for name in sides}
            for round_ in range(rounds):
                names = list(sides)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in names:
                    count = block if name.startswith("LIST") else max(1, block // 10)
                    began = time.perf_counter()
                    sides[name](count)
                    rates[name].append(count / (time.perf_counter() - began))
            kept.close()
    finally:
        new.stop()
        try:
            old_client.exchange(protocol.encode(protocol.TerminateRequest()))
        except (OSError, CannotMeasure):
            pass
        old.wait(timeout=15)
    floor_rate = median(rates["LIST floor (FIFOs)"])
    rows = [
        (name, f"{median(values):,.0f}", f"{median(values) / floor_rate:.2f}")
        for name, values in rates.items()
    ]
    print(machine(new.state))
    print(f"one CPU, {rounds} rounds of {block} LIST / {max(1, block // 10)} pairs")
    print(table(("side", "per second (median)", "x floor LIST"), rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--before", default="c305be3")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 50")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.block = 2, 50
    return main_guard(lambda: run(args.rounds, args.block, args.before))


if __name__ == "__main__":
    sys.exit(main())
