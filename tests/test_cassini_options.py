"""cassini.options.getopt behaves exactly like the standard library's getopt.getopt."""

from __future__ import annotations

import getopt as stdlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cassini import options
from cassini.cli import LONG_OPTIONS, OPTIONS

WORDS = st.sampled_from(
    [
        "-l",
        "-c",
        "-m",
        "-m5",
        "-H",
        "9",
        "-lv",
        "-cm",
        "-x",
        "3",
        "--",
        "-",
        "--json",
        "--js",
        "--import",
        "--import=f",
        "--import=",
        "--exp",
        "--export=1",
        "--e",
        "--x",
        "--=",
        "-z",
        "-:",
        "echo",
        "-N",
        "--json=",
        "-hl",
        "ls",
        "-vN2",
        "",
    ]
)


def _stdlib(args: list[str], shortopts: str, longopts: list[str]) -> object:
    try:
        return stdlib.getopt(args, shortopts, longopts)
    except stdlib.GetoptError as error:
        return ("error", error.msg, error.opt)


def _ours(args: list[str], shortopts: str, longopts: list[str]) -> object:
    try:
        return options.getopt(args, shortopts, longopts)
    except options.GetoptError as error:
        return ("error", error.msg, error.opt)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(WORDS, st.text(max_size=4)), max_size=6))
def test_it_parses_like_the_standard_library(args: list[str]) -> None:
    long_options = list(LONG_OPTIONS)
    assert _ours(args, OPTIONS, long_options) == _stdlib(args, OPTIONS, long_options)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="-=ab:x", max_size=5), max_size=5),
    st.text(alphabet="abx:", max_size=5),
    st.lists(st.text(alphabet="abx=", min_size=1, max_size=4), max_size=3),
)
def test_it_agrees_on_any_option_string(
    args: list[str], shortopts: str, longopts: list[str]
) -> None:
    assert _ours(args, shortopts, longopts) == _stdlib(args, shortopts, longopts)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-c", "ls", "-l", "/tmp"], ([("-c", "")], ["ls", "-l", "/tmp"])),
        (
            ["-m0", "-H", "9,14", "-c", "echo"],
            ([("-m", "0"), ("-H", "9,14"), ("-c", "")], ["echo"]),
        ),
        (["--imp", "f.txt"], ([("--import", "f.txt")], [])),
        (["-l", "--", "-x"], ([("-l", "")], ["-x"])),
    ],
)
def test_it_parses_cassini_examples(args: list[str], expected: object) -> None:
    assert options.getopt(args, OPTIONS, list(LONG_OPTIONS)) == expected
