"""Shared fixtures: a real daemon with a fake clock in a private directory.

Invariant: no test can reach the daemon, pipes or state of the user running pytest.
A session-wide fixture points every default location (HOME, XDG_STATE_HOME,
XDG_CONFIG_HOME, TMPDIR, SATURND_PIPES_DIR) into pytest's temporary tree before any
test runs, so a test that forgets -p/-s talks to nothing rather than to the real daemon;
SATURND_SENDMAIL="" keeps every test daemon from mailing a run's output.
`needs_root` marks tests that need another uid: they skip with a reason otherwise.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: it gives a directory to another user (nobody) with chown",
)
"""For the tests of another user's directories: only root can chown to another uid."""

# Saturday 2026-11-21 08:00:00 UTC: a fixed NOW for every end-to-end test.
NOW = 1_795_248_000


def open_fds() -> set[str]:
    """This process's open descriptors, to check that code under test closed its own."""
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every default directory of saturnd and cassini, moved into a temporary home."""
    home = tmp_path_factory.mktemp("home")
    (home / "tmp").mkdir()
    real_home = Path.home()
    moved = {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TMPDIR": str(home / "tmp"),
        # Read by both programs in place of /tmp/USERNAME/saturnd/pipes; nothing listens.
        "SATURND_PIPES_DIR": str(home / "pipes"),
        # No daemon of the tests mails anyone, whatever MTA the machine has.
        "SATURND_SENDMAIL": "",
    }
    # pip finds its user configuration (an index, find-links) and its cache through HOME:
    # keep them, so that the packaging test installs as it would outside the tests.
    pip_config = real_home / ".config" / "pip" / "pip.conf"
    if "PIP_CONFIG_FILE" not in os.environ and pip_config.is_file():
        moved["PIP_CONFIG_FILE"] = str(pip_config)
    if "XDG_CACHE_HOME" not in os.environ:
        moved["XDG_CACHE_HOME"] = str(real_home / ".cache")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in moved.items():
            patch.setenv(name, value)
        patch.setattr(tempfile, "tempdir", None)  # computed again, from the new TMPDIR
        yield home


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
