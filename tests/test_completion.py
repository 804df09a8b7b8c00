"""The shell completion scripts: completions/cassini.bash and completions/_cassini (zsh).

bash: the script is sourced in a bare `bash --norc`, then `_cassini` is called the way
bash calls it (COMP_WORDS, COMP_CWORD) and COMPREPLY is read back. zsh: a real
interactive zsh runs in a pseudo-terminal (zsh/zpty), a Tab is typed, and a wrapper
around `compadd` reports each match offered. Task ids come from a real daemon.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cassini.cli import USAGE, UsageError, parse_args
from tests.daemon_harness import Daemon

MakeDaemon = Callable[..., Daemon]

ROOT = Path(__file__).resolve().parent.parent
BASH_SCRIPT = ROOT / "completions" / "cassini.bash"
ZSH_SCRIPT = ROOT / "completions" / "_cassini"
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")
ZSH = shutil.which("zsh")

OPTIONS = sorted(set(re.findall(r"(?<![\w-])(--?[A-Za-z][a-z]*(?:-[a-z0-9]+)*)", USAGE)))


def _env() -> dict[str, str]:
    """The environment of the shells: the cassini under test first on PATH."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def test_it_finds_the_options_of_the_usage() -> None:
    expected = ["-h", "-l", "-v", "-c", "-m", "-H", "-d", "-r", "-x", "-o", "-e", "-n", "-N"]
    expected += ["-q", "-p", "--json", "--export", "--export-systemd", "--import", "--help"]
    expected += ["--version"]
    expected += ["--dom", "--month", "--cron", "--tz", "--env", "--replace", "--check", "--edit"]
    expected += ["--timeout", "--jitter", "--no-overlap", "--catch-up", "--on-failure"]
    expected += ["--start", "--run", "--pause", "--resume", "--kill", "--host"]
    expected += ["--export-k8s", "--image"]
    assert sorted(expected) == OPTIONS


# --- bash ---------------------------------------------------------------------------------


def test_the_bash_script_parses() -> None:
    subprocess.run(["bash", "-n", str(BASH_SCRIPT)], check=True)


def test_the_bash_script_registers_the_completion() -> None:
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f"source {BASH_SCRIPT} && complete -p cassini"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "complete -F _cassini cassini\n"
    assert done.stderr == ""


def bash_complete(
    *words: str,
    cwd: Path | None = None,
    with_bash_completion: bool = False,
    prelude: str = "",
    compopts: list[str] | None = None,
) -> list[str]:
    """What `_cassini` offers for the command line `words` (the last is being typed).

    `prelude` runs first (shell code); `compopts`, when given, receives the arguments of
    each `compopt` call (a stub stands in for the builtin, which only works when bash
    itself calls the completion).
    """
    if with_bash_completion:
        prelude = f"source {BASH_COMPLETION}\n{prelude}"
    if compopts is not None:
        prelude += 'compopt() { CALLS+=("$*"); }\n'
    script = (
        prelude
        + f'\nsource {BASH_SCRIPT}\nCOMP_WORDS=("$@")\nCOMP_CWORD=$(($# - 1))\n'
        + 'COMP_LINE="$*"\nCOMP_POINT=${#COMP_LINE}\n_cassini\n'
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
        + 'printf "<compopt %s>\\n" "${CALLS[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script, "bash", *words],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=30,
        check=True,
    )
    assert done.stderr == ""
    lines = [line for line in done.stdout.splitlines() if line]
    if compopts is not None:
        compopts += [line[9:-1] for line in lines if line.startswith("<compopt ")]
    return [line for line in lines if not line.startswith("<compopt")]


def test_bash_completes_the_options() -> None:
    assert sorted(bash_complete("cassini", "-")) == OPTIONS
    assert bash_complete("cassini", "--ex") == ["--export", "--export-k8s", "--export-systemd"]
    assert bash_complete("cassini", "--export-s") == ["--export-systemd"]
    assert bash_complete("cassini", "-l", "--j") == ["--json"]
    assert bash_complete("cassini", "--export-k8s", "--i") == ["--image"]


def test_bash_completes_task_ids_from_the_daemon_of_p(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(root=tmp_path)
    for name in ("a", "b", "c"):
        daemon.create("echo", name)
    daemon.cassini("-r", "1")
    pipes = str(daemon.pipes)
    for option in ("-r", "-x", "-o", "-e", "-n", "--run", "--pause", "--resume", "--kill"):
        assert bash_complete("cassini", "-p", pipes, option, "") == ["0", "2"]
    assert bash_complete("cassini", "-p", pipes, "--ki", "=", "") == ["0", "2"]
    assert bash_complete("cassini", f"-p{pipes}", "-lx", "2") == ["2"]
    assert bash_complete("cassini", "-p", pipes, "-n", "0", "-N", "") == []
    # A directory where no daemon listens: never the default one, where the user's may.
    (tmp_path / "none").mkdir()
    assert bash_complete("cassini", "-p", str(tmp_path / "none"), "-r", "") == []


def test_bash_lists_task_ids_in_numeric_order(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    for number in range(12):
        daemon.create("echo", str(number))
    compopts: list[str] = []
    offered = bash_complete("cassini", "-p", str(daemon.pipes), "-r", "", compopts=compopts)
    assert offered == [str(number) for number in range(12)]
    assert "-o nosort" in compopts  # else bash shows 0 1 10 11 2 ...
    assert bash_complete("cassini", "-p", str(daemon.pipes), "-x", "1") == ["1", "10", "11"]


def test_bash_asks_the_daemon_of_saturnd_pipes_dir(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(root=tmp_path)
    daemon.create("echo", "a")
    # A shell variable, not exported: cassini would not see it, the completion passes it.
    variable = f"SATURND_PIPES_DIR={daemon.pipes}\n"
    assert bash_complete("cassini", "-r", "", prelude=variable) == ["0"]
    # -p on the line wins over the variable.
    nowhere = f"SATURND_PIPES_DIR={tmp_path / 'nowhere'}\n"
    assert bash_complete("cassini", "-p", str(daemon.pipes), "-o", "", prelude=nowhere) == ["0"]
    assert bash_complete("cassini", "-o", "", prelude=nowhere) == []


# The words of an option and its argument, to check the offered options against cli.py.
_WITH_ARGUMENT = {"-m": "1", "-H": "1", "-d": "1", "-p": "d", "-N": "3", "--import": "f"}
_WITH_ARGUMENT |= {"--export-systemd": "d"}
_WITH_ARGUMENT |= {option: "1" for option in ("-r", "-x", "-o", "-e", "-n")}
_WITH_ARGUMENT |= {"--dom": "1", "--month": "1", "--cron": "@daily", "--tz": "UTC", "--env": "A=1"}
_WITH_ARGUMENT |= {option: "1" for option in ("--run", "--pause", "--resume", "--kill")}
_WITH_ARGUMENT |= {"--timeout": "5m", "--jitter": "1m", "--on-failure": "x", "--start": "99"}
_WITH_ARGUMENT |= {"--image": "img", "--export-systemd": "d", "--host": "h"}
_POLICIES = ["--timeout", "--jitter", "--no-overlap", "--catch-up", "--on-failure"]
_AFTER_C = ["--dom", "--month", "--cron", "--tz", "--env", *_POLICIES]
AFTER_AN_OPERATION = [
    # (the words before, the options offered next)
    (["-l"], ["-h", "--help", "-p", "-l", "-v", "--json"]),
    (["-p", "d", "-lv"], ["-h", "--help", "-l", "-v", "--json"]),  # -p only once
    (["-c"], ["-h", "--help", "-p", "-c", "-m", "-H", "-d", *_AFTER_C]),
    (
        ["-c", "-m", "1"],
        ["-h", "--help", "-p", "-c", "-H", "-d", "--dom", "--month", "--tz", "--env", *_POLICIES],
    ),
    (["-c", "--cron", "@daily"], ["-h", "--help", "-p", "-c", "--tz", "--env", *_POLICIES]),
    (["-c", "--cron=@daily"], ["-h", "--help", "-p", "-c", "--tz", "--env", *_POLICIES]),
    (
        ["-c", "--dom", "1"],
        ["-h", "--help", "-p", "-c", "-m", "-H", "-d", "--month", "--tz", "--env", *_POLICIES],
    ),
    (
        ["-c", "--tz", "UTC", "--env", "A=1"],
        [
            "-h",
            "--help",
            "-p",
            "-c",
            "-m",
            "-H",
            "-d",
            "--dom",
            "--month",
            "--cron",
            "--env",
            *_POLICIES,
        ],
    ),
    (
        ["-c", "--timeout", "5m", "--no-overlap"],
        [
            "-h",
            "--help",
            "-p",
            "-c",
            "-m",
            "-H",
            "-d",
            *_AFTER_C[:5],
            *_POLICIES[1:2],
            _POLICIES[3],
            _POLICIES[4],
        ],
    ),
    (["-x", "1"], ["-h", "--help", "-p", "-v", "--json"]),
    (["-o", "1"], ["-h", "--help", "-p", "--start"]),
    (["--run", "1"], ["-h", "--help", "-p"]),
    (["--pau", "1"], ["-h", "--help", "-p"]),
    (["--kill", "1"], ["-h", "--help", "-p"]),
    (["-n", "1"], ["-h", "--help", "-p", "-N", "--json"]),
    (["-r", "1"], ["-h", "--help", "-p"]),
    (["-o1"], ["-h", "--help", "-p", "--start"]),
    (["-e", "1"], ["-h", "--help", "-p", "--start"]),
    (["-q"], ["-h", "--help", "-p"]),
    (["--export"], ["-h", "--help", "-p"]),
    (["--export-k", "--image", "img"], ["-h", "--help", "-p"]),
    (["--export-s", "d"], ["-h", "--help", "-p"]),
    (["--import", "f"], ["-h", "--help", "-p", "--replace", "--check"]),
    (["--import", "f", "--check"], ["-h", "--help", "-p", "--replace", "--check"]),
    (["--ed"], ["-h", "--help", "-p"]),
]
# --host goes with every operation (cassini.remote takes it out before parsing the rest).
AFTER_AN_OPERATION = [(before, [*offered, "--host"]) for before, offered in AFTER_AN_OPERATION]


@pytest.mark.parametrize(("before", "expected"), AFTER_AN_OPERATION, ids=repr)
def test_bash_offers_only_the_options_valid_after_an_operation(
    before: list[str], expected: list[str]
) -> None:
    offered = bash_complete("cassini", *before, "-")
    assert sorted(offered) == sorted(expected)
    # What cassini accepts, from cli.py itself: everything offered, and of the rest,
    # only a repetition of the operation (harmless, and pointless to offer).
    for option in OPTIONS:
        args = [*before, option, *([_WITH_ARGUMENT[option]] if option in _WITH_ARGUMENT else [])]
        if "-c" in before or option == "-c":
            args.append("true")
        try:
            parse_args(args)
        except UsageError:
            assert option not in offered, args
        else:
            # A repetition: `-o` of `-o1`, `--export` of `--exp`.
            repeated = any(
                word.startswith(option) or (word.startswith("--") and option.startswith(word))
                for word in before
            )
            assert option in offered or repeated, args


def test_bash_completes_day_names_after_d() -> None:
    short = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
    full = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
    assert bash_complete("cassini", "-c", "-d", "") == short + full
    assert bash_complete("cassini", "-c", "-d", "t") == ["tue", "thu", "tuesday", "thursday"]
    # After a , or - of a list or range: the last item.
    assert bash_complete("cassini", "-c", "-d", "mon-fr") == ["mon-fri", "mon-friday"]
    assert bash_complete("cassini", "-c", "-d", "1,sa") == ["1,sat", "1,saturday"]
    assert bash_complete("cassini", "-c", "-m", "") == []  # no names for minutes


def test_bash_completes_the_values_of_the_new_fields() -> None:
    assert bash_complete("cassini", "-c", "--month", "ju") == ["jun", "jul", "june", "july"]
    assert bash_complete("cassini", "-c", "--month", "mar-ma") == [
        "mar-mar",
        "mar-may",
        "mar-march",
    ]
    assert bash_complete("cassini", "-c", "--cron", "@m") == ["@midnight", "@monthly"]
    assert bash_complete("cassini", "-c", "--cron", "=", "@r") == ["@reboot"]
    # `--cr=@daily` reaches the completion as three words, as bash splits at the =.
    offered = bash_complete("cassini", "-c", "--cr", "=", "@daily", "-")
    assert offered == ["-h", "--help", "-p", "--host", "-c", "--tz", "--env", *_POLICIES]
    assert bash_complete("cassini", "-c", "--dom", "") == []
    assert bash_complete("cassini", "-c", "--timeout", "90") == ["90d", "90h", "90m", "90s"]
    assert bash_complete("cassini", "-c", "--jit", "=", "1h3") == ["1h3m", "1h3s"]
    assert bash_complete("cassini", "-c", "--on-failure", "") == []
    assert bash_complete(
        "cassini", "-c", "--env", "CASSINI_T", prelude="export CASSINI_TEST=1\n"
    ) == ["CASSINI_TEST="]
    assert bash_complete("cassini", "-c", "--env", "CASSINI_TEST=") == []


@pytest.mark.skipif(not Path("/usr/share/zoneinfo/Europe/Paris").exists(), reason="no zoneinfo")
def test_bash_completes_time_zones() -> None:
    assert bash_complete("cassini", "-c", "--tz", "Europe/Par") == ["Europe/Paris"]
    assert "UTC" in bash_complete("cassini", "-c", "--tz", "U")  # a symbolic link
    assert bash_complete("cassini", "-c", "--tz", "posix") == []  # copies of the others


def test_bash_completes_host_names_after_host() -> None:
    # compgen's host names come from /etc/hosts, which names localhost; `--host=NAME`
    # reaches the completion as three words, as bash splits at the =.
    assert "localhost" in bash_complete("cassini", "--host", "localh")
    assert "localhost" in bash_complete("cassini", "-l", "--host", "=", "localh")
    # The host taken, the options of the operation follow.
    assert "--json" in bash_complete("cassini", "--host", "h", "-l", "-")


def test_bash_completes_directories_and_files(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "my.crontab").write_text("")
    assert bash_complete("cassini", "-p", "", cwd=tmp_path) == ["dir"]
    assert bash_complete("cassini", "--import", "my", cwd=tmp_path) == ["my.crontab"]
    assert bash_complete("cassini", "--import", "=", "my", cwd=tmp_path) == ["my.crontab"]


def test_bash_completes_the_command_of_c(tmp_path: Path) -> None:
    assert "cassini" in bash_complete("cassini", "-c", "-m", "0", "cassin")
    # Past the command, the words are the command's: no task ids, no cassini options.
    assert bash_complete("cassini", "-c", "ls", "-r", "", cwd=tmp_path) == []
    (tmp_path / "file").write_text("")
    assert bash_complete("cassini", "-c", "ls", "-r", "", cwd=tmp_path) == ["file"]


@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="bash-completion is not installed")
def test_bash_hands_the_command_of_c_to_its_own_completion() -> None:
    offered = bash_complete("cassini", "-c", "ls", "--al", with_bash_completion=True)
    assert "--all" in offered and "--almost-all" in offered


# --- zsh ---------------------------------------------------------------------------------

needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed")

# Types a command line and a Tab in an interactive zsh and prints, between <hit> and
# </hit>, each match the completion system adds.
_ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PS1="<prompt>" PS2="" RPS1=""; unsetopt beep; LISTMAX=100000'
zpty -w z "fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D"
[[ -n $3 ]] && zpty -w z "$3"
zpty -w z 'compadd() {
  if (( ${@[(I)-[OAD]]} )); then builtin compadd "$@"; return; fi
  local -a found; local match; builtin compadd -O found "$@"
  for match in $found; do print -rn -- "<hit>$match</hit>"; done
  builtin compadd "$@"
}'
zpty -w z "print -r -- '<rea''dy>'"
local out
zpty -r -m z out '*<ready>*<prompt>*' || exit 2
zpty -w -n z "$2"$'\t'
zpty -w -n z $'\C-e\C-u'
zpty -w z "print -r -- '<do''ne>'"
zpty -r -m z out '*<done>*' || exit 2
print -r -- $out
zpty -d z
"""


def zsh_output(line: str, tmp_path: Path, cwd: Path | None = None, setup: str = "") -> str:
    """What the terminal shows for `line` followed by a Tab (`setup`: a line typed first)."""
    driver = tmp_path / "driver.zsh"
    driver.write_text(_ZSH_DRIVER)
    assert ZSH is not None
    done = subprocess.run(
        [ZSH, "-f", str(driver), str(ZSH_SCRIPT.parent), line, setup],
        capture_output=True,
        env=_env(),
        cwd=cwd or tmp_path,
        timeout=30,
        check=True,
    )
    return done.stdout.decode(errors="replace")


def zsh_complete(line: str, tmp_path: Path, cwd: Path | None = None, setup: str = "") -> list[str]:
    """The matches zsh offers for `line` followed by a Tab."""
    return re.findall(r"<hit>(.*?)</hit>", zsh_output(line, tmp_path, cwd, setup))


@needs_zsh
def test_the_zsh_script_parses() -> None:
    assert ZSH is not None
    subprocess.run([ZSH, "-n", str(ZSH_SCRIPT)], check=True)


@needs_zsh
def test_the_zsh_script_is_found_by_compinit(tmp_path: Path) -> None:
    assert ZSH is not None
    script = (
        f"fpath=({ZSH_SCRIPT.parent} $fpath); autoload -Uz compinit; "
        f"compinit -u -d {tmp_path}/zcompdump; print -r -- $_comps[cassini]"
    )
    done = subprocess.run([ZSH, "-f", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == "_cassini\n"


@needs_zsh
def test_zsh_completes_the_options(tmp_path: Path) -> None:
    assert sorted(set(zsh_complete("cassini -", tmp_path))) == OPTIONS
    assert zsh_complete("cassini --ex", tmp_path) == [
        "--export",
        "--export-k8s",
        "--export-systemd",
    ]


@needs_zsh
def test_zsh_completes_task_ids_from_the_daemon_of_p(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    (tmp_path / "d").mkdir()
    daemon = make_daemon(root=tmp_path / "d")
    for name in ("a", "b", "c"):
        daemon.create("echo", name)
    daemon.cassini("-r", "0")
    assert sorted(zsh_complete(f"cassini -p {daemon.pipes} -x ", tmp_path)) == ["1", "2"]
    assert sorted(zsh_complete(f"cassini -p{daemon.pipes} -n ", tmp_path)) == ["1", "2"]
    assert sorted(zsh_complete(f"cassini -p {daemon.pipes} --pause ", tmp_path)) == ["1", "2"]
    assert sorted(zsh_complete(f"cassini -p {daemon.pipes} --kill=", tmp_path)) == ["1", "2"]
    # A directory where no daemon listens: never the default one, where the user's may.
    (tmp_path / "none").mkdir()
    assert zsh_complete(f"cassini -p {tmp_path / 'none'} -r ", tmp_path) == []


@needs_zsh
def test_zsh_completes_files_and_commands(tmp_path: Path) -> None:
    (tmp_path / "my.crontab").write_text("")
    assert zsh_complete("cassini --import my", tmp_path) == ["my.crontab"]
    assert "cassini" in zsh_complete("cassini -c cassin", tmp_path)


@needs_zsh
def test_zsh_lists_task_ids_in_numeric_order(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    daemon = make_daemon(root=tmp_path / "d")
    for number in range(12):
        daemon.create("echo", str(number))
    shown = zsh_output(f"cassini -p {daemon.pipes} -x ", tmp_path)
    # The listing, one task a line: "10  -- * * * echo 10".
    listed = re.findall(r"(\d+) +-- \* \* \* echo", shown)
    assert listed == [str(number) for number in range(12)]


@needs_zsh
def test_zsh_asks_the_daemon_of_saturnd_pipes_dir(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    daemon = make_daemon(root=tmp_path / "d")
    daemon.create("echo", "a")
    # A shell variable, not exported: the completion passes it to cassini.
    setup = f"SATURND_PIPES_DIR={daemon.pipes}"
    assert zsh_complete("cassini -r ", tmp_path, setup=setup) == ["0"]


@needs_zsh
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cassini -l -", ["-h", "--help", "-p", "-v", "--json"]),
        ("cassini -c -", ["-h", "--help", "-p", "-m", "-H", "-d", *_AFTER_C]),
        ("cassini -c --cron @daily -", ["-h", "--help", "-p", "--tz", "--env", *_POLICIES]),
        ("cassini -c --env A=1 -", ["-h", "--help", "-p", "-m", "-H", "-d", *_AFTER_C]),
        ("cassini -x 1 -", ["-h", "--help", "-p", "-v", "--json"]),
        ("cassini -o 1 -", ["-h", "--help", "-p", "--start"]),
        ("cassini --kill 1 -", ["-h", "--help", "-p"]),
        (
            "cassini -c --no-overlap -",
            ["-h", "--help", "-p", "-m", "-H", "-d", *_AFTER_C[:7], *_POLICIES[3:]],
        ),
        ("cassini -n 1 -", ["-h", "--help", "-p", "-N", "--json"]),
        ("cassini -r 1 -", ["-h", "--help", "-p"]),
        ("cassini -m 1 -", ["-h", "--help", "-p", "-c", "-H", "-d", *_AFTER_C[:2], *_AFTER_C[3:]]),
    ],
)
def test_zsh_offers_only_the_options_valid_after_an_operation(
    line: str, expected: list[str], tmp_path: Path
) -> None:
    offered = set(zsh_complete(line, tmp_path)) - {"-"}  # "-": the start of a command of -c
    assert sorted(offered) == sorted([*expected, "--host"])  # --host: with every operation


@needs_zsh
def test_zsh_completes_the_values_of_the_new_fields(tmp_path: Path) -> None:
    assert zsh_complete("cassini -c --month mar-ma", tmp_path) == ["mar", "may", "march"]
    assert sorted(zsh_complete("cassini -c --cron @m", tmp_path)) == ["@midnight", "@monthly"]
    assert zsh_complete("cassini -c --tz Europe/Par", tmp_path) == ["Paris"]
    assert zsh_complete("cassini -c --timeout 1h3", tmp_path) == ["m", "s"]  # after 1h3
    setup = "export CASSINI_TEST=1"
    assert zsh_complete("cassini -c --env CASSINI_T", tmp_path, setup=setup) == ["CASSINI_TEST"]


@needs_zsh
def test_zsh_completes_day_names_after_d(tmp_path: Path) -> None:
    assert zsh_complete("cassini -c -d mon-fr", tmp_path) == ["fri", "friday"]
    assert sorted(zsh_complete("cassini -c -d 1,t", tmp_path)) == [
        "thu",
        "thursday",
        "tue",
        "tuesday",
    ]
