"""`--import` (plain, `--replace`, `--check`) and the last step of `--edit`: a crontab's
tasks compared with the daemon's, then applied in one exchange.

This module owns:
- `plan` (pure): which of the daemon's tasks an imported crontab keeps (equal `Task`s,
  the paused state aside, matched as a multiset, lowest id first), which it removes
  (`--replace` only) and which lines it creates; `describe` (pure): what `--check` prints of a plan;
- `run_import` and `apply`, the thin I/O around them: LIST-EX, then one REPLACE
  (`remove` the ids, `create` the tasks), which the daemon applies all or nothing;
- `local_context`: what the crontab reader needs of this machine (user names, sendmail,
  time zones).

Rules:
- One REPLACE makes the change, so it is made whole or not at all. Ctrl-C before it is
  sent: "nothing changed". SIGINT is blocked while it is in flight (it is short), so a
  Ctrl-C then is reported after the reply, with the result: nothing is lost half-way.
  When the exchange itself fails after being sent, cassini cannot know and says so.
- A plain `--import` of course-only tasks to a daemon without our socket (a C daemon,
  or CASSINI_TRANSPORT=fifo) falls back to one CREATE per line, as before REPLACE
  existed: that path cannot be all or nothing, and says which lines were created when
  it fails.
- Messages go to stderr, one line each, prefixed `cassini: `; created ids to stdout.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cassini.cli import Import
    from cassini.crontab import Context, Entry
    from saturnd.protocol import TaskEntry
    from saturnd.task import Task

    Out = Callable[[bytes], int]
    Err = Callable[[str], None]

__all__ = [
    "Plan", "apply", "describe", "fetch", "hold_ctrl_c", "local_context", "plan", "run_import",
]  # fmt: skip

SENDMAILS = ("/usr/sbin/sendmail", "/usr/lib/sendmail")
"""Where cron looks for sendmail."""

INTERRUPTED = 130
"""The exit status after Ctrl-C, as for any program killed by SIGINT."""


class Plan:
    """What an import does: `keep` (line, task kept), `create` (lines), `remove` (tasks)."""

    __slots__ = ("create", "keep", "remove")

    def __init__(
        self,
        keep: list[tuple[Entry, TaskEntry]],
        create: list[Entry],
        remove: list[TaskEntry],
    ) -> None:
        self.keep = keep
        self.create = create
        self.remove = remove

    @property
    def changes(self) -> bool:
        """True when applying the plan would change the daemon's tasks."""
        return bool(self.create or self.remove)

    def summary(self) -> str:
        return f"{len(self.create)} created, {len(self.keep)} kept, {len(self.remove)} removed"


def plan(current: Sequence[TaskEntry], entries: Sequence[Entry], replace: bool) -> Plan:
    """The plan making the daemon's tasks `current` into those of `entries`.

    Without `replace`, every line is created and nothing is kept or removed. A line
    keeps a task that differs from it in its paused state alone, and the task keeps its
    state: pausing is `--pause`/`--resume`'s, and a crontab kept in a file and imported
    again must not undo it (a `#saturnd-paused:` line only creates a task paused).
    """
    if not replace:
        return Plan([], list(entries), [])
    unused: dict[object, list[TaskEntry]] = {}
    for task in sorted(current, key=lambda task: task.task_id):
        unused.setdefault(_unpaused(task.task), []).append(task)
    keep: list[tuple[Entry, TaskEntry]] = []
    create: list[Entry] = []
    for entry in entries:
        same = unused.get(_unpaused(entry.task))
        if same:
            keep.append((entry, same.pop(0)))
        else:
            create.append(entry)
    remove = sorted((t for tasks in unused.values() for t in tasks), key=lambda t: t.task_id)
    return Plan(keep, create, remove)


def _unpaused(task: Task) -> Task:
    """`task` as `plan` compares it: without its paused state."""
    if not task.extras.paused:
        return task
    return type(task)(task.timing, task.argv, task.extras.replace(paused=False))


def describe(result: Plan, lines: Sequence[bytes]) -> bytes:
    """What `--check` prints: one line per kept, created and removed task, then counts.

    `lines` are the crontab's lines (line N is `lines[N - 1]`).
    """
    from cassini.replies import task_line

    out = [b"keep %d: line %d\n" % (task.task_id, entry.line) for entry, task in result.keep]
    for entry in result.create:
        out.append(b"create: line %d: %s\n" % (entry.line, lines[entry.line - 1].strip()))
    out.extend(b"remove " + task_line(task) for task in result.remove)
    counts = (len(result.create), len(result.keep), len(result.remove))
    out.append(b"%d to create, %d to keep, %d to remove\n" % counts)
    return b"".join(out)


# --- I/O -------------------------------------------------------------------------------


def local_context() -> Context:
    """The crontab reader's view of this machine."""
    import pwd
    import shutil

    from cassini.crontab import Context

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""

    def is_user(word: str) -> bool:
        # A name in /etc/passwd that is no program: the user field of /etc/crontab.
        try:
            pwd.getpwnam(word)
        except (KeyError, ValueError):
            return False
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin:/usr/bin:/bin"])
        return shutil.which(word, path=path) is None

    def zone_exists(name: str) -> bool:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(name)
        except (ValueError, KeyError, OSError):
            return False
        return True

    sendmail = any(os.access(path, os.X_OK) for path in SENDMAILS)
    return Context(user, is_user, sendmail, zone_exists)


def fetch(pipes_dir: str) -> list[TaskEntry] | str:
    """The daemon's tasks, whole (LIST-EX), or why they cannot be had (one line)."""
    from cassini import transport
    from saturnd.protocol import ErrorReply, ListExReply, ListExRequest

    try:
        reply = transport.exchange(pipes_dir, ListExRequest())
    except (transport.TransportError, OSError) as error:
        return str(error)
    if isinstance(reply, ListExReply):
        return list(reply.tasks)
    if isinstance(reply, ErrorReply) and reply.message:
        return f"the daemon refused to list its tasks: {reply.message}"
    return "the daemon did not list its tasks (is it an older saturnd?)"


def hold_ctrl_c() -> None:
    """Make Ctrl-C wait (SIGINT blocked) until `apply` has said what it did.

    Called as the last step of the part where Ctrl-C means "nothing changed", so that
    no KeyboardInterrupt can come between that part and the REPLACE.
    """
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def apply(pipes_dir: str, result: Plan, out: Out, err: Err, *, quiet: bool = False) -> int:
    """Send `result` as one REPLACE; print the created ids, and (unless `quiet`, as for
    a plain import, which prints only the ids) what was done.

    SIGINT must be held (`hold_ctrl_c`); a Ctrl-C that came meanwhile is reported, not
    raised, and any later one ignored: this is the last thing cassini does.
    """
    import signal

    try:
        status = _apply(pipes_dir, result, out, err, quiet)
    finally:
        interrupted = signal.SIGINT in signal.sigpending()
        # All is said and cassini only has to exit: from here a Ctrl-C is dropped (a
        # pending one too, when unblocked while ignored), lest it kill the process
        # on its way out and make the status lie.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if interrupted:
        if status == 0:
            err("cassini: interrupted after the change was made whole\n")
        return INTERRUPTED
    return status


def _apply(pipes_dir: str, result: Plan, out: Out, err: Err, quiet: bool) -> int:
    from cassini import transport
    from saturnd.protocol import ErrorReply, ReplaceReply, ReplaceRequest

    if not result.changes:
        if not quiet:
            err(f"cassini: no changes: {result.summary()}\n")
        return 0
    request = ReplaceRequest(
        tuple(task.task_id for task in result.remove),
        tuple(entry.task for entry in result.create),
    )
    try:
        reply = transport.exchange(pipes_dir, request)
    except (transport.TransportError, OSError) as error:
        err(
            f"cassini: {error}; whether the daemon made the change is unknown "
            "(all of it or none of it): see cassini -l\n"
        )
        return 1
    if isinstance(reply, ReplaceReply):
        status = out(b"".join(b"%d\n" % task_id for task_id in reply.task_ids))
        if not quiet:
            err(f"cassini: {result.summary()}\n")
        return status
    reason = reply.message if isinstance(reply, ErrorReply) and reply.message else None
    err(f"cassini: nothing changed: {reason or 'the daemon refused the change'}\n")
    return 1


def _create_each(pipes_dir: str, name: str, entries: Sequence[Entry], out: Out, err: Err) -> int:
    """One CREATE per line (a daemon without REPLACE); stops at the first failure.

    This cannot be all or nothing: on a failure or a Ctrl-C it says which lines were
    created. SIGINT is held over each exchange and its bookkeeping, so the count is
    right.
    """
    import signal

    created: list[int] = []
    status = 0
    try:
        for entry in entries:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                failure = _create_one(pipes_dir, entry, out, created)
            finally:
                interrupted = signal.SIGINT in signal.sigpending()
                if interrupted:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # dropped: said below
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            if interrupted:
                raise KeyboardInterrupt
            if isinstance(failure, str):
                reason = f"task not created: {failure}; {_created(created)}"
                err(f"cassini: {name}:{entry.line}: {reason}\n")
                return 1
            status = failure or status
    except KeyboardInterrupt:
        err(f"cassini: interrupted: {_created(created)}\n")
        return INTERRUPTED
    return status


def _create_one(pipes_dir: str, entry: Entry, out: Out, created: list[int]) -> int | str:
    """CREATE the task of one line: the status of printing its id, or why it failed."""
    from cassini import transport
    from cassini.cli import UsageError
    from cassini.creating import make_create_request
    from saturnd.protocol import CreateReply

    try:
        request = make_create_request(entry.task.timing, entry.task.argv)
        reply = transport.exchange(pipes_dir, request)
    except (transport.TransportError, OSError, UsageError) as error:
        return str(error)
    if not isinstance(reply, CreateReply):
        return "the daemon did not answer with a task id"
    created.append(entry.line)
    # Keep creating even if nobody reads the ids any more: the file asked for these
    # tasks. The exit status still says something went wrong.
    return out(b"%d\n" % reply.task_id)


def _created(lines: list[int]) -> str:
    """Which lines' tasks were created, for a message."""
    if not lines:
        return "no task was created"
    return f"the tasks of lines {_line_ranges(lines)} were created"


def _line_ranges(lines: Sequence[int]) -> str:
    """Increasing line numbers as ranges: `1-3, 5`."""
    ranges: list[str] = []
    start = previous = -2
    for line in [*lines, -2]:
        if line != previous + 1:
            if start >= 0:
                ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = line
        previous = line
    return ", ".join(ranges)


def _has_socket(pipes_dir: str) -> bool:
    from saturnd.protocol import SOCKET_NAME

    if os.environ.get("CASSINI_TRANSPORT", "") == "fifo":
        return False
    return os.path.exists(os.path.join(pipes_dir, SOCKET_NAME))


def run_import(parsed: Import, pipes_dir: str, data: bytes, out: Out, err: Err) -> int:
    """`--import FILE [--replace] [--check]` of the crontab `data`."""
    from cassini import crontab

    name = "<stdin>" if parsed.path == "-" else parsed.path
    try:
        entries, problems, warnings = crontab.parse(data, local_context())
        for warning in warnings:
            err(f"cassini: {name}: warning: {warning}\n")
        if problems:
            for problem in problems:
                err(f"cassini: {name}:{problem.line}: {problem.reason}\n")
            lines = "line was" if len(problems) == 1 else "lines were"
            err(f"cassini: nothing imported: {len(problems)} {lines} refused\n")
            return 1
        current: list[TaskEntry] = []
        if parsed.replace:
            found = fetch(pipes_dir)
            if isinstance(found, str):
                err(f"cassini: {found}; nothing changed\n")
                return 1
            current = found
        result = plan(current, entries, parsed.replace)
        if parsed.check:
            return out(describe(result, data.split(b"\n")))
        if not parsed.replace and not _has_socket(pipes_dir):
            if all(entry.task.is_course for entry in entries):
                return _create_each(pipes_dir, name, entries, out, err)
            err(
                f"cassini: {name}: a task says more than the named pipes carry (a day of "
                "month, a month, @reboot, a zone, a setting or input): it needs saturnd's "
                "socket, and there is none; nothing changed\n"
            )
            return 1
        hold_ctrl_c()
    except KeyboardInterrupt:
        err("cassini: interrupted: nothing changed\n")
        return INTERRUPTED
    return apply(pipes_dir, result, out, err, quiet=not parsed.replace)
