"""The suite's isolation from the user running it (tests/conftest.py's `isolated_home`).

Every default location of saturnd and cassini must lie in pytest's temporary tree, so
that a test that forgets -p/-s never reaches the user's own daemon, pipes or state.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from saturnd.startup import default_state_dir

MOVED = ("HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "TMPDIR", "SATURND_PIPES_DIR")


def test_it_moves_every_default_directory_into_pytests_tree(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.getbasetemp()
    for name in MOVED:
        assert base in Path(os.environ[name]).parents, name
    assert base in Path.home().parents
    assert base in Path(tempfile.gettempdir()).parents
    assert base in default_state_dir().parents
    assert not Path(os.environ["SATURND_PIPES_DIR"]).exists(), "nothing may listen there"


def test_it_moves_them_for_the_programs_the_tests_start_too() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", "import os, pathlib; print(pathlib.Path.home())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == os.environ["HOME"]
    assert shown.stdout.strip() != pwd.getpwuid(os.getuid()).pw_dir
