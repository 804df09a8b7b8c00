"""saturnd's command line: options -> a running daemon, or one line and an exit status.

`saturnd [-p PIPES_DIR] [-s STATE_DIR] [-f] [--clock FILE] [-h]`

Every failure at start-up is one line on stderr and exit status 1, never a traceback.
A second daemon on the same state directory says so (with its pid) and exits 0.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path

from saturnd.daemon import (
    Daemon,
    DaemonError,
    Paths,
    default_pipes_dir,
    default_state_dir,
    make_fifos,
    open_fds,
    open_store,
    prepare,
    running_pid,
    setup_logging,
    take_lock,
)

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
        help="directory of the two FIFOs (default /tmp/USERNAME/saturnd/pipes)",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `saturnd` console script."""
    args = build_parser().parse_args(argv)
    try:
        return start(args)
    except DaemonError as error:
        print(f"saturnd: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def start(args: argparse.Namespace) -> int:
    """Check, lock, load, detach, supervise."""
    from saturnd.clock import make_clock

    if args.pipes_dir:
        paths_base = None
        pipes_dir = Path(os.path.abspath(args.pipes_dir))
    else:
        pipes_dir, base = default_pipes_dir(username())
        paths_base = base
    state_dir = Path(os.path.abspath(args.state_dir)) if args.state_dir else default_state_dir()
    paths = Paths(pipes_dir, state_dir)
    try:
        clock = make_clock(args.clock)
    except OSError as error:
        raise DaemonError(str(error)) from error
    notes = prepare(paths, paths_base)
    lock_fd = take_lock(paths.pid_file)
    if lock_fd is None:
        pid = running_pid(paths.pid_file)
        where = f" (pid {pid})" if pid else ""
        print(f"saturnd: already running{where} for {state_dir}", file=sys.stderr)
        return 0
    logger = setup_logging(paths.log_file, args.foreground)
    for note in notes:
        logger.warning("%s", note)
    store = open_store(paths, logger)
    make_fifos(paths, logger)
    if not args.foreground:
        import daemon  # python-daemon

        context = daemon.DaemonContext(
            working_directory="/",
            umask=0o077,
            files_preserve=open_fds(),
            detach_process=True,
        )
        try:
            context.open()
        except Exception as error:  # python-daemon raises its own error types
            raise DaemonError(f"cannot detach: {error}") from error
    else:
        os.umask(0o077)
    supervisor = Daemon(paths, store, clock, logger, lock_fd, DEFAULT_MAX_OUTPUT)
    return supervisor.run()
