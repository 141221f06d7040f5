"""The kid's LogQueue, sans-I/O: messages in, bytes out, no daemon needed."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labsquid.logfile import MAX_RECORD, LogQueue, ProtocolError, RecordDecoder, WriteFailed


def drain(q: LogQueue) -> bytes:
    """Everything the kid would write now, as if the socket took it all."""
    out = b""
    while chunk := q.pending_output():
        q.consumed(len(chunk))
        out += chunk
    return out


def greeted(size: int = 0, **kw) -> LogQueue:
    q = LogQueue(**kw)
    q.feed(b"O%d\n" % size)
    return q


# --- sending -------------------------------------------------------------------


def test_nothing_is_sent_before_the_daemon_greets():
    q = LogQueue()
    q.append("one")
    assert q.pending_output() == b""
    q.feed(b"O0\n")
    assert drain(q) == b"Lone\n"


def test_lines_and_commands_are_framed_in_order():
    q = greeted()
    q.append("GET /")
    q.command("r", 3)
    q.command("R")
    q.append(b"raw bytes \xff")
    q.command("b", "1")
    q.command("F")
    assert drain(q) == b"LGET /\nr3\nR\nLraw bytes \xff\nb1\nF\n"


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_a_pool_childs_chunk_queues_like_its_lines_one_by_one(lines):
    """append_lines (the kid's bulk path) is append per line: the same bytes
    out, the same accounting for the bound, acks and restarts."""
    chunk = b"".join(line + b"\n" for line in lines)
    one_by_one, bulk = greeted(), greeted()
    one_by_one.append("before")
    bulk.append("before")
    queued = [line for line in chunk.split(b"\n")[:-1] if line]
    for line in queued:
        one_by_one.append(line)
    bulk.append_lines(chunk)
    assert bulk.queued_bytes == one_by_one.queued_bytes <= 8 + 2 * len(chunk)
    assert bulk.room == one_by_one.room
    assert drain(bulk) == drain(one_by_one)
    # the daemon confirms everything: both queues are empty again
    n = 1 + len(queued)  # "before" and every line
    bulk.feed(b"A%d 0\n" % n)
    one_by_one.feed(b"A%d 0\n" % n)
    assert bulk.idle() and one_by_one.idle()


def test_partial_writes_resume_where_they_stopped():
    q = greeted()
    q.append("abcdef")
    assert q.pending_output(limit=3) == b"Lab"
    q.consumed(2)
    assert q.pending_output() == b"bcdef\n"
    with pytest.raises(ValueError):
        q.consumed(100)


_ITEM = st.one_of(st.binary(min_size=1, max_size=300).map(lambda b: ("line", b)),
                  st.integers(1, 400).map(lambda n: ("chunk", n)))


def _queue_item(q: LogQueue, kind: str, value) -> bytes:
    """Queue a line (``value`` bytes) or a chunk of ``value`` ~120-byte lines
    (over the shared-buffer threshold from 137 lines); return its wire bytes."""
    if kind == "line":
        q.append(value)
        return b"L" + value.replace(b"\n", b"\\n").replace(b"\r", b"\\r") + b"\n"
    lines = [b"%06d " % i + b"x" * 113 for i in range(value)]
    q.append_lines(b"".join(line + b"\n" for line in lines))
    return b"".join(b"L" + line + b"\n" for line in lines)


@given(st.lists(_ITEM, max_size=25), st.lists(st.integers(1, 70_000), min_size=1, max_size=40),
       st.lists(st.one_of(st.none(), _ITEM), max_size=40))
@settings(deadline=None)  # up to ~1 MB queued and compared
def test_sends_of_any_size_deliver_every_record_once_in_order(items, sizes, arrivals):
    """Small records go out of one shared buffer, a pool child's chunk as a view
    of itself; whatever the socket takes each time, and whatever is queued
    between two sends (onto a buffer already half sent), the daemon gets the
    same bytes, in order."""
    q = greeted()
    wanted = b"".join(_queue_item(q, kind, value) for kind, value in items)
    got = b""
    turn = 0
    while out := q.pending_output():
        assert len(out) <= 256 * 1024
        # Any size for the first 200 sends, then whole ones (a bounded run).
        taken = min(len(out), sizes[turn % len(sizes)] if turn < 200 else len(out))
        got += bytes(out[:taken])
        q.consumed(taken)
        if turn < len(arrivals) and arrivals[turn] is not None:
            wanted += _queue_item(q, *arrivals[turn])
        turn += 1
    assert got == wanted
    assert q.output_bytes == 0 and not q.has_output()


def test_newlines_and_carriage_returns_are_escaped():
    q = greeted()
    q.append("a\nb\r\nc")
    assert drain(q) == b"La\\nb\\r\\nc\n"
    assert RecordDecoder().feed(b"La\\nb\\r\\nc\n")[0].payload == b"a\\nb\\r\\nc"


def test_long_lines_are_cut_to_one_record():
    q = greeted()
    q.append("x" * 100_000)
    wire = drain(q)
    assert len(wire) == MAX_RECORD + 1
    assert q.truncated == 1


def test_cut_does_not_split_a_utf8_character():
    q = greeted()
    q.append("x" * (MAX_RECORD - 3) + "€€")  # the first € straddles the limit
    wire = drain(q)
    assert wire == b"L" + b"x" * (MAX_RECORD - 3) + b"\n"
    wire[1:-1].decode("utf-8")


@pytest.mark.parametrize("letter, arg", [("X", ""), ("L", ""), ("R", 1), ("r", ""), ("b", "on")])
def test_bad_commands_are_refused(letter, arg):
    with pytest.raises(ValueError):
        greeted().command(letter, arg)


# --- acknowledgements --------------------------------------------------------------


def test_acks_forget_records_and_track_the_file_size():
    q = greeted(100)
    for i in range(3):
        q.append(f"line{i}")
    drain(q)
    assert len(q) == 3 and not q.idle()
    q.feed(b"A2 112")
    assert len(q) == 3  # not a whole message yet
    q.feed(b"\n")
    assert len(q) == 1 and q.file_size == 112 and q.acked == 2
    q.feed(b"A3 118\n")
    assert q.idle() and q.queued_bytes == 0


def test_ack_for_more_than_was_queued_is_a_protocol_error():
    q = greeted()
    q.append("one")
    with pytest.raises(ProtocolError):
        q.feed(b"A2 10\n")


def test_ack_going_backwards_is_a_protocol_error():
    q = greeted()
    q.append("one")
    q.append("two")
    q.feed(b"A2 8\n")
    with pytest.raises(ProtocolError):
        q.feed(b"A1 8\n")


def test_ack_before_greeting_is_a_protocol_error():
    q = LogQueue()
    q.append("one")
    with pytest.raises(ProtocolError):
        q.feed(b"A1 4\n")


def test_reopen_message_confirms_up_to_the_rotate():
    q = greeted(50)
    q.append("before")
    q.command("R")
    q.append("after")
    drain(q)
    q.feed(b"O0\n")  # rotated: "before" and R are done
    assert len(q) == 1 and q.file_size == 0
    q.feed(b"A3 6\n")  # the count includes the two confirmed by O
    assert q.idle()


def test_reopen_message_without_a_rotate_is_a_protocol_error():
    q = greeted()
    q.append("x")
    with pytest.raises(ProtocolError):
        q.feed(b"O0\n")


def test_write_errors_are_reported_until_acks_resume():
    q = greeted()
    q.append("x")
    q.feed(b"E28 2\n")
    assert q.last_error == WriteFailed(28, 2) and q.errors == 1
    q.feed(b"A1 2\n")
    assert q.last_error is None and q.errors == 1


# --- the bound -----------------------------------------------------------------------


def test_room_shrinks_with_lines_and_a_full_queue_still_takes_them():
    """The queue never refuses a line (that would lose it): its producers
    keep to ``room``, and the kid goes over only with a dead child's last lines."""
    q = greeted(max_bytes=MAX_RECORD + 1)
    assert q.room == MAX_RECORD + 1
    q.append("a" * (MAX_RECORD - 10))
    assert q.room == 9  # the line with its letter and newline: MAX_RECORD - 8
    q.append("b" * 20)
    q.append_lines(b"c" * 20 + b"\n")
    assert q.room == 0 and len(q) == 3
    assert drain(q).endswith(b"L" + b"b" * 20 + b"\nL" + b"c" * 20 + b"\n")


def test_commands_are_never_dropped_and_acks_free_room():
    q = greeted(max_bytes=MAX_RECORD + 1)
    q.append("a" * (MAX_RECORD - 1))
    q.command("R")
    q.command("F")
    assert q.queued_bytes > q.max_bytes and q.room == 0
    assert drain(q).endswith(b"R\nF\n")
    q.feed(b"O0\nA3 0\n")
    assert q.idle() and q.room == q.max_bytes


def test_bound_must_hold_a_record():
    with pytest.raises(ValueError):
        LogQueue(max_bytes=1000)


# --- restart and the exactly-once arithmetic ----------------------------------------------


def lines(n: int) -> list[str]:
    return [f"line number {i}" + "x" * (i % 7) for i in range(n)]


def sizes(ls: list[str]) -> int:
    return sum(len(s) + 1 for s in ls)


def queue_with(ls: list[str], base: int = 1000) -> LogQueue:
    q = greeted(base)
    for s in ls:
        q.append(s)
    drain(q)
    return q


def test_restart_resends_everything_unacked():
    ls = lines(5)
    q = queue_with(ls)
    q.feed(b"A2 %d\n" % (1000 + sizes(ls[:2])))
    q.daemon_restarted()
    q.append("new")
    assert q.pending_output() == b""  # wait for the greeting
    q.feed(b"O%d\n" % (1000 + sizes(ls[:2])))  # nothing more was written
    assert drain(q) == b"".join(b"L%s\n" % s.encode() for s in ls[2:] + ["new"])
    assert q.resent == 4 and q.skipped == 0


@pytest.mark.parametrize("written", range(6))
def test_restart_skips_exactly_what_was_written(written):
    ls = lines(5)
    q = queue_with(ls)
    q.daemon_restarted()
    q.feed(b"O%d\n" % (1000 + sizes(ls[:written])))
    assert drain(q) == b"".join(b"L%s\n" % s.encode() for s in ls[written:])
    assert q.skipped == written


@pytest.mark.parametrize("grown", [-1, -500, sizes(lines(5)) + 1])
def test_restart_resends_all_when_the_file_shrank_or_grew_past_what_was_sent(grown):
    ls = lines(5)
    q = queue_with(ls)
    q.daemon_restarted()
    q.feed(b"O%d\n" % (1000 + grown))
    assert drain(q) == b"".join(b"L%s\n" % s.encode() for s in ls)
    assert q.skipped == 0 and q.completed == 0


@pytest.mark.parametrize("cut", [1, 7, len("line number 2xx")])  # the last: all but "\n"
def test_restart_completes_a_line_the_crash_tore(cut):
    """A kill inside write() leaves a line's head on disk: the replacement
    writes the rest of that line, so the file holds it whole, once."""
    ls = lines(5)
    q = queue_with(ls)
    q.daemon_restarted()
    q.feed(b"O%d\n" % (1000 + sizes(ls[:2]) + cut))
    on_disk = "".join(s + "\n" for s in ls)[: sizes(ls[:2]) + cut].encode()
    out = drain(q)
    assert out.startswith(b"L" + (ls[2] + "\n").encode()[cut:])
    written = on_disk + appended_by_daemon(out)
    assert written == "".join(s + "\n" for s in ls).encode()
    assert (q.skipped, q.completed) == (2, 1)
    q.feed(b"A3 %d\n" % (1000 + sizes(ls)))
    assert q.idle() and q.queued_bytes == 0


def appended_by_daemon(wire: bytes) -> bytes:
    """What a daemon appends to its file for ``wire`` (L records only)."""
    records = RecordDecoder().feed(wire)
    assert all(r.letter == "L" for r in records)
    return b"".join(r.payload + b"\n" for r in records)


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                        max_size=30),
                min_size=1, max_size=12), st.data())
def test_any_kill_point_leaves_every_line_once(texts, data):
    """Wherever the dying daemon's writing stopped, the bytes on disk plus
    what the replacement is sent make every line exactly once, in order."""
    q = greeted(0)
    whole = b""
    for t in texts:
        q.append(t)
        whole += t.encode() + b"\n"
    drain(q)
    stop = data.draw(st.integers(0, len(whole)), label="bytes on disk at the kill")
    q.daemon_restarted()
    q.feed(b"O%d\n" % stop)
    assert whole[:stop] + appended_by_daemon(drain(q)) == whole


def test_restart_sum_stops_at_a_rotate():
    q = greeted(1000)
    q.append("aaa")
    q.command("R")
    q.append("bbb")
    drain(q)
    q.daemon_restarted()
    q.feed(b"O%d\n" % (1000 + 4 + 4))  # "aaa" and "bbb" sizes, but R lies between
    assert drain(q) == b"Laaa\nR\nLbbb\n"


def test_restart_steps_over_settings_and_keeps_them():
    q = greeted(0)
    q.append("aaa")
    q.command("b", 0)
    q.command("F")
    q.append("bbb")
    q.append("ccc")
    drain(q)
    q.daemon_restarted()
    q.feed(b"O8\n")
    assert drain(q) == b"b0\nF\nLccc\n"
    assert q.skipped == 2


def test_restart_restores_acknowledged_settings_first():
    q = greeted(0)
    q.command("r", 3)
    q.command("b", 1)
    q.append("aaa")
    drain(q)
    q.feed(b"A2 0\n")  # the settings are done, the line is not
    q.daemon_restarted()
    q.feed(b"O0\n")
    out = drain(q)
    assert sorted(out.splitlines()[:2]) == [b"b1", b"r3"]
    assert out.endswith(b"Laaa\n")
    q.feed(b"A3 4\n")
    assert q.idle()


def test_restart_before_any_greeting_skips_nothing():
    q = LogQueue()
    q.append("aaa")
    q.daemon_restarted()
    q.feed(b"O4\n")  # a file with an old line in it
    assert drain(q) == b"Laaa\n"


def test_restart_drops_a_torn_message_from_the_dead_daemon():
    q = queue_with(["aaa"], base=0)
    q.feed(b"A1 ")
    q.daemon_restarted()
    q.feed(b"O4\n")
    assert q.idle()


_LINE = st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b)


@given(st.lists(st.lists(_LINE, min_size=1, max_size=20), min_size=1, max_size=5), st.data())
def test_chunks_acked_in_any_pieces_then_a_crash_lose_and_duplicate_nothing(chunks, data):
    """Pool children's chunks are one queue entry each; acks end anywhere in
    them and the daemon dies at any byte: every line is on disk once."""
    q = greeted(100)
    for chunk in chunks:
        q.append_lines(b"".join(line + b"\n" for line in chunk))
    assert drain(q) == b"".join(b"L%s\n" % line for chunk in chunks for line in chunk)
    ends = [0]  # file offset (past the base) after each line
    for line in (line for chunk in chunks for line in chunk):
        ends.append(ends[-1] + len(line) + 1)
    stop = data.draw(st.integers(0, ends[-1]), label="bytes on disk at the kill")
    whole_lines = max(i for i, end in enumerate(ends) if end <= stop)
    acks = data.draw(st.lists(st.integers(0, whole_lines), max_size=4), label="acks read")
    for count in sorted(acks):
        q.feed(b"A%d %d\n" % (count, 100 + ends[count]))
        assert len(q) == len(ends) - 1 - count
    acked = max(acks, default=0)
    q.daemon_restarted()
    q.feed(b"O%d\n" % (100 + stop))
    whole = b"".join(line + b"\n" for chunk in chunks for line in chunk)
    assert whole[:stop] + appended_by_daemon(drain(q)) == whole
    assert q.skipped == whole_lines - acked


def test_chunk_with_a_line_too_long_for_a_record_is_cut_like_one_line():
    long = b"x" * (MAX_RECORD + 10)
    chunk = b"short\n" + long + b"\nafter\n"
    bulk, one_by_one = greeted(), greeted()
    bulk.append_lines(chunk)
    for line in (b"short", long, b"after"):
        one_by_one.append(line)
    assert drain(bulk) == drain(one_by_one)
    assert bulk.truncated == 1 and len(bulk) == 3


class Disk:
    """A reference daemon: applies L records in order, counts everything."""

    def __init__(self, lines=()):
        self.lines = list(lines)
        self.dec = RecordDecoder()
        self.records = []

    def receive(self, data):
        self.records += self.dec.feed(data)

    def write(self, n):
        """Process the first n received records."""
        for letter, payload in self.records[:n]:
            if letter == "L":
                self.lines.append(payload)
        del self.records[:n]

    @property
    def size(self):
        return sum(len(x) + 1 for x in self.lines)


@given(
    st.lists(st.text(max_size=30), min_size=1, max_size=40),
    st.data(),
)
def test_a_crash_anywhere_loses_and_duplicates_nothing(texts, data):
    q = LogQueue()
    disk = Disk([b"old line"])
    q.feed(b"O%d\n" % disk.size)
    for t in texts:
        q.append(t)
    disk.receive(drain(q))
    written = data.draw(st.integers(0, len(texts)), label="written before the crash")
    acked = data.draw(st.integers(0, written), label="acks the kid read")
    disk.write(written)
    q.feed(b"A%d %d\n" % (acked, disk.size - sum(len(_esc(t)) + 1 for t in texts[acked:written])))
    # crash: a new daemon sees the same file
    q.daemon_restarted()
    disk2 = Disk(disk.lines)
    q.feed(b"O%d\n" % disk2.size)
    disk2.receive(drain(q))
    disk2.write(len(disk2.records))
    assert disk2.lines == [b"old line"] + [_esc(t) for t in texts]
    assert q.skipped == written - acked


def _esc(t: str) -> bytes:
    return t.encode("utf-8", "backslashreplace").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


@given(st.lists(_ITEM, max_size=25), st.lists(st.integers(0, 70_000), min_size=1, max_size=40),
       st.lists(st.one_of(st.none(), _ITEM), max_size=40))
@settings(deadline=None)
def test_write_to_delivers_every_record_once_whatever_the_socket_takes(items, sizes, arrivals):
    """``write_to`` as the kid calls it with a non-blocking socket's ``send``:
    each call takes some bytes, or none (EAGAIN); lines queue between calls."""
    q = greeted()
    wanted = b"".join(_queue_item(q, kind, value) for kind, value in items)
    got = bytearray()
    turn = 0

    def send(view: memoryview) -> int:
        assert 0 < len(view) <= 256 * 1024
        take = min(len(view), sizes[turn % len(sizes)] if turn < 200 else len(view))
        if take == 0:
            raise BlockingIOError
        got.extend(view[:take])
        return take

    while q.has_output():
        before = len(got)
        try:
            assert q.write_to(send) == len(got) - before
        except BlockingIOError:
            pass
        assert q.output_bytes == len(wanted) - len(got)
        if turn < len(arrivals) and arrivals[turn] is not None:
            wanted += _queue_item(q, *arrivals[turn])
        turn += 1
    assert bytes(got) == wanted


def test_write_to_stops_at_a_short_send_and_sends_nothing_before_the_greeting():
    q = LogQueue()
    q.append("abc")
    assert q.write_to(lambda view: pytest.fail("sent before the greeting")) == 0
    q.feed(b"O0\n")
    q.append("def")
    offers: list[bytes] = []

    def short(view: memoryview) -> int:
        offers.append(bytes(view))
        return 2

    assert q.write_to(short) == 2  # short: the socket is full, no second offer
    assert offers == [b"Labc\nLdef\n"]
    assert drain(q) == b"bc\nLdef\n"


# --- a daemon without acknowledgements (squid's own) ----------------------------


def test_a_daemon_that_never_greets_is_fed_once_the_kid_assumes_it_never_will():
    q = LogQueue()
    q.command("r", 3)
    q.append("one")
    assert q.pending_output() == b""
    q.assume_unacknowledged()
    assert q.unacknowledged and q.greeted
    assert q.pending_output() == b"r3\nLone\n"
    q.consumed(5)  # "r3\n" whole, "Lo" of the line
    assert len(q) == 1 and not q.idle()
    q.append("two")
    q.consumed(q.output_bytes)
    assert q.idle() and q.room == q.max_bytes
    assert q.acked == 3
    q.feed(b"anything at all\n")  # nothing it says counts, nothing is refused


def test_without_acknowledgements_a_restart_resends_from_the_first_record_not_sent_whole():
    q = LogQueue()
    q.command("b", 1)
    q.assume_unacknowledged()
    q.consumed(q.output_bytes)  # the setting went out whole
    q.append("abc")
    q.append("def")
    q.consumed(3)  # "Lab": the dying daemon took part of the first line
    q.daemon_restarted()
    # At once (no greeting to wait for): the setting again, then both lines whole.
    assert drain(q) == b"b1\nLabc\nLdef\n"
    assert q.idle()
