"""Fuzz the logfile-daemon wire protocol (labsquid.logfile).

Input: a byte stream, read in both directions of the protocol:

* as records (kid -> daemon) by ``RecordDecoder``, with squid's 64 KiB limit
  and with a 16-byte one so that ``Overlong`` is common. The decoder never
  raises; its events must equal a reference model (every complete line is a
  ``Record(first byte, rest)`` or, when longer than the limit, ``Overlong(len)``)
  and ``partial`` must count the unfinished tail; fed whole, cut at random
  points or byte by byte, the events are the same, and so are those of
  ``feed_runs`` (the daemon's read path) with its LineRuns expanded. A decoded
  record with an ASCII letter survives ``encode_record`` -> decode unchanged, and
  ``parse_int`` (the ``r``/``b`` argument) returns an int or None, never raises;
* as messages (daemon -> kid) by ``MessageDecoder``: the only exception is
  ``ProtocolError``, and it comes exactly when the model says the stream is
  bad (a malformed complete line, or an unfinished one over ``MAX_MESSAGE``);
  split feeds agree with the whole feed (messages before the error are a
  prefix of the model's) and every message re-encodes to an equal message.

Run: ``.venv/bin/python tests/fuzz/fuzz_logfile.py -max_total_time=600 CORPUS_DIR
tests/fuzz/seeds/logfile`` (docs/fuzzing.md).
"""

from __future__ import annotations

import os

import atheris

# atheris instruments bytecode: run labsquid's .py sources, not the compiled twins.
os.environ["LABSQUID_NO_EXTENSIONS"] = "1"

with atheris.instrument_imports(include=["labsquid"]):
    from _common import FuzzFailure, bytewise, check, fuzz_main, random_split, rng_for

    from labsquid.logfile import (
        MAX_MESSAGE,
        MAX_RECORD,
        LineRun,
        MessageDecoder,
        Overlong,
        ProtocolError,
        Record,
        RecordDecoder,
        encode_message,
        encode_record,
        parse_int,
        parse_message,
    )


def _splits(data: bytes) -> list[list[bytes]]:
    out = [[data], random_split(data, rng_for(data), max_cuts=8)]
    if len(data) <= 1024:
        out.append(bytewise(data))
    return out


# -- records -------------------------------------------------------------------------


def record_model(data: bytes, limit: int) -> tuple[list[Record | Overlong], int]:
    *lines, tail = data.split(b"\n")
    events = [
        Overlong(len(line)) if len(line) > limit else Record(line[:1].decode("latin-1"), line[1:])
        for line in lines
    ]
    return events, len(tail)


def check_records(data: bytes, limit: int) -> None:
    expected, tail = record_model(data, limit)
    for chunks in _splits(data):
        dec = RecordDecoder(max_record=limit)
        got: list[Record | Overlong] = []
        for chunk in chunks:
            got += dec.feed(chunk)
        if got != expected:
            raise FuzzFailure(f"records differ from the model (limit {limit}, "
                              f"{len(chunks)} pieces):\n  got: {got!r}\n  want: {expected!r}")
        check(dec.partial == tail, f"partial {dec.partial} != unfinished tail {tail}")
        # The daemon's read path: the same records, runs of L lines as LineRuns.
        dec = RecordDecoder(max_record=limit)
        got = []
        for chunk in chunks:
            got += _expand(dec.feed_runs(chunk))
        if got != expected:
            raise FuzzFailure(f"feed_runs differs from the model (limit {limit}, "
                              f"{len(chunks)} pieces):\n  got: {got!r}\n  want: {expected!r}")
        check(dec.partial == tail, f"feed_runs: partial {dec.partial} != tail {tail}")
    for event in expected:
        if type(event) is Record:
            _check_record(event)


def _expand(events: list) -> list[Record | Overlong]:
    """LineRuns as the Records they stand for."""
    out: list[Record | Overlong] = []
    for event in events:
        if type(event) is LineRun:
            out += [Record("L", line) for line in event.text.split(b"\n")[:-1]]
            check(event.count == event.text.count(b"\n"), f"LineRun count {event!r}")
        else:
            out.append(event)
    return out


def _check_record(rec: Record) -> None:
    if rec.letter in ("r", "b"):
        value = parse_int(rec.payload)
        check(value is None or type(value) is int, f"parse_int gave {value!r}")
        if value is not None:
            check(int(rec.payload) == value, f"parse_int({rec.payload!r}) = {value}")
    if rec.letter and rec.letter.isascii() and 1 + len(rec.payload) <= MAX_RECORD:
        wire = encode_record(rec.letter, rec.payload)
        check(RecordDecoder().feed(wire) == [rec], f"{rec!r} does not survive encoding")


# -- messages ------------------------------------------------------------------------


def message_model(data: bytes) -> tuple[list, bool]:
    """(messages up to the first bad line, whether the stream is bad)."""
    *lines, tail = data.split(b"\n")
    out = []
    for line in lines:
        try:
            out.append(parse_message(line))
        except ProtocolError:
            return out, True
    return out, len(tail) > MAX_MESSAGE


def check_messages(data: bytes) -> None:
    expected, bad = message_model(data)
    for chunks in _splits(data):
        dec = MessageDecoder()
        got: list = []
        failed = False
        for chunk in chunks:
            try:
                got += dec.feed(chunk)
            except ProtocolError:
                failed = True
                break
        check(failed == bad, f"MessageDecoder {'failed' if failed else 'passed'} but the "
                             f"model says bad={bad} ({len(chunks)} pieces)")
        if bad:
            check(got == expected[: len(got)], f"messages before the error: {got!r}")
        else:
            check(got == expected, f"messages {got!r} != model {expected!r}")
    for msg in expected:
        wire = encode_message(msg)
        check(parse_message(wire[:-1]) == msg, f"{msg!r} does not survive encoding")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check_records(data, MAX_RECORD)
    check_records(data, 16)
    check_messages(data)


def main() -> None:
    fuzz_main(TestOneInput, "logfile.dict")


if __name__ == "__main__":
    main()
