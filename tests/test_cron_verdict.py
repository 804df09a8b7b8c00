"""Debian's crontab(1) as the verdict on what a personal crontab may say (issue 13).

`crontab -n FILE` checks a file the way cron will read it and installs nothing. Every line
it accepts must import whole (cassini.crontab.parse); what cron then means by a field our
own grammar would refuse (a backwards range, a step past the field, characters cron
ignores) is pinned below, as the Debian cron daemon ran such lines (checked once by hand
with /usr/sbin/cron on a Sunday: see the closing note of issue 13). Lines cron refuses may
still import where saturnd says more than cron (full day names, `1/2`, `@Daily`).
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cassini import crontab, cronwrite
from saturnd.messages import TaskEntry
from saturnd.timing import FULL_DAYSOFMONTH, FULL_DAYSOFWEEK, FULL_MONTHS, Timing


def _debian_crontab() -> str | None:
    """Why Debian's `crontab -n` cannot be the verdict here, or None when it can."""
    if shutil.which("crontab") is None:
        return "no crontab(1) on this machine (.ci/run installs Debian's cron)"
    done = subprocess.run(["crontab", "-h"], capture_output=True, text=True, check=False)
    if "-n" not in done.stdout + done.stderr:
        return "this crontab(1) has no -n (dry run): it is not Debian's"
    return None


pytestmark = pytest.mark.skipif(_debian_crontab() is not None, reason=str(_debian_crontab()))


def cron_accepts(directory: Path, line: bytes) -> bool:
    path = directory / "one.crontab"
    path.write_bytes(line + b"\n")
    done = subprocess.run(["crontab", "-n", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def imported(line: bytes) -> tuple[list[crontab.Entry], list[crontab.Problem], list[str]]:
    return crontab.parse(line + b"\n")


# Lines cron accepts though our own grammar would not: each must import.
CRON_TAKES = [
    b"5-3 * * * * a",
    b"* * * * fri-mon a",
    b"* * * * mon-sun a",
    b"* * * mar-jan * a",
    b"* * * * 7-0 a",
    b"1-2-3 * * * * a",
    b"*/2/3 * * * * a",
    b"* * * * 5#1 a",
    b"*-5 * * * * a",
    b"*x * * * * a",
    b"* * * * 1.5 a",
    b"* * * * 1,2-3-5,0 a",
    b"*/61 * * * * a",
    b"0-5/100 * * * * a",
    b"0 0 * * *",
    b"@yearly",
    b"=1",
]


@pytest.mark.parametrize("line", CRON_TAKES)
def test_what_cron_takes_imports_whole(tmp_path: Path, line: bytes) -> None:
    assert cron_accepts(tmp_path, line)
    entries, problems, warnings = imported(line)
    assert problems == []
    assert len(entries) == (0 if line == b"=1" else 1)
    # Each says what cron makes of it.
    assert len(warnings) == 1 and warnings[0].startswith("line 1: ")


def timing_of(line: bytes) -> Timing:
    entries, problems, _ = imported(line)
    assert problems == []
    return entries[0].task.timing


# Sets by value (bit n is value n); what the Debian cron daemon ran.
@pytest.mark.parametrize(
    ("line", "field", "values"),
    [
        (b"* * * * sat-sun a", "daysofweek", set()),
        (b"* * * * mon-sun a", "daysofweek", set()),  # Sunday is 0: a range backwards
        (b"* * * * 0#5 a", "daysofweek", {0}),
        (b"* * * * 5#1 a", "daysofweek", {5}),  # every Friday, not the first
        (b"* * * * 1,2-3-5,0 a", "daysofweek", {1, 2, 3}),  # the rest of the field is ignored
        (b"* * * * 1-5/2/3,0 a", "daysofweek", {1, 3, 5}),
        (b"* * * * 1.0 a", "daysofweek", {1}),
        (b"*-5 * * * * a", "minutes", set(range(60))),
        (b"*/61 * * * * a", "minutes", {0}),
        (b"7-9/100 * * * * a", "minutes", {7}),
        (b"* 5-3,4 * * * a", "hours", {4}),
    ],
)
def test_it_means_what_cron_means(line: bytes, field: str, values: set[int]) -> None:
    bits = getattr(timing_of(line), field)
    assert {value for value in range(64) if bits >> value & 1} == values


def test_a_field_that_holds_nothing_never_runs_and_says_so() -> None:
    entries, _, warnings = imported(b"0 9 * * mon-sun backup")
    timing = entries[0].task.timing
    assert timing.daysofweek == 0 and timing.next_after(datetime(2026, 1, 1)) is None
    assert warnings == [
        "line 1: day-of-week: the range 'mon-sun' goes backwards: cron reads no "
        "value from it; imported as cron reads it"
    ]


def test_a_line_without_a_command_runs_an_empty_one() -> None:
    entries, _, warnings = imported(b"0 0 * * *")
    assert entries[0].task.argv == (b"/bin/sh", b"-c", b"")
    assert entries[0].task.timing == Timing(1, 1, FULL_DAYSOFWEEK, FULL_DAYSOFMONTH, FULL_MONTHS)
    assert "no command" in warnings[0]


# A field is built from what cron's grammar and its mistakes are made of: items of a
# value or `*`, maybe a range and a step, maybe followed by what cron ignores.
_TOKEN = st.sampled_from(
    ["0", "1", "2", "5", "7", "12", "23", "31", "59", "60", "00", "sun", "mon", "Fri", "sat"]
)
_ITEM = st.builds(
    lambda first, last, step, junk: first + last + step + junk,
    st.one_of(st.just("*"), _TOKEN, st.sampled_from(["jan", "dec", "monday", "x", ""])),
    st.one_of(st.just(""), _TOKEN.map("-".__add__)),
    st.sampled_from(["", "", "/2", "/5", "/0", "/61", "/x", "/"]),
    st.sampled_from(["", "", "", "#1", "-3", "/3", ".5", "x", "_"]),
)
_FIELD = st.lists(_ITEM, min_size=1, max_size=3).map(",".join)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=_FIELD, position=st.integers(0, 4))
def test_every_line_cron_accepts_imports(tmp_path: Path, field: str, position: int) -> None:
    # One field at a time, the others `*`: cron takes over a third of these lines.
    fields = ["*"] * 5
    fields[position] = field
    line = " ".join(fields).encode() + b" echo hi"
    if cron_accepts(tmp_path, line):
        _, problems, _ = imported(line)
        assert problems == [], (line, problems)


@pytest.mark.parametrize(
    "line",
    [
        b"0 9 * * mon-sun backup",
        b"5-3 * * * * a",
        b"0 0 * * *",
        b"* * * * 5#1 a",
        b"*/61 * * * * a",
    ],
)
def test_what_cron_takes_exports_and_imports_back_the_same(tmp_path: Path, line: bytes) -> None:
    (entry,) = imported(line)[0]
    text, skipped = cronwrite.export(
        [TaskEntry(1, entry.task.timing, entry.task.argv, entry.task.extras)]
    )
    assert skipped == []
    task_line = text.splitlines()[-1]
    assert cron_accepts(tmp_path, task_line)
    (again,) = crontab.parse(text)[0]
    assert again.task == entry.task
