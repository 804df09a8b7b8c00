"""What the package installs besides the code: man pages that document every option and
render without warnings, and the data files (man pages, shell completions) landing under
the prefix's `share/` with a real `pip install`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from saturnd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

DATA_FILES = {
    "share/man/man1": ["man/saturnd.1", "man/cassini.1"],
    "share/bash-completion/completions": ["completions/cassini.bash"],
    "share/zsh/site-functions": ["completions/_cassini"],
}


def test_it_declares_the_data_files() -> None:
    assert PYPROJECT["tool"]["setuptools"]["data-files"] == DATA_FILES
    missing = [f for files in DATA_FILES.values() for f in files if not (ROOT / f).is_file()]
    assert missing == [], "declared in pyproject.toml but not in the tree"


def test_it_depends_on_what_cassini_loads_lazily() -> None:
    names = {
        re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in PYPROJECT["project"]["dependencies"]
    }
    assert {"python-daemon", "psutil", "cron-descriptor"} <= names


@pytest.mark.parametrize("page", ["saturnd.1", "cassini.1"])
def test_the_man_page_renders_without_warnings(page: str) -> None:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (Debian package man-db)")
    result = subprocess.run(
        ["man", "--warnings", "-l", str(ROOT / "man" / page)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0", MANPAGER="cat"),
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout) > 1000


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option and subcommand name of a parser, its subparsers included."""
    names: set[str] = set()
    for action in parser._actions:
        names.update(name for name in action.option_strings if name not in ("-h", "--help"))
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                names.add(command)
                names.update(_option_strings(subparser))
    return names


def test_the_saturnd_man_page_documents_every_option() -> None:
    page = (ROOT / "man" / "saturnd.1").read_text(encoding="utf-8")
    options = _option_strings(build_parser())
    assert {"-p", "-s", "-f", "--clock", "--install-unit", "--force", "status", "--json"} <= options
    # roff writes a hyphen-minus as \-; an option must appear as a word of its own.
    missing = [
        name
        for name in sorted(options)
        if not re.search(r"(?<![\w\\-])" + re.escape(name.replace("-", "\\-")) + r"\b", page)
    ]
    assert missing == []


def test_pip_install_puts_the_data_files_under_share(tmp_path: Path) -> None:
    """A real, non-editable `pip install` (wheel build included) into a fresh venv."""
    source = tmp_path / "source"
    source.mkdir()
    # Build from a copy: pip builds in the source tree and would leave build/ there.
    wanted = [*PYPROJECT["tool"]["setuptools"]["packages"], "man", "completions", "bin"]
    for name in wanted:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy(ROOT / name, source / name)
    # A throwaway virtual environment, driven by this pip through --python. Never
    # `--prefix` here: pip would first uninstall the saturnd of the running environment.
    prefix = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(prefix / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for directory, files in DATA_FILES.items():
        for file in files:
            installed = prefix / directory / Path(file).name
            assert installed.read_bytes() == (ROOT / file).read_bytes(), installed
    assert (prefix / "bin" / "saturnd").is_file() and (prefix / "bin" / "cassini").is_file()
    # cassini's launcher, with its shebang pointed at the environment's interpreter.
    launcher = (prefix / "bin" / "cassini").read_text().splitlines()[0]
    assert launcher.startswith("#!") and str(prefix) in launcher
