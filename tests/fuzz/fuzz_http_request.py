"""Fuzz the HTTP request reader (labsquid.http.RequestReader).

Input: raw bytes a client could send (one or more pipelined requests).
Checks, on every input:

* only ``ProtocolError`` ever escapes the reader, and it always decides:
  no ``NeedData`` after EOF, no step that neither consumes nor emits;
* split invariance: fed whole, cut at random points (chosen from a hash of
  the input, so a crash file reproduces) or byte by byte, the reader yields
  the same heads, bodies, trailers and the same end (error status and
  squid error page, clean close, or tunnel bytes after CONNECT); small
  limits make the 413/414/431 paths reachable;
* every head it accepts is writable by ``write_head`` and reads back equal;
* h11 differential on the first message, with the default limits: whatever
  we accept, h11 accepts with the same head, body, trailers and leftover
  bytes (see tests/test_http_h11_diff.py for the known normalisations).

Run: ``.venv/bin/python tests/fuzz/fuzz_http_request.py -max_total_time=600 CORPUS_DIR
tests/fuzz/seeds/http_request`` (docs/fuzzing.md).
"""

from __future__ import annotations

import os

import atheris

# atheris instruments bytecode: run labsquid's .py sources, not the compiled twins.
os.environ["LABSQUID_NO_EXTENSIONS"] = "1"

with atheris.instrument_imports(include=["labsquid"]):
    from _common import (
        check_against_h11,
        check_split_invariance,
        fuzz_main,
        h11_first,
        h11_server,
        ours_first,
    )

    from labsquid.http import RequestReader, canonical_method


def small_reader() -> RequestReader:
    # Limits the fuzzer can reach with inputs of a few KiB.
    return RequestReader(max_header_size=512, max_body_size=256, max_headers=8)


# Stands in for the Host h11 wants where squid's reading needs none; taken out
# of h11's summary again, so it cannot hide a difference in the real fields.
_STAND_IN_HOST = (b"host", b"h11-stand-in.invalid")


def h11_read_as_squid(mine: list | None, data: bytes) -> tuple[list | None, str, bool]:
    """h11's reading of the first request, where labsquid follows squid 5.7's
    relaxed parser on purpose (README, "Error pages"): a method squid knows
    is that method in any case, and an HTTP/1.1 request whose target names
    the origin needs no Host.  h11 holds to the RFC on both."""
    data = data.lstrip(b"\r\n")  # RFC 9112 §2.2: we skip them, h11 refuses them
    stand_in = False
    if mine is not None:
        method, target, version, fields = mine[0]
        if (version == b"1.1" and target[:1] not in (b"/", b"*")
                and all(name != b"host" for name, _ in fields)):
            end = data.find(b"\r\n") + 2
            data = data[:end] + b"%s: %s\r\n" % _STAND_IN_HOST + data[end:]
            stand_in = True
    summary, reason, head_read = h11_first(h11_server(), data)
    if summary is not None:
        method, target, version, fields = summary[0]
        if stand_in:
            fields = [field for field in fields if field != _STAND_IN_HOST]
        summary = [(canonical_method(method), target, version, fields), *summary[1:]]
    return summary, reason, head_read


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check_split_invariance(small_reader, data)
    trailers: set[bytes] = set()
    mine = ours_first(RequestReader(), data, trailers)
    check_against_h11(mine, h11_read_as_squid(mine, data), data, trailers)


def main() -> None:
    fuzz_main(TestOneInput, "http.dict")


if __name__ == "__main__":
    main()
