"""Shared fixtures: a real daemon with a fake clock in a private directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon

# Saturday 2026-11-21 08:00:00 UTC: a fixed NOW for every end-to-end test.
NOW = 1_795_248_000


def open_fds() -> set[str]:
    """This process's open descriptors, to check that code under test closed its own."""
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on demand; every one is stopped at the end of the test."""
    started: list[Daemon] = []

    def factory(
        start: int = NOW, tz: str = "UTC", root: Path | None = None, extra: tuple[str, ...] = ()
    ) -> Daemon:
        daemon = Daemon(root or tmp_path, start, tz, extra)
        started.append(daemon)
        return daemon.start()

    yield factory
    for daemon in started:
        daemon.stop()
