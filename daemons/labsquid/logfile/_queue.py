"""The kid's side of one logfile daemon: what to send, what is safe to forget.

Theory of operation
-------------------
Every record the kid wants written (an access-log line or a command) becomes
an *entry* in one ordered queue and stays there until the daemon says it is
done.  The daemon says so in two ways (see ``_protocol``):

* ``A<count> <size>``: the first ``count`` records since it started are done.
* ``O<size>`` after a rotate/truncate/reopen: everything up to and including
  the oldest unconfirmed R/T/O entry is done (the daemon writes out what it
  holds before it touches the file, and sends ``O`` right after).

Both carry the file size at that point: the *base size*, which is where the
oldest unacknowledged entry would start writing.

The queue never refuses a line or a command (a refused line is a lost one).
Its bound, ``max_bytes``, is kept by the kid, which reads no more from the
pool children's pipes than ``room`` allows; the rest waits there.

A pool child's chunk of lines (a few hundred per collection) is one entry
holding that many records, and an ack that ends inside it only counts into
it: the kid's cost per line stays a few bytes operations, not an object.  A
batch's bytes count against the bound until its last line is confirmed.
Only a restart, which needs the lines one by one, cuts batches apart.

When a daemon dies the kid starts another and calls ``daemon_restarted()``.
Nothing is sent to the new daemon until its greeting ``O<size>`` arrives;
then the lost daemon's unfinished work is reconstructed:

* ``size - base`` bytes were written after our last confirmation.  If the
  first unacknowledged ``L`` entries, each ``len(text) + 1`` bytes, add up to
  exactly that, they are on disk and are dropped, so no line is written twice.
  ``r``/``b``/``F`` entries among them are skipped over (they do not change
  the file) but are still sent; an ``R``/``T``/``O`` entry stops the sum.
* If the sum passes ``size - base`` inside a line, the kill landed inside a
  ``write()`` (Linux stops a regular-file write between pages when a fatal
  signal arrives): that line's head is on disk, so only the rest of it is
  sent, and the file holds the whole line once.
* Any other difference (negative, or more than was sent) means the file
  changed under us: everything is resent.

Edge cases accepted, all needing a crash inside a tiny window:

* The daemon rotated (or truncated/reopened) but died before its ``O`` was
  read: the sizes no longer relate, the lines before that command are
  written again into the new file, and the command is done twice.
* Something else appending to the file at the same time could make a wrong
  prefix match (or a wrong torn line); with one daemon per file that does
  not happen.

A new daemon starts with squid's defaults, so the last acknowledged ``r`` and
``b`` settings are sent again ahead of everything else.

A daemon that never greets (squid's own ``log_file_daemon``, which speaks the
protocol without the ``A``/``O`` extension) is run the way squid runs it once
the kid gives up waiting (``assume_unacknowledged``): a record is done when
the socket has taken all of it, and what a dying daemon had taken is lost.

Lines never contain ``\\n`` or ``\\r``: they are escaped as ``\\\\n`` and
``\\\\r`` (squid's log formats escape them too; dropping the line would lose a
request from the log).  Lines are cut to fit one record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ._protocol import (
    MAX_RECORD,
    Acked,
    MessageDecoder,
    Opened,
    ProtocolError,
    WriteFailed,
    encode_record,
)

_FILE_CHANGING = frozenset("RTO")  # commands after which sizes no longer relate
_SETTINGS = frozenset("rb")  # commands whose effect a fresh daemon forgets
_MAX_TEXT = MAX_RECORD - 1  # room for the letter
_CHUNK = 256 * 1024  # most bytes pending_output() hands out at once
_COALESCE = 16 * 1024  # entries smaller than this are sent from one shared buffer


class _Entry(NamedTuple):
    letter: str
    wire: bytes  # the framed record(s), newlines included
    count: int = 1  # records in wire: a pool child's chunk of lines is one entry


def _escape(line: str | bytes) -> bytes:
    data = line.encode("utf-8", "backslashreplace") if isinstance(line, str) else bytes(line)
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return data


def _cut(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes, not ending inside a UTF-8 sequence."""
    if len(data) <= limit:
        return data
    end = limit  # data[end] is the first byte cut off
    while end > limit - 3 and (data[end] & 0xC0) == 0x80:
        end -= 1  # a continuation byte: back up to the start of its character
    return data[: end if (data[end] & 0xC0) != 0x80 else limit]


def _lines_fit(chunk: bytes) -> bool:
    """No line of ``chunk`` needs cutting.  Usually settled without splitting:
    when every stretch of half a record holds a newline, no line is longer."""
    step = _MAX_TEXT // 2
    if all(chunk.find(b"\n", i, i + step) >= 0 for i in range(0, len(chunk), step)):
        return True
    return max(map(len, chunk.split(b"\n"))) <= _MAX_TEXT


class LogQueue:
    """Everything the kid has for one daemon, meant to stay within ``max_bytes``.

    Drive it with: ``append``/``command`` (producers), ``write_to`` (or
    ``pending_output`` + ``consumed``) when the socket is writable, ``feed``
    when it is readable, and ``daemon_restarted`` (after starting a
    replacement daemon).

    It never refuses a line: a line refused is a line lost.  The bound is kept
    by the producers, who look at ``room`` and take no more lines from their
    sources (pool children's pipes) than fits; what waits there holds the
    children's clients back instead.
    """

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        if max_bytes < MAX_RECORD + 1:
            raise ValueError(f"max_bytes must hold at least one record ({MAX_RECORD + 1})")
        self.max_bytes = max_bytes
        self._entries: deque[_Entry] = deque()  # every entry not yet acknowledged
        self._records = 0  # records in _entries, less _head_acked
        self._head_acked = 0  # records of _entries[0] acknowledged already
        self._bytes = 0  # wire bytes in _entries (a batch's, until its last record is acked)
        # Wire bytes not yet written to this daemon, in order: a large entry
        # (a pool child's chunk) as a view of its own bytes, so it goes out
        # without a copy; runs of small ones (single lines) in one bytearray.
        self._out: deque[memoryview | bytearray] = deque()
        self._out_bytes = 0
        self._decoder = MessageDecoder()
        self._greeted = False  # this daemon's O<size> has arrived
        self.unacknowledged = False  # a daemon without A/O: sent means done
        self._sent_of_head = 0  # unacknowledged: bytes of _entries[0] already sent
        self._acked_count = 0  # records this daemon has confirmed
        self._base_size: int | None = None  # file size where _entries[0] starts
        self._settings: dict[str, bytes] = {}  # last acknowledged r/b entries
        #: Lines cut to fit a record.
        self.truncated = 0
        #: Records confirmed by daemons, in total.
        self.acked = 0
        #: Lines found already on disk after a daemon died (not resent).
        self.skipped = 0
        #: Lines a dying daemon wrote only in part, completed by its replacement.
        self.completed = 0
        #: Records sent again to a replacement daemon.
        self.resent = 0
        #: Write-error reports received, and the last one (None once acks resume).
        self.errors = 0
        self.last_error: WriteFailed | None = None

    # --- producers -----------------------------------------------------------

    def append(self, line: str | bytes) -> None:
        """Queue one access-log line (no newline)."""
        text = _escape(line)
        if len(text) > _MAX_TEXT:
            text = _cut(text, _MAX_TEXT)
            self.truncated += 1
        self._push(_Entry("L", b"L" + text + b"\n"))

    def append_lines(self, chunk: bytes) -> None:
        """``append`` for every line of ``chunk`` (lines ending in ``\\n``, as
        a pool child sends them): the same records, queued as one entry,
        because the kid takes a few hundred lines at once.  They take at most
        twice ``len(chunk)`` of ``room`` (a letter per line, escaping)."""
        if (not chunk.endswith(b"\n") or b"\r" in chunk or chunk[:1] == b"\n"
                or b"\n\n" in chunk or not _lines_fit(chunk)):
            # Escaping, cutting or empty lines: line by line.
            for line in chunk.split(b"\n"):
                if line:
                    self.append(line)
            return
        # Two copies for the framing, not four: "a\nLb\nL", then "L" and that
        # less its last L.
        framed = chunk.replace(b"\n", b"\nL")
        wire = b"".join((b"L", memoryview(framed)[:-1]))
        self._push(_Entry("L", wire, len(wire) - len(chunk)))  # one "L" per line

    def command(self, letter: str, arg: int | str = "") -> None:
        """Queue R, T, O, F (no argument) or r, b (integer argument).

        Like lines, commands are never refused."""
        if letter in "RTOF" and len(letter) == 1:
            if arg != "":
                raise ValueError(f"command {letter!r} takes no argument")
            payload = b""
        elif letter in ("r", "b"):
            payload = str(int(arg)).encode("ascii")
        else:
            raise ValueError(f"not a logfile daemon command: {letter!r}")
        self._push(_Entry(letter, encode_record(letter, payload)))

    # --- the socket ----------------------------------------------------------

    def pending_output(self, limit: int = _CHUNK) -> bytes | memoryview:
        """Bytes to write to the daemon now, at most ``limit`` (empty until it
        has greeted us): a large entry as a view of itself, small ones copied
        out of their buffer (which ``consumed`` then shortens in place)."""
        if not self._greeted or not self._out:
            return b""
        head = self._out[0]
        if type(head) is bytearray:
            return bytes(memoryview(head)[:limit])
        return head[:limit]

    def write_to(self, send: Callable[[memoryview], int]) -> int:
        """Hand pending bytes to ``send`` (a socket's ``send``) until it takes
        less than it was offered; returns how many it took.  Nothing is copied:
        ``send`` gets a view that is released before ``consumed`` shortens the
        buffer it looks into.  An exception from ``send`` (EAGAIN) propagates,
        with whatever was taken before it accounted for."""
        taken = 0
        while self._greeted and self._out:
            head = self._out[0]
            with memoryview(head) as whole, whole[:_CHUNK] as offered:
                n = send(offered)
                short = n < len(offered)
            self.consumed(n)
            taken += n
            if short:
                break
        return taken

    def has_output(self) -> bool:
        """``pending_output()`` would not be empty (without copying it)."""
        return self._greeted and self._out_bytes > 0

    @property
    def output_bytes(self) -> int:
        """Wire bytes not yet written to this daemon."""
        return self._out_bytes

    def consumed(self, n: int) -> None:
        """``n`` bytes of ``pending_output()`` were written."""
        if n < 0 or n > self._out_bytes:
            raise ValueError(f"consumed {n} of {self._out_bytes} pending bytes")
        if self.unacknowledged:
            self._forget_sent(n)
        self._out_bytes -= n
        out = self._out
        while n:
            head = out[0]
            if n < len(head):
                if type(head) is bytearray:
                    del head[:n]
                else:
                    out[0] = head[n:]
                break
            out.popleft()
            n -= len(head)

    def feed(self, data: bytes) -> None:
        """Bytes read from the daemon.  ProtocolError means: replace that daemon."""
        if self.unacknowledged:
            return  # nothing is expected from it, and nothing it says counts
        for msg in self._decoder.feed(data):
            if isinstance(msg, Acked):
                self._on_ack(msg)
            elif isinstance(msg, Opened):
                self._on_opened(msg)
            else:
                self.errors += 1
                self.last_error = msg

    def daemon_restarted(self) -> None:
        """A new daemon replaces one that died: resend what was not confirmed,
        once its greeting says how much of it is on disk already (without
        acknowledgements: at once, from the first record not sent whole)."""
        self._decoder = MessageDecoder()  # a torn message from the dead one
        self._greeted = False
        self._acked_count = 0
        self._out.clear()
        self._out_bytes = 0
        if self.unacknowledged:
            self._sent_of_head = 0
            self._greet(0)

    def assume_unacknowledged(self) -> None:
        """This daemon has not greeted: treat it as one that never will
        (squid's own).  From now on, sent is done; see the top of the module."""
        if self._greeted:
            return
        self.unacknowledged = True
        self._sent_of_head = 0
        self._greet(0)

    # --- state ---------------------------------------------------------------

    @property
    def greeted(self) -> bool:
        """The current daemon's greeting has arrived (sending may start)."""
        return self._greeted

    def idle(self) -> bool:
        """Nothing queued and nothing awaiting confirmation."""
        return not self._entries

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def room(self) -> int:
        """Bytes that may still be queued within ``max_bytes`` (0 when over)."""
        return max(0, self.max_bytes - self._bytes)

    @property
    def file_size(self) -> int | None:
        """The log's size as of the last confirmation (None before any)."""
        return self._base_size

    def __len__(self) -> int:
        """Records not yet acknowledged."""
        return self._records

    # --- internals -----------------------------------------------------------

    def _push(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._records += entry.count
        self._bytes += len(entry.wire)
        self._queue_out(entry.wire)

    def _queue_out(self, wire: bytes) -> None:
        out = self._out
        if len(wire) >= _COALESCE:
            out.append(memoryview(wire))
        elif out and type(out[-1]) is bytearray:
            out[-1] += wire
        else:
            out.append(bytearray(wire))
        self._out_bytes += len(wire)

    def _pop(self, n: int) -> None:
        """Forget the oldest ``n`` records: whole entries, then a count into
        the next batch (cutting it apart is left to a restart, the rare case)."""
        self._records -= n
        self._acked_count += n
        self.acked += n
        n += self._head_acked
        entries = self._entries
        while entries and n >= entries[0].count:
            entry = entries.popleft()
            n -= entry.count
            self._bytes -= len(entry.wire)
            if entry.letter in _SETTINGS:
                self._settings[entry.letter] = entry.wire
        self._head_acked = n

    def _forget_sent(self, n: int) -> None:
        """Unacknowledged: the records the socket has now taken whole are done."""
        sent = self._sent_of_head + n
        entries = self._entries
        while entries and len(entries[0].wire) <= sent:
            entry = entries.popleft()
            sent -= len(entry.wire)
            self._bytes -= len(entry.wire)
            self._records -= entry.count
            self.acked += entry.count
            if entry.letter in _SETTINGS:
                self._settings[entry.letter] = entry.wire
        self._sent_of_head = sent

    def _unbatch(self) -> None:
        """One entry per record again, the acknowledged part of the head
        dropped: a restart's arithmetic goes line by line."""
        if all(e.count == 1 for e in self._entries):
            return
        single: deque[_Entry] = deque()
        for entry in self._entries:
            if entry.count == 1:
                single.append(entry)
            else:
                single.extend(_Entry("L", b"L%s\n" % line)
                              for line in entry.wire[1:-1].split(b"\nL"))
        for _ in range(self._head_acked):
            single.popleft()
        self._entries = single
        self._head_acked = 0
        self._bytes = sum(len(e.wire) for e in single)

    def _on_ack(self, msg: Acked) -> None:
        n = msg.count - self._acked_count
        if not self._greeted or n < 0 or n > self._records:
            raise ProtocolError(f"ack for {msg.count} records, {self._acked_count} acked before")
        self._pop(n)
        self._base_size = msg.size
        if n:
            self.last_error = None

    def _on_opened(self, msg: Opened) -> None:
        if self._greeted:
            # After R/T/O: it and everything before it are done.
            done = -self._head_acked
            for entry in self._entries:
                done += entry.count
                if entry.letter in _FILE_CHANGING:
                    self._pop(done)
                    break
            else:
                raise ProtocolError("file reopened without a rotate/truncate/reopen request")
        else:
            self._greet(msg.size)
        self._base_size = msg.size

    def _greet(self, size: int) -> None:
        self._greeted = True
        self._unbatch()
        if self._base_size is not None:  # a replacement: some of this was sent
            self._skip_written(size - self._base_size)
            self.resent += len(self._entries)
        # A fresh daemon has default settings: restore ours first.
        for wire in self._settings.values():
            self._entries.appendleft(_Entry(chr(wire[0]), wire))
            self._bytes += len(wire)
        self._records = len(self._entries)
        self._out.clear()
        self._out_bytes = 0
        for entry in self._entries:
            self._queue_out(entry.wire)

    def _skip_written(self, grown: int) -> None:
        """Drop the leading L entries that make up ``grown`` bytes; of a line
        that ``grown`` ends inside, keep only the part not yet written."""
        if grown <= 0:
            return
        total = n = torn = 0
        for entry in self._entries:
            if total == grown or entry.letter in _FILE_CHANGING:
                break
            if entry.letter == "L":
                size = len(entry.wire) - 1  # the letter is not written, the newline is
                if total + size > grown:
                    torn = grown - total  # its first `torn` bytes are on disk
                    total = grown
                    break
                total += size
            n += 1
        if total != grown:
            return
        head = [self._entries.popleft() for _ in range(n)]
        kept = [e for e in head if e.letter != "L"]
        self._bytes -= sum(len(e.wire) for e in head if e.letter == "L")
        if torn:
            rest = self._entries.popleft().wire[1 + torn:]
            self._entries.appendleft(_Entry("L", b"L" + rest))
            self._bytes -= torn
            self.completed += 1
        self._entries.extendleft(reversed(kept))
        self.skipped += n - len(kept)
