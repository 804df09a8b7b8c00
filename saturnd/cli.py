"""saturnd's command line: options -> a running daemon, or one line and an exit status.

`saturnd [-p PIPES_DIR] [-s STATE_DIR] [-f] [--clock FILE] [--max-output BYTES] [-h]`
`saturnd [-p PIPES_DIR] [-s STATE_DIR] --install-unit [--force]`
`saturnd [-p PIPES_DIR] [-s STATE_DIR] status [-p PIPES_DIR] [-s STATE_DIR] [--json]`

Every failure at start-up is one line on stderr and exit status 1, never a traceback.
A second daemon on the same state directory says so (with its pid) and exits 0.
`status` exits 0 when a daemon runs, 3 when none does (LSB), 1 when it cannot tell.
`-p` and `-s` work before `status` and after it (after wins).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import sys
from pathlib import Path

from saturnd.startup import (
    PIPES_DIR_VARIABLE,
    DaemonError,
    Paths,
    check_store,
    default_state_dir,
    detach,
    make_fifos,
    pipes_dir_choice,
    pipes_in_use,
    prepare,
    running_pid,
    setup_logging,
    take_lock,
    take_pipes_lock,
)
from saturnd.status import StatusError
from saturnd.unit import UnitError

DEFAULT_MAX_OUTPUT = 1 << 20


def username() -> str:
    """The login name of the user running us."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saturnd",
        description="A per-user cron daemon: runs the tasks that cassini creates.",
    )
    parser.add_argument(
        "-p",
        dest="pipes_dir",
        metavar="PIPES_DIR",
        help=f"directory of the FIFOs and the socket (default ${PIPES_DIR_VARIABLE}, "
        "else /tmp/USERNAME/saturnd/pipes)",
    )
    parser.add_argument(
        "-s",
        dest="state_dir",
        metavar="STATE_DIR",
        help="directory of tasks, history and log "
        "(default $XDG_STATE_HOME/saturnd or ~/.local/state/saturnd)",
    )
    parser.add_argument(
        "-f",
        dest="foreground",
        action="store_true",
        help="stay in the foreground and log to stderr too",
    )
    parser.add_argument(
        "--clock",
        metavar="FILE",
        help="read the time (epoch seconds) from FILE instead of the system clock (tests)",
    )
    parser.add_argument(
        "--max-output",
        metavar="BYTES",
        type=_byte_count,
        default=DEFAULT_MAX_OUTPUT,
        help="keep at most BYTES of each run's stdout and of its stderr; the rest is "
        f"discarded (default {DEFAULT_MAX_OUTPUT})",
    )
    add_unit_and_status(parser)
    return parser


def _byte_count(text: str) -> int:
    """A --max-output value: a whole number of bytes, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `saturnd` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    try:
        if args.command == "status":
            return show_status(args)
        if args.install_unit:
            return install_unit(args)
        return start(args)
    except (DaemonError, StatusError, UnitError) as error:
        print(f"saturnd: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def start(args: argparse.Namespace) -> int:
    """Check, lock, load, detach, supervise.

    Locks in this order: the state directory's pid file (busy: "already running", exit
    0), then the pipes directory's lock (busy: another daemon serves these FIFOs, exit 1).
    """
    from saturnd.clock import make_clock
    from saturnd.supervisor import Locks, Supervisor

    pipes_dir, pipes_base = pipes_dir_choice(args.pipes_dir, os.environ, username())
    state_dir = Path(os.path.abspath(args.state_dir)) if args.state_dir else default_state_dir()
    paths = Paths(pipes_dir, state_dir)
    try:
        clock = make_clock(args.clock)
    except OSError as error:
        raise DaemonError(str(error)) from error
    notes = prepare(paths, pipes_base)
    pid_fd = take_lock(paths.pid_file, notes)
    if pid_fd is None:
        pid = running_pid(paths.pid_file)
        where = f" (pid {pid})" if pid else ""
        print(f"saturnd: already running{where} for {state_dir}", file=sys.stderr)
        return 0
    try:
        pipes_fd = take_pipes_lock(paths.pipes_lock, notes)
    except DaemonError:
        os.close(pid_fd)
        raise
    if pipes_fd is None:
        os.close(pid_fd)
        raise DaemonError(pipes_in_use(paths))
    logger = setup_logging(paths.log_file, args.foreground)
    for note in notes:
        logger.warning("%s", note)
    check_store(paths)
    make_fifos(paths, logger)
    if args.foreground:
        os.umask(0o077)
    else:
        detach()
    supervisor = Supervisor(
        paths,
        clock,
        logger,
        Locks(pid_fd, pipes_fd),
        max_output=args.max_output,
        pipes_base=pipes_base,
    )
    return supervisor.run()


# --- status and --install-unit ------------------------------------------------------


def add_unit_and_status(parser: argparse.ArgumentParser) -> None:
    """The options and the subcommand that do not start a daemon."""
    parser.add_argument(
        "--install-unit",
        action="store_true",
        help="write the systemd user unit saturnd.service (running this saturnd -f with "
        "the -p and -s given here) and print how to enable it",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --install-unit: replace an existing, different unit file",
    )
    commands = parser.add_subparsers(dest="command", metavar="[status]")
    status = commands.add_parser(
        "status",
        help="show whether a daemon runs for the state directory, and how it is doing",
        description="Show whether a saturnd runs for the state directory: its pid, "
        "uptime, memory and CPU, the number of tasks, the runs in progress, its "
        "directories and log. Exit status 0 if it runs, 3 if not, 1 on error.",
    )
    # SUPPRESS: given only before `status`, the main parser's value must stay.
    status.add_argument(
        "-p",
        dest="pipes_dir",
        metavar="PIPES_DIR",
        default=argparse.SUPPRESS,
        help=f"the daemon's pipes directory (default ${PIPES_DIR_VARIABLE}, "
        "else /tmp/USERNAME/saturnd/pipes)",
    )
    status.add_argument(
        "-s",
        dest="state_dir",
        metavar="STATE_DIR",
        default=argparse.SUPPRESS,
        help="the daemon's state directory (default $XDG_STATE_HOME/saturnd)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that mean nothing together (argparse's usage error, exit 2)."""
    if args.command == "status":
        extra = [
            name
            for name, given in (
                ("-f", args.foreground),
                ("--clock", args.clock),
                ("--install-unit", args.install_unit),
                ("--force", args.force),
            )
            if given
        ]
        if extra:
            parser.error(f"status does not take {', '.join(extra)}")
    elif args.install_unit:
        if args.clock:
            parser.error("--install-unit does not take --clock (it is for tests)")
    elif args.force:
        parser.error("--force goes with --install-unit")


def resolve_paths(args: argparse.Namespace) -> Paths:
    """The pipes and state directories of the command line, absolute, as `start` uses."""
    pipes_dir, _ = pipes_dir_choice(args.pipes_dir, os.environ, username())
    state_dir = Path(os.path.abspath(args.state_dir)) if args.state_dir else default_state_dir()
    return Paths(pipes_dir, state_dir)


def _write_out(text: str) -> None:
    """Print `text` even if a path in it is not valid UTF-8 (as the OS gave it)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()


def show_status(args: argparse.Namespace) -> int:
    """`saturnd status`: the report on stdout; 0 running, 3 not running."""
    import time

    from saturnd import status

    report = status.gather(resolve_paths(args))
    now = time.time()
    _write_out(status.to_json(report, now) if args.json else status.to_text(report, now))
    return status.exit_status(report)


def install_unit(args: argparse.Namespace) -> int:
    """`saturnd --install-unit`: write the unit, then say what to run next."""
    from saturnd import unit
    from saturnd.status import StatusError, find_daemon

    command = [*unit.saturnd_program(sys.argv[0], sys.executable), "-f"]
    if args.pipes_dir or os.environ.get(PIPES_DIR_VARIABLE):
        # The systemd user manager does not have this shell's variable: pin the choice.
        command += ["-p", str(resolve_paths(args).pipes_dir)]
    if args.state_dir:
        command += ["-s", os.path.abspath(args.state_dir)]
    elif os.path.isabs(os.environ.get("XDG_STATE_HOME", "")):
        # The systemd user manager may not have the variable this shell has: pin the
        # state directory, so that the daemon and `saturnd status` agree on it.
        command += ["-s", str(default_state_dir())]
    text = unit.unit_text(command)
    directory = unit.unit_dir(os.environ, Path.home())
    written = unit.install_unit(directory, text, force=args.force)
    paths = resolve_paths(args)
    try:
        pid = find_daemon(paths.pid_file)
    except StatusError:
        pid = None  # only for a note: the unit is written, which is what was asked
    if pid is not None and unit.started_by_systemd(pid):
        pid = None
    pinned = args.pipes_dir or os.environ.get(PIPES_DIR_VARIABLE)
    stop = "cassini -q" + (f" -p {shlex.quote(str(paths.pipes_dir))}" if pinned else "")
    _write_out(unit.next_steps(directory / unit.UNIT_NAME, written, username(), pid, stop))
    return 0
