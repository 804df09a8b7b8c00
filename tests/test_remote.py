"""`cassini --host DEST` and `saturnd status --host DEST` through a real sshd on 127.0.0.1.

Two private daemons, `alpha` and `beta`, each reached through its own ssh alias
(tests/sshd_harness.py); an alias `closed` names a port nobody listens on, and `empty` a
pipes directory no daemon listens on. What a remote invocation prints must be what the
same invocation prints locally, byte for byte (one host), or those bytes with each line
prefixed by the host (several). The pure rules of cassini.remote are tested directly.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cassini import remote
from cassini.cli import LONG_OPTIONS, OPTIONS
from tests import sshd_harness
from tests.conftest import NOW
from tests.daemon_harness import CASSINI, SATURND, Daemon, wait_for

# Arguments a shell would mangle if they were not quoted one by one.
AWKWARD = ["a b", "it's", 'say "hi"', "$HOME", "*", "`id`", "x;y", "new\nline", ""]


class Hosts:
    """The sshd, the two daemons, and how to run the real programs through them."""

    def __init__(self, sshd: sshd_harness.Sshd, daemons: dict[str, Daemon]) -> None:
        self.sshd = sshd
        self.daemons = daemons
        self.task: dict[str, int] = {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[remote.SSH_VARIABLE] = self.sshd.ssh_command
        env["TZ"] = "UTC"
        return env

    def run(
        self, program: str, *args: str, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [program, *args], env=self.env(), capture_output=True, timeout=60, input=input
        )

    def cassini(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.run(CASSINI, *args, input=input)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    reason = sshd_harness.available()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("remote")
    daemons: dict[str, Daemon] = {}
    for name in ("alpha", "beta"):
        (root / name).mkdir()
        daemons[name] = Daemon(root / name, NOW)
    aliases = {name: daemon.pipes for name, daemon in daemons.items()}
    aliases["empty"] = root / "no-daemon"
    sshd = sshd_harness.Sshd(root, aliases)
    try:
        for daemon in daemons.values():
            daemon.start()
        sshd.start()
        result = Hosts(sshd, daemons)
        # The same task, with the same id, on both daemons; one run of it each.
        for name, daemon in daemons.items():
            result.task[name] = daemon.create("printf", "%s\\n", "ran", "on", name)
        assert result.task["alpha"] == result.task["beta"]
        for name, daemon in daemons.items():
            daemon.step_to(NOW + 60)
            task_id = result.task[name]
            wait_for(lambda daemon=daemon, task_id=task_id: daemon.runs(task_id), what="a run")
        yield result
    finally:
        sshd.stop()
        for daemon in daemons.values():
            daemon.stop()


def _local(hosts: Hosts, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return hosts.daemons[name].cassini(*args, check=False)


def _queries(task_id: int) -> list[list[str]]:
    """Every reading option, with and without --json where it has one."""
    task = str(task_id)
    return [
        ["-l"],
        ["-l", "--json"],
        ["-l", "-v"],
        ["-l", "-v", "-v"],
        ["-x", task],
        ["-x", task, "--json"],
        ["-x", task, "-v"],
        ["-o", task],
        ["-e", task],
        ["-n", task, "-N", "3"],
        ["-n", task, "--json"],
        ["--export"],
        ["-r", "999"],  # an error reply: its stderr and exit status come through too
    ]


def test_it_gives_one_hosts_output_exactly(hosts: Hosts) -> None:
    for args in _queries(hosts.task["alpha"]):
        # -l -v -v and -n count from the real clock: a minute may turn between two calls.
        before = _local(hosts, "alpha", *args)
        through = hosts.cassini("--host", "alpha", *args)
        after = _local(hosts, "alpha", *args)
        local = before if through.stdout == before.stdout else after
        assert through.stdout == local.stdout, args
        assert through.stderr == local.stderr, args
        assert through.returncode == local.returncode, args


def test_it_prefixes_each_line_with_its_host(hosts: Hosts) -> None:
    names = ("alpha", "beta")

    def expected(args: list[str]) -> dict[str, bytes]:
        return {name: remote.prefixed(name, _local(hosts, name, *args).stdout) for name in names}

    for args in _queries(hosts.task["alpha"]):
        if "--json" in args:
            continue
        before = expected(args)
        through = hosts.cassini("--host", "alpha", *args, "--host", "beta")
        after = expected(args)
        # Each host's lines, in the order of the hosts; each is what that host printed
        # just before or just after (-n and -l -v count from the clock: a minute may turn
        # between the two hosts' answers).
        lines = through.stdout.splitlines(keepends=True)
        parts = {
            name: b"".join(x for x in lines if x.startswith(b"%s: " % name.encode()))
            for name in names
        }
        assert through.stdout == parts["alpha"] + parts["beta"], args
        for name in names:
            assert parts[name] in (before[name], after[name]), (args, name)
        failed = _local(hosts, "alpha", *args).returncode != 0
        assert through.returncode == (1 if failed else 0), args
        for name in ("alpha", "beta"):
            for line in _local(hosts, name, *args).stderr.splitlines():
                assert f"{name}: ".encode() + line in through.stderr, args
    # Each host's output really is its own.
    listing = hosts.cassini("--host", "alpha", "--host", "beta", "-o", str(hosts.task["beta"]))
    assert (
        listing.stdout == b"alpha: ran\nalpha: on\nalpha: alpha\nbeta: ran\nbeta: on\nbeta: beta\n"
    )


def test_it_keys_json_by_host(hosts: Hosts) -> None:
    task = str(hosts.task["alpha"])
    for args in (["-l", "--json"], ["-x", task, "--json"], ["-n", task, "--json"]):
        before = {name: json.loads(_local(hosts, name, *args).stdout) for name in ("alpha", "beta")}
        through = hosts.cassini("--host", "alpha", "--host", "beta", *args)
        assert through.returncode == 0, through.stderr
        document = json.loads(through.stdout)
        assert list(document) == ["alpha", "beta"]
        for name in ("alpha", "beta"):
            after = json.loads(_local(hosts, name, *args).stdout)  # -n: a minute may turn
            assert document[name] in (before[name], after), args


def test_it_passes_p_on_and_leaves_our_stdin_alone(hosts: Hosts) -> None:
    # -p goes to the remote cassini, where it wins over SATURND_PIPES_DIR.
    pipes = str(hosts.daemons["beta"].pipes)
    through = hosts.cassini("--host", "empty", "-p", pipes, "-l")
    assert (through.returncode, through.stdout) == (0, _local(hosts, "beta", "-l").stdout)
    # One host after another in a loop reading host names: ssh must not eat them.
    loop = subprocess.run(
        ["/bin/sh", "-c", f'while read -r h; do "{CASSINI}" --host "$h" -l; done'],
        input=b"alpha\nbeta\n",
        env=hosts.env(),
        capture_output=True,
        timeout=60,
    )
    expected = _local(hosts, "alpha", "-l").stdout + _local(hosts, "beta", "-l").stdout
    assert loop.stdout == expected


def test_it_names_an_unreachable_host(hosts: Hosts) -> None:
    alone = hosts.cassini("--host", "closed", "-l")
    assert alone.returncode == 255
    assert alone.stdout == b""
    assert b"cassini: closed: cannot reach the host" in alone.stderr

    both = hosts.cassini("--host", "alpha", "--host", "closed", "-l")
    assert both.returncode == 1
    assert both.stdout == remote.prefixed("alpha", _local(hosts, "alpha", "-l").stdout)
    assert b"cassini: closed: cannot reach the host (ssh exited with 255)\n" in both.stderr

    document = json.loads(
        hosts.cassini("--host", "closed", "--host", "beta", "-l", "--json").stdout
    )
    assert document["closed"] == {"error": "cannot reach the host (ssh exited with 255)"}
    assert document["beta"] == json.loads(_local(hosts, "beta", "-l", "--json").stdout)


def test_it_names_a_host_without_a_daemon(hosts: Hosts) -> None:
    both = hosts.cassini("--host", "empty", "--host", "alpha", "-l", "--json")
    assert both.returncode == 1
    document = json.loads(both.stdout)
    assert document["empty"]["error"].startswith("cassini failed with exit status 1: cassini: ")
    assert b"cassini: empty: cassini failed with exit status 1: cassini: " in both.stderr
    assert b"empty: cassini: " in both.stderr  # the remote's own line, prefixed


def test_it_names_a_host_without_cassini(hosts: Hosts, tmp_path: Path) -> None:
    # The remote shell cannot find the program: a PATH without it, set by a wrapper.
    wrapper = tmp_path / "ssh"
    wrapper.write_text(
        f'#!/bin/sh\nhost=$1; shift\nexec {hosts.sshd.ssh_command} "$host" "PATH=/nowhere; $*"\n'
    )
    wrapper.chmod(0o755)
    env = hosts.env()
    env[remote.SSH_VARIABLE] = str(wrapper)
    result = subprocess.run(
        [CASSINI, "--host", "alpha", "--host", "beta", "-l"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"cassini: alpha: no cassini on the remote PATH (exit status 127)\n" in result.stderr
    assert b"cassini: beta: no cassini on the remote PATH (exit status 127)\n" in result.stderr


def test_it_sends_awkward_arguments_unchanged(hosts: Hosts) -> None:
    daemon = hosts.daemons["beta"]
    created = hosts.cassini("--host", "beta", "-c", "printf", "[%s]\\n", *AWKWARD)
    assert created.returncode == 0, created.stderr
    task_id = int(created.stdout)
    try:
        daemon.step_to(daemon.now + 60)
        wait_for(lambda: daemon.runs(task_id), what="the run")
        expected = b"".join(b"[" + arg.encode() + b"]\n" for arg in AWKWARD)
        assert daemon.cassini("-o", str(task_id)).stdout == expected
    finally:
        removed = hosts.cassini("--host", "beta", "-r", str(task_id))
        assert removed.returncode == 0, removed.stderr


def test_it_creates_and_removes_on_each_host(hosts: Hosts) -> None:
    created = hosts.cassini("--host", "alpha", "--host", "beta", "-c", "-m", "7", "true")
    assert created.returncode == 0, created.stderr
    ids = {}
    for line in created.stdout.decode().splitlines():
        name, _, task = line.partition(": ")
        ids[name] = task
    assert sorted(ids) == ["alpha", "beta"]
    for name, task in ids.items():
        assert f"{task}: 7 * * true".encode() in _local(hosts, name, "-l").stdout
    for name, task in ids.items():
        removed = hosts.cassini("--host", name, "-r", task)
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout == b""
        assert f"{task}: ".encode() not in _local(hosts, name, "-l").stdout


def test_it_imports_a_local_file_on_each_host(hosts: Hosts, tmp_path: Path) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("13 4 * * * echo imported 'it''s'\n")
    done = hosts.cassini("--host", "alpha", "--host", "beta", "--import", str(crontab))
    assert done.returncode == 0, done.stderr
    for name in ("alpha", "beta"):
        assert b"echo imported" in _local(hosts, name, "--export").stdout
    # From our standard input too, and --check changes nothing.
    checked = hosts.cassini(
        "--host", "alpha", "--import", "-", "--check", input=b"14 4 * * * echo checked\n"
    )
    assert checked.returncode == 0, checked.stderr
    assert b"echo checked" not in _local(hosts, "alpha", "--export").stdout
    missing = hosts.cassini("--host", "alpha", "--import", str(tmp_path / "absent"))
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"cassini: cannot read ")


def test_it_edits_a_remote_crontab_here(hosts: Hosts, tmp_path: Path) -> None:
    editor = tmp_path / "editor"
    editor.write_text('#!/bin/sh\necho "21 5 * * * echo edited" >> "$1"\n')
    editor.chmod(0o755)
    env = hosts.env()
    env["VISUAL"] = str(editor)
    result = subprocess.run(
        [CASSINI, "--host", "alpha", "--edit"], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert b"echo edited" in _local(hosts, "alpha", "--export").stdout
    assert b"echo edited" not in _local(hosts, "beta", "--export").stdout


def test_it_checks_the_arguments_before_any_connection(hosts: Hosts) -> None:
    bad = hosts.cassini("--host", "closed", "-x")
    assert bad.returncode == 1
    assert bad.stderr.startswith(b"cassini: option -x requires argument\n")
    dash = hosts.cassini("--host", "-oProxyCommand=true", "-l")
    assert dash.returncode == 1
    assert b"--host needs a destination" in dash.stderr
    edits = hosts.cassini("--host", "alpha", "--host", "beta", "--edit")
    assert edits.returncode == 1
    assert edits.stderr.startswith(b"cassini: --edit takes one --host\n")
    helped = hosts.cassini("--host", "closed", "-h")
    assert helped.returncode == 0
    assert b"--host DEST" in helped.stdout


def test_it_asks_saturnd_status_on_each_host(hosts: Hosts) -> None:
    alpha = hosts.daemons["alpha"]
    alone = hosts.run(SATURND, "status", "-s", str(alpha.state), "--host", "alpha")
    assert alone.returncode == 0, alone.stderr
    assert str(alpha.state).encode() in alone.stdout
    states = {name: str(daemon.state) for name, daemon in hosts.daemons.items()}
    # Both daemons share no state directory: each host is asked about alpha's, which
    # runs (both hosts are this machine); the JSON is keyed by host.
    both = hosts.run(
        SATURND, "status", "-s", states["alpha"], "--json", "--host", "alpha", "--host", "beta"
    )
    assert both.returncode == 0, both.stderr
    document = json.loads(both.stdout)
    assert list(document) == ["alpha", "beta"]
    unreachable = hosts.run(SATURND, "status", "--host", "closed")
    assert unreachable.returncode == 255
    assert b"saturnd: closed: cannot reach the host" in unreachable.stderr


def test_it_finds_the_hosts_among_the_options_only() -> None:
    split = remote.split_hosts
    assert split(["--host", "a", "-l", "--host=b"], OPTIONS, LONG_OPTIONS) == (["a", "b"], ["-l"])
    assert split(["--ho", "a", "-x", "3"], OPTIONS, LONG_OPTIONS) == (["a"], ["-x", "3"])
    # After -c's command, and as an option's value, --host is not ours.
    command = ["--host", "a", "-c", "echo", "--host", "b"]
    assert split(command, OPTIONS, LONG_OPTIONS) == (["a"], ["-c", "echo", "--host", "b"])
    value = ["-c", "-m", "--host", "--host", "a", "echo"]
    assert split(value, OPTIONS, LONG_OPTIONS) == (["a"], ["-c", "-m", "--host", "echo"])
    assert split(["-lx", "4", "--host", "a"], OPTIONS, LONG_OPTIONS) == (["a"], ["-lx", "4"])
    assert split(["--", "--host", "a"], OPTIONS, LONG_OPTIONS) == ([], ["--", "--host", "a"])
    with pytest.raises(remote.RemoteUsageError):
        split(["--host", "-p", "-l"], OPTIONS, LONG_OPTIONS)


def test_it_quotes_each_argument_for_the_remote_shell() -> None:
    argv = remote.remote_argv(["ssh", "-F", "c"], "h", "cassini", ["-c", *AWKWARD])
    assert argv[:4] == ["ssh", "-F", "c", "h"]
    assert len(argv) == 5
    assert shlex.split(argv[4]) == ["cassini", "-c", *AWKWARD]
    # A POSIX shell, as the remote's, splits it back the same way.
    line = remote.remote_argv(["ssh"], "h", "printf", ["[%s]\\n", *AWKWARD])[-1]
    printed = subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=True).stdout
    assert printed == b"".join(b"[" + arg.encode() + b"]\n" for arg in AWKWARD)


def test_it_reads_the_ssh_command_like_a_shell() -> None:
    assert remote.ssh_program({}) == ["ssh"]
    assert remote.ssh_program({"CASSINI_SSH": ""}) == ["ssh"]
    assert remote.ssh_program({"CASSINI_SSH": "ssh -F '/a b/c'"}) == ["ssh", "-F", "/a b/c"]
    with pytest.raises(remote.RemoteUsageError):
        remote.ssh_program({"CASSINI_SSH": "ssh '"})


def test_it_merges_outputs_and_failures() -> None:
    assert remote.prefixed("h", b"") == b""
    assert remote.prefixed("h", b"a\nb") == b"h: a\nh: b\n"
    assert remote.failure("h", "cassini", 0, b"") is None
    assert remote.failure("h", "cassini", 3, b"x\ncassini: no\n") == (
        "h: cassini failed with exit status 3: cassini: no"
    )
    document = remote.json_document(
        [("a", 0, b"[1]", None), ("b", 0, b"not json", None), ("c", 255, b"", "c: gone")]
    )
    assert json.loads(document) == {
        "a": [1],
        "b": {"error": "the output is not JSON"},
        "c": {"error": "gone"},
    }
