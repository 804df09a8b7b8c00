"""Scenario 1, crash anywhere: SIGKILL at random instants under a stream of requests.

Several clients send CREATE and REMOVE with the real cassini while the fake clock moves
on (so the executor is busy too), and the daemon's listener, its executor or its whole
process group is killed with SIGKILL at random instants, then restarted (by its
supervisor, or by us). After each restart, with the clients paused, the state is
checked against what the clients were told:
- every task whose CREATE got OK is listed with the same id, timing and command;
- no task whose REMOVE got OK is back; a task whose REMOVE got NF had been removed;
- a listed task nobody was told about is one whose CREATE was in flight, intact;
- ids only grow: a new task's id is above every id ever seen;
- `cmds` loaded without a repair message other than dropping a torn tail, every live
  task has its directory and no removed task left one;
- the always-running task never ran twice for one minute.
Then: `cmds` and `times-exitcodes` truncated at every byte offset of their last record,
and the daemon starts and serves each time.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import NOW
from tests.daemon_harness import wait_for
from tests.reliability.support import (
    Figures,
    Target,
    raw_exchange,
    repair_lines,
    run_cassini,
    scaled,
    temp_files,
)

# Timings of created tasks, with the canonical text LIST prints: weekdays the moving
# clock (from a Saturday) takes days to reach, so they almost never run.
SPECS = [
    (("-m", "7", "-H", "3", "-d", "2"), "7 3 2"),
    (("-m", "0-2,5,10", "-H", "4", "-d", "1"), "0-2,5,10 4 1"),
    (("-m", "*/15", "-H", "5", "-d", "3"), "0,15,30,45 5 3"),
    (("-m", "1", "-H", "9,14", "-d", "1-3"), "1 9,14 1-3"),
    (("-m", "59", "-H", "23", "-d", "4"), "59 23 4"),
]
CLIENTS = 4
SOCKET = {**os.environ, "CASSINI_TRANSPORT": "socket"}
"""The clients' transport. On the FIFOs a client whose request died with a killed
listener waits out its reply timeout holding cassini.lock, and a request left in the
request FIFO by a client that gave up is answered to the next one: the FIFOs can promise
neither (no attribution of a request to its writer); each socket client has its own
connection, which the kernel closes when the listener dies."""
MakeTarget = Callable[..., Target]


@dataclass
class Ledger:
    """What the clients were told, shared by the client threads and the checker."""

    acked: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (timing, token)
    owner: dict[int, int] = field(default_factory=dict)  # id -> client
    in_flight_create: dict[str, str] = field(default_factory=dict)  # token -> timing
    removed: set[int] = field(default_factory=set)
    doubtful_remove: set[int] = field(default_factory=set)
    highest: int = -1
    violations: list[str] = field(default_factory=list)
    exchanges: int = 0
    worst_client: float = 0.0


class Clients:
    """CLIENTS threads, each running cassini in a loop; pausable by the checker."""

    def __init__(self, daemon: Target, ledger: Ledger, seed: int) -> None:
        self.daemon = daemon
        self.ledger = ledger
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.paused = False
        self.busy = 0
        self.stopping = False
        self.threads = [
            threading.Thread(target=self._loop, args=(index, seed + index), daemon=True)
            for index in range(CLIENTS)
        ]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.stopping = True
            self.changed.notify_all()
        for thread in self.threads:
            thread.join(timeout=120)

    def pause(self) -> None:
        """Wait until no client is in an exchange, and keep them out."""
        with self.lock:
            self.paused = True
            self.changed.wait_for(lambda: self.busy == 0, timeout=120)
            assert self.busy == 0, "a client is stuck in an exchange"

    def resume(self) -> None:
        with self.lock:
            self.paused = False
            self.changed.notify_all()

    def _loop(self, client: int, seed: int) -> None:
        rng = random.Random(seed)
        sequence = 0
        while True:
            with self.lock:
                self.changed.wait_for(lambda: not self.paused or self.stopping)
                if self.stopping:
                    return
                self.busy += 1
                own = [
                    task_id
                    for task_id, who in self.ledger.owner.items()
                    if who == client and task_id not in self.ledger.removed
                ]
            try:
                if own and rng.random() < 0.35:
                    self._remove(rng.choice(own))
                else:
                    sequence += 1
                    self._create(client, sequence, rng)
            finally:
                with self.lock:
                    self.busy -= 1
                    self.changed.notify_all()

    def _create(self, client: int, sequence: int, rng: random.Random) -> None:
        args, timing = rng.choice(SPECS)
        token = f"c{client}-{sequence}"
        with self.lock:
            self.ledger.in_flight_create[token] = timing
            # Every id acknowledged before this request was sent is below its id.
            floor = self.ledger.highest
        code, out, _err, took = run_cassini(
            self.daemon.pipes, "-c", *args, "echo", token, env=SOCKET
        )
        with self.lock:
            self.ledger.exchanges += 1
            if code != 0:
                return  # in doubt: the token stays in in_flight_create
            self.ledger.worst_client = max(self.ledger.worst_client, took)
            del self.ledger.in_flight_create[token]
            task_id = int(out)
            if task_id in self.ledger.acked or task_id <= floor:
                self.ledger.violations.append(
                    f"CREATE {token} got id {task_id}, not above every id seen before ({floor})"
                )
            self.ledger.highest = max(self.ledger.highest, task_id)
            self.ledger.acked[task_id] = (timing, token)
            self.ledger.owner[task_id] = client

    def _remove(self, task_id: int) -> None:
        code, _out, err, took = run_cassini(self.daemon.pipes, "-r", str(task_id), env=SOCKET)
        with self.lock:
            self.ledger.exchanges += 1
            if code == 0:
                self.ledger.worst_client = max(self.ledger.worst_client, took)
                self.ledger.removed.add(task_id)
            elif b"no task with id" in err:
                if task_id not in self.ledger.doubtful_remove:
                    self.ledger.violations.append(f"acknowledged task {task_id} vanished (NF)")
                self.ledger.removed.add(task_id)
            else:
                self.ledger.doubtful_remove.add(task_id)


_LINE = re.compile(r"^(\d+): (\S+ \S+ \S+) echo (\S+)$")


def check_state(daemon: Target, ledger: Ledger) -> None:
    """The invariants of the module docstring, with the clients paused."""
    code, out, err, _ = run_cassini(daemon.pipes, "-l")
    assert code == 0, err
    listed: dict[int, tuple[str, str]] = {}
    for line in out.decode().splitlines():
        match = _LINE.match(line)
        if match is None:
            assert line.split(":")[0] == "0", f"unexpected task line {line!r}"
            continue  # the always-running task
        listed[int(match.group(1))] = (match.group(2), match.group(3))
    problems = ledger.violations
    for task_id, expected in ledger.acked.items():
        if task_id in ledger.removed:
            if task_id in listed:
                problems.append(f"removed task {task_id} is back: {listed[task_id]}")
        elif task_id in ledger.doubtful_remove:
            if task_id in listed and listed[task_id] != expected:
                problems.append(f"task {task_id} changed: {listed[task_id]} != {expected}")
            if task_id not in listed:
                ledger.removed.add(task_id)
        elif listed.get(task_id) != expected:
            problems.append(f"acknowledged task {task_id} {expected} is {listed.get(task_id)}")
    for task_id, (timing, token) in listed.items():
        if task_id in ledger.acked:
            continue
        if ledger.in_flight_create.get(token) != timing:
            problems.append(f"unknown task {task_id}: {timing} {token}")
            continue
        # A CREATE in flight that made it: it is on disk now and must stay.
        del ledger.in_flight_create[token]
        client = int(token[1:].split("-")[0])
        ledger.acked[task_id] = (timing, token)
        ledger.owner[task_id] = client
    ledger.highest = max([ledger.highest, *listed])
    # ids only grow: a new task's id is above every id ever seen.
    code, out, err, _ = run_cassini(daemon.pipes, "-c", *SPECS[0][0], "echo", "probe")
    assert code == 0, err
    probe = int(out)
    if probe <= ledger.highest:
        problems.append(f"new task got id {probe}, not above {ledger.highest}")
    ledger.highest = probe
    assert run_cassini(daemon.pipes, "-r", str(probe))[0] == 0
    ledger.acked[probe] = (SPECS[0][1], "probe")
    ledger.removed.add(probe)
    problems.extend(repair_lines(daemon.new_log()))
    # Directories: one per live task, none for a removed one, nothing half-removed.
    live = set(listed) | {0}
    dirs = {int(p.name[5:]) for p in daemon.state.glob("task_*")}
    if dirs != live:
        problems.append(f"task directories {sorted(dirs ^ live)} do not match the tasks")
    leftovers = [p.name for p in daemon.state.iterdir() if p.name.startswith(".removed-")]
    if leftovers:
        problems.append(f"half-removed directories left: {leftovers}")


def wait_restarted(daemon: Target, victim: str, old: int) -> None:
    def back() -> bool:
        parts = daemon.parts()
        return victim in parts and parts[victim] != old and len(parts) == 2

    wait_for(back, timeout=30, what=f"the {victim} to be restarted")


@pytest.mark.scenario("1. crash anywhere: SIGKILL under CREATE/REMOVE")
def test_it_loses_and_repeats_nothing_when_killed_anywhere(
    target: MakeTarget, figures: Figures
) -> None:
    kills = scaled(24, 200)
    seed = int(time.time())
    rng = random.Random(seed)
    figures.notes.append(f"seed {seed}")
    daemon = target(start=NOW)
    assert daemon.create("true") == 0  # the always-running task: at most one run a minute
    ledger = Ledger(highest=0)
    daemon.new_log()
    minutes = [0]
    stepping = threading.Event()
    stepping.set()
    done = threading.Event()

    def step_clock() -> None:
        # The executor must be busy too: a minute every 50 ms.
        while not done.is_set():
            if stepping.wait(0.05):
                minutes[0] += 1
                daemon.set_time(NOW + 60 * minutes[0])
            time.sleep(0.05)

    stepper = threading.Thread(target=step_clock, daemon=True)
    stepper.start()
    counts = {"listener": 0, "executor": 0, "group": 0}
    recoveries: list[float] = []
    try:
        with Clients(daemon, ledger, seed) as clients:
            for _ in range(kills):
                time.sleep(rng.uniform(0.02, 0.4))
                victim = rng.choice(("listener", "executor", "group"))
                # A part killed just before may still be in its restart pause.
                wait_for(lambda: len(daemon.parts()) == 2, timeout=30, what="both parts")
                parts = daemon.parts()
                killed_at = time.monotonic()
                if victim == "group":
                    daemon.kill_group()
                else:
                    os.kill(parts[victim], signal.SIGKILL)
                counts[victim] += 1
                # The clients go on meanwhile: restarting under load is part of the test.
                if victim == "group":
                    daemon.start(wait_tick=False)
                else:
                    wait_restarted(daemon, victim, parts[victim])
                wait_for(daemon.answers, timeout=30, what="the daemon to answer")
                recoveries.append(time.monotonic() - killed_at)
                figures.latency(recoveries[-1])
                clients.pause()
                stepping.clear()
                check_state(daemon, ledger)
                assert not ledger.violations, ledger.violations
                stepping.set()
                clients.resume()
    finally:
        done.set()
        stepper.join()
    # At most one run per minute of the always-running task, across every crash.
    body = raw_exchange(daemon.pipes, b"TX" + struct.pack(">Q", 0))
    runs = struct.unpack_from(">I", body, 2)[0]
    assert runs <= minutes[0], f"{runs} runs for {minutes[0]} minutes"
    # Runs still going may hold their temporary outputs; nothing else may be left.
    wait_for(lambda: not temp_files(daemon.state), timeout=15, what="no temporary file")
    figures.iterations = kills
    figures.checked = (
        f"{kills} SIGKILLs ({counts['listener']} listener, {counts['executor']} executor, "
        f"{counts['group']} whole group) under {ledger.exchanges} CREATE/REMOVE from "
        f"{CLIENTS} clients; {len(ledger.acked)} tasks acknowledged; after each restart: "
        "acknowledged tasks intact, removed ones gone, ids only grow, no cmds repair but "
        f"a torn tail; {runs} runs of an every-minute task over {minutes[0]} minutes, "
        "none twice; worst latency = kill to answering again (median "
        f"{statistics.median(recoveries) * 1000:.0f} ms; the worst include the supervisor's "
        "pauses for a part killed again within 1 s of its start)"
    )
    figures.notes.append(f"worst client exchange {ledger.worst_client:.3f} s")


# --- truncation at every byte offset of the last record ----------------------------


def _last_cmds_record(cmds: bytes) -> int:
    """Offset of the last record of a `cmds` file (header 16 bytes, records ID SIZE BODY)."""
    offset, last = 16, 16
    while offset < len(cmds):
        last = offset
        size = struct.unpack_from(">I", cmds, offset + 8)[0]
        offset += 12 + size
    return last


@pytest.mark.scenario("1b. torn files: cmds and times-exitcodes cut at every byte")
def test_it_starts_and_serves_with_a_last_record_cut_anywhere(
    target: MakeTarget, tmp_path: Path, figures: Figures
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    daemon = target(start=NOW, root=base)
    for index in range(3):
        daemon.create("-m", "*", "sh", "-c", f"echo run-{index}")
    daemon.step_to(NOW + 60)
    daemon.step_to(NOW + 120)
    wait_for(lambda: all(len(daemon.runs(i)) == 2 for i in range(3)), what="two runs each")
    daemon.stop()
    cmds = (base / "state" / "cmds").read_bytes()
    history = (base / "state" / "task_2" / "times-exitcodes").read_bytes()
    assert len(history) == 4 + 2 * 10
    record = _last_cmds_record(cmds)
    cuts = [("cmds", n) for n in range(record, len(cmds))]
    cuts += [("times-exitcodes", n) for n in range(len(history) - 10, len(history))]
    if not scaled(0, 1):
        # The short form: the record's first and last bytes and the field edges.
        keep = {record, record + 1, record + 8, record + 12, len(cmds) - 1}
        keep |= {len(history) - 10, len(history) - 2, len(history) - 1}
        cuts = [(name, n) for name, n in cuts if n in keep]
    worst = 0.0
    for index, (name, length) in enumerate(cuts):
        root = tmp_path / f"cut-{index}"
        root.mkdir()
        shutil.copytree(base / "state", root / "state", symlinks=True)
        path = root / "state" / ("cmds" if name == "cmds" else "task_2/times-exitcodes")
        with open(path, "r+b") as cut:
            cut.truncate(length)
        started = time.monotonic()
        again = target(start=NOW + 120, root=root)
        worst = max(worst, time.monotonic() - started)
        listing = again.cassini("-l").stdout.decode().splitlines()
        ids = [int(line.split(":")[0]) for line in listing]
        expected_ids = [0, 1] if name == "cmds" else [0, 1, 2]
        assert ids == expected_ids, (name, length, listing)
        assert repair_lines(again.log_text()) == [], (name, length)
        assert again.create("true") == 3  # NEXT_ID was stored before the record
        if name == "times-exitcodes":
            assert len(again.runs(2)) == 1
            again.step_to(NOW + 180)
            wait_for(lambda: len(again.runs(2)) == 2, what="the next run")  # noqa: B023
            assert [t for t, _ in again.runs(2)][-1].endswith("08:03:00")
        again.stop()
        shutil.rmtree(root)
    figures.iterations = len(cuts)
    figures.latency(worst)
    figures.checked = (
        f"{len(cuts)} cuts of the last record (cmds: {len(cmds) - record} bytes, "
        "times-exitcodes: 10 bytes); each time the daemon starts, lists the intact "
        "tasks, gives the next id, and a cut history takes the next run; worst latency "
        "= start to answering"
    )


# --- what the kills found, one case at a time ---------------------------------------


@pytest.mark.scenario("1. crash anywhere: SIGKILL under CREATE/REMOVE")
@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "in the backlog"])
def test_it_releases_a_client_left_waiting_by_a_killed_listener(
    target: MakeTarget, accepted: bool
) -> None:
    """A socket client whose request the listener had (or had not yet accepted) when it
    was killed: the kernel closes the connection, so it learns at once that no reply is
    coming. (On the FIFOs nothing can tell it: it waits out its reply timeout.)"""
    daemon = target(start=NOW)
    listener = daemon.parts()["listener"]
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if accepted:
            client.connect(str(daemon.pipes / "saturnd.sock"))
            client.sendall(b"CR")  # half a request: served never, held until it is late
            time.sleep(0.1)  # accepted and read by now
            os.kill(listener, signal.SIGSTOP)
        else:
            os.kill(listener, signal.SIGSTOP)
            client.connect(str(daemon.pipes / "saturnd.sock"))
            client.sendall(b"LS")
        os.kill(listener, signal.SIGKILL)
        started = time.monotonic()
        readable, _, _ = select.select([client], [], [], 10)
        took = time.monotonic() - started
        assert readable, "no end of file: still waiting"
        try:
            assert client.recv(100) == b""
        except ConnectionResetError:
            pass  # the backlog's connections are reset
    finally:
        client.close()
    assert took < 2.0, f"the client waited {took:.1f} s"
    wait_restarted(daemon, "listener", listener)
    wait_for(daemon.answers, what="the daemon to answer")
    code, out, _err, _ = run_cassini(daemon.pipes, "-l", env=SOCKET)
    assert (code, out) == (0, b"")


@pytest.mark.scenario("1. crash anywhere: SIGKILL under CREATE/REMOVE")
@pytest.mark.parametrize("name", [".last-minute.tmp", ".last-minute.12345.tmp"])
def test_it_removes_what_a_killed_executor_left(
    target: MakeTarget, tmp_path: Path, name: str
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / name).write_text("29920800 2026-11-2")  # cut short by a kill
    daemon = target(start=NOW)
    assert temp_files(daemon.state) == []
