"""POSIX option parsing, as the standard library's `getopt.getopt` does it, without its imports.

This module owns `getopt`: the same arguments, results and error messages as the
standard library's (a test checks them against it on random argument lists). It exists
because `import getopt` loads `gettext`, which loads `re`: about 5 ms of a ~11 ms
interpreter start in a regular install, paid on every `cassini` call.

Rules (POSIX getopt, plus GNU-style long options like the standard library):
- parsing stops at the first non-option argument, at a lone `-`, or after `--`;
- short options cluster (`-lv`), and one that takes an argument takes the rest of its
  word or the next word (`-m5`, `-m 5`);
- long options are `--name` or `--name=value` or `--name value`, and any unique prefix
  of a name is accepted.
"""

from __future__ import annotations


class GetoptError(Exception):
    """A bad option; `msg` is the one-line reason (as the standard library words it)."""

    def __init__(self, msg: str, opt: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.opt = opt


def getopt(
    args: list[str], shortopts: str, longopts: list[str] | tuple[str, ...] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """The options (name, value) and the remaining arguments, like `getopt.getopt`."""
    options: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        index += 1
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            full, wants_value = _long(name, longopts)
            if wants_value and not has_value:
                if index >= len(args):
                    raise GetoptError(f"option --{full} requires argument", full)
                value = args[index]
                index += 1
            elif has_value and not wants_value:
                raise GetoptError(f"option --{full} must not have an argument", full)
            options.append(("--" + full, value))
            continue
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if _wants_argument(letter, shortopts):
                if letters == "":
                    if index >= len(args):
                        raise GetoptError(f"option -{letter} requires argument", letter)
                    letters = args[index]
                    index += 1
                options.append(("-" + letter, letters))
                letters = ""
            else:
                options.append(("-" + letter, ""))
    return options, args[index:]


def _wants_argument(letter: str, shortopts: str) -> bool:
    position = shortopts.find(letter)
    if letter == ":" or position < 0:
        raise GetoptError(f"option -{letter} not recognized", letter)
    return shortopts.startswith(":", position + 1)


def _long(name: str, longopts: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """The full long option that `name` names, and whether it takes a value."""
    matches = [known for known in longopts if known.startswith(name)]
    if not matches:
        raise GetoptError(f"option --{name} not recognized", name)
    exact = name in matches or name + "=" in matches
    if exact:
        return name, name + "=" in matches and name not in matches
    if len(matches) > 1:
        raise GetoptError(f"option --{name} not a unique prefix", name)
    only = matches[0]
    return only.removesuffix("="), only.endswith("=")
