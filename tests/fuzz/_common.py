"""Shared pieces of the atheris harnesses in this folder (see docs/fuzzing.md).

Imported by the harnesses *inside* ``atheris.instrument_imports(include=["labsquid"])``
so that only labsquid's own modules get coverage instrumentation; this module
and h11 (the reference parser) stay uninstrumented. tests/test_fuzz.py imports
it too (for the regression checks), so atheris is only imported by `fuzz_main`.
"""

from __future__ import annotations

import os
import random
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import h11

from labsquid.http import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    NeedData,
    Paused,
    ProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    write_head,
)


class FuzzFailure(AssertionError):
    """An invariant broke: atheris reports it as a crash and saves the input."""


# Failures already diagnosed but not fixed yet, name -> diagnosis; each has a
# strict xfail regression test in tests/test_fuzz.py whose reason is
# KNOWN_BUGS["name"]. A harness that hits one carries on instead of stopping
# (libFuzzer ends at the first crash), so the run keeps looking for new bugs.
# LABSQUID_FUZZ_STRICT=1 turns them back into crashes (to reproduce one);
# LABSQUID_FUZZ_KNOWN_LOG=FILE appends one line per hit (bug name, detail).
# Remove a name here once its xfail test starts passing.
#
# The five bugs found so far (docs/fuzzing.md) are fixed; the harnesses still
# recognise them by name (http-split-error-class, http-trailer-size-limit,
# http-trailer-framing-fields, config-multiline-message, accesslog-surrogate-
# in-format), and a name not listed here is a crash, so a regression fails
# under its old name.
KNOWN_BUGS: dict[str, str] = {}


def known(bug: str, detail: str) -> None:
    """Note a hit of a diagnosed bug; a crash only under LABSQUID_FUZZ_STRICT=1."""
    if bug not in KNOWN_BUGS or os.environ.get("LABSQUID_FUZZ_STRICT") == "1":
        raise FuzzFailure(f"{bug}: {detail}")
    path = os.environ.get("LABSQUID_FUZZ_KNOWN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{bug}\t{detail!r}\n")


def check(condition: bool, message: str) -> None:
    # Not `assert`: the harness must keep checking under `python -O`.
    if not condition:
        raise FuzzFailure(message)


def rng_for(data: bytes) -> random.Random:
    """A PRNG seeded by the input, so split points are random yet reproducible."""
    return random.Random(zlib.crc32(data))


def random_split(data: bytes, rng: random.Random, max_cuts: int = 4) -> list[bytes]:
    """`data` cut at up to `max_cuts` random places (empty pieces allowed)."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(1, max_cuts)))
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos:cut])
        pos = cut
    pieces.append(data[pos:])
    return pieces


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- HTTP: drive a reader to the end ---------------------------------------------------


def _head(event: Request | Response) -> tuple:
    if type(event) is Request:
        return ("request", event.method, event.target, event.http_version, list(event.headers))
    return ("response", event.status, event.reason, event.http_version, list(event.headers))


def check_round_trip(event: Request | Response, request_method: bytes) -> None:
    """A head we accepted must be writable, and read back as the same head.

    The proxy forwards what it parsed through ``write_head``; a head the reader
    takes but the writer refuses (or writes differently) is a bug on one side.
    """
    try:
        wire = write_head(event)
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        raise FuzzFailure(f"write_head refuses a head the reader accepted: {exc!r}") from exc
    reader = RequestReader() if type(event) is Request else ResponseReader(request_method)
    reader.feed(wire)
    try:
        again = reader.next_event()
    except ProtocolError as exc:
        raise FuzzFailure(f"written head {wire!r} does not parse again: {exc!r}") from exc
    check(again == event, f"head changed on a write/read round trip: {event!r} -> {again!r}")


def read_all(
    make: Callable[[], RequestReader | ResponseReader],
    chunks: list[bytes],
    request_method: bytes = b"GET",
    round_trip: bool = False,
) -> list[tuple]:
    """What a reader makes of `chunks` followed by EOF, every message to the end.

    Chunks are fed one at a time, each only when the reader asks for more, the
    way the proxy feeds what `recv()` returned. Body `Data` is joined per
    message (its cut points follow the feed, not the message). The result ends
    with how the stream ended: ``("closed",)``, ``("error", status, code)`` or
    ``("tunnel", bytes)`` after a CONNECT request or a switching response.
    """
    reader = make()
    pending = list(chunks)
    out: list[tuple] = []
    body = bytearray()
    last_head: Request | Response | None = None
    eof = False
    # Each step consumes input or emits an event; more steps than that is a hang.
    budget = 4 * (sum(map(len, chunks)) + len(chunks)) + 64
    for _ in range(budget):
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            check(type(exc) is ProtocolError, f"unexpected exception type {exc!r}")
            out.append(("error", exc.status, exc.error_code))
            return out
        if event is NeedData:
            check(not eof, "NeedData after EOF: the reader can never decide")
            if pending:
                reader.feed(pending.pop(0))
            else:
                reader.feed_eof()
                eof = True
            continue
        if event is Paused:
            check(last_head is not None, "Paused before any message")
            if _is_tunnel(last_head, request_method):
                out.append(("tunnel", reader.take_trailing_data() + b"".join(pending)))
                return out
            if type(reader) is ResponseReader:
                reader.start_next_cycle(request_method)
            else:
                reader.start_next_cycle()
            continue
        kind = type(event)
        if kind is Data:
            check(len(event.data) > 0, "empty Data event")
            body += event.data
        elif kind is EndOfMessage:
            out.append(("message-end", bytes(body), list(event.trailers)))
            body.clear()
        elif kind is Request or kind is Response:
            check(not body, "a head event in the middle of a body")
            out.append(_head(event))
            last_head = event
            if round_trip:
                check_round_trip(event, request_method)
        elif kind is ConnectionClosed:
            check(eof, "ConnectionClosed before EOF")
            out.append(("closed",))
            return out
        else:
            raise FuzzFailure(f"unknown event {event!r}")
    raise FuzzFailure(f"reader made no progress within {budget} steps")


def _is_tunnel(head: Request | Response, request_method: bytes) -> bool:
    if type(head) is Request:
        return head.method == b"CONNECT"
    if head.status == 101:
        return True
    return request_method == b"CONNECT" and 200 <= head.status < 300


def check_split_invariance(
    make: Callable[[], RequestReader | ResponseReader],
    data: bytes,
    request_method: bytes = b"GET",
) -> list[tuple]:
    """Whole, randomly cut and byte-by-byte feeds must read the same messages."""
    whole = read_all(make, [data], request_method, round_trip=True)
    rng = rng_for(data)
    if len(data) <= 512:  # the harshest split; linear in the input, so keep it short
        splits = [random_split(data, rng), bytewise(data)]
    else:  # more random cuts instead, so long inputs are cut inside each part too
        splits = [random_split(data, rng, max_cuts=8) for _ in range(4)]
    for chunks in splits:
        got = read_all(make, chunks, request_method)
        if got == whole:
            continue
        cuts = [len(c) for c in chunks] if len(chunks) < 20 else "byte by byte"
        detail = f"pieces {cuts}:\n  whole: {whole!r}\n  split: {got!r}"
        if _only_big_trailers_refused(whole, got):
            known("http-trailer-size-limit", detail)
            continue
        if _coarse(got) != _coarse(whole):
            raise FuzzFailure(f"split feed differs from whole feed, {detail}")
        # Same messages, both refused: only the error's status or page differs.
        known("http-split-error-class", f"{whole[-1]} vs {got[-1]}")
    return whole


def _only_big_trailers_refused(whole: list[tuple], got: list[tuple]) -> bool:
    """The split feed failed with a size error exactly where the whole feed took
    a message with trailers: the trailer section's limit is only checked while
    the section is incomplete (see KNOWN_BUGS)."""
    i = len(got) - 1
    if got[i][0] != "error" or got[i][2] != "ERR_TOO_BIG" or i >= len(whole):
        return False
    return got[:i] == whole[:i] and whole[i][0] == "message-end" and bool(whole[i][2])


def _coarse(outcome: list[tuple]) -> list[tuple]:
    return [("error",) if item[0] == "error" else item for item in outcome]


# -- HTTP: the h11 differential (as in tests/test_http_h11_diff.py) ---------------------


def _norm_fields(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # Known, documented h11 differences: it folds identical Content-Length lines
    # (compared through the body instead) and lowercases Transfer-Encoding.
    out = []
    for name, value in pairs:
        if name == b"content-length":
            continue
        out.append((name, value.lower() if name == b"transfer-encoding" else value))
    return out


def ours_first(
    reader: RequestReader | ResponseReader, data: bytes, trailer_names: set[bytes] | None = None
) -> list | None:
    """[heads..., body, trailers, leftover] of the first message; None if refused.

    `trailer_names` (if given) receives the lowercased trailer field names, which
    the summary's normalisation may drop.
    """
    reader.feed(data)
    reader.feed_eof()
    out: list = []
    payload = b""
    try:
        while True:
            event = reader.next_event()
            if type(event) is Request:
                out.append((event.method, event.target, event.http_version,
                            _norm_fields(event.headers.lowered())))
            elif type(event) is Response:
                out.append((event.status, None, event.http_version,
                            _norm_fields(event.headers.lowered())))
            elif type(event) is Data:
                payload += event.data
            elif type(event) is EndOfMessage:
                if trailer_names is not None:
                    trailer_names.update(name for name, _ in event.trailers.lowered())
                return [*out, payload, _norm_fields(event.trailers.lowered()),
                        reader.trailing_data]
            else:
                return None
    except ProtocolError:
        return None


def h11_first(conn: h11.Connection, data: bytes) -> tuple[list | None, str, bool]:
    """The same summary from h11, or None and why h11 refused the message.

    The third item says whether h11 had read the whole head (the refusal
    came from the body or the trailers).
    """
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list = []
    payload = b""
    try:
        while True:
            event = conn.next_event()
            if type(event) is h11.Request:
                out.append((event.method, event.target, event.http_version,
                            _norm_fields(list(event.headers))))
            elif type(event) in (h11.Response, h11.InformationalResponse):
                out.append((event.status_code, None, event.http_version,
                            _norm_fields(list(event.headers))))
            elif type(event) is h11.Data:
                payload += event.data
            elif type(event) is h11.EndOfMessage:
                summary = [*out, payload, _norm_fields(list(event.headers)),
                           conn.trailing_data[0]]
                return summary, "", True
            else:
                return None, f"h11 event {event!r}", bool(out)
    except h11.RemoteProtocolError as exc:
        return None, str(exc), bool(out)


# h11 buffers at most 16 KiB of an incomplete head by default; ours 64 KiB.
H11_MAX = 1 << 20


def h11_server() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=H11_MAX)


def h11_client(method: bytes) -> h11.Connection:
    """An h11 client that has sent a `method` request, ready to read the response."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=H11_MAX)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    return conn


# h11 refusals of framing fields (it validates them in trailers too).
_H11_FRAMING_REFUSALS = ("Transfer-Encoding", "Content-Length")


def check_against_h11(
    mine: list | None,
    theirs: tuple[list | None, str, bool],
    data: bytes,
    trailer_names: set[bytes] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Whatever we accept as one message, h11 must read identically.

    We are deliberately stricter, so ``mine is None`` (refused) passes whatever
    h11 says; a message we accept but h11 refuses or reads with another head,
    body, trailers or boundary (leftover bytes) is a finding.
    """
    if mine is None:
        return
    summary, reason, head_read = theirs
    if summary is None:
        if (head_read and trailer_names & {b"content-length", b"transfer-encoding"}
                and any(word in reason for word in _H11_FRAMING_REFUSALS)):
            known("http-trailer-framing-fields", f"{reason}: {data[-200:]!r}")
            return
        raise FuzzFailure(f"we accept a message h11 refuses ({reason}): {data!r}\n"
                          f"  ours: {mine!r}")
    check(mine == summary, f"h11 reads it differently: {data!r}\n  ours: {mine!r}\n"
                           f"  h11:  {summary!r}")


DICTS = Path(__file__).resolve().parent / "dicts"


def fuzz_main(test_one_input: Callable[[bytes], None], dictionary: str | None = None) -> None:
    """libFuzzer's command line: ``harness.py [flags] [corpus dirs or files]``.

    `dictionary` names a file in dicts/ (tokens of the input language) that is
    used unless the command line gives its own ``-dict=``.
    """
    import atheris  # here, so tests/test_fuzz.py can use the checks without it

    argv = list(sys.argv)
    if dictionary and not any(arg.startswith("-dict=") for arg in argv):
        argv.insert(1, f"-dict={DICTS / dictionary}")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
