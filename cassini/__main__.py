"""cassini's entry point: arguments -> one exchange with saturnd -> output, exit status.

This module owns the program's edge: the default pipes directory (-p wins over
$SATURND_PIPES_DIR, which wins over /tmp/USERNAME/saturnd/pipes), writing the outcome to
stdout/stderr, and turning every failure into one line on stderr and an exit status.

Rules:
- Exit 0 on an OK reply; 1 on an error reply, bad arguments, or when the daemon cannot
  be reached or answers badly; 130 on Ctrl-C. Never a traceback. Bad arguments print
  two lines: `cassini: <reason>` and where the usage is (`cli.TRY_HELP`).
- Output bytes go to `sys.stdout.buffer` unchanged (task output may hold any byte).
- Imports are deferred until needed so that `cassini -h` starts fast (see cli.py).
- A created task whose program cassini cannot find (cassini.program, with the task's
  PATH) gets a warning on stderr after its id: the task exists, the exit status stays 0.
- Listings ask LIST-EX; the FIFOs get LIST instead, and a saturnd older than LIST-EX
  (it drops the request) is asked again with LIST. `-o`/`-e` ask OUTPUT-EX on the
  socket (a cut output then says so on stderr), falling back the same way. A whole
  task that cannot be created for want of the socket is one line saying what of it
  needs the socket.
- `-l -v` asks LIST-EX, then each task's HISTORY (one exchange per task, on the socket
  only), and colours failures only when stdout is a terminal and NO_COLOR is unset.
- `--import` reads the whole crontab; cassini.importing checks every line and applies
  them (a refused line creates nothing); `--edit` is cassini.edit's.
- `--export-systemd DIR` writes cassini.systemdexport's files into DIR and its warnings
  (fields systemd cannot say) on stderr; exit 1 only when a task was left out.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from cassini.cli import ExportSystemd, Import
    from saturnd.protocol import Reply, Request
    from saturnd.runrecord import RunRecord

__all__ = ["PIPES_DIR_VARIABLE", "default_pipes_dir", "main"]


PIPES_DIR_VARIABLE = "SATURND_PIPES_DIR"
"""The environment variable naming the default pipes directory (saturnd reads it too)."""


def default_pipes_dir() -> str:
    """The pipes directory without -p: $SATURND_PIPES_DIR when set and not empty, else
    `/tmp/<USERNAME>/saturnd/pipes`, USERNAME being the login name of the user."""
    # Empty counts as unset, as for most variables: `SATURND_PIPES_DIR= cassini` must not
    # mean the current directory.
    chosen = os.environ.get(PIPES_DIR_VARIABLE)
    if chosen:
        return chosen
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        # A uid without a passwd entry (containers): trust the environment, then the uid.
        name = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    return os.path.join("/tmp", name, "saturnd", "pipes")


def _error(message: str) -> None:
    """One line on stderr; a closed stderr is not worth a traceback."""
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`.

    Straight to the descriptor, in a loop: `sys.stdout.buffer` is a raw FileIO under
    `python -u` (PYTHONUNBUFFERED), whose write() may write only part of a large output.
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # stdout inherited in non-blocking mode
            import select

            select.select([], [fd], [])
            continue
        view = view[written:]


def _write_stdout(data: bytes) -> int:
    """Write `data` unchanged; 0, or 1 when the reader has gone away (`cassini | head`)."""
    if sys.stdout is None:  # started with descriptor 1 closed
        return 1
    try:
        sys.stdout.flush()
        _write_all(sys.stdout.fileno(), data)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (OSError, ValueError) as error:
        _error(f"cassini: cannot write the output: {error}\n")
        return 1
    return 0


def _read_crontab(path: str) -> bytes:
    """The bytes of FILE, or of standard input for `-`; raises OSError."""
    if path != "-":
        with open(path, "rb") as file:
            return file.read()
    if sys.stdin is None:  # started with descriptor 0 closed
        raise OSError(9, "standard input is closed")
    return sys.stdin.buffer.read()


def _import(parsed: Import) -> int:
    """`--import FILE`: read it whole, then cassini.importing checks and applies it."""
    from cassini import importing

    name = "<stdin>" if parsed.path == "-" else parsed.path
    try:
        try:
            data = _read_crontab(parsed.path)
        except OSError as error:
            _error(f"cassini: cannot read {name}: {error.strerror or error}\n")
            return 1
        pipes_dir = default_pipes_dir() if parsed.pipes_dir is None else parsed.pipes_dir
        return importing.run_import(parsed, pipes_dir, data, _write_stdout, _error)
    except KeyboardInterrupt:
        # run_import lets none out once something may have changed (it says what).
        _error("cassini: interrupted: nothing changed\n")
        return 130


def _edit(pipes_dir: str | None) -> int:
    """`--edit`: cassini.edit's loop."""
    from cassini import edit

    try:
        directory = default_pipes_dir() if pipes_dir is None else pipes_dir
        return edit.run(directory, _write_stdout, _error)
    except KeyboardInterrupt:
        # edit.run lets none out once something may have changed.
        _error("cassini: interrupted: nothing changed\n")
        return 130


def _export_systemd(parsed: ExportSystemd) -> int:
    """`--export-systemd DIR`: LIST-EX, then cassini.systemdexport's files written into
    DIR (made if missing), every warning on stderr. Exit 1 when a task was not written
    (its warning says so) or DIR cannot be written."""
    from cassini import importing, systemdexport

    pipes_dir = default_pipes_dir() if parsed.pipes_dir is None else parsed.pipes_dir
    found = importing.fetch(pipes_dir)
    if isinstance(found, str):
        _error(f"cassini: {found}\n")
        return 1
    import time

    files, warnings = systemdexport.export(found, time.time())
    try:
        os.makedirs(parsed.directory, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(parsed.directory, name), "wb") as file:
                file.write(data)
    except OSError as error:
        _error(f"cassini: cannot write into {parsed.directory}: {error.strerror or error}\n")
        return 1
    _error("".join(f"cassini: warning: {line}\n" for line in warnings))
    written = {name.split(".")[0] for name in files if name.endswith(".timer")}
    return 0 if len(written) == len(found) else 1


def _remote(args: Sequence[str]) -> int | None:
    """`--host DEST...`: the arguments checked here, then run on each DEST (cassini.remote);
    None when there is no --host among the options after all."""
    from cassini import cli, remote

    try:
        hosts, rest = remote.split_hosts(args, cli.OPTIONS, cli.LONG_OPTIONS)
        if not hosts:
            return None
        parsed = cli.parse_args(rest)
    except (cli.UsageError, remote.RemoteUsageError) as error:
        _error(f"cassini: {error}\n{cli.TRY_HELP}\n")
        return 1
    if isinstance(parsed, cli.Help):
        return _write_stdout(cli.USAGE.encode())
    stdin = None
    if isinstance(parsed, cli.Import):
        # The file is read here and the remote reads it on its standard input.
        name = "<stdin>" if parsed.path == "-" else parsed.path
        try:
            stdin = _read_crontab(parsed.path)
        except OSError as error:
            _error(f"cassini: cannot read {name}: {error.strerror or error}\n")
            return 1
        rest = ["--import", "-"]
        rest += [] if parsed.pipes_dir is None else ["-p", parsed.pipes_dir]
        rest += ["--replace"] * parsed.replace + ["--check"] * parsed.check
    elif isinstance(parsed, cli.Edit):
        if len(hosts) > 1:
            _error(f"cassini: --edit takes one --host\n{cli.TRY_HELP}\n")
            return 1
        try:
            return remote.edit(hosts[0], parsed.pipes_dir, _write_stdout, _error)
        except remote.RemoteUsageError as error:
            _error(f"cassini: {error}\n")
            return 1
    json_output = isinstance(parsed, cli.Invocation) and parsed.json
    try:
        return remote.run(
            hosts,
            "cassini",
            rest,
            json_output=json_output,
            stdin=stdin,
            write_out=_write_stdout,
            write_err=_error,
        )
    except remote.RemoteUsageError as error:
        _error(f"cassini: {error}\n")
        return 1


def _run(args: Sequence[str]) -> int:
    from cassini import cli

    # Only `--ho...` can name --host (`--h` alone is ambiguous with --help): the check
    # keeps the plain invocations from loading cassini.remote.
    if any(word.startswith("--ho") for word in args):
        status = _remote(args)
        if status is not None:
            return status
    try:
        parsed = cli.parse_args(args)
    except cli.UsageError as error:
        # The reason and where the usage is: 29 lines of usage would bury the reason.
        _error(f"cassini: {error}\n{cli.TRY_HELP}\n")
        return 1
    if isinstance(parsed, cli.Help):
        return _write_stdout(cli.USAGE.encode())
    if isinstance(parsed, cli.Import):
        return _import(parsed)
    if isinstance(parsed, cli.Edit):
        return _edit(parsed.pipes_dir)
    if isinstance(parsed, cli.ExportSystemd):
        return _export_systemd(parsed)

    import time

    from cassini import transport

    pipes_dir = default_pipes_dir() if parsed.pipes_dir is None else parsed.pipes_dir
    try:
        reply = _exchange(pipes_dir, parsed.request)
    except transport.NoSocketError as error:
        _error(f"cassini: {_needs_socket(parsed.request)}{error}\n")
        return 1
    except transport.TransportError as error:
        if parsed.mode == "version":  # ours, at least
            from saturnd import __version__

            _write_stdout(f"cassini {__version__}\n".encode())
        _error(f"cassini: {error}\n")
        return 1
    except OSError as error:  # not foreseen by transport; still one line, not a traceback
        _error(f"cassini: {error}\n")
        return 1
    histories = None
    if parsed.mode == "table":
        histories = _histories(pipes_dir, reply)
    color = parsed.mode == "table" and _color()
    from cassini.replies import respond

    outcome = respond(parsed, reply, time.localtime, time.time(), histories=histories, color=color)
    status = _write_stdout(outcome.stdout) if outcome.stdout else 0
    if outcome.stderr:
        _error(outcome.stderr)
    if outcome.status == 0:
        _warn_unreachable(parsed.request)
    return outcome.status or status


def _exchange(pipes_dir: str, request: Request) -> Reply:
    """One exchange; a listing falls back to the course's LIST where LIST-EX is unknown,
    `-o`/`-e` (sent as OUTPUT-EX, to learn whether the output was cut) to STDOUT/STDERR.

    Over the FIFOs the transport sends the course's request itself. A saturnd older than
    the extension (still running after an upgrade) drops it on the socket, closing the
    connection without a reply or after an `ER EM`: it is asked again the course's way.
    """
    from cassini import cli, transport
    from saturnd.protocol import (
        ERR_MESSAGE,
        ErrorReply,
        ListExRequest,
        ListRequest,
        OutputExRequest,
        StderrRequest,
        StdoutRequest,
    )

    fallback = cli.fifo_request(request)
    course: Request = ListRequest()
    if isinstance(request, StdoutRequest | StderrRequest):
        # OUTPUT-EX for the last run says whether the output was cut; the course's
        # request goes over the FIFOs, and to a saturnd older than OUTPUT-EX.
        course, fallback = request, request
        request = OutputExRequest(request.task_id, 1 if isinstance(request, StdoutRequest) else 2)
    elif not isinstance(request, ListExRequest):
        return transport.exchange(pipes_dir, request, fifo_request=fallback)
    try:
        reply = transport.exchange(pipes_dir, request, fifo_request=fallback)
    except transport.NoReplyError:
        return transport.exchange(pipes_dir, course)
    if isinstance(reply, ErrorReply) and reply.code == ERR_MESSAGE:
        return transport.exchange(pipes_dir, course)
    return reply


def _histories(pipes_dir: str, reply: Reply) -> dict[int, tuple[RunRecord, ...] | None]:
    """`-l -v`: each listed task's HISTORY, None where the daemon cannot say (no socket, a
    saturnd without HISTORY, a task removed meanwhile): the table shows `-` there."""
    from cassini import transport
    from saturnd.protocol import HistoryReply, HistoryRequest, ListExReply, ListReply

    histories: dict[int, tuple[RunRecord, ...] | None] = {}
    if not isinstance(reply, ListReply | ListExReply):
        return histories
    for task in reply.tasks:
        try:
            answer = transport.exchange(pipes_dir, HistoryRequest(task.task_id))
        except transport.NoSocketError:
            break  # the FIFOs (a C daemon): no task has a HISTORY to ask for
        except transport.TransportError:
            histories[task.task_id] = None
            continue
        histories[task.task_id] = answer.runs if isinstance(answer, HistoryReply) else None
    return histories


def _color() -> bool:
    """Colour for the status table: stdout is a terminal and NO_COLOR is unset or empty
    (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stdout is not None and os.isatty(sys.stdout.fileno())
    except (OSError, ValueError):
        return False


def _needs_socket(request: Request) -> str:
    """Why a request that cannot travel over the FIFOs was made: `this task has ...: `."""
    from saturnd.protocol import CreateExRequest

    if not isinstance(request, CreateExRequest):
        return ""
    from cassini.creating import beyond_course

    what = beyond_course(request.task)
    return f"this task has {', '.join(what)}: only saturnd's socket can carry it, and "


def _warn_unreachable(request: object) -> None:
    """After a creation: a warning on stderr when the task's program will not be found."""
    from saturnd.protocol import CreateExRequest, CreateRequest

    env: tuple[tuple[bytes, bytes], ...] = ()
    if isinstance(request, CreateRequest):
        argv = request.argv
    elif isinstance(request, CreateExRequest):
        argv, env = request.task.argv, request.task.extras.env
    else:
        return
    from cassini import program

    problem = program.check(argv, env)
    if problem is not None:
        _error(f"cassini: warning: {problem}\n")


def main(args: Sequence[str] | None = None) -> int:
    """Run cassini with `args` (default: the process's arguments); return the exit status."""
    from cassini import restore_ctrl_c

    restore_ctrl_c()  # Ctrl-C is KeyboardInterrupt from here (quiet while loading)
    try:
        return _run(sys.argv[1:] if args is None else args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
