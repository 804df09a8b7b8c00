"""README.md: set-ups that start the daemon, upgrade and uninstall steps, and no
reference outside the repository. (The commands themselves were run by hand as an
ordinary user; installing packages is too slow for the suite.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def _section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## )", README, flags=re.DOTALL | re.MULTILINE)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_it_keeps_readers_inside_the_repository() -> None:
    assert "../" not in README and "shared/" not in README
    assert "(docs/protocol.md)" in README


def test_it_starts_the_daemon_in_both_set_ups() -> None:
    install, venv = _sh_blocks(_section("Set up on a fresh machine"))[:2]
    for block in (install, venv):
        assert block.rstrip().endswith("&& saturnd"), block
    # The links go to ~/.local/bin: this shell gets it on its PATH at once.
    assert 'export PATH="$HOME/.local/bin:$PATH"' in venv


def test_it_says_how_to_upgrade_and_uninstall() -> None:
    upgrade = _section("Upgrade")
    assert "saturnd stop" in upgrade and "pip install --upgrade ." in upgrade
    uninstall = "".join(_sh_blocks(_section("Uninstall")))
    for part in (
        "saturnd stop",
        "systemctl --user disable --now saturnd.service",
        "systemd/user/saturnd.service",
        "~/.local/bin/saturnd ~/.local/bin/cassini",
        "man1/saturnd.1",
        "rm -rf ~/.local/share/saturnd-venv",
        '"${XDG_STATE_HOME:-$HOME/.local/state}/saturnd"',
        '"/tmp/$USER/saturnd"',
    ):
        assert part in uninstall, part
    assert "`~/.profile` line" in _section("Uninstall")
