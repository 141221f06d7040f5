"""labsquid's logfile daemon: one process writing one log file for a kid.

Theory of operation
-------------------
The kid starts us with the socket on fd 0 *and* fd 1 (one end of a
socketpair), /dev/null on fd 2, and the log path as the only argument.  We
open the log for append as fd 3 and then loop:

1. Read what the socket has and decode it into records
   (``labsquid.logfile._protocol``): one read of READ_SIZE, and more while
   more is already waiting (MAX_READS at most).  That is one *batch*.
2. Apply the records in order.  ``L`` text is collected in ``pending`` and
   written with as few ``os.write`` calls as possible, so a kill -9 between
   system calls leaves only whole lines.  R, T and O first write out what is
   pending, so lines land in the file they were meant for, then act and tell
   the kid ``O<size>``.
3. Without buffering, write ``pending`` at the end of the batch.  With
   buffering (``b1``), keep it until 64 KiB, an ``F``, one second, or EOF.
4. Once ``pending`` is empty, every record taken so far is done:
   ``A<count> <size>`` says so, once per batch.  The kid forgets a line only
   after that, which is what lets a replacement daemon pick up exactly where a
   dead one stopped (see ``labsquid.logfile._queue``).

A failing write (disk full, I/O error) or a failing reopen never kills us:
the unwritten bytes stay in ``pending``, the kid hears ``E<errno> <bytes>``
once per episode, we retry every second and apply no further record (order
matters more than speed) and read no further input; the kid's bounded queue
absorbs, and counts, what cannot wait.

Our lifetime is the socket: EOF means the kid closed it, so we write
everything and exit 0.  SIGINT and SIGHUP come from a terminal to the whole
process group and are the kid's business, so they are ignored; SIGTERM is an
explicit request and is treated like EOF (lines still in the kid's queue then
need another daemon).  If writing still fails EOF_GRACE seconds after EOF,
we give up with status 1.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress

from labsquid.logfile import (
    MAX_ROTATE,
    Acked,
    LineRun,
    Message,
    Opened,
    Overlong,
    Record,
    RecordDecoder,
    WriteFailed,
    encode_message,
    parse_int,
)
from labsquid.process import set_title

IN_FD, OUT_FD, LOG_FD = 0, 1, 3
READ_SIZE = 64 * 1024  # under malloc's mmap threshold: no mmap/munmap per read
MAX_READS = 8  # reads that make one batch, at most (its write and its ack)
BUFFER_LIMIT = 64 * 1024  # buffered mode writes once this much is held
FLUSH_INTERVAL = 1.0  # ... or once the oldest held line is this old
RETRY_INTERVAL = 1.0
EOF_GRACE = 10.0
DEFAULT_ROTATE = 10  # squid's logfile_rotate default


def _readable(fd: int) -> bool:
    """Input is waiting on ``fd`` (a zero-timeout poll: never blocks)."""
    return bool(select.select([fd], [], [], 0)[0])


def rotate_files(path: str, count: int) -> None:
    """squid's numbering: drop path.<count-1>, shift path.<i> up by one, path
    becomes path.0.  With count 0 nothing is renamed (an external logrotate
    moved the file).  Not a regular file (a fifo, /dev/stdout): left alone."""
    if count <= 0:
        return
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        pass  # still shift the older generations, like squid
    _quietly(os.unlink, f"{path}.{count - 1}")
    for i in range(count - 2, -1, -1):
        _quietly(os.rename, f"{path}.{i}", f"{path}.{i + 1}")
    _quietly(os.rename, path, f"{path}.0")


def _quietly(fn: Callable[..., None], *args: str) -> None:
    # Missing generations are normal; anything worse shows when we reopen.
    try:
        fn(*args)
    except OSError:
        pass


def refuse_foreign_symlink(path: str) -> None:
    """A symlink at the log's path is followed only if we or root made it.

    An administrator may point access.log elsewhere on purpose; another user
    who can write to the log folder must not be able to make us append to
    (or create) a file of their choosing.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
        raise OSError(errno.ELOOP, f"refusing a symbolic link owned by uid {st.st_uid}", path)


class LogFile:
    """The log file, always on fd 3 while open."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.is_open = False

    def open(self) -> None:
        refuse_foreign_symlink(self.path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o644)
        if fd != LOG_FD:
            os.dup2(fd, LOG_FD, inheritable=False)
            os.close(fd)
        self.is_open = True

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            os.close(LOG_FD)

    def size(self) -> int:
        return os.fstat(LOG_FD).st_size

    def write(self, data: bytearray) -> int:
        return os.write(LOG_FD, data)

    def truncate(self) -> None:
        os.ftruncate(LOG_FD, 0)


class _Terminate(Exception):
    """SIGTERM arrived while we were waiting."""


class Daemon:
    """The loop described at the top; ``step()`` holds the rules."""

    def __init__(self, log: LogFile, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.decoder = RecordDecoder()
        self.backlog: deque[Record | Overlong | LineRun] = deque()  # decoded, not yet applied
        self.pending = bytearray()  # text of applied L records, not yet written
        self.pending_since: float | None = None
        self.rotate_count = DEFAULT_ROTATE
        self.buffering = False
        self.taken = 0  # records applied
        self.done = 0  # records applied *and* written
        self.acked = 0  # what the kid was told
        self.retry_at: float | None = None  # set while writing fails
        self.eof_at: float | None = None
        self.kid_gone = False
        self.overlong = self.unknown = self.malformed = 0
        self._waiting = False

    # --- the loop ------------------------------------------------------------

    def run(self) -> int:
        self.send(Opened(self.log.size()))
        poller = select.poll()
        while True:
            if self.eof_at is not None:
                if not (self.backlog or self.pending or self.retry_at):
                    return 0
                if self.clock() >= self.eof_at + EOF_GRACE:
                    return 1
            self._watch(poller)
            events = self._wait(poller, self._timeout())
            if events:
                # A hangup means no more input will come: take all of it now.
                self.read(until_eof=any(ev & ~select.POLLIN for _, ev in events))
            self.step()

    def _watch(self, poller: select.poll) -> None:
        """Read only while writing works, but always notice the kid leaving."""
        if self.eof_at is not None:
            with suppress(KeyError):
                poller.unregister(IN_FD)
        else:
            reading = select.POLLIN if self.retry_at is None else 0
            poller.register(IN_FD, select.POLLRDHUP | reading)

    def _wait(self, poller: select.poll, timeout: float | None) -> list[tuple[int, int]]:
        ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        try:
            self._waiting = True
            return poller.poll(ms)
        except _Terminate:
            self._waiting = False
            self.terminate()
            return []
        finally:
            self._waiting = False

    def _timeout(self) -> float | None:
        deadlines = []
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        elif self.pending and self.pending_since is not None:
            deadlines.append(self.pending_since + FLUSH_INTERVAL)
        if self.eof_at is not None:
            deadlines.append(self.eof_at + EOF_GRACE)
        return max(0.0, min(deadlines) - self.clock()) if deadlines else None

    def on_sigterm(self, signum: int, frame: object) -> None:
        if self._waiting:
            raise _Terminate
        self.terminate()  # noticed at the next check of eof_at

    def terminate(self) -> None:
        if self.eof_at is None:
            self.eof_at = self.clock()

    def read(self, until_eof: bool = False) -> None:
        reads = 0
        while True:
            try:
                data = os.read(IN_FD, READ_SIZE)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof_at = self.clock()  # an unfinished last record is dropped
                return
            # Access-log lines, the usual read: one LineRun per read.
            self.backlog.extend(self.decoder.feed_runs(data))
            if until_eof:
                continue
            # The kid sends a batch at a time, often more than one read holds:
            # take what is already there, so that the batch is written and
            # acknowledged once (each round is a write, an fstat and an ack).
            reads += 1
            if (len(data) < READ_SIZE or reads >= MAX_READS or self.eof_at is not None
                    or not _readable(IN_FD)):
                return

    def step(self) -> None:
        """Apply what can be applied, write what is due, acknowledge."""
        now = self.clock()
        if self.retry_at is not None and now >= self.retry_at:
            self.flush()
        while self.backlog and self.retry_at is None:
            record = self.backlog.popleft()
            if not self.apply(record):
                self.backlog.appendleft(record)
                break
            self.taken += record.count if type(record) is LineRun else 1
            if not self.pending and self.retry_at is None:
                self.done = self.taken
        if self.pending and self.retry_at is None and self._flush_due(now):
            self.flush()
        if self.done > self.acked and self.log.is_open:
            self.acked = self.done
            self.send(Acked(self.done, self.log.size()))

    def _flush_due(self, now: float) -> bool:
        return (
            not self.buffering
            or self.eof_at is not None
            or len(self.pending) >= BUFFER_LIMIT
            or (self.pending_since is not None and now >= self.pending_since + FLUSH_INTERVAL)
        )

    # --- records -------------------------------------------------------------

    def apply(self, record: Record | Overlong | LineRun) -> bool:
        """Apply one record.  False: it could not be applied yet, retry later."""
        if type(record) is LineRun:
            self._hold(record.text)
            return True
        if isinstance(record, Overlong):
            self.overlong += 1
            return True
        letter, payload = record
        if letter == "L":
            self._hold(payload + b"\n")
        elif letter in ("R", "T", "O"):
            if not self.flush():
                return False
            return self.change_file(letter)
        elif letter == "F":
            self.flush()
        elif letter in ("r", "b"):
            n = parse_int(payload)
            if n is None or (letter == "r" and not 0 <= n <= MAX_ROTATE):
                self.malformed += 1
            elif letter == "r":
                self.rotate_count = n
            else:
                self.buffering = n != 0
        else:
            self.unknown += 1
        return True

    def _hold(self, text: bytes) -> None:
        """Lines to write (each ending in a newline), held until a flush is due."""
        if not self.pending:
            self.pending_since = self.clock()
        self.pending += text
        if self.buffering and len(self.pending) >= BUFFER_LIMIT:
            self.flush()

    def change_file(self, letter: str) -> bool:
        if letter == "T":
            try:
                self.log.truncate()
            except OSError as e:
                self.fail(e)
                return False
            self.send(Opened(self.log.size()))
            return True
        self.log.close()
        if letter == "R":
            rotate_files(self.log.path, self.rotate_count)
        self.reopen()  # a failure is retried by flush(); R must not run twice
        return True

    # --- writing -------------------------------------------------------------

    def reopen(self) -> bool:
        try:
            self.log.open()
        except OSError as e:
            self.fail(e)
            return False
        self.send(Opened(self.log.size()))
        return True

    def flush(self) -> bool:
        """Write all of ``pending``.  True when it is empty and the file open."""
        if not self.log.is_open and not self.reopen():
            return False
        while self.pending:
            try:
                n = self.log.write(self.pending)
            except OSError as e:
                self.fail(e)
                return False
            del self.pending[:n]  # a short write: go again, the error shows next time
        self.pending_since = None
        self.retry_at = None
        self.done = self.taken
        return True

    def fail(self, exc: OSError) -> None:
        if self.retry_at is None:  # once per episode
            self.send(WriteFailed(exc.errno or errno.EIO, len(self.pending)))
        self.retry_at = self.clock() + RETRY_INTERVAL

    def send(self, msg: Message) -> None:
        if self.kid_gone:
            return
        data = memoryview(encode_message(msg))
        try:
            while data:
                data = data[os.write(OUT_FD, data) :]
        except (BrokenPipeError, ConnectionResetError):
            self.kid_gone = True  # keep writing the log; EOF follows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if len(argv) != 2:
        print("usage: labsquid-logfile-daemon LOGFILE", file=sys.stderr)
        return 2
    path = argv[1]
    set_title(f"(logfile-daemon) {path}", comm="logfile-daemon")
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    log = LogFile(path)
    try:
        log.open()
    except OSError as e:
        print(f"logfile-daemon: cannot open {path}: {e}", file=sys.stderr)
        # stderr is /dev/null under the kid: say it on the protocol too, so the
        # kid can log *why* its daemon keeps dying.
        with suppress(OSError):
            os.write(1, encode_message(WriteFailed(e.errno or 0, 0)))
        return 1
    daemon = Daemon(log)
    signal.signal(signal.SIGTERM, daemon.on_sigterm)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
