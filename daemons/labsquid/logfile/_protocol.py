"""The wire grammar between a kid and its logfile daemon, as pure code.

Theory of operation
-------------------
The kid and the daemon share one ``AF_UNIX`` stream socket.  Both directions
carry ``\\n``-terminated lines whose first byte names what the line is.

Kid -> daemon ("records", squid's logfile-daemon protocol)::

    record   = letter payload "\\n"      ; letter + payload <= MAX_RECORD bytes
    "L" text                            ; append text + "\\n" to the log
    "R" | "T" | "O" | "F"               ; rotate, truncate, reopen, flush
    "r" int                             ; rotate count (squid's logfile_rotate)
    "b" int                             ; buffering: 0 off, anything else on
    int      = ["-"] 1*DIGIT

Anything else (an unknown letter, an empty line) is still a record: the
daemon ignores it but counts it, so that record counts on both sides agree.
A record longer than MAX_RECORD is reported as one ``Overlong`` event and
its bytes are thrown away *up to its newline*, however many reads that
takes.  squid reads with a fixed buffer and would parse the tail of such a
line as a fresh record, so a long URL could rotate the log; here the tail is
never looked at.

Daemon -> kid ("messages", labsquid's extension, ASCII)::

    "O" size "\\n"                       ; the file I now write is `size` bytes
    "A" count " " size "\\n"             ; `count` records done and in the kernel
    "E" errno " " pending "\\n"          ; writing fails; `pending` bytes held

Messages are short; anything malformed raises ``ProtocolError`` because it
means the peer is not a labsquid daemon (or is broken) and must be replaced.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Longest record, letter included, newline excluded (squid's LOGFILE_BUF_LEN).
MAX_RECORD = 65536
#: Longest daemon -> kid message; three decimal numbers fit easily.
MAX_MESSAGE = 64
#: Largest rotate count ("r") the daemon takes: more is a typo, and would
#: mean that many rename() calls on each rotation.
MAX_ROTATE = 9999

#: Letters the daemon acts on.  Everything else is ignored (and counted).
COMMANDS = frozenset("RTOFrb")
LETTERS = COMMANDS | {"L"}

_INT = re.compile(rb"-?[0-9]{1,19}\Z")
_ACK = re.compile(rb"A([0-9]{1,19}) ([0-9]{1,19})\Z")
_ERR = re.compile(rb"E([0-9]{1,9}) ([0-9]{1,19})\Z")
_OPEN = re.compile(rb"O([0-9]{1,19})\Z")


class ProtocolError(Exception):
    """The peer sent something that is not in the grammar."""


# --- kid -> daemon -----------------------------------------------------------


class Record(NamedTuple):
    """One complete line from the kid.  ``letter`` is "" for an empty line."""

    letter: str
    payload: bytes


class Overlong(NamedTuple):
    """A line longer than MAX_RECORD, discarded whole.  ``length`` excludes "\\n"."""

    length: int


class LineRun(NamedTuple):
    """``count`` consecutive ``L`` records in one piece: their payloads, each
    followed by ``\\n``, exactly as the log file takes them."""

    count: int
    text: bytes


def take_line_run(data: bytes, max_record: int = MAX_RECORD) -> tuple[LineRun | None, bytes]:
    """Split the complete records at the front of ``data`` off as one ``LineRun``
    when all of them are ``L`` records of legal length — the usual read, a
    batch of access-log lines — so they cost a few bytes operations instead
    of a ``Record`` each.  Otherwise (a command among them, an over-long or
    empty line, no complete record) returns ``(None, data)``.  Only for a
    ``RecordDecoder`` holding no partial line: what it would have reported is
    ``count`` times ``Record("L", ...)`` and then whatever the rest gives.
    """
    end = data.rfind(b"\n") + 1
    if not end or data[:1] != b"L" or _NOT_L.search(data, 0, end):
        return None, data  # no complete record, or one that is not "L..."
    head = data[:end]
    if end > max_record and max(map(len, head.split(b"\n"))) > max_record:
        return None, data
    text = head[1:].replace(b"\nL", b"\n")
    # Each record after the first lost its letter: the count comes with the
    # text (bytes.count would scan the run once more, byte by byte).
    return LineRun(end - len(text), text), data[end:]


_NOT_L = re.compile(rb"\n[^L]")  # a record boundary not followed by "L"


def encode_record(letter: str, payload: bytes = b"") -> bytes:
    """Frame one record.  Raises ValueError for anything the decoder would not
    give back unchanged (a newline inside, or too long)."""
    if len(letter) != 1 or not letter.isascii():
        raise ValueError(f"record letter must be one ASCII character, not {letter!r}")
    if b"\n" in payload:
        raise ValueError("record payload contains a newline")
    if 1 + len(payload) > MAX_RECORD:
        raise ValueError(f"record of {1 + len(payload)} bytes exceeds {MAX_RECORD}")
    return letter.encode("ascii") + payload + b"\n"


def parse_record(line: bytes) -> Record:
    """Split one line (without its newline) into letter and payload."""
    return Record(line[:1].decode("latin-1"), bytes(line[1:]))


def parse_int(payload: bytes) -> int | None:
    """The integer argument of ``r``/``b``, or None when it is not one.

    Stricter than squid's atoi() on purpose: "r 1x" is a typo, not 1."""
    return int(payload) if _INT.match(payload) else None


class RecordDecoder:
    """Turns a byte stream into Records and Overlong events.

    Feed it whatever ``read()`` returned; records may be split anywhere.
    Memory stays bounded by MAX_RECORD plus one read, because an over-long
    line is only measured, never kept.
    """

    def __init__(self, max_record: int = MAX_RECORD) -> None:
        self.max_record = max_record
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._skipping: int | None = None  # bytes of an over-long line seen so far

    @property
    def partial(self) -> int:
        """Bytes of an unfinished line held (or being skipped) right now."""
        return len(self._buf) if self._skipping is None else self._skipping

    def feed(self, data: bytes) -> list[Record | Overlong]:
        out: list[Record | Overlong] = []
        buf = self._buf
        buf += data
        start = 0
        scan = self._scanned
        while (nl := buf.find(b"\n", scan)) >= 0:
            length = nl - start
            if self._skipping is not None:
                out.append(Overlong(self._skipping + length))
                self._skipping = None
            elif length > self.max_record:
                out.append(Overlong(length))
            else:
                out.append(parse_record(buf[start:nl]))
            start = scan = nl + 1
        rest = len(buf) - start
        if self._skipping is not None:
            self._skipping += rest
            buf.clear()
        elif rest > self.max_record:
            # Too long already: stop keeping it, just count until its newline.
            self._skipping = rest
            buf.clear()
        else:
            del buf[:start]
        self._scanned = len(buf)
        return out

    def feed_runs(self, data: bytes) -> list[Record | Overlong | LineRun]:
        """``feed``, with each run of ``L`` records as one ``LineRun``.

        A read that starts inside a record (most reads of a batch larger than
        one read) first completes that record, and only then finds the run:
        otherwise every line after it cost a ``Record`` (under strace, 1.2-1.7
        ms for ~480 lines against 0.3 ms: a stall of the serving core).
        """
        out: list[Record | Overlong | LineRun] = []
        if self.partial:
            end = data.find(b"\n") + 1 or len(data)
            out += self.feed(data[:end])
            data = data[end:]
        run, data = take_line_run(data, self.max_record)
        if run is not None:
            out.append(run)
        if data:
            out += self.feed(data)
        return out


# --- daemon -> kid -----------------------------------------------------------


class Opened(NamedTuple):
    """The daemon (re)opened its file, which is now ``size`` bytes long."""

    size: int


class Acked(NamedTuple):
    """``count`` records since the daemon started are done; file is ``size`` bytes."""

    count: int
    size: int


class WriteFailed(NamedTuple):
    """Writing fails with ``errno``; ``pending`` bytes are held and retried."""

    errno: int
    pending: int


Message = Opened | Acked | WriteFailed


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, Opened):
        return b"O%d\n" % msg.size
    if isinstance(msg, Acked):
        return b"A%d %d\n" % (msg.count, msg.size)
    if isinstance(msg, WriteFailed):
        return b"E%d %d\n" % (msg.errno, msg.pending)
    raise TypeError(f"not a daemon message: {msg!r}")


def parse_message(line: bytes) -> Message:
    """Parse one message line (without its newline); ProtocolError if malformed."""
    if m := _ACK.match(line):
        return Acked(int(m[1]), int(m[2]))
    if m := _OPEN.match(line):
        return Opened(int(m[1]))
    if m := _ERR.match(line):
        return WriteFailed(int(m[1]), int(m[2]))
    raise ProtocolError(f"malformed logfile daemon message {bytes(line[:MAX_MESSAGE])!r}")


class MessageDecoder:
    """Turns the daemon's byte stream into Messages (split reads welcome)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            out.append(parse_message(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        if len(buf) > MAX_MESSAGE:
            raise ProtocolError(f"logfile daemon message longer than {MAX_MESSAGE} bytes")
        return out
