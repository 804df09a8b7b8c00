"""Fixtures of the fault-injection suite: daemons to attack, and the figures they yield.

Each scenario test takes `figures`, fills it in, and the result of the test (passed or
failed) is written with it when the bench asked for a report (see support.Figures).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.support import NOBODY, Figures, Target


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.stash.setdefault(_OUTCOME, report.outcome)
        if report.outcome != "passed":
            item.stash[_OUTCOME] = report.outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """The scenario's figures; written with the test's outcome at teardown. Every test
    has one: a focused test that fills nothing in is listed by name in the table."""
    marker = request.node.get_closest_marker("scenario")
    name = marker.args[0] if marker else request.node.name
    found = Figures(scenario=name)
    yield found
    outcome = request.node.stash.get(_OUTCOME, "not run")
    found.write(request.node.nodeid, {"passed": "pass", "failed": "FAIL"}.get(outcome, outcome))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): the table row a test reports to")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Callable[..., Target]]:
    """Start daemons to attack; every one is stopped at the end of the test."""
    started: list[Target] = []

    def factory(start: int, tz: str = "UTC", root: Path | None = None, **kwargs: Any) -> Target:
        daemon = Target(root or tmp_path, start, tz, **kwargs)
        started.append(daemon)
        return daemon.start(wait_tick=kwargs.get("as_user") is None)

    yield factory
    for daemon in started:
        daemon.stop()


@pytest.fixture
def nobody_root() -> Iterator[Path]:
    """A directory `nobody` can use: not under pytest's root-only temporary tree.

    Its tests run the daemon as `nobody`, which only root can do: they skip otherwise.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: it runs the daemon as another user (nobody)")
    base = Path(tempfile.mkdtemp(prefix="saturnd-rel-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "root"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    try:
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)
