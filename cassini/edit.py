"""`cassini --edit`: the daemon's tasks as a crontab in an editor, like `crontab -e`.

This module owns the edit loop: LIST-EX, export to a file of a private directory (0700,
the file 0600), run `$VISUAL` or `$EDITOR` (default `vi`) on it through `/bin/sh -c` as
crontab(1) does (so `EDITOR="emacs -nw"` works), read it back, and apply the difference
with `cassini.importing` (the `--replace` rules: unchanged lines keep their task and its
history).

Rules:
- Every line is checked before anything is sent. Refused lines send the user back into
  the editor with the reasons as `# cassini: ` comments at the top (numbered as the
  lines stand below them); these comments are removed before the file is read again.
  A file saved without change after that abandons the edit, as does an editor exiting
  with a failure: nothing is changed.
- An unchanged file is "no changes" and sends nothing.
- Tasks that cannot be written as crontab lines are not in the file and are left as
  they are (a warning names them); a task created by someone else during the edit is
  not removed. A task removed by someone else during the edit makes the REPLACE fail
  whole: nothing changed.
- Ctrl-C while the editor runs is the editor's (cassini waits for it to exit);
  from reading the file to the REPLACE, it means "nothing changed" (cassini.importing).
- The private directory is removed on every way out.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cassini.crontab import Problem
    from cassini.importing import Err, Out

__all__ = ["COMMENT", "editor_command", "run", "with_reasons", "without_reasons"]

COMMENT = b"# cassini: "
"""How the comments that give the reasons start (and how they are found again)."""


def editor_command() -> str:
    """The editor, as crontab(1) chooses it: $VISUAL, else $EDITOR, else vi."""
    return os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"


def with_reasons(data: bytes, problems: list[Problem]) -> bytes:
    """`data` with the reasons of `problems` as comments at the top; the line numbers
    are those of the lines once the comments are in."""
    head = [COMMENT + b"some lines were refused; correct or delete them, then save\n"]
    shift = len(problems) + 1
    for problem in problems:
        head.append(COMMENT + f"line {problem.line + shift}: {problem.reason}\n".encode())
    return b"".join(head) + data


def without_reasons(data: bytes) -> bytes:
    """`data` without the comments `with_reasons` put at its top."""
    lines = data.splitlines(keepends=True)
    index = 0
    while index < len(lines) and lines[index].startswith(COMMENT):
        index += 1
    return b"".join(lines[index:])


def _edit(path: str) -> int:
    """Run the editor on `path` and return its exit status.

    Ctrl-C reaches the editor (same process group), which decides; cassini keeps
    waiting for it rather than leave it behind.
    """
    import subprocess

    # `exec EDITOR "$1"`: the editor's words as the user wrote them, the file quoted.
    editor = subprocess.Popen(["/bin/sh", "-c", f'exec {editor_command()} "$1"', "sh", path])
    while True:
        try:
            return editor.wait()
        except KeyboardInterrupt:
            continue


def run(pipes_dir: str, out: Out, err: Err) -> int:
    """`cassini --edit`: edit the daemon's tasks, then apply the file like --replace."""
    import shutil
    import tempfile

    from cassini import crontab, cronwrite, importing

    found = importing.fetch(pipes_dir)
    if isinstance(found, str):
        err(f"cassini: {found}; nothing changed\n")
        return 1
    text, skipped = cronwrite.export_tasks(found)
    for task, reason in skipped:
        err(f"cassini: warning: task {task.task_id} is not in the file and stays: {reason}\n")
    skipped_ids = {task.task_id for task, _ in skipped}
    current = [task for task in found if task.task_id not in skipped_ids]

    directory = tempfile.mkdtemp(prefix="cassini-edit-")  # 0700
    try:
        path = os.path.join(directory, "crontab")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(text)
        context = importing.local_context()
        shown = text
        while True:
            status = _edit(path)
            if status != 0:
                err(f"cassini: the editor failed (exit status {status}): nothing changed\n")
                return 1
            try:
                with open(path, "rb") as file:
                    edited = file.read()
                if edited == text:
                    err("cassini: no changes\n")
                    return 0
                if edited == shown:
                    err("cassini: the refused lines were not corrected: nothing changed\n")
                    return 1
                data = without_reasons(edited)
                entries, problems, warnings = crontab.parse(data, context)
                for warning in warnings:
                    err(f"cassini: warning: {warning}\n")
                if not problems:
                    result = importing.plan(current, entries, replace=True)
                    importing.hold_ctrl_c()
                    break
                lines = "line was" if len(problems) == 1 else "lines were"
                err(f"cassini: {len(problems)} {lines} refused: back to the editor\n")
                shown = with_reasons(data, problems)
                with open(path, "wb") as file:
                    file.write(shown)
            except OSError as error:
                err(f"cassini: cannot use the edited file: {error.strerror}: nothing changed\n")
                return 1
            except KeyboardInterrupt:
                err("cassini: interrupted: nothing changed\n")
                return importing.INTERRUPTED
        return importing.apply(pipes_dir, result, out, err)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
