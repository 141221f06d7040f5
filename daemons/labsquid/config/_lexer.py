"""From config text to directive lines.

Theory of operation, following squid's own reader (cache_cf.cc, ConfigParser.cc):

* A physical line is read, surrounding whitespace is dropped. A line that is
  then empty, or starts with `#`, is skipped - even in the middle of a
  continued line, exactly as squid does.
* A line ending in a backslash continues on the next one: the backslash is
  removed and the next line (its indentation already stripped) is glued on.
  `a \\` + `b` reads `a b`; `a\\` + `b` reads `ab`.
* The logical line is cut into whitespace-separated tokens. A token that
  *starts* with `#` ends the line (a trailing comment); a `#` inside a token
  is just a character. A token starting with `"` or `'` runs to the matching
  quote; inside, `\\n` `\\r` `\\t` are control characters, a backslash before
  any other non-alphanumeric character stands for that character, and one
  before a letter or digit is an error. Quoted tokens come back as `Quoted`,
  because squid gives them a meaning of their own (an acl value file).
* `include PATTERN...` is replaced, in place, by the lines of every file the
  patterns match (sorted, relative to the including file's directory). A
  pattern matching nothing is an error, as is nesting deeper than squid's 16
  levels; a file including itself (directly or not) is reported as a loop
  instead of running into that limit.

Problems never stop reading: they are yielded in order, between the lines, and
the caller decides what to do with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._files import FileSource, has_magic, relative_to
from ._model import ConfigProblem, Where

MAX_INCLUDE_DEPTH = 16  # squid's limit: the main file is depth 0

_CONTROL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_WHITESPACE = " \t\r\f\v"


class Quoted(str):
    """A token that was written between quotes."""

    __slots__ = ()


class LexError(ValueError):
    pass


@dataclass(frozen=True)
class Line:
    """One directive: its name, its arguments, and the logical line they came from."""

    where: Where
    args: tuple[str, ...]
    text: str  # the logical line, continuations joined
    offsets: tuple[int, ...]  # where each of `args` starts in `text`

    @property
    def directive(self) -> str:
        return self.where.directive

    def rest(self, index: int) -> str:
        """Everything from argument `index` to the end of the line, verbatim.

        This is squid's "quoted or to end of line" reading, used for values
        with spaces in them (log formats): a lone quoted token gives its
        unquoted value, anything else the raw text (a `#` does not end it).
        """
        if index >= len(self.args):
            return ""
        if index == len(self.args) - 1 and isinstance(self.args[index], Quoted):
            return self.args[index]
        return self.text[self.offsets[index] :].rstrip()


def tokenize(text: str) -> tuple[list[str], list[int]]:
    """Split one logical line into tokens and their offsets; raises LexError."""
    tokens: list[str] = []
    offsets: list[int] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        if pos == end or text[pos] == "#":
            return tokens, offsets
        offsets.append(pos)
        if text[pos] in "\"'":
            token, pos = _read_quoted(text, pos)
        else:
            start = pos
            while pos < end and text[pos] not in _WHITESPACE:
                pos += 1
            token = text[start:pos]
        tokens.append(token)


def _read_quoted(text: str, start: int) -> tuple[Quoted, int]:
    quote = text[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(text) and text[pos] != quote:
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            pos += 1
            char = text[pos]
            if char in _CONTROL_ESCAPES:
                char = _CONTROL_ESCAPES[char]
            elif char.isalnum():
                raise LexError(f"unsupported escape sequence '\\{char}' in quoted string")
        chars.append(char)
        pos += 1
    if pos == len(text):
        raise LexError(f"missing closing {quote} in {text[start:]}")
    pos += 1
    if pos < len(text) and text[pos] not in _WHITESPACE + "#":
        raise LexError(f"expected a space after the closing quote in {text[start:]}")
    return Quoted("".join(chars)), pos


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first physical line number, logical line) for every non-comment line."""
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            first = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        yield first, "".join(pending).rstrip()
        pending = []
    # squid silently drops a continuation left open at the end of a file;
    # labsquid keeps it, since the operator clearly meant something by it.
    if pending and "".join(pending).strip():
        yield first, "".join(pending).rstrip()


def _first_word(text: str) -> str:
    words = text.split(None, 1)
    return words[0] if words else ""


def split_lines(text: str, filename: str) -> Iterator[Line | ConfigProblem]:
    """The directive lines of one file's text, without following includes."""
    for number, logical in logical_lines(text):
        try:
            tokens, offsets = tokenize(logical)
        except LexError as err:
            yield ConfigProblem(filename, number, _first_word(logical), str(err))
            continue
        if not tokens:  # e.g. a continuation that only held a comment
            continue
        where = Where(filename, number, tokens[0])
        yield Line(where, tuple(tokens[1:]), logical, tuple(offsets[1:]))


def read_lines(
    text: str, filename: str, files: FileSource, *, _stack: tuple[str, ...] = ()
) -> Iterator[Line | ConfigProblem]:
    """The directive lines of a config, with every `include` expanded in place."""
    stack = (*_stack, files.identity(filename))
    for item in split_lines(text, filename):
        if isinstance(item, Line) and item.directive == "include":
            yield from _include(item, files, stack)
        else:
            yield item


def _include(
    line: Line, files: FileSource, stack: tuple[str, ...]
) -> Iterator[Line | ConfigProblem]:
    if not line.args:
        yield ConfigProblem.at(line.where, "include: missing file name or pattern")
        return
    for pattern in line.args:
        full_pattern = relative_to(line.where.file, pattern)
        paths = files.glob(full_pattern) if has_magic(full_pattern) else [full_pattern]
        if not paths:
            yield ConfigProblem.at(line.where, f"include: no file matches '{pattern}'")
        for path in paths:
            yield from _include_one(line.where, path, files, stack)


def _include_one(
    where: Where, path: str, files: FileSource, stack: tuple[str, ...]
) -> Iterator[Line | ConfigProblem]:
    if files.identity(path) in stack:
        yield ConfigProblem.at(where, f"include: '{path}' includes itself (include loop)")
        return
    if len(stack) > MAX_INCLUDE_DEPTH:
        message = f"include: cannot include '{path}': nested more than {MAX_INCLUDE_DEPTH} deep"
        yield ConfigProblem.at(where, message)
        return
    try:
        text = files.read_text(path)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        yield ConfigProblem.at(where, f"include: cannot read '{path}': {reason}")
        return
    yield from read_lines(text, path, files, _stack=stack)
