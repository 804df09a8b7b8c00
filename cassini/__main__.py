"""cassini's entry point: arguments -> one exchange with saturnd -> output, exit status.

This module owns the program's edge: the default pipes directory, writing the outcome to
stdout/stderr, and turning every failure into one line on stderr and an exit status.

Rules:
- Exit 0 on an OK reply; 1 on an error reply, bad arguments, or when the daemon cannot
  be reached or answers badly; 130 on Ctrl-C. Never a traceback.
- Output bytes go to `sys.stdout.buffer` unchanged (task output may hold any byte).
- Imports are deferred until needed so that `cassini -h` starts fast (see cli.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["default_pipes_dir", "main"]


def default_pipes_dir() -> str:
    """`/tmp/<USERNAME>/saturnd/pipes`, USERNAME being the login name of the user."""
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


def _run(args: Sequence[str]) -> int:
    from cassini import cli

    try:
        parsed = cli.parse_args(args)
    except cli.UsageError as error:
        _error(f"cassini: {error}\n{cli.USAGE}")
        return 1
    if isinstance(parsed, cli.Help):
        return _write_stdout(cli.USAGE.encode())

    import time

    from cassini import transport

    pipes_dir = default_pipes_dir() if parsed.pipes_dir is None else parsed.pipes_dir
    try:
        reply = transport.exchange(pipes_dir, parsed.request)
    except transport.TransportError as error:
        _error(f"cassini: {error}\n")
        return 1
    except OSError as error:  # not foreseen by transport; still one line, not a traceback
        _error(f"cassini: {error}\n")
        return 1
    outcome = cli.render(parsed.request, reply, time.localtime)
    status = _write_stdout(outcome.stdout) if outcome.stdout else 0
    if outcome.stderr:
        _error(outcome.stderr)
    return outcome.status or status


def main(args: Sequence[str] | None = None) -> int:
    """Run cassini with `args` (default: the process's arguments); return the exit status."""
    try:
        return _run(sys.argv[1:] if args is None else args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
