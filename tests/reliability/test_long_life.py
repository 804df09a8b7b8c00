"""Scenario 6, long life: 10,000 runs (1,000 in the short form) with the fake clock.

Ten tasks run every minute while the clock is stepped and a client asks for histories
and outputs; the supervisor's, the listener's and the executor's descriptors, memory and
zombie children are sampled along the way and must stay flat: the same descriptors at
the end as after warming up, resident memory within a small margin, no zombie. At the
end every run is recorded and no temporary file is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import NOW
from tests.daemon_harness import wait_for
from tests.reliability.support import Figures, Target, run_cassini, scaled, temp_files, zombies_of

MakeTarget = Callable[..., Target]
TASKS = 10
WARM_UP = 20  # minutes before the first sample: caches, imports, log rotation state
RSS_MARGIN = 4 << 20


FD_LOOKS = 5  # descriptors counted this many times, FD_PAUSE apart: the least is kept
FD_PAUSE = 0.02


def sample(daemon: Target) -> dict[str, tuple[int, int]]:
    """(descriptors, resident bytes) of each daemon process, by role.

    The descriptors are the fewest of a few looks: a part at work holds one for a few
    milliseconds (the executor writing `last-minute` or listing /proc/self/fd before
    a fork; CI caught it once, 10 at warm-up for 9 at the end), while a leaked one is
    there at every look."""
    parts = daemon.parts()
    roles = {"supervisor": daemon.pid, **parts}
    processes = {role: psutil.Process(pid) for role, pid in roles.items()}
    fds = {role: process.num_fds() for role, process in processes.items()}
    for _ in range(FD_LOOKS - 1):
        time.sleep(FD_PAUSE)
        for role, process in processes.items():
            fds[role] = min(fds[role], process.num_fds())
    return {role: (fds[role], process.memory_info().rss) for role, process in processes.items()}


@pytest.mark.scenario("6. long life: 10,000 runs")
def test_it_stays_flat_over_thousands_of_runs(target: MakeTarget, figures: Figures) -> None:
    total = scaled(1000, 10000)
    minutes = total // TASKS
    daemon = target(start=NOW)
    ids = [daemon.create("sh", "-c", f"echo run {index}") for index in range(TASKS)]
    first: dict[str, tuple[int, int]] = {}
    peak_rss: dict[str, int] = {}
    worst_zombies = 0
    worst_step = 0.0
    for minute in range(1, minutes + 1):
        started = time.monotonic()
        daemon.step_to(NOW + 60 * minute)
        worst_step = max(worst_step, time.monotonic() - started)
        if minute % 10 == 0:
            task = ids[minute // 10 % TASKS]
            assert run_cassini(daemon.pipes, "-x", str(task))[0] == 0
            assert run_cassini(daemon.pipes, "-o", str(task))[0] in (0, 1)
        if minute == WARM_UP:
            wait_for(lambda: zombies_of(daemon.all_pids()) == 0, what="no zombie")
            first = sample(daemon)
        if minute > WARM_UP and minute % 25 == 0:
            worst_zombies = max(worst_zombies, zombies_of(daemon.all_pids()))
            for role, (_, rss) in sample(daemon).items():
                peak_rss[role] = max(peak_rss.get(role, 0), rss)
    wait_for(
        lambda: all(len(daemon.runs(task)) == minutes for task in ids),
        timeout=60,
        what="every run to be recorded",
    )
    wait_for(lambda: zombies_of(daemon.all_pids()) == 0, what="no zombie at the end")
    last = sample(daemon)
    assert set(last) == set(first) == {"supervisor", "listener", "executor"}
    for role in first:
        assert last[role][0] == first[role][0], f"{role}: fds {first[role][0]} -> {last[role][0]}"
        growth = max(peak_rss.get(role, 0), last[role][1]) - first[role][1]
        assert growth < RSS_MARGIN, f"{role}: resident memory grew by {growth} bytes"
    assert worst_zombies <= TASKS, f"{worst_zombies} zombies at once"
    assert temp_files(daemon.state) == []
    runs = sum(len(daemon.runs(task)) for task in ids)
    assert runs == total
    figures.iterations = runs
    figures.latency(worst_step)
    growth_text = ", ".join(
        f"{role} {first[role][0]}->{last[role][0]} fds, "
        f"{(max(peak_rss.get(role, 0), last[role][1]) - first[role][1]) / 1024:+.0f} KiB"
        for role in sorted(first)
    )
    figures.checked = (
        f"{runs} runs of {TASKS} every-minute tasks over {minutes} fake minutes, with "
        f"histories and outputs read meanwhile: {growth_text}; at most {worst_zombies} "
        "zombies seen, none at the end; no temporary file; worst latency = one step "
        "(clock written to minute handled)"
    )
