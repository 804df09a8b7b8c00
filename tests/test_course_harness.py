"""cassini under the course's own client test harness, reproduced faithfully.

For each test the course's shell harness starts, in this order and in the background,
`timeout 3 cat REPLY_FILE > PIPES/saturnd-reply-pipe &` (so the reply is written as soon
as any reader opens the reply FIFO, before the request is sent) and
`timeout 3 cat PIPES/saturnd-request-pipe > GOT &`, then runs `cassini -p PIPES ARGS`
and compares the request bytes, the exit status and stdout. These tests do exactly that
with the real `cat` and `timeout` programs, for the 7 requests and both reply kinds;
the vectors are written by hand from PROTOCOL.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASSINI = Path(sys.executable).parent / "cassini"

HARNESS = r"""
timeout 3 cat "$REPLY_FILE" > "$PIPES/saturnd-reply-pipe" &
timeout 3 cat "$PIPES/saturnd-request-pipe" > "$GOT" &
"$CASSINI" -p "$PIPES" "$@" > "$OUT"
echo $? > "$STATUS"
wait
"""


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def s(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


ALL = "0f ff ff ff ff ff ff ff  00 ff ff ff  7f"  # * * *

# (name, cassini arguments, request bytes, reply bytes, exit status, stdout)
VECTORS = [
    ("list-empty", ["-l"], h("4c 53"), h("4f 4b 00000000"), 0, b""),
    (
        "list-two",
        [],
        h("4c 53"),
        h("4f 4b 00000002")
        + h("0000000000000003")
        + h("0000000000000001 00000200 08")
        + h("00000001")
        + s(b"date")
        + h("000000000000000a")
        + h(ALL)
        + h("00000002")
        + s(b"echo")
        + s(b"a b"),
        0,
        b"3: 0 9 3 date\n10: * * * echo a b\n",
    ),
    (
        "create",
        ["-c", "-m", "0", "-H", "9,14", "-d", "3", "echo", "test-1"],
        h("43 52 0000000000000001 00004200 08 00000002") + s(b"echo") + s(b"test-1"),
        h("4f 4b 000000000000001a"),
        0,
        b"26\n",
    ),
    (
        "create-defaults",
        ["-c", "ls", "-l", "/tmp"],
        h("43 52") + h(ALL) + h("00000003") + s(b"ls") + s(b"-l") + s(b"/tmp"),
        h("4f 4b 0000000000000000"),
        0,
        b"0\n",
    ),
    ("remove", ["-r", "5"], h("52 4d 0000000000000005"), h("4f 4b"), 0, b""),
    ("remove-nf", ["-r", "5"], h("52 4d 0000000000000005"), h("45 52 4e 46"), 1, b""),
    (
        "times-exitcodes",
        ["-x", "3"],
        h("54 58 0000000000000003"),
        # 2026-10-27 18:00:00 and 18:01:00 UTC, exit codes 0 and 255
        h("4f 4b 00000002 000000006ae0e6a0 0000 000000006ae0e6dc 00ff"),
        0,
        b"2026-10-27 18:00:00 0\n2026-10-27 18:01:00 255\n",
    ),
    ("times-exitcodes-nf", ["-x", "3"], h("54 58 0000000000000003"), h("45 52 4e 46"), 1, b""),
    (
        "stdout",
        ["-o", "2"],
        h("53 4f 0000000000000002"),
        h("4f 4b") + s(b"coucou\n"),
        0,
        b"coucou\n",
    ),
    ("stdout-nr", ["-o", "2"], h("53 4f 0000000000000002"), h("45 52 4e 52"), 1, b""),
    ("stderr", ["-e", "2"], h("53 45 0000000000000002"), h("4f 4b") + s(b"oops"), 0, b"oops"),
    ("stderr-nf", ["-e", "2"], h("53 45 0000000000000002"), h("45 52 4e 46"), 1, b""),
    ("terminate", ["-q"], h("54 4d"), h("4f 4b"), 0, b""),
]


@pytest.mark.parametrize(
    ("args", "request_bytes", "reply", "status", "stdout"),
    [pytest.param(*vector[1:], id=vector[0]) for vector in VECTORS],
)
def test_it_passes_the_course_harness(
    tmp_path: Path,
    args: list[str],
    request_bytes: bytes,
    reply: bytes,
    status: int,
    stdout: bytes,
) -> None:
    pipes = tmp_path / "pipes"
    pipes.mkdir(mode=0o700)
    for name in ("saturnd-request-pipe", "saturnd-reply-pipe"):
        os.mkfifo(pipes / name, 0o600)
    reply_file = tmp_path / "reply"
    reply_file.write_bytes(reply)
    files = {name: tmp_path / name for name in ("got", "out", "status")}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TZ": "UTC",
        "PIPES": str(pipes),
        "REPLY_FILE": str(reply_file),
        "GOT": str(files["got"]),
        "OUT": str(files["out"]),
        "STATUS": str(files["status"]),
        "CASSINI": str(CASSINI),
    }
    done = subprocess.run(
        ["bash", "-c", HARNESS, "harness", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert files["got"].read_bytes() == request_bytes
    assert int(files["status"].read_text()) == status, done.stderr
    assert files["out"].read_bytes() == stdout
    if status:
        assert done.stderr.decode().count("\n") == 1  # one line saying why
