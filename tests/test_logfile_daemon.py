"""The logfile daemon as a real process, started the way the kid starts it:
one socketpair end on fd 0 and fd 1, /dev/null on fd 2, nothing else."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path

import pytest

from labsquid.logfile import (
    MAX_RECORD,
    Acked,
    LogQueue,
    Message,
    MessageDecoder,
    Opened,
    WriteFailed,
)
from support import proof

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "labsquid-logfile-daemon"


class Daemon:
    """One daemon process and the kid's end of its socket."""

    def __init__(self, path: Path, script: bool = False) -> None:
        self.path = path
        self.sock, child = socket.socketpair()
        self.child_inode = os.fstat(child.fileno()).st_ino
        if script:
            # The console script, with squid's argv[0], exactly as the kid execs it.
            args, executable = ["(logfile-daemon)", str(path)], str(SCRIPT)
        else:
            # argv[0] must stay the interpreter's path: Python finds its venv from it.
            args = [sys.executable, "-m", "labsquid.logfile_daemon", str(path)]
            executable = sys.executable
        self.proc = subprocess.Popen(
            args,
            executable=executable,
            stdin=child,
            stdout=child,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        child.close()
        self.decoder = MessageDecoder()
        self.inbox: list[Message] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def message(self, timeout: float = 5.0) -> Message:
        deadline = time.monotonic() + timeout
        while not self.inbox:
            left = deadline - time.monotonic()
            assert left > 0, "no message from the daemon"
            if select.select([self.sock], [], [], left)[0]:
                data = self.sock.recv(65536)
                assert data, "daemon closed its socket"
                self.inbox += self.decoder.feed(data)
        return self.inbox.pop(0)

    def quiet(self, seconds: float) -> bool:
        """True if no message arrives within ``seconds``."""
        if self.inbox:
            return False
        return not select.select([self.sock], [], [], seconds)[0]

    def until_ack(self, count: int) -> Acked:
        while True:
            msg = self.message()
            if isinstance(msg, Acked) and msg.count >= count:
                assert msg.count == count
                return msg

    def until_opened(self) -> Opened:
        while not isinstance(msg := self.message(), Opened):
            assert isinstance(msg, Acked)
        return msg

    def close(self) -> int:
        self.sock.close()
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        # Like a crash, this may land inside a write() and leave half a line:
        # the queue then sends the new daemon only the rest of it.
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.sock.close()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(path: Path, **kw) -> Daemon:
        d = Daemon(path, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.sock.close()


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# --- how it runs ----------------------------------------------------------------------


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_fds_title_and_greeting(daemons, log, script):
    if script and not SCRIPT.exists():
        pytest.skip("console script not installed")
    d = daemons(log, script=script)
    assert d.message() == Opened(0)
    fd_dir = Path(f"/proc/{d.proc.pid}/fd")
    assert sorted(int(fd) for fd in os.listdir(fd_dir)) == [0, 1, 2, 3]
    sock = f"socket:[{d.child_inode}]"
    assert os.readlink(fd_dir / "0") == os.readlink(fd_dir / "1") == sock
    assert os.readlink(fd_dir / "2") == "/dev/null"
    assert os.readlink(fd_dir / "3") == str(log)
    cmdline = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes()
    assert cmdline.startswith(b"(logfile-daemon) " + bytes(log))
    assert d.close() == 0


def test_greeting_reports_an_existing_files_size(daemons, log):
    log.write_text("old\n")
    d = daemons(log)
    assert d.message() == Opened(4)
    d.send(b"Lnew\n")
    assert d.until_ack(1) == Acked(1, 8)
    assert d.close() == 0
    assert text(log) == "old\nnew\n"


def test_unopenable_file_exits_1(daemons, tmp_path):
    d = daemons(tmp_path / "no such dir" / "access.log")
    assert d.proc.wait(timeout=10) == 1


# --- every letter ------------------------------------------------------------------------


def test_lines_are_appended_and_acked_per_batch(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"".join(b"Lline %d\n" % i for i in range(1000)))
    expected = "".join(f"line {i}\n" for i in range(1000))
    assert d.until_ack(1000) == Acked(1000, len(expected))
    assert text(log) == expected
    assert d.close() == 0


def test_truncate(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"Lgone\nT\nLkept\n")
    assert d.message() == Opened(0)
    assert d.until_ack(3) == Acked(3, 5)
    assert text(log) == "kept\n"
    assert d.close() == 0


def test_reopen_after_an_external_move(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"Lbefore\n")
    d.until_ack(1)
    moved = log.with_name("access.log.moved")
    log.rename(moved)  # what logrotate does
    d.send(b"Lstill old\nO\nLafter\n")
    assert d.message() == Opened(0)
    assert d.until_ack(4) == Acked(4, 6)
    assert text(moved) == "before\nstill old\n"
    assert text(log) == "after\n"
    assert d.close() == 0


def test_five_rotations_with_three_generations(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"r3\n")
    for i in range(5):
        d.send(b"Lgeneration %d\nR\n" % i)
        assert d.until_opened() == Opened(0)
    d.send(b"Lcurrent\n")
    d.until_ack(1 + 5 * 2 + 1)
    names = sorted(p.name for p in log.parent.iterdir())
    assert names == ["access.log", "access.log.0", "access.log.1", "access.log.2"]
    assert text(log) == "current\n"
    assert [text(log.with_name(f"access.log.{i}")) for i in range(3)] == [
        "generation 4\n",
        "generation 3\n",
        "generation 2\n",
    ]
    assert d.close() == 0


def test_default_keeps_ten_generations(daemons, log):
    d = daemons(log)
    d.message()
    for i in range(12):
        d.send(b"L%d\nR\n" % i)
    d.until_ack(24)
    names = {p.name for p in log.parent.iterdir()}
    assert names == {"access.log"} | {f"access.log.{i}" for i in range(10)}
    assert text(log.with_name("access.log.9")) == "2\n"
    assert d.close() == 0


def test_rotate_count_zero_only_reopens(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"r0\nLbefore\n")
    d.until_ack(2)
    moved = log.with_name("access.log-20240101")
    log.rename(moved)
    d.send(b"R\nLafter\n")
    assert d.message() == Opened(0)
    d.until_ack(4)
    assert sorted(p.name for p in log.parent.iterdir()) == ["access.log", "access.log-20240101"]
    assert text(moved) == "before\n" and text(log) == "after\n"
    assert d.close() == 0


def test_unknown_and_malformed_records_are_counted_not_acted_on(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"Xrotate please\n\nrx\nr-1\nbon\nLok\n")
    assert d.until_ack(6) == Acked(6, 3)
    assert text(log) == "ok\n"
    assert not log.with_name("access.log.0").exists()
    assert d.close() == 0


def test_longest_line_is_written_intact(daemons, log):
    d = daemons(log)
    d.message()
    longest = b"y" * (MAX_RECORD - 1)
    d.send(b"L" + longest + b"\nLnext\n")
    d.until_ack(2)
    assert log.read_bytes() == longest + b"\nnext\n"
    assert d.close() == 0


def test_overlong_line_is_discarded_whole(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"Lfirst\n")
    d.until_ack(1)
    # The byte squid would take as the next record's letter is "T".
    overlong = b"L" + b"z" * (MAX_RECORD - 1) + b"T" + b"R" * (6 * 1024)
    for i in range(0, len(overlong), 4096):
        d.send(overlong[i : i + 4096])
    d.send(b"\nLnext\n")
    assert d.until_ack(3) == Acked(3, len("first\nnext\n"))
    assert text(log) == "first\nnext\n"
    assert not log.with_name("access.log.0").exists()
    assert d.close() == 0


# --- buffering --------------------------------------------------------------------------------


def test_buffered_lines_wait_for_flush(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"b1\nLheld\n")
    assert d.until_ack(1) == Acked(1, 0)  # the setting is done, the line is held
    assert d.quiet(0.4)  # no ack: nothing written
    assert text(log) == ""
    d.send(b"F\n")
    assert d.until_ack(3) == Acked(3, 5)
    assert text(log) == "held\n"
    assert d.close() == 0


def test_buffered_lines_are_written_within_a_second(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"b1\nLheld\n")
    sent = time.monotonic()
    assert d.until_ack(2) == Acked(2, 5)
    assert 0.9 <= time.monotonic() - sent < 3
    assert text(log) == "held\n"
    assert d.close() == 0


def test_buffered_lines_are_written_at_64k(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"b1\n")
    d.until_ack(1)
    line = b"L" + b"w" * 1023 + b"\n"
    d.send(line * 63)
    assert d.quiet(0.4)
    d.send(line)  # 64 KiB now
    assert d.until_ack(65) == Acked(65, 64 * 1024)
    assert d.close() == 0


def test_buffering_off_writes_what_is_held(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"b1\nLheld\n")
    assert d.until_ack(1) == Acked(1, 0)  # the setting is done, the line is held
    assert d.quiet(0.2)
    d.send(b"b0\n")
    assert d.until_ack(3) == Acked(3, 5)
    assert d.close() == 0


@pytest.mark.parametrize("buffered", [False, True])
def test_eof_writes_everything_and_exits_0(daemons, log, buffered):
    d = daemons(log)
    d.message()
    d.send(b"b1\n" if buffered else b"")
    d.send(b"".join(b"Lline %d\n" % i for i in range(5000)))
    assert d.close() == 0
    assert text(log) == "".join(f"line {i}\n" for i in range(5000))


def test_sigterm_writes_what_was_read_and_exits_0(daemons, log):
    d = daemons(log)
    d.message()
    d.send(b"b1\nLheld\n")
    assert d.until_ack(1) == Acked(1, 0)  # the setting is done, the line is held
    assert d.quiet(0.2)
    os.kill(d.proc.pid, signal.SIGINT)  # ignored: that one is the kid's business
    assert d.quiet(0.2)
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.proc.wait(timeout=5) == 0
    assert text(log) == "held\n"


# --- write errors --------------------------------------------------------------------------------


def test_write_errors_are_reported_retried_and_nothing_is_lost(daemons, log):
    d = daemons(log)
    d.message()
    # A file size limit makes write() fail with EFBIG after a short write.
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
    lines = b"".join(b"Lline %02d\n" % i for i in range(30))  # 240 bytes on disk
    d.send(lines)
    while not isinstance(msg := d.message(), WriteFailed):
        assert isinstance(msg, Acked)  # in case the lines came in two reads
    assert msg.pending == 240 - 100  # the short write went through, the rest waits
    d.send(b"Lmore\n")  # waits behind, in order
    assert d.quiet(1.5)  # no ack and no second report while it keeps failing
    assert d.proc.poll() is None
    assert log.stat().st_size == 100
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    assert d.until_ack(31) == Acked(31, 245)
    sent = [f"line {i:02d}" for i in range(30)] + ["more"]
    proof.record("fault", "logfile daemon write fails (EFBIG, file size limit)", 1,
                 _lines_off(text(log).splitlines(), sent), unit="lines",
                 detail="reported once, retried in order until it fits; every line written "
                        "once, none torn")
    assert text(log) == "".join(f"line {i:02d}\n" for i in range(30)) + "more\n"
    assert d.close() == 0


# --- with the kid's queue: nothing lost, nothing twice -------------------------------------------


def pump(d: Daemon, q: LogQueue, done, timeout: float = 20.0) -> None:
    """Drive the queue against the daemon like the kid's event loop does."""
    d.sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "pump timed out"
        out = q.pending_output()
        writable = [d.sock] if out else []
        r, w, _ = select.select([d.sock], writable, [], 0.05)
        if w:
            try:
                q.consumed(d.sock.send(out))
            except BlockingIOError:
                pass
        if r:
            data = d.sock.recv(65536)
            assert data, "daemon went away"
            q.feed(data)


def _lines_off(written: list[str], sent: list[str]) -> int:
    """Lines missing, written twice, or out of order, for the proof report."""
    if written == sent:
        return 0
    counted = Counter(written)
    wanted = Counter(sent)
    return max(1, sum(((counted - wanted) + (wanted - counted)).values()))


def expected(n: int, start: int = 0) -> list[str]:
    return [f"request {i} " + "p" * (i % 50) for i in range(start, start + n)]


@pytest.mark.parametrize("torn", [False, True])
def test_lines_written_but_not_acked_are_not_written_twice(daemons, log, torn):
    """The daemon is killed with every line written and none acknowledged: the
    replacement writes none of them again.  ``torn``: the file is cut inside
    a line first, the state a kill inside write() leaves (Linux ends a
    regular-file write between pages for SIGKILL); the replacement writes
    only the rest of that line."""
    q = LogQueue()
    d = daemons(log)
    pump(d, q, lambda: q.file_size is not None)  # the greeting
    ls = expected(300)
    for line in ls:
        q.append(line)
    d.sock.setblocking(True)
    out = q.pending_output(limit=1 << 30)
    d.sock.sendall(out)
    q.consumed(len(out))
    wait_for(lambda: log.stat().st_size == sum(len(s) + 1 for s in ls))
    d.kill()  # its acks are never read
    if torn:
        os.truncate(log, sum(len(s) + 1 for s in ls[:150]) + 9)  # "request 150" cut short

    d2 = daemons(log)
    q.daemon_restarted()
    q.append("after restart")
    pump(d2, q, q.idle)
    code = d2.close()
    case, detail = (
        ("kill -9 logfile daemon inside a write (torn line)",
         "the new daemon writes only the rest of the torn line: each line whole, once")
        if torn else
        ("kill -9 logfile daemon with lines written, not acked",
         "the new daemon skips what the file already holds: nothing twice"))
    proof.record("fault", case, 1, _lines_off(text(log).splitlines(), ls + ["after restart"]),
                 unit="lines", detail=detail)
    assert (q.skipped, q.completed) == ((150, 1) if torn else (300, 0))
    assert code == 0
    assert text(log).splitlines() == ls + ["after restart"]


@pytest.mark.parametrize("buffered", [False, True])
def test_kill_9_mid_stream_then_restart_writes_every_line_once(daemons, log, buffered):
    q = LogQueue(max_bytes=4 * 1024 * 1024)
    if buffered:
        q.command("b", 1)
    d = daemons(log)
    first = expected(20000)
    for line in first[:3000]:
        q.append(line)
    pump(d, q, lambda: q.acked > 2000)
    # Queue the rest (the daemon takes a batch in one go, so it could otherwise
    # have confirmed everything by now), keep it writing but stop reading its
    # acks, and kill it mid-stream, once the file holds lines the queue has
    # not seen acknowledged.
    for line in first[3000:]:
        q.append(line)
    with suppress(BlockingIOError):  # full: it has plenty to write already
        q.consumed(d.sock.send(q.pending_output()))
    wait_for(lambda: log.stat().st_size > q.file_size)
    d.kill()

    d2 = daemons(log)
    q.daemon_restarted()
    second = expected(5000, start=20000)
    for line in second:
        q.append(line)
    pump(d2, q, q.idle)
    code = d2.close()
    proof.record("fault", "kill -9 logfile daemon mid-stream, then a new one", 1,
                 _lines_off(text(log).splitlines(), first + second), unit="lines",
                 detail=f"{len(first) + len(second)} lines across the kill: each written "
                        "exactly once, in order")
    assert code == 0
    assert text(log).splitlines() == first + second
    assert q.skipped > 0


def test_symlink_planted_by_another_user_is_refused(tmp_path):
    """The daemon follows a symlink at its path only when it or root owns the link."""
    import pwd

    from labsquid.logfile_daemon import refuse_foreign_symlink

    target = tmp_path / "elsewhere"
    own = tmp_path / "own.log"
    own.symlink_to(target)
    refuse_foreign_symlink(str(own))  # ours: followed
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a link owned by another user")
    planted = tmp_path / "planted.log"
    planted.symlink_to(target)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.lchown(planted, nobody, -1)
    try:  # the same call as below, observed for the proof report before asserting
        refuse_foreign_symlink(str(planted))
        refused = False
    except OSError as exc:
        refused = "refusing a symbolic link owned by uid" in str(exc)
    proof.record("security", "symlink planted at the log path by another user", 1,
                 int(not refused or target.exists()), unit="files followed",
                 detail="the logfile daemon refuses a link owned by another user; the "
                        "target is not created")
    with pytest.raises(OSError, match="refusing a symbolic link owned by uid"):
        refuse_foreign_symlink(str(planted))
    assert not target.exists()
