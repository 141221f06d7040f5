"""Fuzz the HTTP response reader (labsquid.http.ResponseReader).

Input: one byte naming the request method the response answers (``G`` GET,
``H`` HEAD, ``C`` CONNECT, ``P`` POST; any other byte means GET), then the
raw bytes an origin could send: 1xx heads, the final response, pipelined
responses. Checks, on every input:

* only ``ProtocolError`` (always status 502) ever escapes, and the reader
  always decides: no ``NeedData`` after EOF, no step without progress;
* split invariance: fed whole, cut at random points (chosen from a hash of
  the input) or byte by byte, the same heads, bodies, trailers and the same
  end (error, clean close, or tunnel bytes after 101 / a 2xx to CONNECT);
* every head it accepts is writable by ``write_head`` and reads back equal;
* h11 differential on the first message: whatever we accept, an h11 client
  that sent that method reads with the same heads, body, trailers and
  leftover bytes. Not compared: 101 and 2xx-to-CONNECT, which h11 hands to
  the protocol switch it was never asked for (our reader then tunnels).

Run: ``.venv/bin/python tests/fuzz/fuzz_http_response.py -max_total_time=600 CORPUS_DIR
tests/fuzz/seeds/http_response`` (docs/fuzzing.md).
"""

from __future__ import annotations

import os

import atheris

# atheris instruments bytecode: run labsquid's .py sources, not the compiled twins.
os.environ["LABSQUID_NO_EXTENSIONS"] = "1"

with atheris.instrument_imports(include=["labsquid"]):
    from _common import (
        check,
        check_against_h11,
        check_split_invariance,
        fuzz_main,
        h11_client,
        h11_first,
        ours_first,
    )

    from labsquid.http import ResponseReader

METHODS = {b"G": b"GET", b"H": b"HEAD", b"C": b"CONNECT", b"P": b"POST"}


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    method = METHODS.get(data[:1], b"GET")
    data = data[1:]

    def small_reader() -> ResponseReader:
        return ResponseReader(method, max_header_size=512, max_body_size=256, max_headers=8)

    outcome = check_split_invariance(small_reader, data, method)
    end = outcome[-1]
    check(end[0] != "error" or end[1] == 502, f"a response error that is not a 502: {end!r}")
    trailers: set[bytes] = set()
    mine = ours_first(ResponseReader(method), data, trailers)
    if mine is not None and not _switches(mine, method):
        check_against_h11(mine, h11_first(h11_client(method), data), data, trailers)


def _switches(summary: list, method: bytes) -> bool:
    # summary: [heads..., body, trailers, leftover]; a head is (status, None, ...).
    status = summary[-4][0]
    return status == 101 or (method == b"CONNECT" and 200 <= status < 300)


def main() -> None:
    fuzz_main(TestOneInput, "http.dict")


if __name__ == "__main__":
    main()
