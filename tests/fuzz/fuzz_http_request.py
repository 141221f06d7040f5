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

    from labsquid.http import RequestReader


def small_reader() -> RequestReader:
    # Limits the fuzzer can reach with inputs of a few KiB.
    return RequestReader(max_header_size=512, max_body_size=256, max_headers=8)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check_split_invariance(small_reader, data)
    trailers: set[bytes] = set()
    mine = ours_first(RequestReader(), data, trailers)
    # RFC 9112 §2.2: we skip empty lines before a request, h11 refuses them.
    check_against_h11(mine, h11_first(h11_server(), data.lstrip(b"\r\n")), data, trailers)


def main() -> None:
    fuzz_main(TestOneInput, "http.dict")


if __name__ == "__main__":
    main()
