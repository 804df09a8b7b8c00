"""`--host DEST`: running cassini (or `saturnd status`) on other machines over ssh.

This module owns the rules of a remote invocation: which arguments are `--host`s, the
ssh command line that runs the rest remotely, and how the outcomes of several hosts are
merged into one output, one JSON document and one exit status. `run` is the thin I/O
loop that starts the ssh processes and writes the result.

Rules:
- `--host` is only seen among the options (parsing stops where `cassini.options.getopt`
  stops): after `-c COMMAND` it is the command's own word.
- The remote command line is one string, each argument `shlex.quote`d, that a POSIX
  remote shell splits back into exactly the original arguments: ssh joins its
  arguments with spaces and hands the result to the remote user's shell.
- ssh is `shlex.split($CASSINI_SSH)`, else `ssh`; DEST is passed as is, and one that
  starts with `-` is refused (ssh would read it as an option).
- One host: the remote's stdout bytes, stderr and exit status, unchanged. Several: run
  in parallel, then each host's output in the order the hosts were given, every line
  prefixed `HOST: ` (stdout and stderr each on their own stream); with `--json` one
  document `{"HOST": <the remote's JSON>, ...}`, `{"error": "..."}` for a host that
  failed; exit status 1 if any host failed.
- A failure is named on stderr: unreachable (ssh's 255), no cassini there (127),
  anything else with the remote's last line of stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import IO

from cassini.options import GetoptError, getopt

__all__ = [
    "SSH_VARIABLE",
    "check_host",
    "edit",
    "failure",
    "json_document",
    "prefixed",
    "remote_argv",
    "run",
    "split_hosts",
    "ssh_program",
]

SSH_VARIABLE = "CASSINI_SSH"
"""The environment variable holding the ssh command (split like a shell would)."""
UNREACHABLE = 255
"""ssh's own exit status for a failure to connect or authenticate."""
NOT_FOUND = 127
"""A POSIX shell's exit status for a command it cannot find."""


class RemoteUsageError(ValueError):
    """A bad `--host`; the message is one line."""


def split_hosts(
    args: Sequence[str], shortopts: str, longopts: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The `--host` values among the options of `args`, and `args` without them.

    Each option word is measured with `getopt` alone, so the words kept are the original
    ones, in order (an option that takes the next word keeps it). A word getopt refuses
    is kept: the caller's own parse reports it.
    """
    longs = tuple(longopts) if "host=" in longopts else (*longopts, "host=")
    hosts: list[str] = []
    kept: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--" or not word.startswith("-") or word == "-":
            kept.extend(args[index:])
            break
        taken = list(args[index : index + 1])
        try:
            found, _ = getopt(taken, shortopts, longs)
        except GetoptError as error:
            if not error.msg.endswith("requires argument") or index + 1 >= len(args):
                kept.extend(args[index:])
                break
            taken = list(args[index : index + 2])
            found, _ = getopt(taken, shortopts, longs)
        index += len(taken)
        if found and found[0][0] == "--host":
            hosts.append(check_host(found[0][1]))
        else:
            kept.extend(taken)
    return hosts, kept


def check_host(host: str) -> str:
    """`host`, unless ssh would not read it as a destination; raises `RemoteUsageError`."""
    if host == "" or host.startswith("-"):
        raise RemoteUsageError(f"--host needs a destination, not {host!r}")
    return host


def ssh_program(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The ssh command: $CASSINI_SSH split like a shell would, else `ssh`."""
    chosen = environ.get(SSH_VARIABLE, "")
    try:
        words = shlex.split(chosen)
    except ValueError as error:
        raise RemoteUsageError(f"${SSH_VARIABLE} cannot be split: {error}") from None
    return words or ["ssh"]


def remote_argv(ssh: Sequence[str], host: str, program: str, args: Sequence[str]) -> list[str]:
    """`SSH HOST 'PROGRAM ARGS...'`: one remote command line the remote shell splits back
    into exactly PROGRAM and ARGS."""
    return [*ssh, host, shlex.join([program, *args])]


def failure(host: str, program: str, status: int, stderr: bytes) -> str | None:
    """What went wrong on `host`, in words (no newline), or None when it succeeded."""
    if status == 0:
        return None
    if status == UNREACHABLE:
        return f"{host}: cannot reach the host (ssh exited with 255)"
    if status == NOT_FOUND:
        return f"{host}: no {program} on the remote PATH (exit status 127)"
    if status < 0:
        return f"{host}: ssh was killed by signal {-status}"
    lines = stderr.decode(errors="replace").strip().splitlines()
    said = f": {lines[-1]}" if lines else ""
    return f"{host}: {program} failed with exit status {status}{said}"


def prefixed(host: str, data: bytes) -> bytes:
    """Every line of `data` with `HOST: ` before it; a last line without its newline
    gets one, so that the next host's first line starts a line of its own."""
    if not data:
        return b""
    head = host.encode() + b": "
    lines = data.splitlines(keepends=True)
    return b"".join(head + (line if line.endswith(b"\n") else line + b"\n") for line in lines)


def json_document(outcomes: Sequence[tuple[str, int, bytes, str | None]]) -> bytes:
    """`{"HOST": <its JSON>, ...}` from (host, status, stdout, failure) in host order; a
    host that failed, or whose output is not JSON, is `{"error": "..."}`."""
    document: dict[str, object] = {}
    for host, _status, stdout, problem in outcomes:
        if problem is None:
            try:
                document[host] = json.loads(stdout)
                continue
            except ValueError:
                problem = f"{host}: the output is not JSON"
        document[host] = {"error": problem.removeprefix(f"{host}: ")}
    return json.dumps(document, ensure_ascii=True).encode("ascii") + b"\n"


def run(
    hosts: Sequence[str],
    program: str,
    args: Sequence[str],
    *,
    json_output: bool,
    stdin: bytes | None,
    write_out: Callable[[bytes], int],
    write_err: Callable[[str], None],
) -> int:
    """Run `program args` on every host; write the merged outcome; the exit status.

    `stdin` is what the remote reads on its standard input (`--import -`), or None for
    none (/dev/null: parallel ssh processes must not compete for our terminal).
    """
    for host in hosts:
        check_host(host)
    ssh = ssh_program(os.environ)
    if len(hosts) == 1:
        return _one(hosts[0], remote_argv(ssh, hosts[0], program, args), program, stdin, write_err)
    return _several(hosts, ssh, program, args, json_output, stdin, write_out, write_err)


def _several(
    hosts: Sequence[str],
    ssh: list[str],
    program: str,
    args: Sequence[str],
    json_output: bool,
    stdin: bytes | None,
    write_out: Callable[[bytes], int],
    write_err: Callable[[str], None],
) -> int:
    """Several hosts at once; each one's output once it and those before it are done."""
    import contextlib
    import tempfile

    outcomes = []
    status = 0
    with contextlib.ExitStack() as stack:
        # Outputs go to temporary files: no pipe can fill up and stall a host while we
        # wait on another, and no thread is needed.
        started: list[tuple[str, subprocess.Popen[bytes], IO[bytes], IO[bytes]]] = []
        for host in hosts:
            out = stack.enter_context(tempfile.TemporaryFile())
            err = stack.enter_context(tempfile.TemporaryFile())
            try:
                proc = subprocess.Popen(
                    remote_argv(ssh, host, program, args),
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            except OSError as error:
                write_err(f"{program}: cannot run {ssh[0]}: {error.strerror or error}\n")
                for _host, running, _out, _err in started:
                    running.wait()
                return 1
            if stdin is not None and proc.stdin is not None:
                _feed(proc.stdin, stdin)
            started.append((host, proc, out, err))
        for host, proc, stdout_file, stderr_file in started:
            code = proc.wait()
            stdout_file.seek(0)
            stderr_file.seek(0)
            stdout, stderr = stdout_file.read(), stderr_file.read()
            problem = failure(host, program, code, stderr)
            outcomes.append((host, code, stdout, problem))
            if not json_output:
                status |= write_out(prefixed(host, stdout))
            write_err(prefixed(host, stderr).decode(errors="replace"))
            if problem is not None:
                status = 1
    if json_output:
        status |= write_out(json_document(outcomes))
    for _host, _code, _stdout, problem in outcomes:
        if problem is not None:
            write_err(f"{program}: {problem}\n")
    return 1 if status else 0


def edit(
    host: str,
    pipes_dir: str | None,
    write_out: Callable[[bytes], int],
    write_err: Callable[[str], None],
) -> int:
    """`--edit --host DEST`: DEST's `--export` edited here, then sent back to DEST's
    `--import - --replace`, which checks every line before it changes anything.

    Unlike a local --edit there is no second round in the editor: refused lines are the
    remote's error, and nothing changed there.
    """
    import shutil
    import tempfile

    from cassini.edit import _edit

    ssh = ssh_program(os.environ)
    where = [] if pipes_dir is None else ["-p", pipes_dir]
    try:
        exported = subprocess.run(
            remote_argv(ssh, host, "cassini", [*where, "--export"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    except OSError as error:
        write_err(f"cassini: cannot run {ssh[0]}: {error.strerror or error}\n")
        return 1
    problem = failure(host, "cassini", exported.returncode, exported.stderr)
    if problem is not None:
        write_err(exported.stderr.decode(errors="replace"))
        write_err(f"cassini: {problem}; nothing changed\n")
        return 1
    write_err(exported.stderr.decode(errors="replace"))  # its warnings: tasks left out
    directory = tempfile.mkdtemp(prefix="cassini-edit-")  # 0700
    try:
        path = os.path.join(directory, "crontab")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(exported.stdout)
        status = _edit(path)
        if status != 0:
            write_err(f"cassini: the editor failed (exit status {status}): nothing changed\n")
            return 1
        with open(path, "rb") as file:
            edited = file.read()
    except OSError as error:
        write_err(f"cassini: cannot use the edited file: {error.strerror}: nothing changed\n")
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if edited == exported.stdout:
        write_err("cassini: no changes\n")
        return 0
    args = [*where, "--import", "-", "--replace"]
    return run(
        [host],
        "cassini",
        args,
        json_output=False,
        stdin=edited,
        write_out=write_out,
        write_err=write_err,
    )


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write `data` to a child's stdin and close it; a child gone early is its own
    failure (its exit status says so), not ours."""
    try:
        pipe.write(data)
    except BrokenPipeError:
        pass
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def _one(
    host: str, argv: list[str], program: str, stdin: bytes | None, write_err: Callable[[str], None]
) -> int:
    """One host: ssh with our own stdout and stderr, so the output is the remote's bytes."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        if stdin is None:
            # Not our stdin: ssh would read it away (`while read host; do cassini --host
            # "$host"; done <hosts` would stop after the first host).
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
        else:
            proc = subprocess.run(argv, input=stdin, check=False)
    except OSError as error:
        write_err(f"{program}: cannot run {argv[0]}: {error.strerror or error}\n")
        return 1
    if proc.returncode in (UNREACHABLE, NOT_FOUND):
        problem = failure(host, program, proc.returncode, b"")
        write_err(f"{program}: {problem}\n")
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
