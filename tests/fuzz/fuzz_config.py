"""Fuzz the squid.conf reader (labsquid.config.parse_text).

Input: config text, decoded as labsquid decodes files (UTF-8 with
surrogateescape). A line ``#@file`` splits off the text of ``inc.conf``, and a
second one the text of the acl value file ``sites``; both live in memory, next
to ``loop.conf`` (which includes itself) and ``dir/x.conf``, so includes, globs
and quoted acl value files are reachable without touching the disk.

Checks, on every input:

* the only exception that escapes is ``ConfigError``, with at least one
  problem; anything else (a ``KeyError``, a ``ValueError``...) is a crash;
* every problem names a file that exists (the main file, one it can include,
  or ``<built-in>`` for squid's predefined acls) and a line number inside
  that file, prints as ``FILE line N: MESSAGE`` (``FILE: MESSAGE`` for line
  0, ``<built-in>`` only; the message part may be shown escaped), and is one
  line: a message that embeds a newline would forge a second problem line in
  the operator's terminal or cache.log;
* a text that parses gives a ``Config``.

Run: ``.venv/bin/python tests/fuzz/fuzz_config.py -max_total_time=600 CORPUS_DIR
tests/fuzz/seeds/config`` (docs/fuzzing.md).
"""

from __future__ import annotations

import os
import posixpath

import atheris

# atheris instruments bytecode: run labsquid's .py sources, not the compiled twins.
os.environ["LABSQUID_NO_EXTENSIONS"] = "1"

with atheris.instrument_imports(include=["labsquid"]):
    from _common import check, fuzz_main, known

    from labsquid.config import Config, ConfigError, parse_text
    from labsquid.config._files import MemoryFiles

MAIN = "fuzz.conf"
SEPARATOR = b"\n#@file\n"
BUILT_IN = "<built-in>"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    parts = [p.decode("utf-8", "surrogateescape") for p in data.split(SEPARATOR, 2)]
    main_text = parts[0]
    texts = {
        MAIN: main_text,
        "inc.conf": parts[1] if len(parts) > 1 else "http_port 3129\n",
        "sites": parts[2] if len(parts) > 2 else ".example.com\n",
        "loop.conf": "include loop.conf\n",
        "dir/x.conf": "via off\ninclude ../inc.conf\n",
    }
    files = MemoryFiles({name: text for name, text in texts.items() if name != MAIN})
    try:
        config = parse_text(main_text, MAIN, files=files)
    except ConfigError as err:
        check(len(err.problems) > 0, "ConfigError without problems")
        for problem in err.problems:
            _check_problem(problem, texts)
    else:
        check(isinstance(config, Config), f"parse_text returned {type(config)!r}")


def _check_problem(problem: object, texts: dict[str, str]) -> None:
    file, line, message = problem.file, problem.line, problem.message  # type: ignore[attr-defined]
    shown = str(problem)
    check(bool(message), f"problem without a message: {problem!r}")
    if "\n" in shown:
        known("config-multiline-message", shown)
    # The message part may be shown escaped (non-printable characters), so
    # only the place is compared exactly.
    if file == BUILT_IN:
        check(line == 0, f"built-in problem with a line number: {shown!r}")
        check(shown.startswith(f"{file}: "), f"badly formed problem: {shown!r}")
        return
    name = posixpath.normpath(file)
    check(name in texts, f"problem names a file that does not exist: {shown!r}")
    lines = texts[name].count("\n") + 1
    check(1 <= line <= lines, f"problem at line {line} of a {lines}-line file: {shown!r}")
    prefix = f"{file} line {line}: "
    check(shown.startswith(prefix) and len(shown) > len(prefix),
          f"badly formed problem: {shown!r}")


def main() -> None:
    fuzz_main(TestOneInput, "config.dict")


if __name__ == "__main__":
    main()
