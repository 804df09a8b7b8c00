"""A private sshd on 127.0.0.1 for the `--host` tests, run as the current user.

It owns a temporary directory holding its host key, the client's key (authorized for
the current user), its sshd_config and an ssh_config whose aliases reach it. The server
puts our venv's bin on the sessions' PATH (its SetEnv: sshd ignores a client's PATH), so
the remote `cassini` is the one under test; each alias sends its own SATURND_PIPES_DIR
(SetEnv on the client, AcceptEnv on the server) so that it reaches its own daemon. An
alias `closed` names a port nobody listens on. Nothing of the user's own ssh
setup is read or written (-F CONFIG, UserKnownHostsFile /dev/null).

`available()` says why the tests must skip (no sshd, no ssh, no ssh-keygen), or None.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
BIN = Path(sys.executable).parent


def available() -> str | None:
    """Why the harness cannot run here, or None when it can."""
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install openssh-client)"
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Sshd:
    """`sshd -D -e` on a free port of 127.0.0.1, and an ssh_config naming its aliases."""

    def __init__(self, root: Path, aliases: dict[str, Path]) -> None:
        """`aliases`: alias -> the pipes directory its sessions get as SATURND_PIPES_DIR."""
        self.root = root
        self.aliases = aliases
        self.port = free_port()
        self.config = root / "ssh_config"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ssh_command(self) -> str:
        """What $CASSINI_SSH must hold for cassini to use this harness's aliases."""
        return f"ssh -F {self.config}"

    def start(self) -> Sshd:
        root = self.root
        host_key = root / "host_key"
        user_key = root / "user_key"
        for key in (host_key, user_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        authorized = root / "authorized_keys"
        shutil.copyfile(user_key.with_suffix(".pub"), authorized)
        sshd_config = root / "sshd_config"
        sshd_config.write_text(
            f"ListenAddress 127.0.0.1\n"
            f"Port {self.port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "AcceptEnv SATURND_PIPES_DIR TZ\n"
            # sshd sets its own PATH over the client's: the server's SetEnv comes last.
            f"SetEnv PATH={BIN}:/usr/local/bin:/usr/bin:/bin\n"
        )
        entries = []
        for alias, pipes in self.aliases.items():
            entries.append(self._entry(alias, self.port, user_key, pipes))
        # An alias whose port nobody listens on: ssh exits with 255.
        entries.append(self._entry("closed", free_port(), user_key, root / "none"))
        self.config.write_text("".join(entries))
        # As root, sshd wants its privilege separation directory (made by the service's
        # start-up, which a container never ran); an ordinary user runs without it.
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log = root / "sshd.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while not self._listens():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not start: {self.log.read_text()}")
            time.sleep(0.02)
        return self

    @staticmethod
    def _entry(alias: str, port: int, key: Path, pipes: Path) -> str:
        return (
            f"Host {alias}\n"
            "  HostName 127.0.0.1\n"
            f"  Port {port}\n"
            f"  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n"
            "  BatchMode yes\n"
            "  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
            f"  SetEnv SATURND_PIPES_DIR={pipes} TZ=UTC\n"
        )

    def _listens(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
