"""Scenario 5, runaway tasks: floods, endless runs, leftover children, a fork bomb.

- A task that writes 1 GiB to stdout (256 MiB in the short form): the stored output is
  capped at `--max-output` bytes per stream (1 MiB by default) and the run still
  records its exit code; nothing else stays on disk.
- A task that runs for hours while its next minutes come: runs overlap as in cron, and
  each one is recorded when it ends.
- A task that leaves a background child holding its stdout open: the run is recorded
  as soon as the task's own process ends, its output is what the task wrote, and what
  the child writes later changes nothing that was published.
- A task that spawns 200 children: the daemon keeps answering meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import NOW
from tests.daemon_harness import wait_for
from tests.reliability.support import Figures, Target, run_cassini, scaled, temp_files

MakeTarget = Callable[..., Target]
MiB = 1 << 20


def _marked(marker: str) -> list[psutil.Process]:
    """Processes with `marker` as one of their arguments."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in (process.info["cmdline"] or ()):
                found.append(process)
    return found


@pytest.fixture
def reaper() -> Iterator[list[str]]:
    """Markers of the processes a test starts; whatever is left is killed at the end."""
    markers: list[str] = []
    yield markers
    for marker in markers:
        for process in _marked(marker):
            with contextlib.suppress(psutil.Error):
                process.kill()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


@pytest.mark.scenario("5a. runaway output: a task writes 1 GiB")
def test_it_caps_a_flood_of_output_and_records_the_run(
    target: MakeTarget, figures: Figures
) -> None:
    total = scaled(256, 1024) * MiB
    daemon = target(start=NOW)
    flood = daemon.create(
        "-m", "1", "-H", "8", "sh", "-c", f"head -c {total} /dev/zero; echo tail >&2; exit 5"
    )
    daemon.step_to(NOW + 60)
    started = time.monotonic()
    wait_for(lambda: daemon.runs(flood), timeout=120, what="the flood's run to be recorded")
    took = time.monotonic() - started
    assert daemon.runs(flood) == [("2026-11-21 08:01:00", 5)]
    task_dir = daemon.state / f"task_{flood}"
    assert _size(task_dir / "stdout") == MiB
    assert daemon.cassini("-o", str(flood)).stdout == bytes(MiB)
    assert daemon.cassini("-e", str(flood)).stdout == b"tail\n"
    assert temp_files(daemon.state) == []
    figures.iterations = 1
    figures.latency(took)
    figures.checked = (
        f"{total // MiB} MiB on stdout: 1 MiB stored, exit code 5 recorded, stderr intact, "
        "no temporary file left; worst latency = minute to recorded run"
    )


@pytest.mark.scenario("5a. runaway output: a task writes 1 GiB")
def test_it_caps_each_stream_at_max_output(target: MakeTarget) -> None:
    daemon = target(start=NOW, extra=("--max-output", "1000"))
    task = daemon.create(
        "-m", "1", "-H", "8", "sh", "-c", "yes a | head -c 5000; yes b | head -c 3000 >&2"
    )
    daemon.step_to(NOW + 60)
    wait_for(lambda: daemon.runs(task), what="the run")
    assert daemon.runs(task) == [("2026-11-21 08:01:00", 0)]
    assert daemon.cassini("-o", str(task)).stdout == b"a\n" * 500
    assert daemon.cassini("-e", str(task)).stdout == b"b\n" * 500


@pytest.mark.scenario("5b. endless runs overlapping")
def test_it_records_every_overlapping_run_of_an_endless_task(
    target: MakeTarget, figures: Figures, reaper: list[str]
) -> None:
    minutes = scaled(5, 30)
    marker = f"10{os.getpid()}"  # the run's sleep duration, unique to this test
    reaper.append(marker)
    daemon = target(start=NOW)
    task = daemon.create("sh", "-c", f"exec sleep {marker}")
    for step in range(1, minutes + 1):
        daemon.step_to(NOW + 60 * step)
    wait_for(lambda: len(_marked(marker)) == minutes, what=f"{minutes} runs at once")
    assert daemon.runs(task) == []  # none has ended: none is recorded yet
    started = time.monotonic()
    for process in _marked(marker):
        process.send_signal(signal.SIGTERM)
    wait_for(lambda: len(daemon.runs(task)) == minutes, what="every run to be recorded")
    figures.latency(time.monotonic() - started)
    runs = daemon.runs(task)
    assert sorted(t for t, _ in runs) == [
        f"2026-11-21 08:{m:02d}:00" for m in range(1, minutes + 1)
    ]
    assert {code for _, code in runs} == {0xFFFF}  # ended by a signal
    figures.iterations = minutes
    figures.checked = (
        f"a task running for hours, started every minute for {minutes} minutes: {minutes} "
        "runs at once, each recorded with its own start when it ends; worst latency = "
        "kill to all recorded"
    )


@pytest.mark.scenario("5c. a background child keeps stdout open")
def test_it_records_a_run_when_its_own_process_ends(
    target: MakeTarget, figures: Figures, reaper: list[str], tmp_path: Path
) -> None:
    marker = f"36{os.getpid()}"
    reaper.append(marker)
    late = tmp_path / "late-done"
    daemon = target(start=NOW)
    task = daemon.create(
        "-m",
        "1",
        "-H",
        "8",
        "sh",
        "-c",
        f"echo start; (sleep 2; echo late; echo late >&2; touch {late}; exec sleep {marker}) &"
        " exit 7",
    )
    daemon.step_to(NOW + 60)
    started = time.monotonic()
    wait_for(lambda: daemon.runs(task), timeout=10, what="the run to be recorded")
    took = time.monotonic() - started
    assert took < 1.5, f"recorded after {took:.2f} s: it waited for the background child"
    assert daemon.runs(task) == [("2026-11-21 08:01:00", 7)]
    assert daemon.cassini("-o", str(task)).stdout == b"start\n"
    wait_for(late.exists, what="the background child to write again")
    time.sleep(0.2)
    # The published output is what the task wrote, and stays so.
    assert daemon.cassini("-o", str(task)).stdout == b"start\n"
    assert daemon.cassini("-e", str(task)).stdout == b""
    assert _marked(marker), "the background child must not be killed"
    figures.iterations = 1
    figures.latency(took)
    figures.checked = (
        "a task leaving a child that holds stdout and writes later: recorded when the "
        "task ends (exit 7), output is the task's own and unchanged by the child, the "
        "child lives on; worst latency = minute to recorded run"
    )


@pytest.mark.scenario("5d. a task spawns 200 children")
def test_it_keeps_answering_while_a_task_forks_200_children(
    target: MakeTarget, figures: Figures, reaper: list[str]
) -> None:
    marker = f"3.{os.getpid()}"
    reaper.append(marker)
    daemon = target(start=NOW)
    task = daemon.create(
        "-m",
        "1",
        "-H",
        "8",
        "sh",
        "-c",
        f"i=0; while [ $i -lt 200 ]; do sleep {marker} & i=$((i+1)); done; wait",
    )
    daemon.step_to(NOW + 60)
    worst = 0.0
    peak = 0
    exchanges = 0
    deadline = time.monotonic() + 30
    while not daemon.runs(task) and time.monotonic() < deadline:
        code, _, err, took = run_cassini(daemon.pipes, "-l")
        assert code == 0, err
        exchanges += 1
        worst = max(worst, took)
        peak = max(peak, len(_marked(marker)))
    assert daemon.runs(task) == [("2026-11-21 08:01:00", 0)]
    assert peak >= 100, f"only {peak} children seen at once"
    figures.iterations = exchanges
    figures.latency(worst)
    figures.checked = (
        f"a task with 200 children ({peak} seen at once): {exchanges} LIST answered "
        "meanwhile, run recorded; worst latency = cassini round trip"
    )
    assert worst < 2.0
