"""cassini: the command-line client of saturnd.

Importing the package makes Ctrl-C quiet until `cassini.__main__.main` calls
`restore_ctrl_c`: a SIGINT while the modules load ends the process with one line and
status 130 instead of a KeyboardInterrupt traceback (nothing has been sent yet, so
nothing changed). `_signal` is built in and already loaded: this costs no import
(`signal` would cost half a millisecond of every start).
"""

import _signal  # type: ignore[import-not-found]  # built in, without type stubs
import os


def _interrupted_while_loading(signum: int, frame: object) -> None:
    os.write(2, b"cassini: interrupted: nothing changed\n")
    os._exit(130)


def restore_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt again (unless it was ignored from the start)."""
    if _signal.getsignal(_signal.SIGINT) is _interrupted_while_loading:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


def _starting() -> bool:
    """True when this import starts the program (bin/cassini, `python -m cassini`), not
    when a library user (a test run) imports the package: its Ctrl-C stays its own."""
    import sys

    return os.path.basename(sys.argv[0]) == "cassini" or sys.argv[0] == "-m"


if _starting() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted_while_loading)
