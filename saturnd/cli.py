"""saturnd's command line: options -> a running daemon, or one line and an exit status.

`saturnd [-p PIPES_DIR] [-s STATE_DIR] [-f] [--clock FILE] [--max-output BYTES]
[--keep-outputs N] [-h]`
`saturnd [-p PIPES_DIR] [-s STATE_DIR] --install-unit [--force]`
`saturnd [-p PIPES_DIR] [-s STATE_DIR] status [-p PIPES_DIR] [-s STATE_DIR] [--json]
[--host DEST]...` (--host: the same asked of each DEST over ssh, by cassini.remote)
`saturnd [-p PIPES_DIR] [-s STATE_DIR] stop [-p PIPES_DIR] [-s STATE_DIR]`
`saturnd --version`

Every failure at start-up is one line on stderr and exit status 1, never a traceback.
A second daemon on the same state directory says so (with its pid) and exits 0.
`status` exits 0 when a daemon runs, 3 when none does (LSB), 1 when it cannot tell;
`stop` exits 0 once the daemon has exited, 3 when none runs, 1 when it cannot stop it.
`-p` and `-s` work before a sub-command and after it (after wins).
A usage error (exit 2) shows the usage of the command it concerns, the main one or a
sub-command's, then one line: the error and where the help is.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from saturnd import __version__
from saturnd.history import DEFAULT_KEEP_OUTPUTS
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


USAGE = """saturnd [-p PIPES_DIR] [-s STATE_DIR] [-f] [--clock FILE] [--max-output BYTES]
               [--keep-outputs N]
       saturnd [-p PIPES_DIR] [-s STATE_DIR] --install-unit [--force]
       saturnd [-p PIPES_DIR] [-s STATE_DIR] status [--json] [--host DEST]...
       saturnd [-p PIPES_DIR] [-s STATE_DIR] stop
       saturnd -h | --version"""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are short: its own one-line usage, the error,
    and where the help is (the sub-commands get one each, not the main usage)."""

    def error(self, message: str) -> NoReturn:
        usage = self.format_usage().rstrip("\n")
        self.exit(2, f"{usage}\n{self.prog}: {message} (see `{self.prog} -h`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Lists each sub-command as an option-like line, without argparse's
    `{status,stop}` heading line above them."""

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(map(self._format_action, action._get_subactions()))
        return super()._format_action(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="saturnd",
        usage=USAGE,
        description="A per-user cron daemon: runs the tasks that cassini creates.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"saturnd {__version__}",
        help="print the version and exit",
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
    parser.add_argument(
        "--keep-outputs",
        metavar="N",
        type=_run_count,
        default=DEFAULT_KEEP_OUTPUTS,
        help="keep the outputs of each task's last N runs (1: the last run's only; "
        f"default {DEFAULT_KEEP_OUTPUTS})",
    )
    add_unit_and_commands(parser)
    return parser


def _whole_number(text: str, unit: str, least: int) -> int:
    """A whole number of `unit`, `least` or more, or an argparse error saying why."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of {unit}: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
    return value


def _run_count(text: str) -> int:
    """A --keep-outputs value: a whole number of runs, 1 or more."""
    return _whole_number(text, "runs", 1)


def _byte_count(text: str) -> int:
    """A --max-output value: a whole number of bytes, 0 or more."""
    return _whole_number(text, "bytes", 0)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command line's options; a usage error exits 2 through the parser it concerns."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse leaves what a sub-command did not know to the main parser, which
        # would print the main usage: blame the sub-command when all of it came after.
        after = argv[argv.index(args.command) + 1 :] if args.command in argv else []
        culprit = args.command_parser if unknown and set(unknown) <= set(after) else parser
        culprit.error(f"unrecognized arguments: {' '.join(unknown)}")
    check_combinations(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `saturnd` console script."""
    args = parse(build_parser(), sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "status":
            return show_status(args)
        if args.command == "stop":
            return stop_daemon(args)
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
        keep_outputs=args.keep_outputs,
        pipes_base=pipes_base,
    )
    return supervisor.run()


# --- the sub-commands and --install-unit ----------------------------------------------


def add_unit_and_commands(parser: argparse.ArgumentParser) -> None:
    """The options and the sub-commands that do not start a daemon."""
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
    # prog: the default derives it from the usage, which is ours and multi-line.
    commands = parser.add_subparsers(
        dest="command", title="commands", prog="saturnd", metavar="COMMAND"
    )
    status = commands.add_parser(
        "status",
        # Written out: argparse would wrap it, and a usage error shows one usage line.
        usage="saturnd status [-h] [-p PIPES_DIR] [-s STATE_DIR] [--json] [--host DEST]...",
        help="show whether a daemon runs for the state directory, and how it is doing",
        description="Show whether a saturnd runs for the state directory: its pid, "
        "uptime, memory and CPU, the number of tasks, the runs in progress, its "
        "directories and log. Exit status 0 if it runs, 3 if not, 1 on error.",
    )
    _add_directories(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="DEST",
        help="ask DEST's saturnd over ssh ($CASSINI_SSH, else ssh) instead; repeatable: "
        "each line is then prefixed 'DEST: ', --json gives one document keyed by DEST",
    )
    status.set_defaults(command_parser=status)
    stop = commands.add_parser(
        "stop",
        help="stop the daemon of the state directory and wait until it has exited",
        description="Ask the daemon of the state directory to stop (TERMINATE, through "
        "the pipes directory it listens on) and wait until it has exited. Runs already "
        "started finish and are recorded. Exit status 0 when it stopped, 3 when none "
        "runs, 1 on error.",
    )
    _add_directories(stop)
    stop.set_defaults(command_parser=stop)


def _add_directories(command: argparse.ArgumentParser) -> None:
    """-p and -s after a sub-command, as before it."""
    # SUPPRESS: given only before the sub-command, the main parser's value must stay.
    command.add_argument(
        "-p",
        dest="pipes_dir",
        metavar="PIPES_DIR",
        default=argparse.SUPPRESS,
        help=f"the daemon's pipes directory (default ${PIPES_DIR_VARIABLE}, "
        "else /tmp/USERNAME/saturnd/pipes)",
    )
    command.add_argument(
        "-s",
        dest="state_dir",
        metavar="STATE_DIR",
        default=argparse.SUPPRESS,
        help="the daemon's state directory (default $XDG_STATE_HOME/saturnd)",
    )


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that mean nothing together (argparse's usage error, exit 2)."""
    if args.command is not None:
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
            args.command_parser.error(f"does not take {', '.join(extra)}")
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

    if args.hosts:
        return _remote_status(args)
    report = status.gather(resolve_paths(args))
    now = time.time()
    _write_out(status.to_json(report, now) if args.json else status.to_text(report, now))
    return status.exit_status(report)


def _remote_status(args: argparse.Namespace) -> int:
    """`status --host DEST...`: `saturnd [-p P] [-s S] status [--json]` run on each DEST
    (cassini.remote), the directories given here passed on as they were written."""
    from cassini import remote

    options = []
    if args.pipes_dir:
        options += ["-p", args.pipes_dir]
    if args.state_dir:
        options += ["-s", args.state_dir]
    options += ["status"] + ["--json"] * args.json

    def write_err(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def write_out(data: bytes) -> int:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0

    try:
        return remote.run(
            args.hosts,
            "saturnd",
            options,
            json_output=args.json,
            stdin=None,
            write_out=write_out,
            write_err=write_err,
        )
    except remote.RemoteUsageError as error:
        raise StatusError(str(error)) from None


def stop_daemon(args: argparse.Namespace) -> int:
    """`saturnd stop`: 0 once the daemon has exited, 3 when none runs."""
    from saturnd.status import EXIT_NOT_RUNNING
    from saturnd.stop import StopError, stop

    paths = resolve_paths(args)
    try:
        pid = stop(paths.pipes_dir, paths.state_dir, paths.pid_file)
    except StopError as error:
        print(f"saturnd: {error}", file=sys.stderr)
        return 1
    if pid is None:
        print(f"saturnd: no saturnd runs for {paths.state_dir}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    _write_out(f"stopped saturnd (pid {pid}) of {paths.state_dir}\n")
    return 0


def install_unit(args: argparse.Namespace) -> int:
    """`saturnd --install-unit`: write the unit, then say what to run next."""
    from saturnd import unit
    from saturnd.status import StatusError, find_daemon

    options: list[str] = []
    if args.pipes_dir or os.environ.get(PIPES_DIR_VARIABLE):
        # The systemd user manager does not have this shell's variable: pin the choice.
        options += ["-p", str(resolve_paths(args).pipes_dir)]
    if args.state_dir:
        options += ["-s", os.path.abspath(args.state_dir)]
    systemd = unit.probe_systemd(os.environ.get("PATH"))
    if not systemd.running:
        # Nothing here would read the unit: give the way that works instead.
        reason = f"systemd is not running on this machine ({systemd.reason}); no unit written"
        print(f"saturnd: {reason}", file=sys.stderr)
        _write_out(unit.without_systemd(options))
        return 1
    command = [*unit.saturnd_program(sys.argv[0], sys.executable), "-f", *options]
    if not args.state_dir and os.path.isabs(os.environ.get("XDG_STATE_HOME", "")):
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
    stop = shlex.join(["saturnd", *options, "stop"])
    steps = unit.next_steps(
        directory / unit.UNIT_NAME, written, username(), pid, stop, systemd.reason, options
    )
    _write_out(steps)
    return 0
