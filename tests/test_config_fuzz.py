"""Property tests: the parser fails only with ConfigError, and its pieces agree."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labsquid.config import Config, ConfigError, parse_text
from labsquid.config._directives import DIRECTIVES
from labsquid.config._files import MemoryFiles
from labsquid.config._lexer import Quoted, tokenize
from labsquid.config._units import SIZE_UNITS, TIME_UNITS, BadValue, parse_size, parse_time

# Files an `include` or an acl value file in generated text may reach; no real I/O.
FILES = MemoryFiles(
    {
        "a.conf": "via off\ninclude b.conf\n",
        "b.conf": "include a.conf\nhttp_port 8080\n",
        "sites": ".example.com\n# comment\n",
    }
)

WORDS = [
    *DIRECTIVES,
    "include",
    "a.conf",
    "b.conf",
    "*.conf",
    '"sites"',
    "allow",
    "deny",
    "all",
    "!all",
    "localhost",
    "src",
    "dst",
    "port",
    "10.0.0.0/8",
    "[::1]:3128",
    "127.0.0.1:3128",
    "3128",
    "0",
    "1.5",
    "-3",
    "seconds",
    "minute",
    "KB",
    "MB",
    "on",
    "off",
    "none",
    "daemon:/tmp/x",
    "stdio:/tmp/y",
    "logformat=squid",
    "squid",
    "%ts",
    "#",
    "\\",
    '"',
    "'",
    '"a\\tb"',
    "\t",
]

LINE_PATTERN = re.compile(r"^.+?(?: line \d+)?: .+", re.DOTALL)


def check_parse(text: str) -> None:
    try:
        config = parse_text(text, "fuzz.conf", files=FILES)
    except ConfigError as err:
        assert err.problems
        for problem in err.problems:
            assert LINE_PATTERN.match(str(problem)), str(problem)
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_only_ever_raises_config_error(text: str) -> None:
    check_parse(text)


token_soup = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join),
    max_size=12,
).map("\n".join)


@settings(max_examples=500, deadline=None)
@given(token_soup)
def test_directive_shaped_text_only_ever_raises_config_error(text: str) -> None:
    check_parse(text)


def quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_any_string_survives_quoting(values: list[str]) -> None:
    tokens, offsets = tokenize("x " + " ".join(quote(value) for value in values))
    assert tokens[1:] == values
    assert all(isinstance(token, Quoted) for token in tokens[1:])
    assert offsets == sorted(offsets)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(TIME_UNITS)))
def test_time_is_number_times_unit(number: int, unit: str) -> None:
    expected = number * TIME_UNITS[unit]
    if expected * 1e9 >= 2**63:  # beyond squid's int64 nanoseconds (about 292 years)
        with pytest.raises(BadValue, match="too large"):
            parse_time([str(number), unit])
        return
    assert parse_time([str(number), unit]) == expected
    assert parse_time([str(number), unit.upper() + "S"]) == expected


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(SIZE_UNITS)))
def test_size_is_number_times_unit(number: int, unit: str) -> None:
    assert parse_size([str(number), unit]) == number * SIZE_UNITS[unit]
