"""`cassini --export-k8s --image IMAGE`: Kubernetes CronJob manifests out of tasks.

Every manifest is read back with a YAML loader and validated, strictly (no unknown
field), against the Kubernetes API schemas that `kubernetes-validate` carries offline;
the argv and environment must come back as exactly the task's; names must be DNS-1123;
every field of the task model is either mapped or named in a warning; and the schedule
must select, under the day rule of Kubernetes' cron parser (robfig/cron v3: the day
fields are OR-ed unless one of them is exactly `*`), the same days saturnd does.
"""

from __future__ import annotations

import re
from calendar import monthrange
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cassini import exportfields, k8sexport
from cassini.k8sexport import MAX_NAME, NO_CATCH_UP_DEADLINE, export_k8s, job_name
from saturnd.protocol import TaskEntry
from saturnd.task import Extras, Task
from saturnd.timing import DAYSOFMONTH, DAYSOFWEEK, MONTHS, Timing, parse_field
from tests.daemon_harness import Daemon

MakeDaemon = Callable[..., Daemon]

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (pip install -e '.[test]')",
)
yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of kubernetes-validate)")

IMAGE = "registry.example/team/tools:1.2"
NOW = 1796601600  # 2026-12-06 00:00 UTC: the year after it has the changes of 2027
# The oldest version with a GA spec.timeZone, and the newest the package carries.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

EVERY = Extras(
    env=((b"A", b"1"), (b"B", b"two words"), (b"A", b"3")),
    stdin=b"input\n",
    mailto=b"me@example.org",
    timeout=300,
    jitter=90,
    no_overlap=True,
    catch_up=True,
    on_failure=b"echo failed",
    paused=True,
)

# A table of tasks that, together, set every field of the task model.
TASKS = [
    TaskEntry(0, Timing(), (b"/bin/true",)),
    TaskEntry(1, Timing.cron("*/15 9-17 * * 1-5", "Europe/Paris"), (b"echo", b"hi"), EVERY),
    TaskEntry(2, Timing.cron("0 0 1,15 * 5", "America/New_York"), (b"sh", b"-c", b"date")),
    TaskEntry(3, Timing.cron("30 2 * 3,10 0"), (b"backup.sh",), Extras(timeout=3600)),
    TaskEntry(4, Timing.cron("0 12 */2 * *", "UTC"), (b"x",), Extras(no_overlap=True)),
    TaskEntry(5, Timing.cron("@monthly", "Asia/Tokyo"), (b"a b", b"'\"$HOME\\", b"\t\n")),
    TaskEntry(6, Timing.cron("5 4 * * 0,6", "UTC"), (b"caf\xc3\xa9", b"\xe2\x80\xa8\xef\xbb\xbf")),
    TaskEntry(7, Timing.cron("0 6 1-7 * 1", "UTC"), (b"first-monday-or-week",)),
    # Kubernetes' own expansion: $(NAME) of a defined variable, and $$.
    TaskEntry(
        8,
        Timing(zone="UTC"),
        (b"sh", b"-c", b"echo $(HOME) $$ $(X) $X $$(X) $"),
        Extras(env=((b"X", b"1"), (b"Y", b"$(X)$$"))),
    ),
]


def _export(tasks: list[TaskEntry]) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    text, warnings, skipped = export_k8s(tasks, IMAGE, NOW)
    documents = [document for document in yaml.safe_load_all(text.decode()) if document]
    return documents, warnings, [f"{task.task_id}: {why}" for task, why in skipped]


def _container(document: dict[str, Any]) -> dict[str, Any]:
    spec = document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert isinstance(container, dict)
    return container


def test_it_writes_manifests_that_kubernetes_validates() -> None:
    documents, _, skipped = _export(TASKS)
    assert skipped == []
    assert len(documents) == len(TASKS)
    for document in documents:
        for version in VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
        assert document["apiVersion"] == "batch/v1"
        assert document["kind"] == "CronJob"
        assert document["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
        assert document["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == (
            "Never"
        )
        assert _container(document)["image"] == IMAGE


def test_it_separates_the_documents_with_three_dashes() -> None:
    text, _, _ = export_k8s(TASKS[:3], IMAGE, NOW)
    assert text.decode().count("\n---\n") == 2
    assert text.startswith(b"apiVersion: batch/v1\n")


def test_it_writes_nothing_for_no_task() -> None:
    assert export_k8s([], IMAGE, NOW) == (b"", [], [])


def _expand(text: str, env: dict[str, str]) -> str:
    """What Kubernetes makes of a command word or a variable value: `$$` is `$`, and
    `$(NAME)` is the value of NAME when the container defines it (else unchanged)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([^)]*)\)", one, text)


def test_it_carries_the_command_and_environment_exactly() -> None:
    documents, _, _ = _export(TASKS)
    for task, document in zip(TASKS, documents, strict=True):
        container = _container(document)
        env: dict[str, str] = {}
        for item in container.get("env", []):  # each value sees the earlier ones
            env[item["name"]] = _expand(item["value"], env)
        command = [_expand(arg, env) for arg in container["command"]]
        assert [arg.encode() for arg in command] == list(task.argv)
        assert {name.encode(): value.encode() for name, value in env.items()} == (
            task.extras.variables()
        )


def test_it_maps_the_policies() -> None:
    documents, _, _ = _export(TASKS)
    by_id = {int(doc["metadata"]["labels"]["saturnd/task-id"]): doc for doc in documents}
    every, plain = by_id[1]["spec"], by_id[0]["spec"]
    assert every["schedule"] == "*/15 9-17 * * 1-5"
    assert every["timeZone"] == "Europe/Paris"
    assert every["concurrencyPolicy"] == "Forbid"
    assert every["suspend"] is True
    assert "startingDeadlineSeconds" not in every  # catch-up: Kubernetes' own catching up
    assert every["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 300
    assert plain["concurrencyPolicy"] == "Allow"
    assert plain["suspend"] is False
    assert plain["startingDeadlineSeconds"] == NO_CATCH_UP_DEADLINE
    assert "timeZone" not in plain
    assert "activeDeadlineSeconds" not in plain["jobTemplate"]["spec"]
    assert by_id[2]["spec"]["schedule"] == "0 0 1,15 * 5"


def test_it_warns_for_each_field_it_does_not_carry() -> None:
    _, warnings, _ = _export([TASKS[0], TASKS[1]])
    assert warnings == [
        "task 0: zone: none set: the CronJob runs in the controller's zone (often UTC)",
        "task 1: stdin: not carried: a container's command gets no input",
        "task 1: mailto: not carried: Kubernetes sends no mail",
        "task 1: jitter: not carried (90s): no random delay",
        "task 1: on_failure: not carried: Kubernetes runs no command on failure",
    ]
    # A name only Kubernetes 1.34 and later take (KEP-4369).
    odd = TaskEntry(9, Timing(zone="UTC"), (b"x",), Extras(env=((b"1A", b""), (b"a b", b""))))
    assert _export([odd])[1] == [
        "task 9: env: Kubernetes before 1.34 refuses the name '1A'",
        "task 9: env: Kubernetes before 1.34 refuses the name 'a b'",
    ]
    # No mail at all (MAILTO="") is what a CronJob does: nothing to say.
    quiet = TaskEntry(9, Timing(zone="UTC"), (b"x",), Extras(mailto=b""))
    assert _export([quiet])[1] == []


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (TaskEntry(3, Timing.cron("@reboot"), (b"x",)), "reboot: @reboot has no CronJob"),
        (TaskEntry(3, Timing(), (b"\xff",)), "argv: an argument is not UTF-8"),
        (TaskEntry(3, Timing(), (b"x",), Extras(env=((b"A", b"\xff"),))), "env: a variable"),
        (TaskEntry(3, Timing(), (b"x",), Extras(env=((b"\xc3\xa9", b"1"),))), "env: Kubernetes"),
        (TaskEntry(3, Timing(), (b"x",), Extras(env=((b"A\tB", b"1"),))), "env: Kubernetes"),
        (TaskEntry(3, Timing.cron("0 0 */2 * 1", "UTC"), (b"x",)), "days_or: Kubernetes cannot"),
    ],
    ids=["reboot", "argv", "env", "env-name", "env-tab", "and"],
)
def test_it_leaves_out_a_task_no_cronjob_can_run_and_says_why(
    entry: TaskEntry, reason: str
) -> None:
    documents, _, skipped = _export([TASKS[0], entry])
    assert len(documents) == 1
    (why,) = skipped
    assert why.startswith(f"3: {reason}")


def test_it_has_a_row_for_every_field_of_the_task_model() -> None:
    fields = set(Timing._fields) | set(Extras._fields) | set(Task._fields) - {"timing", "extras"}
    assert set(exportfields.KUBERNETES) == fields == set(exportfields.FIELDS)
    assert set(exportfields.KUBERNETES.values()) <= {exportfields.MAPPED, exportfields.WARNED}


# The base task says nothing a CronJob cannot: a daily noon task in UTC. Each entry
# changes one field from it.
_BASE = Timing.cron("0 12 * * *", "UTC")
_CHANGED: dict[str, TaskEntry] = {
    "minutes": TaskEntry(1, Timing.cron("*/7 12 * * *", "UTC"), (b"x",)),
    "hours": TaskEntry(1, Timing.cron("0 1-5,9 * * *", "UTC"), (b"x",)),
    "daysofweek": TaskEntry(1, Timing.cron("0 12 * * 1-5", "UTC"), (b"x",)),
    "daysofmonth": TaskEntry(1, Timing.cron("0 12 1,15 * *", "UTC"), (b"x",)),
    "months": TaskEntry(1, Timing.cron("0 12 * 2-4 *", "UTC"), (b"x",)),
    "days_or": TaskEntry(1, Timing.cron("0 12 13 * 5", "UTC"), (b"x",)),
    "reboot": TaskEntry(1, Timing(reboot=True), (b"x",)),
    "zone": TaskEntry(1, Timing.cron("30 2 * * *", "Europe/Paris"), (b"x",)),
    "env": TaskEntry(1, _BASE, (b"x",), Extras(env=((b"A", b"1"),))),
    "stdin": TaskEntry(1, _BASE, (b"x",), Extras(stdin=b"in\n")),
    "mailto": TaskEntry(1, _BASE, (b"x",), Extras(mailto=b"me")),
    "timeout": TaskEntry(1, _BASE, (b"x",), Extras(timeout=90)),
    "jitter": TaskEntry(1, _BASE, (b"x",), Extras(jitter=30)),
    "no_overlap": TaskEntry(1, _BASE, (b"x",), Extras(no_overlap=True)),
    "catch_up": TaskEntry(1, _BASE, (b"x",), Extras(catch_up=True)),
    "on_failure": TaskEntry(1, _BASE, (b"x",), Extras(on_failure=b"echo x")),
    "paused": TaskEntry(1, _BASE, (b"x",), Extras(paused=True)),
    "argv": TaskEntry(1, _BASE, (b"echo", b"a b", b"%$")),
}


def test_it_warns_for_the_base_task_about_nothing() -> None:
    documents, warnings, skipped = _export([TaskEntry(1, _BASE, (b"x",))])
    assert (len(documents), warnings, skipped) == (1, [], [])


@pytest.mark.parametrize("field", exportfields.FIELDS)
def test_it_warns_exactly_for_the_fields_the_table_says(field: str) -> None:
    assert set(_CHANGED) == set(exportfields.FIELDS)
    _, warnings, skipped = _export([_CHANGED[field]])
    named = {line.split(": ")[1] for line in [*warnings, *skipped]}
    if exportfields.KUBERNETES[field] == exportfields.WARNED:
        assert named == {field}, (warnings, skipped)
    else:
        assert named == set(), (warnings, skipped)


@pytest.mark.parametrize(
    ("schedule", "zone", "warning"),
    [
        ("30 2 * * *", "Europe/Paris", "skips its start in the hour skipped on 2027-03-28"),
        ("* * * * *", "Europe/Paris", "skips its start in the hour skipped on 2027-03-28"),
        ("30 2 * * *", "America/Chicago", "skips its start in the hour skipped on 2027-03-14"),
        ("30 1 * * *", "America/Chicago", "starts it twice in the hour repeated on 2027-11-07"),
        ("30 2 * 10 *", "Europe/Paris", "starts it twice in the hour repeated on 2027-10-31"),
        ("30 2 * * 1-6", "Europe/Paris", None),  # 03-28 and 10-31 are Sundays
        ("0 * * * *", "Europe/Paris", "skips its start in the hour skipped on 2027-03-28"),
        ("0 3 * * *", "Europe/Paris", None),
        ("30 2 * * *", "Asia/Tokyo", None),
        ("30 2 * * *", "UTC", None),
    ],
)
def test_it_warns_where_daylight_saving_time_parts_kubernetes_and_saturnd(
    schedule: str, zone: str, warning: str | None
) -> None:
    _, warnings, _ = _export([TaskEntry(1, Timing.cron(schedule, zone), (b"x",))])
    if warning is None:
        assert warnings == []
    else:
        (line,) = warnings
        assert line.startswith("task 1: zone: daylight saving time: Kubernetes "), line
        assert warning in line


def test_every_field_of_the_table_tasks_is_set_somewhere() -> None:
    default_timing, default_extras = Timing(), Extras()
    set_fields = {
        name
        for entry in TASKS
        for obj, default in ((entry.timing, default_timing), (entry.extras, default_extras))
        for name in obj._fields
        if getattr(obj, name) != getattr(default, name)
    }
    # @reboot and the AND of two day sets have their own test: a CronJob cannot say them.
    assert set_fields | {"reboot"} == set(Timing._fields) | set(Extras._fields)


@pytest.mark.parametrize(
    ("task_id", "argv0", "name"),
    [
        (1, b"echo", "saturnd-task-1-echo"),
        (2, b"/usr/local/bin/Backup_Daily.sh", "saturnd-task-2-backup-daily-sh"),
        (3, b"--", "saturnd-task-3"),
        (4, b"caf\xc3\xa9 au lait", "saturnd-task-4-caf-au-lait"),
        (5, b"/", "saturnd-task-5"),
        (6, b"x" * 100, "saturnd-task-6-" + "x" * (MAX_NAME - 15)),
        (18446744073709551615, b"a-" * 40, "saturnd-task-18446744073709551615-a-a-a-a-a-a-a-a-a"),
        (7, b"a" * 36 + b"-b", "saturnd-task-7-" + "a" * 36),  # cut before a dash
    ],
)
def test_it_names_the_job_after_the_task(task_id: int, argv0: bytes, name: str) -> None:
    assert job_name(task_id, argv0) == name
    assert len(name) <= MAX_NAME
    assert DNS_1123.fullmatch(name)


def test_it_quotes_odd_strings_so_yaml_reads_them_back() -> None:
    odd = ["", "yes", "no", "null", "~", "0x10", "1e3", "- a", ": b", "#c", "'", '"', "\\"]
    odd += ["\x00\x07\x1b\x7f\x85\u2028\u2029\ufeff", "é🙂", "a\nb\r\n", "{[&*!|>%@`]}"]
    for text in odd:
        assert yaml.safe_load(f"key: {k8sexport.quote(text)}\n") == {"key": text}, text


def _robfig_days(schedule: str, year: int) -> set[date]:
    """The days of `year` that Kubernetes' cron parser (robfig/cron v3) selects: the day
    fields are OR-ed unless one is exactly `*` (a `*/2` is not a star there)."""
    _, _, dom_text, month_text, dow_text = schedule.split()
    dom = parse_field(DAYSOFMONTH, dom_text)
    dow = parse_field(DAYSOFWEEK, dow_text)
    months = parse_field(MONTHS, month_text)
    star = dom_text == "*" or dow_text == "*"
    days = set()
    for month in range(1, 13):
        for day in range(1, monthrange(year, month)[1] + 1):
            moment = date(year, month, day)
            in_dom = bool(dom >> day & 1)
            in_dow = bool(dow >> moment.isoweekday() % 7 & 1)
            selected = in_dom and in_dow if star else in_dom or in_dow
            if months >> month & 1 and selected:
                days.add(moment)
    return days


def _saturnd_days(timing: Timing, year: int) -> set[date]:
    from datetime import datetime

    first = date(year, 1, 1)
    days = set()
    for offset in range(366):
        moment = first + timedelta(offset)
        if moment.year == year and timing.day_matches(datetime(year, moment.month, moment.day)):
            days.add(moment)
    return days


DAY_SCHEDULES = [
    "0 0 * * *",
    "0 0 1,15 * 5",
    "0 0 1-7 * 1",
    "0 0 */2 * *",
    "0 0 * * */2",
    "0 0 1-31/2 * 1",
    "0 0 13 * 5",
    "0 0 * 2 1-5",
    "0 0 29 2 *",
    "0 0 */2 * 1",
    "0 0 1 * */3",
    "0 0 1-31 * 1-5",
]


@pytest.mark.parametrize("schedule", DAY_SCHEDULES)
def test_kubernetes_runs_it_on_the_days_saturnd_does_or_it_is_left_out(schedule: str) -> None:
    timing = Timing.cron(schedule, "UTC")
    documents, _, skipped = _export([TaskEntry(1, timing, (b"x",))])
    if skipped:
        # Only when the two day rules differ.
        assert any(
            _robfig_days(timing.format_cron(), year) != _saturnd_days(timing, year)
            for year in (2026, 2027, 2028)
        )
        return
    (document,) = documents
    written = document["spec"]["schedule"]
    for year in (2026, 2027, 2028):
        assert _robfig_days(written, year) == _saturnd_days(timing, year), (written, year)


def test_it_exports_a_daemons_tasks_end_to_end(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.create("--cron", "0 9 * * 1-5", "--tz", "Europe/Paris", "--timeout", "5m", "echo", "hi")
    daemon.create("--cron", "@reboot", "true")
    done = daemon.cassini("--export-k8s", "--image", IMAGE, check=False)
    assert done.returncode == 1  # a task is left out
    (document,) = [doc for doc in yaml.safe_load_all(done.stdout.decode()) if doc]
    kubernetes_validate.validate(document, VERSIONS[-1], strict=True)
    assert document["metadata"]["name"] == "saturnd-task-0-echo"
    assert document["spec"]["schedule"] == "0 9 * * 1-5"
    assert _container(document)["command"] == ["echo", "hi"]
    assert done.stderr.decode() == (
        "cassini: task 1 is not exported: reboot: @reboot has no CronJob schedule\n"
    )


def test_it_refuses_export_k8s_without_an_image(tmp_path: Path) -> None:
    import subprocess

    from tests.daemon_harness import CASSINI

    done = subprocess.run(
        [CASSINI, "-p", str(tmp_path), "--export-k8s"], capture_output=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode().splitlines()[0] == (
        "cassini: --export-k8s needs --image IMAGE (the container image)"
    )
