"""Tests of saturnd.clock: the fake clock's file, and when each clock's wait returns.

The step logic of `SystemClock.wait` is checked against a simulated clock whose sleeps
end late by the kernel's slack (0.1 % of the timeout), so no test sleeps long; the
real-time tests sleep well under a second each.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from saturnd import clock
from saturnd.clock import FINAL_STEP, MAX_SLEEP, FileClock, SystemClock

NOW = 1_795_248_000  # Saturday 2026-11-21 08:00:00 UTC
CHANGE_PROMISE = 0.05  # DESIGN.md: a change of the clock file is noticed within 50 ms
PROMPT = 0.03  # how late a real-time wait may return on a busy machine


@pytest.fixture
def clock_file(tmp_path: Path) -> Path:
    path = tmp_path / "clock"
    path.write_text(f"{NOW}\n")
    return path


@pytest.fixture
def wake_pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """Run `action` in a thread after `seconds`; the thread is returned, started."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def poke(fd: int) -> Callable[[], object]:
    """An action that makes `fd`'s pipe readable, as a signal's wake-up byte does."""
    return lambda: os.write(fd, b"\0")


# --- FileClock ------------------------------------------------------------------


def test_it_reads_the_time_from_the_file(clock_file: Path) -> None:
    fake = FileClock(clock_file)
    assert fake.now() == NOW
    clock_file.write_text(f"{NOW + 60.5}")
    assert fake.now() == NOW + 60.5


@pytest.mark.parametrize(
    "content",
    [b"", b"  \n", b"17952-", b"1.7e", b"\xff\xfe"],
    ids=["empty", "blank", "half-written", "cut-exponent", "not-ascii"],
)
def test_it_keeps_the_last_good_time_on_an_unreadable_file(
    clock_file: Path, content: bytes
) -> None:
    fake = FileClock(clock_file)
    clock_file.write_bytes(content)
    assert fake.now() == NOW
    clock_file.unlink()
    assert fake.now() == NOW
    clock_file.write_text(f"{NOW + 120}")
    assert fake.now() == NOW + 120


def test_it_notices_a_change_of_the_file_within_50_ms(clock_file: Path) -> None:
    fake = FileClock(clock_file)
    changed_at: list[float] = []

    def change() -> None:
        clock_file.write_text(f"{NOW + 1}")
        changed_at.append(time.monotonic())

    thread = later(0.15, change)
    began = time.monotonic()
    fake.wait(NOW + 60, None)
    returned = time.monotonic()
    thread.join()
    assert returned - began >= 0.14  # it did wait for the change
    assert returned - changed_at[0] < CHANGE_PROMISE
    assert fake.now() == NOW + 1


@pytest.mark.parametrize("deadline", [NOW, NOW - 60])
def test_it_returns_at_once_when_the_file_time_reached_the_deadline(
    clock_file: Path, deadline: int
) -> None:
    fake = FileClock(clock_file)
    began = time.monotonic()
    fake.wait(deadline, None)
    assert time.monotonic() - began < PROMPT


def test_it_returns_when_the_file_time_steps_past_the_deadline(clock_file: Path) -> None:
    fake = FileClock(clock_file)
    thread = later(0.1, lambda: clock_file.write_text(f"{NOW + 60}"))
    began = time.monotonic()
    fake.wait(NOW + 60, None)
    thread.join()
    assert 0.09 <= time.monotonic() - began < 0.1 + CHANGE_PROMISE
    assert fake.now() >= NOW + 60


def test_a_wake_up_ends_the_fake_clocks_wait(clock_file: Path, wake_pipe: tuple[int, int]) -> None:
    fake = FileClock(clock_file)
    read_end, write_end = wake_pipe
    thread = later(0.1, poke(write_end))
    began = time.monotonic()
    fake.wait(NOW + 60, read_end)
    thread.join()
    assert 0.09 <= time.monotonic() - began < 0.1 + CHANGE_PROMISE


def test_the_fake_clock_waits_at_most_max_sleep(
    clock_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clock, "MAX_SLEEP", 0.1)
    fake = FileClock(clock_file)
    began = time.monotonic()
    fake.wait(NOW + 60, None)
    assert 0.1 <= time.monotonic() - began < 0.1 + PROMPT


# --- SystemClock: the steps, on a simulated clock ---------------------------------


class Simulated:
    """A wall clock and a select() that ends late by the kernel's slack (0.1 %)."""

    SLACK = 0.001

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.wake_after: int | None = None  # a wake-up ends this sleep (0 = the first)
        self.jump_after_first = 0.0  # the wall clock set forward during the first sleep

    def time(self) -> float:
        return self.now

    def wait_readable(self, fd: int | None, timeout: float) -> bool:
        self.sleeps.append(timeout)
        if self.wake_after == len(self.sleeps) - 1:
            self.now += timeout / 2
            return True
        self.now += max(0.0, timeout) * (1 + self.SLACK)
        if len(self.sleeps) == 1:
            self.now += self.jump_after_first
        return False


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> Simulated:
    fake = Simulated(NOW + 0.25)
    monkeypatch.setattr(clock, "time", SimpleNamespace(time=fake.time))
    monkeypatch.setattr(clock, "_wait_readable", fake.wait_readable)
    return fake


def test_it_meets_a_minute_boundary_within_a_millisecond(simulated: Simulated) -> None:
    deadline = NOW + 60
    SystemClock().wait(deadline, None)
    # One sleep straight to the deadline would end 60 ms late; two end within 1 ms.
    assert simulated.sleeps[0] == pytest.approx(deadline - FINAL_STEP - (NOW + 0.25))
    assert len(simulated.sleeps) == 2
    assert 0 <= simulated.now - deadline < 0.001


def test_it_sleeps_once_when_the_deadline_is_near(simulated: Simulated) -> None:
    SystemClock().wait(NOW + 0.25 + FINAL_STEP, None)
    assert simulated.sleeps == [pytest.approx(FINAL_STEP)]


def test_it_sleeps_at_most_max_sleep_in_one_step(simulated: Simulated) -> None:
    SystemClock().wait(NOW + 3600, None)
    assert simulated.sleeps == [MAX_SLEEP]


def test_a_wake_up_in_the_long_sleep_ends_the_wait(simulated: Simulated) -> None:
    simulated.wake_after = 0
    SystemClock().wait(NOW + 60, None)
    assert len(simulated.sleeps) == 1


def test_it_measures_the_short_step_on_the_wall_clock_again(simulated: Simulated) -> None:
    simulated.jump_after_first = 30.0  # NTP set the clock forward during the long sleep
    SystemClock().wait(NOW + 60, None)
    assert len(simulated.sleeps) == 2
    assert simulated.sleeps[1] < 0  # past the deadline already: no further sleep


# --- SystemClock: real time -------------------------------------------------------


def test_it_returns_at_a_near_deadline() -> None:
    deadline = time.time() + 0.2
    SystemClock().wait(deadline, None)
    late = time.time() - deadline
    assert -0.002 <= late < PROMPT


def test_a_wake_up_ends_the_system_clocks_wait(wake_pipe: tuple[int, int]) -> None:
    read_end, write_end = wake_pipe
    thread = later(0.1, poke(write_end))
    began = time.monotonic()
    SystemClock().wait(time.time() + 30, read_end)
    thread.join()
    assert 0.09 <= time.monotonic() - began < 0.1 + PROMPT
