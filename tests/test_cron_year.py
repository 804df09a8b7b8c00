"""A fake-clock year (2028, a leap year) through the real daemon, against cronsim.

A `TZ=Europe/Paris` saturnd holds `0 3 1 * *`, `0 0 29 2 *`, `0 20 1-7 * 5`, `@monthly`,
`@yearly` and a `CRON_TZ=America/New_York` task `30 2 * * *`, all created with CREATE-EX
on the socket. The runs each task's `times-exitcodes` records over the year, counted
per day (in the task's zone), must be cronsim's (Debian cron's meaning, DST included).

A year minute by minute would be 527,040 steps of the fake clock (about 10 ms each).
So the clock moves in forward jumps of at most 180 wall-clock minutes in both zones,
which the rule of DESIGN.md treats as a jump, not a correction: every minute skipped is
examined, and a fixed-time task runs once for each one it matches, at the jump's
landing. All the tasks are fixed-time, so over the jumps the daemon decides about every
minute of the year. The Paris tasks' minutes are landing points (their run TIME is
exact); the New York task's are not (it runs up to 3 hours late, on its own day in New
York, through the jump path of its zone, across both of New York's DST changes and the
weeks in March and October when Paris and New York are 5 hours apart instead of 6).

New York's two DST nights are then stepped minute by minute through the same kind of
daemon (the ordinary path and the DST rule in New York's zone), each run at cronsim's
exact second.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from saturnd import protocol
from saturnd.task import Task
from saturnd.timing import Timing
from tests.daemon_harness import Daemon, wait_for

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
# (crontab schedule, zone name or "" for the daemon's)
TASKS = [
    ("0 3 1 * *", ""),
    ("0 0 29 2 *", ""),
    ("0 20 1-7 * 5", ""),
    ("@monthly", ""),
    ("@yearly", ""),
    ("30 2 * * *", "America/New_York"),
]
FIVE = {"@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *"}
START = datetime(2027, 12, 31, 12, 0, tzinfo=PARIS)
END = datetime(2029, 1, 1, 0, 30, tzinfo=PARIS)  # 00:30: the year's last runs are in
JUMP = 180  # wall minutes: the most the rule still treats as a jump


def expected_runs(schedule: str, zone: ZoneInfo) -> list[datetime]:
    """cronsim's run times over (START, END), aware in `zone`."""
    runs: list[datetime] = []
    for moment in CronSim(FIVE.get(schedule, schedule), START.astimezone(zone)):
        if moment >= END:
            return runs
        runs.append(moment)
    return runs  # pragma: no cover - the iterator never ends


def wall_minutes(earlier: int, later: int, zone: ZoneInfo) -> int:
    """Wall-clock minutes from one epoch second to another, as read in `zone`."""
    first = datetime.fromtimestamp(earlier, zone).replace(tzinfo=None)
    second = datetime.fromtimestamp(later, zone).replace(tzinfo=None)
    return int((second - first) // timedelta(minutes=1))


def landings(exact: set[int]) -> list[int]:
    """The clock's steps: every `exact` second, and enough others that no step moves
    either zone's wall clock by more than JUMP minutes (nor backwards past -JUMP)."""
    start, end = int(START.timestamp()), int(END.timestamp())
    points = sorted({*range(start, end, JUMP * 60), *exact, end})
    steps = [points[0]]
    for point in points[1:]:
        while any(wall_minutes(steps[-1], point, zone) > JUMP for zone in (PARIS, NEW_YORK)):
            steps.append(steps[-1] + 60 * 60)  # an hour of real time at most 120 wall minutes
        steps.append(point)
    return steps


def create_ex(pipes: Path, task: Task) -> int:
    """CREATE-EX on the socket; the new task's id."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    with client:
        client.connect(str(pipes / protocol.SOCKET_NAME))
        client.sendall(protocol.encode(protocol.CreateExRequest(task)))
        reply = b""
        while len(reply) < 10:
            chunk = client.recv(10 - len(reply))
            assert chunk, f"the daemon closed the connection after {reply!r}"
            reply += chunk
    assert reply[:2] == b"OK", reply
    task_id: int = struct.unpack(">Q", reply[2:])[0]
    return task_id


def recorded(state: Path, task_id: int) -> list[int]:
    """The TIME of each finished run, from the task's `times-exitcodes`."""
    try:
        data = (state / f"task_{task_id}" / "times-exitcodes").read_bytes()
    except FileNotFoundError:
        return []
    (count,) = struct.unpack(">I", data[:4])
    return [struct.unpack(">qH", data[4 + 10 * k : 14 + 10 * k])[0] for k in range(count)]


def per_day(seconds: list[int], zone: ZoneInfo) -> Counter[date]:
    return Counter(datetime.fromtimestamp(second, zone).date() for second in seconds)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path, int(START.timestamp()), tz="Europe/Paris")
    try:
        yield running.start()
    finally:
        running.stop()


def test_it_lives_through_a_leap_year_of_five_field_tasks_in_two_zones(daemon: Daemon) -> None:
    ids: list[int] = []
    for schedule, zone in TASKS:
        timing = Timing.cron(schedule, zone)
        ids.append(create_ex(daemon.pipes, Task(timing, (b"true",))))
    expected = {
        task_id: expected_runs(schedule, ZoneInfo(zone) if zone else PARIS)
        for task_id, (schedule, zone) in zip(ids, TASKS, strict=True)
    }
    paris_minutes = {
        int(moment.timestamp())
        for task_id, (_, zone) in zip(ids, TASKS, strict=True)
        if not zone
        for moment in expected[task_id]
    }
    steps = landings(paris_minutes)
    began = time.monotonic()
    for moment in steps[1:]:
        daemon.step_to(moment)
    total = sum(len(runs) for runs in expected.values())
    wait_for(
        lambda: sum(len(recorded(daemon.state, task_id)) for task_id in ids) >= total,
        timeout=30,
        what=f"{total} runs recorded",
    )
    elapsed = time.monotonic() - began
    for task_id, (schedule, zone) in zip(ids, TASKS, strict=True):
        tz = ZoneInfo(zone) if zone else PARIS
        got = recorded(daemon.state, task_id)
        want = [int(moment.timestamp()) for moment in expected[task_id]]
        assert per_day(got, tz) == per_day(want, tz), f"{schedule} {zone}"
        if not zone:
            assert got == want, schedule  # landed on: the exact second
        else:  # caught up at the landing after its minute, at most JUMP minutes late
            lateness = [run - due for run, due in zip(got, want, strict=True)]
            assert all(0 <= late < JUMP * 60 for late in lateness), f"{schedule} {zone}"
    print(
        f"\n{len(steps)} clock steps over {END - START}, {total} runs "
        f"({', '.join(f'{s}: {len(expected[i])}' for i, (s, _) in zip(ids, TASKS, strict=True))})"
        f", in {elapsed:.1f} s"
    )


# New York's two DST nights of 2028, minute by minute, in the same Paris daemon.
NIGHT_TASKS = [
    ("30 2 * * *", "America/New_York"),  # fixed, in the spring gap: once, at 03:00 EDT
    ("30 1 * * *", "America/New_York"),  # fixed, in the repeated hour: once
    ("*/15 * * * *", "America/New_York"),  # wildcard: every quarter the clock shows
    ("0 * * * *", ""),  # Paris's ordinary night: every hour
]
NIGHTS = [
    datetime(2028, 3, 12, 0, 0, tzinfo=NEW_YORK),  # 02:00 EST -> 03:00 EDT
    datetime(2028, 11, 5, 0, 0, tzinfo=NEW_YORK),  # 02:00 EDT -> 01:00 EST
]


@pytest.mark.parametrize("night", NIGHTS, ids=["spring", "fall"])
def test_it_runs_new_york_tasks_through_new_yorks_dst_night_in_a_paris_daemon(
    tmp_path: Path, night: datetime
) -> None:
    start = int(night.timestamp()) - 10 * 60
    stop = start + 4 * 3600
    daemon = Daemon(tmp_path, start, tz="Europe/Paris").start()
    try:
        ids = [
            create_ex(daemon.pipes, Task(Timing.cron(schedule, zone), (b"true",)))
            for schedule, zone in NIGHT_TASKS
        ]
        for _ in daemon.steps(start + 60, (stop - start) // 60 - 1):
            pass
        for task_id, (schedule, zone) in zip(ids, NIGHT_TASKS, strict=True):
            tz = ZoneInfo(zone) if zone else PARIS
            want: list[int] = []
            for moment in CronSim(schedule, datetime.fromtimestamp(start, tz)):
                if moment.timestamp() >= stop:
                    break
                want.append(int(moment.timestamp()))
            count = len(want)
            wait_for(
                lambda task_id=task_id, count=count: len(recorded(daemon.state, task_id)) >= count,
                what=f"the runs of {schedule}",
            )
            assert recorded(daemon.state, task_id) == want, f"{schedule} {zone}"
    finally:
        daemon.stop()
