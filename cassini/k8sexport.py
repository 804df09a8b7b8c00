"""Kubernetes CronJobs from tasks, sans I/O: what `--export-k8s --image IMAGE` prints.

This module owns `export_k8s`: tasks -> the text of one `batch/v1` CronJob manifest
per task (YAML documents separated by `---`), the warnings that name what does not
carry over, and the tasks left out and why. Which task fields map and which warn is
`cassini.exportfields.KUBERNETES`; the tests hold this module to it.

Invariants:
- Never silent: a field whose meaning a CronJob cannot keep is named in a warning
  (task id and field), and a task no CronJob can run as saturnd would is left out
  with a reason (an @reboot task has no schedule; an argument or variable that is not
  UTF-8 cannot be a Kubernetes string; a day-of-month AND day-of-week schedule, which
  Kubernetes' cron parser reads as an OR). Daylight saving: Kubernetes skips a start
  in a spring-forward gap and runs a fixed time twice in a repeated hour, where saturnd
  runs it after the gap and once: a task that meets a change in the year after `now` is
  warned, with the date.
- The YAML is written by hand (cassini takes no YAML library): every string is
  double-quoted with escapes for all but printable characters, so the text reads back
  as exactly the task's characters whatever they are; numbers and booleans are bare.
  Kubernetes expands `$(NAME)` and turns `$$` into `$` in a command and in variable
  values: every `$` of those is written doubled, so none is expanded.
- Pure (the clock comes in as `now`) and standard library only; loaded only by
  `--export-k8s`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing; mypy takes any such name
if TYPE_CHECKING:
    from collections.abc import Iterable

    from saturnd.protocol import TaskEntry
    from saturnd.timing import Timing

# A zone's offset changes at most a few times a year, on a quarter hour (UTC).
_STEP = timedelta(minutes=15)
_YEAR = timedelta(days=366)

__all__ = [
    "MAX_NAME",
    "NO_CATCH_UP_DEADLINE",
    "export_k8s",
    "job_name",
    "quote",
]

MAX_NAME = 52
"""Longest CronJob name: the controller appends 11 characters to name each Job, and a
Job's name must fit a 63-character label."""

NO_CATCH_UP_DEADLINE = 60
"""startingDeadlineSeconds of a task without --catch-up: a start the controller missed
by more than a minute is skipped (Kubernetes documents that values under 10 may never
start the job, as the controller checks every 10 seconds). Without it (catch-up),
Kubernetes starts the latest missed run once when it is back, as saturnd does."""

_NAME_PREFIX = "saturnd-task-"


def quote(text: str) -> str:
    """`text` as a YAML double-quoted scalar that reads back as exactly `text`.

    Only printable characters go as they are; the others (controls, line and paragraph
    separators, the byte-order mark, which YAML either forbids or folds) are escaped.
    """
    parts = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            parts.append("\\" + char)
        elif 0x20 <= code < 0x7F or (code > 0x9F and char.isprintable() and code != 0xFEFF):
            parts.append(char)
        elif code <= 0xFF:
            parts.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    parts.append('"')
    return "".join(parts)


def job_name(task_id: int, argv0: bytes) -> str:
    """The CronJob's name: `saturnd-task-ID-PROGRAM`, a DNS-1123 name of at most
    `MAX_NAME` characters. PROGRAM is the basename of argv[0], lower-cased, each run of
    other characters than a-z and 0-9 made one `-`, cut to fit; empty, it is left out."""
    base = f"{_NAME_PREFIX}{task_id}"
    program = argv0.rsplit(b"/", 1)[-1].decode("ascii", "replace").lower()
    words: list[str] = []
    word = ""
    for char in program:
        if "a" <= char <= "z" or "0" <= char <= "9":
            word += char
        elif word:
            words.append(word)
            word = ""
    if word:
        words.append(word)
    suffix = "-".join(words)[: MAX_NAME - len(base) - 1].strip("-")
    return f"{base}-{suffix}" if suffix else base


def _changes(zone: str, now: float) -> list[tuple[datetime, timedelta, timedelta]]:
    """The offset changes of `zone` in the year after `now`: (UTC instant, offset
    before, offset after). LookupError for a zone unknown here."""
    from zoneinfo import ZoneInfo

    info = ZoneInfo(zone)
    moment = datetime.fromtimestamp(now // 900 * 900, UTC)
    before = moment.astimezone(info).utcoffset()
    changes = []
    for _ in range(_YEAR // _STEP):
        moment += _STEP
        after = moment.astimezone(info).utcoffset()
        if after != before and after is not None and before is not None:
            changes.append((moment, before, after))
        before = after
    return changes


def _dst_warning(timing: Timing, changes: list[tuple[datetime, timedelta, timedelta]]) -> str:
    """Why Kubernetes starts `timing` otherwise than saturnd across `changes`, or ""."""
    for instant, before, after in changes:
        # The wall-clock minutes skipped (spring forward) or seen twice (fall back).
        start = (instant + min(before, after)).replace(tzinfo=None)
        minutes = abs(after - before) // timedelta(minutes=1)
        wall = [start + timedelta(minutes=index) for index in range(minutes)]
        if not any(timing.matches(moment) for moment in wall):
            continue
        day = start.date().isoformat()
        if after > before:
            return (
                f"Kubernetes skips its start in the hour skipped on {day} (saturnd runs it after)"
            )
        if not timing.is_wildcard:
            return f"Kubernetes starts it twice in the hour repeated on {day} (saturnd once)"
    return ""


def _old_env_name(name: str) -> bool:
    """True for a variable name every Kubernetes takes: `[-._a-zA-Z][-._a-zA-Z0-9]*`
    (1.34 takes any printable ASCII but `=`, KEP-4369)."""
    if not name or name[0].isdigit():
        return False
    return all(char.isascii() and (char.isalnum() or char in "-._") for char in name)


def _literal(text: str) -> str:
    """`text` as Kubernetes reads a command word or variable value without expanding
    anything: its `$(NAME)` references expand and `$$` means `$`."""
    return text.replace("$", "$$")


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _manifest(
    task: TaskEntry,
    image: str,
    warn: list[str],
    changes: list[tuple[datetime, timedelta, timedelta]],
) -> list[str] | str:
    """The manifest's lines for `task`, with its warnings added to `warn`, or why no
    CronJob can run it. `changes`: its zone's offset changes in the coming year."""
    timing, extras = task.timing, task.extras
    if timing.reboot:
        return "reboot: @reboot has no CronJob schedule"
    from saturnd.timing import DAYSOFMONTH, DAYSOFWEEK

    if (
        not timing.days_or
        and timing.daysofmonth != DAYSOFMONTH.full
        and timing.daysofweek != DAYSOFWEEK.full
    ):
        # Kubernetes' parser (robfig/cron v3) ORs the day fields unless one is exactly
        # `*`: a `*/2` that cron reads as a star is a restriction there.
        return "days_or: Kubernetes cannot say a day of month AND a day of week"
    sets = (timing.minutes, timing.hours, timing.daysofmonth, timing.months, timing.daysofweek)
    if not all(sets):
        # An empty set (imported from cron's `5-3`) never runs; its text `1-0` is one
        # Kubernetes' parser refuses.
        return "schedule: the task never runs by the clock"
    try:
        schedule = timing.format_cron()
    except ValueError:
        return "schedule: no cron schedule means its timing"
    argv = [_text(arg) for arg in task.argv]
    command = [arg for arg in argv if arg is not None]
    if len(command) != len(argv):
        return "argv: an argument is not UTF-8, which a Kubernetes string cannot hold"
    env: dict[str, str] = {}
    for name, value in extras.env:
        name_text, value_text = _text(name), _text(value)
        if name_text is None or value_text is None:
            return "env: a variable is not UTF-8, which a Kubernetes string cannot hold"
        if not all(" " <= char <= "~" for char in name_text):
            return f"env: Kubernetes refuses the variable name {name_text!r} (not printable ASCII)"
        env[name_text] = value_text  # a later one wins, as for the daemon

    prefix = f"task {task.task_id}: "
    for name_text in env:
        if not _old_env_name(name_text):
            warn.append(f"{prefix}env: Kubernetes before 1.34 refuses the name {name_text!r}")
    if not timing.zone:
        warn.append(
            prefix + "zone: none set: the CronJob runs in the controller's zone (often UTC)"
        )
    dst = _dst_warning(timing, changes)
    if dst:
        warn.append(f"{prefix}zone: daylight saving time: {dst}")
    if extras.stdin:
        warn.append(prefix + "stdin: not carried: a container's command gets no input")
    if extras.mailto:
        warn.append(prefix + "mailto: not carried: Kubernetes sends no mail")
    if extras.jitter:
        warn.append(prefix + f"jitter: not carried ({extras.jitter}s): no random delay")
    if extras.on_failure:
        warn.append(prefix + "on_failure: not carried: Kubernetes runs no command on failure")

    lines = [
        "apiVersion: batch/v1",
        "kind: CronJob",
        "metadata:",
        f"  name: {quote(job_name(task.task_id, task.argv[0] if task.argv else b''))}",
        "  labels:",
        '    app.kubernetes.io/managed-by: "cassini"',
        f'    saturnd/task-id: "{task.task_id}"',
        "spec:",
        f"  schedule: {quote(schedule)}",
    ]
    if timing.zone:
        lines.append(f"  timeZone: {quote(timing.zone)}")
    lines.append(f"  concurrencyPolicy: {'Forbid' if extras.no_overlap else 'Allow'}")
    if not extras.catch_up:
        lines.append(f"  startingDeadlineSeconds: {NO_CATCH_UP_DEADLINE}")
    lines += [
        f"  suspend: {'true' if extras.paused else 'false'}",
        "  jobTemplate:",
        "    spec:",
        # saturnd runs a start once: no retry of a failed run.
        "      backoffLimit: 0",
    ]
    if extras.timeout:
        lines.append(f"      activeDeadlineSeconds: {extras.timeout}")
    lines += [
        "      template:",
        "        spec:",
        "          restartPolicy: Never",
        "          containers:",
        '            - name: "task"',
        f"              image: {quote(image)}",
        "              command:",
        *(f"                - {quote(_literal(arg))}" for arg in command),
    ]
    if env:
        lines.append("              env:")
        for name_text, value_text in env.items():
            lines.append(f"                - name: {quote(name_text)}")
            lines.append(f"                  value: {quote(_literal(value_text))}")
    return lines


def export_k8s(
    tasks: Iterable[TaskEntry], image: str, now: float
) -> tuple[bytes, list[str], list[tuple[TaskEntry, str]]]:
    """The manifests of `tasks` (by id) for containers of `image`, the warnings (one
    line each, naming task and field), and the tasks left out with why; `now` (epoch
    seconds) starts the year in which daylight-saving changes are looked for."""
    documents: list[str] = []
    warnings: list[str] = []
    skipped: list[tuple[TaskEntry, str]] = []
    zones: dict[str, list[tuple[datetime, timedelta, timedelta]]] = {"": []}
    for task in sorted(tasks, key=lambda entry: entry.task_id):
        zone = task.timing.zone
        if zone not in zones:
            try:
                zones[zone] = _changes(zone, now)
            except (LookupError, ValueError, OSError):
                zones[zone] = []
                warnings.append(
                    f"task {task.task_id}: zone: {zone!r} is unknown here: "
                    "not checked for daylight saving"
                )
        found = _manifest(task, image, warnings, zones[zone])
        if isinstance(found, str):
            skipped.append((task, found))
        else:
            documents.append("".join(line + "\n" for line in found))
    return "---\n".join(documents).encode(), warnings, skipped
