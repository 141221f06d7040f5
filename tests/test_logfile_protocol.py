"""The logfile-daemon wire grammar, as pure code: no sockets, no processes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labsquid.logfile import (
    MAX_MESSAGE,
    MAX_RECORD,
    Acked,
    LineRun,
    MessageDecoder,
    Opened,
    Overlong,
    ProtocolError,
    Record,
    RecordDecoder,
    WriteFailed,
    encode_message,
    encode_record,
    parse_int,
    parse_message,
    take_line_run,
)

# --- records: kid -> daemon ----------------------------------------------------


@pytest.mark.parametrize(
    "wire, record",
    [
        (b"Lsome access log line\n", Record("L", b"some access log line")),
        (b"L\n", Record("L", b"")),
        (b"R\n", Record("R", b"")),
        (b"T\n", Record("T", b"")),
        (b"O\n", Record("O", b"")),
        (b"F\n", Record("F", b"")),
        (b"r3\n", Record("r", b"3")),
        (b"b1\n", Record("b", b"1")),
        (b"Xwhatever\n", Record("X", b"whatever")),
        (b"\n", Record("", b"")),
        (b"L\xff\x00\r\n", Record("L", b"\xff\x00\r")),
    ],
)
def test_each_letter_decodes(wire, record):
    assert RecordDecoder().feed(wire) == [record]


@pytest.mark.parametrize("letter, payload", [("L", b"text"), ("R", b""), ("r", b"10"), ("b", b"0")])
def test_encode_then_decode_is_identity(letter, payload):
    assert RecordDecoder().feed(encode_record(letter, payload)) == [Record(letter, payload)]


def test_encode_refuses_what_would_not_come_back():
    with pytest.raises(ValueError):
        encode_record("L", b"two\nlines")
    with pytest.raises(ValueError):
        encode_record("L", b"x" * MAX_RECORD)  # one byte too many with the letter
    with pytest.raises(ValueError):
        encode_record("LL", b"")
    assert len(encode_record("L", b"x" * (MAX_RECORD - 1))) == MAX_RECORD + 1


@pytest.mark.parametrize(
    "payload, value",
    [
        (b"0", 0),
        (b"10", 10),
        (b"-1", -1),
        (b"", None),
        (b" 1", None),
        (b"1x", None),
        (b"1_0", None),
    ],
)
def test_parse_int_is_strict(payload, value):
    assert parse_int(payload) == value


def test_largest_record_passes_one_more_byte_is_overlong():
    longest = b"L" + b"a" * (MAX_RECORD - 1)
    assert RecordDecoder().feed(longest + b"\n") == [Record("L", longest[1:])]
    assert RecordDecoder().feed(longest + b"a\n") == [Overlong(MAX_RECORD + 1)]


def test_overlong_record_is_discarded_whole_across_reads():
    # squid would read the bytes after its 64 KiB buffer as a new record: "T..."
    # would truncate the log.  Here the whole line is one Overlong.
    head = b"L" + b"x" * (MAX_RECORD - 1)
    tail = b"T" + b"R" * 5000
    dec = RecordDecoder()
    out = []
    for i in range(0, len(head + tail), 1000):
        out += dec.feed((head + tail)[i : i + 1000])
    assert out == []
    assert dec.partial == len(head + tail)
    assert dec.feed(b"\nLnext\n") == [Overlong(len(head + tail)), Record("L", b"next")]
    assert dec.partial == 0


def test_overlong_record_in_one_read_with_neighbours():
    data = b"La\n" + b"L" + b"y" * 70000 + b"\nR\n"
    assert RecordDecoder().feed(data) == [Record("L", b"a"), Overlong(70001), Record("R", b"")]


STREAM = b"Lfirst line\nr3\nR\nb1\nL\nF\nT\nO\nb0\n\nXunknown\nLlast one\n"


def test_split_at_every_byte_position():
    whole = RecordDecoder().feed(STREAM)
    assert len(whole) == 12
    for i in range(len(STREAM) + 1):
        dec = RecordDecoder()
        assert dec.feed(STREAM[:i]) + dec.feed(STREAM[i:]) == whole, i


def test_one_byte_at_a_time():
    dec = RecordDecoder()
    out = []
    for i in range(len(STREAM)):
        out += dec.feed(STREAM[i : i + 1])
    assert out == RecordDecoder().feed(STREAM)


def test_unfinished_record_is_held_not_returned():
    dec = RecordDecoder()
    assert dec.feed(b"Lhalf a li") == []
    assert dec.partial == 10
    assert dec.feed(b"ne\n") == [Record("L", b"half a line")]


_letters = st.sampled_from("LRTOFrbX")
_payloads = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@given(
    records=st.lists(st.tuples(_letters, _payloads), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_any_records_any_chunking_round_trip(records, cuts):
    wire = b"".join(encode_record(letter, payload) for letter, payload in records)
    dec = RecordDecoder()
    out, pos = [], 0
    for cut in sorted(cuts) + [len(wire)]:
        out += dec.feed(wire[pos:cut])
        pos = max(pos, cut)
    assert out == [Record(letter, payload) for letter, payload in records]
    assert dec.partial == 0


@given(
    lines=st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_overlong_lines_any_chunking(lines, cuts):
    # A small limit makes over-long lines common; their content (which may
    # look like commands) never surfaces.
    limit = 16
    wire = b"".join(line + b"\n" for line in lines)
    expected = [
        Overlong(len(line)) if len(line) > limit else Record(line[:1].decode("latin-1"), line[1:])
        for line in lines
    ]
    dec = RecordDecoder(max_record=limit)
    out, pos = [], 0
    for cut in sorted(cuts) + [len(wire)]:
        out += dec.feed(wire[pos:cut])
        pos = max(pos, cut)
    assert out == expected


def _expand(events):
    """LineRuns as the Records they stand for."""
    out = []
    for ev in events:
        if isinstance(ev, LineRun):
            out += [Record("L", line) for line in ev.text.split(b"\n")[:-1]]
        else:
            out.append(ev)
    return out


@given(
    lines=st.lists(st.one_of(
        st.tuples(st.just("L"), _payloads),
        st.tuples(_letters, _payloads),
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))), max_size=30),
    cut=st.integers(min_value=0, max_value=2000),
)
def test_a_line_run_stands_for_the_records_the_decoder_gives(lines, cut):
    """take_line_run (the daemon's bulk path) + the decoder for the rest report the
    same records as the decoder alone, over-long lines included (limit 24)."""
    wire = b"".join(encode_record(*x) if isinstance(x, tuple) else x + b"\n" for x in lines)
    wire = wire[: cut + 1] if cut < len(wire) else wire  # maybe ends mid-record
    run, rest = take_line_run(wire, max_record=24)
    dec = RecordDecoder(max_record=24)
    got = _expand(([run] if run else []) + dec.feed(rest))
    assert got == RecordDecoder(max_record=24).feed(wire)
    if run is not None:
        assert run.count == run.text.count(b"\n") and rest.count(b"\n") == 0


@given(
    lines=st.lists(st.one_of(
        st.tuples(st.just("L"), _payloads),
        st.tuples(_letters, _payloads),
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_reads_cut_anywhere_give_the_records_the_decoder_gives(lines, cuts):
    """feed_runs (the daemon's read path) over any chunking reports the same
    records as feed over the whole stream, over-long lines included (limit 24)."""
    wire = b"".join(encode_record(*x) if isinstance(x, tuple) else x + b"\n" for x in lines)
    dec = RecordDecoder(max_record=24)
    got, pos = [], 0
    for cut in sorted(cuts) + [len(wire)]:
        got += dec.feed_runs(wire[pos:cut])
        pos = max(pos, cut)
    assert _expand(got) == RecordDecoder(max_record=24).feed(wire)


def test_a_read_that_starts_mid_record_still_takes_the_rest_as_one_run():
    wire = b"".join(encode_record("L", b"line %d" % i) for i in range(4))
    dec = RecordDecoder()
    assert dec.feed_runs(wire[:10]) == [LineRun(1, b"line 0\n")]  # and "Lli" held
    assert dec.feed_runs(wire[10:]) == [Record("L", b"line 1"),
                                        LineRun(2, b"line 2\nline 3\n")]


def test_a_batch_of_access_log_lines_is_one_line_run():
    wire = b"".join(encode_record("L", b"line %d" % i) for i in range(3)) + b"Lpart"
    assert take_line_run(wire) == (LineRun(3, b"line 0\nline 1\nline 2\n"), b"Lpart")
    assert take_line_run(b"Lone\nR\nLtwo\n")[0] is None  # a command: record by record
    assert take_line_run(b"L\n\n")[0] is None  # an empty record (no letter) last


# --- messages: daemon -> kid -----------------------------------------------------


@pytest.mark.parametrize(
    "msg, wire",
    [
        (Opened(0), b"O0\n"),
        (Opened(123456789), b"O123456789\n"),
        (Acked(17, 4096), b"A17 4096\n"),
        (WriteFailed(28, 300), b"E28 300\n"),
    ],
)
def test_message_wire_format(msg, wire):
    assert encode_message(msg) == wire
    assert MessageDecoder().feed(wire) == [msg]


@given(
    st.lists(
        st.one_of(
            st.builds(Opened, st.integers(0, 2**62)),
            st.builds(Acked, st.integers(0, 2**62), st.integers(0, 2**62)),
            st.builds(WriteFailed, st.integers(0, 4095), st.integers(0, 2**62)),
        ),
        max_size=20,
    ),
    st.integers(min_value=1, max_value=30),
)
def test_messages_round_trip_in_any_chunk_size(msgs, chunk):
    wire = b"".join(encode_message(m) for m in msgs)
    dec = MessageDecoder()
    out = []
    for i in range(0, len(wire), chunk):
        out += dec.feed(wire[i : i + chunk])
    assert out == msgs


@pytest.mark.parametrize(
    "line", [b"", b"A1", b"A1 2 3", b"O-1", b"Ox", b"E28", b"Z1", b"a1 2", b"A 1 2", b"O1 "]
)
def test_malformed_message_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse_message(line)
    with pytest.raises(ProtocolError):
        MessageDecoder().feed(line + b"\n")


def test_endless_message_is_a_protocol_error():
    dec = MessageDecoder()
    assert dec.feed(b"A" + b"1" * (MAX_MESSAGE - 1)) == []
    with pytest.raises(ProtocolError):
        dec.feed(b"1")


def test_encode_message_refuses_other_things():
    with pytest.raises(TypeError):
        encode_message(Record("L", b""))
