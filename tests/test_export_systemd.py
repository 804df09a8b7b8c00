"""`cassini --export-systemd DIR`: systemd user units that mean what the tasks mean.

systemd itself is the judge where it is installed: `systemd-analyze verify --user` loads
every exported unit (a private XDG_RUNTIME_DIR, no running manager needed), and
`systemd-analyze calendar --base-time` lists the starts of each OnCalendar= expression,
compared with saturnd's own prediction (saturnd.schedule.next_runs, what `cassini -n`
prints) from the same instant. Where the two part (daylight saving), the exporter must
have warned. Tests skip with a reason when systemd-analyze is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cassini import cli, exportfields, systemdexport
from saturnd.messages import TaskEntry
from saturnd.schedule import next_runs
from saturnd.task import Extras
from saturnd.timing import Timing
from tests.daemon_harness import Daemon

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)
BASE = 1_774_656_000  # 2026-03-28 00:00 UTC: the night before Europe's spring forward
NOW = BASE


def _entry(task_id: int, timing: Timing, argv: tuple[bytes, ...], **extras: object) -> TaskEntry:
    return TaskEntry(task_id, timing, argv, Extras(**extras))  # type: ignore[arg-type]


def _warned_fields(warnings: list[str], task_id: int) -> set[str]:
    prefix = f"task {task_id}: "
    return {w[len(prefix) :].split(":")[0] for w in warnings if w.startswith(prefix)}


# --- exportfields: every field, every exporter -------------------------------------------


def test_it_lists_every_task_field() -> None:
    assert (*Timing._fields, *Extras._fields, "argv") == exportfields.FIELDS


@pytest.mark.parametrize("name", sorted(exportfields.EXPORTERS))
def test_it_says_mapped_or_warned_for_each_field_in_each_exporter(name: str) -> None:
    table = exportfields.EXPORTERS[name]
    assert set(table) == set(exportfields.FIELDS), f"{name}: fields missing or unknown"
    assert set(table.values()) <= {exportfields.MAPPED, exportfields.WARNED}


# A value of each field that differs from the base task's (a daily noon task in UTC that
# never overlaps, which systemd says without a warning).
_BASE_TIMING = Timing.cron("0 12 * * *", "UTC")
_CHANGED: dict[str, Callable[[], TaskEntry]] = {
    "minutes": lambda: _entry(
        1, Timing.cron("*/7 12 * * *", "UTC"), (b"/bin/true",), no_overlap=True
    ),
    "hours": lambda: _entry(
        1, Timing.cron("0 1-5,9 * * *", "UTC"), (b"/bin/true",), no_overlap=True
    ),
    "daysofweek": lambda: _entry(
        1, Timing.cron("0 12 * * 1-5", "UTC"), (b"/bin/true",), no_overlap=True
    ),
    "daysofmonth": lambda: _entry(
        1, Timing.cron("0 12 1,15 * *", "UTC"), (b"/bin/true",), no_overlap=True
    ),
    "months": lambda: _entry(
        1, Timing.cron("0 12 * 2-4 *", "UTC"), (b"/bin/true",), no_overlap=True
    ),
    "days_or": lambda: _entry(
        1, Timing.cron("0 12 13 * 5", "UTC"), (b"/bin/true",), no_overlap=True
    ),
    "reboot": lambda: _entry(1, Timing(reboot=True), (b"/bin/true",), no_overlap=True),
    "zone": lambda: _entry(
        1, Timing.cron("30 2 * * *", "Europe/Paris"), (b"/bin/true",), no_overlap=True
    ),
    "env": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, env=((b"A", b"1"),)),
    "stdin": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, stdin=b"x\n"),
    "mailto": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, mailto=b"me"),
    "timeout": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, timeout=90),
    "jitter": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, jitter=30),
    "no_overlap": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",)),
    "catch_up": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, catch_up=True),
    "on_failure": lambda: _entry(
        1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, on_failure=b"echo x"
    ),
    "paused": lambda: _entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True, paused=True),
    "argv": lambda: _entry(1, _BASE_TIMING, (b"echo", b"a b", b"%$"), no_overlap=True),
}


def test_it_warns_for_the_base_task_about_nothing() -> None:
    _, warnings = systemdexport.export(
        [_entry(1, _BASE_TIMING, (b"/bin/true",), no_overlap=True)], NOW
    )
    assert warnings == []


@pytest.mark.parametrize("field", exportfields.FIELDS)
def test_it_warns_exactly_for_the_fields_the_table_says(field: str) -> None:
    assert set(_CHANGED) == set(exportfields.FIELDS)
    files, warnings = systemdexport.export([_CHANGED[field]()], NOW)
    warned = _warned_fields(warnings, 1)
    if exportfields.SYSTEMD[field] == exportfields.WARNED:
        assert warned == {field}, warnings
    else:
        assert warned == set(), warnings
    assert "saturnd-task-1.timer" in files and "saturnd-task-1.service" in files


# --- the unit texts --------------------------------------------------------------------


def test_it_quotes_execstart_words_for_systemd() -> None:
    assert systemdexport.quote(b"plain") == '"plain"'
    assert systemdexport.quote(b"50% $HOME ${X}") == '"50%% $$HOME $${X}"'
    assert systemdexport.quote(b'say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert systemdexport.quote(b"a\nb\tc\x01") == '"a\\nb\\tc\\x01"'
    assert systemdexport.quote(b"caf\xc3\xa9 \xff") == '"caf\u00e9 \\xff"'


def test_it_writes_the_schedule_in_the_zone_and_the_or_rule_as_two_lines() -> None:
    task = _entry(4, Timing.cron("*/20 3 1,15 jan-mar mon-fri", "Europe/Paris"), (b"/bin/true",))
    files, _ = systemdexport.export([task])
    timer = files["saturnd-task-4.timer"].decode()
    assert "OnCalendar=*-01..03-01,15 03:00,20,40:00 Europe/Paris\n" in timer
    assert "OnCalendar=Mon..Fri *-01..03-* 03:00,20,40:00 Europe/Paris\n" in timer
    assert "AccuracySec=1s\n" in timer


def test_it_writes_each_policy_and_the_environment() -> None:
    task = _entry(
        7,
        Timing.cron("0 3 * * *"),
        (b"backup", b"--all"),
        env=((b"HOME", b"/srv/x"), (b"GREETING", b"hi 100%")),
        stdin=b"line\n",
        timeout=90,
        jitter=30,
        catch_up=True,
        on_failure=b"echo failed",
    )
    files, warnings = systemdexport.export([task])
    timer = files["saturnd-task-7.timer"].decode()
    service = files["saturnd-task-7.service"].decode()
    assert "RandomizedDelaySec=30s\n" in timer and "Persistent=true\n" in timer
    assert 'ExecStart="/usr/bin/env" "backup" "--all"\n' in service
    assert (
        'Environment="SHELL=/bin/sh" "PATH=/usr/bin:/bin" "HOME=/srv/x" "GREETING=hi 100%%"'
        in service
    )
    assert "WorkingDirectory=-/srv/x\n" in service
    assert "StandardInput=data\nStandardInputData=bGluZQo=\n" in service
    assert "Type=oneshot\n" in service and "TimeoutStartSec=90s\n" in service
    assert "OnFailure=saturnd-task-7-onfailure.service\n" in service
    failure = files["saturnd-task-7-onfailure.service"].decode()
    assert 'ExecStart="/bin/sh" "-c" "echo failed"\n' in failure
    assert any(w.startswith("task 7: on_failure:") for w in warnings)


def test_it_leaves_out_an_invalid_variable_with_a_warning() -> None:
    task = _entry(
        2, _BASE_TIMING, (b"/bin/true",), no_overlap=True, env=((b"1A", b"x"), (b"B", b"\xff"))
    )
    files, warnings = systemdexport.export([task])
    assert "1A=" not in files["saturnd-task-2.service"].decode()
    assert "B=" not in files["saturnd-task-2.service"].decode()
    assert len([w for w in warnings if w.startswith("task 2: env:")]) == 2


def test_it_writes_a_readme_that_enables_all_but_paused_tasks() -> None:
    tasks = [
        _entry(1, _BASE_TIMING, (b"/bin/true",)),
        _entry(2, _BASE_TIMING, (b"/bin/true",), paused=True),
    ]
    files, _ = systemdexport.export(tasks)
    readme = files[systemdexport.README].decode()
    assert "systemctl --user daemon-reload" in readme
    assert "systemctl --user enable --now saturnd-task-1.timer" in readme
    assert "enable --now saturnd-task-2.timer" not in readme
    assert "    saturnd-task-2.timer" in readme


def test_it_leaves_out_a_task_that_never_runs_with_a_warning() -> None:
    never = _entry(3, Timing.cron("0 0 31 2 *"), (b"/bin/true",))
    files, warnings = systemdexport.export([never])
    assert "saturnd-task-3.timer" not in files
    assert any(w.startswith("task 3: ") and "never runs" in w for w in warnings)


# --- systemd judges ---------------------------------------------------------------------


def _verify(directory: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    runtime = directory / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(directory)}
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "verify", "--user", *(str(directory / name) for name in names)],
        capture_output=True,
        text=True,
        env=env,
        cwd=directory,
        timeout=60,
    )


@needs_analyze
def test_it_writes_units_that_systemd_analyze_verify_accepts(tmp_path: Path) -> None:
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    if _verify(tmp_path, ["probe.service"]).returncode != 0:
        pytest.skip("systemd-analyze verify --user cannot load units here")
    probe.unlink()
    tasks = [_CHANGED[field]() for field in exportfields.FIELDS]
    tasks = [TaskEntry(n, t.timing, t.argv, t.extras) for n, t in enumerate(tasks, 1)]
    tasks.append(
        _entry(
            99,
            Timing.cron("5-10/2 */6 1,15 feb,apr-jun 1-5", "Asia/Kolkata"),
            (b"sh", b"-c", b'echo "$HOME" 100% \\ `x`\n\xff', b"-"),
            env=((b"HOME", b"/nonexistent/%h"), (b"Q", b'"quoted" $x\ttab')),
            stdin=b"\x00\x01binary\xff",
            timeout=3600,
            jitter=59,
            catch_up=True,
            on_failure=b"printf '%s\\n' \"$MONITOR_EXIT_STATUS\"",
        )
    )
    files, _ = systemdexport.export(tasks, NOW)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    units = sorted(name for name in files if name.endswith((".timer", ".service")))
    assert len(units) >= 2 * len(tasks)
    result = _verify(tmp_path, units)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def _systemd_starts(specs: list[str], base: int, count: int) -> list[int]:
    """The starts `systemd-analyze calendar` lists for the specs from `base`: a timer
    with several OnCalendar= lines elapses once at each instant any of them names."""
    assert ANALYZE is not None
    base_text = datetime.fromtimestamp(base, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    result = subprocess.run(
        [ANALYZE, "calendar", f"--iterations={count}", f"--base-time={base_text}", *specs],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC"},
        timeout=60,
        check=True,
    )
    pattern = r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC"
    starts = {
        int(datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
        for m in re.findall(pattern, result.stdout)
    }
    return sorted(starts)[:count]


# (schedule, zone, base): DOM/DOW OR, steps, ranges, lists, months, zones, DST nights.
_FALL_BACK_NY = 1_793_505_600 - 7200  # 2026-11-01 02:00 UTC, before New York falls back
_CALENDARS = [
    ("0 3 * * *", "Europe/Paris", BASE),
    ("0 0 1,15 * 1-5", "", BASE),
    ("30 8 13 * fri", "America/New_York", BASE),
    ("5-10/2 */6 * 2,4-6 *", "Asia/Kolkata", BASE),
    ("*/20 * * * *", "Europe/Paris", BASE + 20 * 3600),
    ("0 12 31 * *", "UTC", BASE),
    ("15 9 * jan,jul 0,6", "Australia/Sydney", BASE),
    ("0 0 29 2 *", "", BASE),
    ("30 1 * * *", "America/New_York", _FALL_BACK_NY),
    ("*/15 1 * * *", "America/New_York", _FALL_BACK_NY),
    # saturnd and systemd part here: the exporter must warn (dst_difference).
    ("*/15 2 * * *", "Europe/Paris", BASE),
    ("0 2 * * *", "Europe/Paris", BASE),
    ("*/15 * * * *", "America/New_York", _FALL_BACK_NY),
]


@needs_analyze
@pytest.mark.parametrize(("schedule", "zone", "base"), _CALENDARS)
def test_it_exports_calendars_whose_starts_are_saturnds(
    schedule: str, zone: str, base: int
) -> None:
    timing = Timing.cron(schedule, zone)
    tz = ZoneInfo(zone or "UTC")  # systemd-analyze runs with TZ=UTC
    theirs = _systemd_starts(systemdexport.calendars(timing), base, 50)
    assert len(theirs) >= 40  # systemd stops at year 2199: 29 February gives 42
    ours = next_runs(timing, base, len(theirs), tz)
    # Only the offset changes within the starts compared (the exporter checks a year).
    changes = [c for c in systemdexport.changes(base // 60, tz) if c[0] <= theirs[-1] // 60]
    warning = systemdexport.dst_difference(timing, tz, changes)
    assert (theirs != ours) == (warning is not None), (warning, theirs[:5], ours[:5])


# --- cassini itself ---------------------------------------------------------------------


def test_it_parses_export_systemd() -> None:
    assert cli.parse_args(["--export-systemd", "out"]) == cli.ExportSystemd("out")
    assert cli.parse_args(["-p", "p", "--export-systemd=o"]) == cli.ExportSystemd("o", "p")
    with pytest.raises(cli.UsageError):
        cli.parse_args(["--export-systemd", "out", "-l"])
    with pytest.raises(cli.UsageError):
        cli.parse_args(["--export-systemd", "out", "extra"])


def test_it_exports_a_daemons_tasks_into_a_directory(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    first = daemon.create(
        "-m", "0", "-H", "3", "--tz", "Europe/Paris", "--no-overlap", "/bin/echo", "a%b"
    )
    second = daemon.create("--cron", "@reboot", "true")
    out = tmp_path / "units"
    result = daemon.cassini("--export-systemd", str(out))
    names = sorted(os.listdir(out))
    assert names == sorted(
        [
            "README",
            f"saturnd-task-{first}.service",
            f"saturnd-task-{first}.timer",
            f"saturnd-task-{second}.service",
            f"saturnd-task-{second}.timer",
        ]
    )
    timer = (out / f"saturnd-task-{first}.timer").read_text()
    assert "OnCalendar=*-*-* 03:00:00 Europe/Paris\n" in timer
    service = (out / f"saturnd-task-{first}.service").read_text()
    assert 'ExecStart="/bin/echo" "a%%b"\n' in service
    lines = result.stderr.decode().splitlines()
    assert all(line.startswith("cassini: warning: task ") for line in lines), lines
    assert f"cassini: warning: task {second}: reboot:" in result.stderr.decode()
    assert f"cassini: warning: task {second}: no_overlap:" in result.stderr.decode()
    assert f"task {first}: no_overlap" not in result.stderr.decode()


def test_it_says_in_one_line_when_the_directory_cannot_be_written(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    daemon.create("-m", "0", "/bin/true")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = daemon.cassini("--export-systemd", str(blocker / "units"), check=False)
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1
    assert result.stderr.startswith(b"cassini: cannot write into ")


def test_it_keeps_a_home_it_cannot_write_out_of_working_directory() -> None:
    task = _entry(5, _BASE_TIMING, (b"/bin/true",), no_overlap=True, env=((b"HOME", b'/a "b"'),))
    files, warnings = systemdexport.export([task])
    assert "WorkingDirectory=" not in files["saturnd-task-5.service"].decode()
    assert [w for w in warnings if w.startswith("task 5: env: HOME")]


def test_it_warns_for_a_program_name_env_would_take_for_a_variable() -> None:
    task = _entry(6, _BASE_TIMING, (b"a=b",), no_overlap=True)
    _, warnings = systemdexport.export([task])
    assert _warned_fields(warnings, 6) == {"argv"}


def test_it_exits_1_when_a_task_is_left_out_and_writes_the_others(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    kept = daemon.create("-m", "0", "/bin/true")
    never = daemon.create("--cron", "0 0 31 2 *", "/bin/true")
    out = tmp_path / "units"
    result = daemon.cassini("--export-systemd", str(out), check=False)
    assert result.returncode == 1
    assert (out / f"saturnd-task-{kept}.timer").exists()
    assert not (out / f"saturnd-task-{never}.timer").exists()
    assert f"cassini: warning: task {never}: daysofmonth: " in result.stderr.decode()


_SYSTEMD = "/lib/systemd/systemd"
_C_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v"}


def _dumped_words(line: bytes) -> list[bytes]:
    """The words of a `Command Line:` of systemd's dump: bare, or double-quoted with
    backslash escapes (C's, and octal for other bytes)."""
    words: list[bytes] = []
    i = 0
    while i < len(line):
        if line[i : i + 1] == b" ":
            i += 1
            continue
        word = bytearray()
        if line[i : i + 1] == b'"':
            i += 1
            while line[i : i + 1] != b'"':
                if line[i : i + 1] == b"\\":
                    following = line[i + 1 : i + 2].decode()
                    if following.isdigit():
                        word.append(int(line[i + 1 : i + 4], 8))
                        i += 4
                        continue
                    word += _C_ESCAPES.get(following, following.encode())
                    i += 2
                    continue
                word += line[i : i + 1]
                i += 1
            i += 1
        else:
            while i < len(line) and line[i : i + 1] != b" ":
                word += line[i : i + 1]
                i += 1
        words.append(bytes(word))
    return words


def _unit_dump(directory: Path, unit: str) -> list[bytes]:
    """The lines of `systemd --test --user`'s dump for `unit` loaded from `directory`,
    as an ordinary user (as root, the user manager's test mode refuses to run)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(directory),
        "XDG_RUNTIME_DIR": str(directory / "runtime"),
        "SYSTEMD_UNIT_PATH": f"{directory}:",
    }
    (directory / "runtime").mkdir(mode=0o700, exist_ok=True)
    ids: dict[str, object] = {}
    if os.getuid() == 0:
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, 65534, 65534)
        ids = {"user": 65534, "group": 65534, "extra_groups": []}
    result = subprocess.run(
        [_SYSTEMD, "--test", "--user", f"--unit={unit}", "--no-pager"],
        capture_output=True,
        env=env,
        timeout=60,
        **ids,  # type: ignore[arg-type]
    )
    lines = result.stdout.split(b"\n")
    marker = f"-> Unit {unit}:".encode()
    starts = [n for n, line in enumerate(lines) if line.strip() == marker]
    if result.returncode != 0 or not starts:
        pytest.skip(f"systemd --test --user does not dump units here ({result.returncode})")
    section = lines[starts[0] + 1 :]
    ends = [n for n, line in enumerate(section) if line.strip().startswith(b"-> Unit ")]
    return [line.strip() for line in section[: ends[0] if ends else None]]


@pytest.mark.skipif(
    not os.access(_SYSTEMD, os.X_OK), reason=f"no {_SYSTEMD} (apt-get install systemd)"
)
def test_it_quotes_words_and_variables_that_systemd_reads_back_unchanged() -> None:
    import tempfile

    argv = (
        b"sh",
        b"-c",
        b'echo "$HOME" 100% \\ `x`\n\xff $$y ${z} %h',
        b"-",
        b"a b",
        b"",
        b"\x01\t\x7f",
        b"caf\xc3\xa9",
        b"'single'",
    )
    value = b'x "y" $z %h\\q'
    task = _entry(1, _BASE_TIMING, argv, env=((b"V", value),), on_failure=b'echo "$0" %n $$')
    files, _ = systemdexport.export([task])
    # Under /tmp itself: an ordinary user must read it when the test runs as root.
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="saturnd-test-units-"))
    try:
        for name, data in files.items():
            (directory / name).write_bytes(data)
        dump = _unit_dump(directory, "saturnd-task-1.service")
        command = next(line for line in dump if line.startswith(b"Command Line: "))
        # systemd keeps `$$` until it starts the command, then makes it `$`.
        words = [w.replace(b"$$", b"$") for w in _dumped_words(command[len(b"Command Line: ") :])]
        assert words == [b"/usr/bin/env", *argv]
        assert b"Environment: V=" + value in dump
        failure = _unit_dump(directory, "saturnd-task-1-onfailure.service")
        command = next(line for line in failure if line.startswith(b"Command Line: "))
        words = [w.replace(b"$$", b"$") for w in _dumped_words(command[len(b"Command Line: ") :])]
        assert words == [b"/bin/sh", b"-c", b'echo "$0" %n $$']
    finally:
        shutil.rmtree(directory)


def test_it_makes_only_a_calendar_timer_persistent() -> None:
    task = _entry(8, Timing(reboot=True), (b"/bin/true",), catch_up=True)
    files, _ = systemdexport.export([task])
    assert "Persistent=" not in files["saturnd-task-8.timer"].decode()
