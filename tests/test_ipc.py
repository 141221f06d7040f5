"""The kid <-> worker channel (SEQPACKET) and a worker's access-log stream: what
a peer said before it went away is delivered, however its going away shows up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from labsquid.eventloop import EventLoop
from labsquid.ipc import Channel, Kind, LogStream, channel_pair, log_stream_pair


def _receiver(loop: EventLoop, sock) -> tuple[Channel, list[tuple[bytes, bytes]], list[str]]:
    got: list[tuple[bytes, bytes]] = []
    closed: list[str] = []
    channel = Channel(loop, sock, lambda k, p, _f: got.append((k, p)), lambda: closed.append("x"))
    return channel, got, closed


def test_messages_sent_before_exit_survive_the_reset_of_an_unread_one():
    """A worker exits with the kid's STOP unread: Linux then reports ECONNRESET to
    the kid once, before the worker's last messages.  They must arrive."""
    loop = EventLoop()
    kid_end, worker_end = channel_pair()
    kid, got, closed = _receiver(loop, kid_end)
    worker_end.send(Kind.NOFDS + b"the last message")
    kid.send(Kind.STOP)  # never read by the worker
    worker_end.close()
    kid.drain()
    assert got == [(Kind.NOFDS, b"the last message")]
    assert closed == ["x"]


def test_send_to_a_gone_peer_still_delivers_what_it_sent():
    loop = EventLoop()
    kid_end, worker_end = channel_pair()
    kid, got, closed = _receiver(loop, kid_end)
    worker_end.send(Kind.READY + b"x")
    worker_end.close()
    assert kid.send(Kind.STOP) is True or kid.broken  # EPIPE shows up on send or later
    for _ in range(3):
        loop.run_once(0.05)
    assert got == [(Kind.READY, b"x")]
    assert closed == ["x"]
    assert kid.send(Kind.STOP) is False


# -- descriptors that cannot be installed (passfd at RLIMIT_NOFILE) -------------

_TRUNCATED = r"""
import json, os, resource, socket
from labsquid.eventloop import EventLoop
from labsquid.ipc import Channel, Kind, channel_pair

loop = EventLoop()
kid_end, worker_end = channel_pair()
got, truncated = [], []
worker = Channel(loop, worker_end, lambda k, p, f: got.append((k.decode(), f)),
                 lambda: None, on_truncated=lambda k: truncated.append(k.decode()))
kid = Channel(loop, kid_end, lambda *a: None, lambda: None)
client = socket.socket()
kid.send(Kind.CONN, b"", [os.dup(client.fileno())])
# No descriptor left in this process: the passed one cannot be installed.
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1,
                                             resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
loop.run_once(0.5)
print(json.dumps({"got": got, "truncated": truncated, "count": worker.truncated}))
"""


def test_a_passed_descriptor_the_receiver_cannot_install_is_reported():
    """At its descriptor limit the receiver gets the message with MSG_CTRUNC and
    no descriptor (the kernel closed it): the channel says so, and still
    delivers the message."""
    run = subprocess.run([sys.executable, "-c", _TRUNCATED], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"got": [["C", []]], "truncated": ["C"], "count": 1}, result


def test_may_read_pauses_reading_until_resumed():
    """A receiver that says it cannot take the next message leaves it in the
    socket, with its descriptor, until it resumes reading."""
    loop = EventLoop()
    kid_end, worker_end = channel_pair()
    got: list[tuple[bytes, list[int]]] = []
    worker = Channel(loop, worker_end, lambda k, _p, f: got.append((k, f)), lambda: None)
    kid = Channel(loop, kid_end, lambda *_a: None, lambda: None)
    allowed = [False]
    asked: list[int] = []

    def may_read() -> bool:
        asked.append(1)
        return allowed[0]

    worker.may_read = may_read
    with socket.socket() as client:
        kid.send(Kind.CONN, b"", [os.dup(client.fileno())])
        for _ in range(3):
            loop.run_once(0.05)
        assert got == [] and not worker.reading
        assert len(asked) == 1, "asked again while paused: a busy loop"
        allowed[0] = True
        worker.resume_reading()
        loop.run_once(0.5)
        assert [k for k, _f in got] == [Kind.CONN]
        (fd,) = got[0][1]
        os.close(fd)


def test_on_sent_all_when_a_full_channel_empties():
    """The sender learns when what it had to queue (the peer's socket was full)
    is all gone: the pool's cue to hand that child connections again."""
    loop = EventLoop()
    kid_end, worker_end = channel_pair()
    kid_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    kid = Channel(loop, kid_end, lambda *_a: None, lambda: None)
    emptied: list[int] = []
    kid.on_sent_all = lambda: emptied.append(kid.backlog)
    sent = 0
    while not kid.backlog:
        kid.send(Kind.ACCEPT, b"\0")
        sent += 1
    assert emptied == []
    worker_end.setblocking(False)
    for _ in range(sent + 1):  # the peer reads everything
        try:
            worker_end.recv(16)
        except BlockingIOError:
            loop.run_once(0.05)
    for _ in range(3):
        loop.run_once(0.05)
    assert emptied == [0]


# -- the access-log stream ------------------------------------------------------


def _log_pair(loop: EventLoop) -> tuple[LogStream, LogStream, list[bytes]]:
    kid_end, worker_end = log_stream_pair()
    chunks: list[bytes] = []
    return LogStream(loop, worker_end), LogStream(loop, kid_end, chunks.append), chunks


def test_log_stream_hands_over_whole_lines_in_one_read():
    """Thousands of per-turn writes (one request's line each, at low concurrency)
    fit in the pipe and reach the kid in a chunk or two; an incomplete line
    waits for its end."""
    loop = EventLoop()
    worker, kid, chunks = _log_pair(loop)
    line = b"1795731345.048      1 127.0.0.1 TCP_MISS/200 354 GET http://127.0.0.1:8080/%d"
    for i in range(2000):
        worker.send(line % i + b"\n")
    assert worker.backlog == 0
    worker.send(b"half of a li")
    kid.read_all()
    assert 1 <= len(chunks) <= 2
    assert b"".join(chunks).split(b"\n")[:-1] == [line % i for i in range(2000)]
    assert b"half" not in b"".join(chunks)
    worker.send(b"ne\n")
    kid.read_all()
    assert chunks[-1] == b"half of a line\n"


def test_log_stream_read_with_a_limit_leaves_the_rest_in_the_pipe():
    """The kid reads only what its logfile queue has room for: the rest stays in
    the pipe (where it holds the worker back once the pipe is full), in order."""
    loop = EventLoop()
    worker, kid, chunks = _log_pair(loop)
    lines = [b"line %03d " % i + b"x" * 90 for i in range(100)]  # 100 bytes with the newline
    worker.send(b"".join(line + b"\n" for line in lines))
    assert kid.read_all(limit=250) == 250  # two lines and half of the third
    assert chunks == [lines[0] + b"\n" + lines[1] + b"\n"]
    assert kid.read_all(limit=0) == 0 and len(chunks) == 1
    assert kid.read_all() == 100 * 100 - 250
    assert b"".join(chunks).split(b"\n")[:-1] == lines


def test_log_stream_keeps_what_the_kernel_refuses_and_says_when_it_left():
    loop = EventLoop()
    worker, kid, chunks = _log_pair(loop)
    emptied: list[bool] = []
    worker.on_sent_all = lambda: emptied.append(True)
    line = b"x" * 999 + b"\n"
    sent = 0
    while not worker.backlog:  # the kid is not reading: the pipe fills up
        worker.send(line)
        sent += 1
    worker.send(line)  # behind the backlog, in order
    sent += 1
    assert worker.backlog >= len(line)
    for _ in range(200):
        kid.read_all()
        loop.run_once(0.01)
        if emptied and not worker.backlog:
            break
    kid.read_all()
    assert emptied == [True]
    assert b"".join(chunks) == line * sent


def test_log_stream_drain_after_the_worker_died_drops_only_a_torn_line():
    loop = EventLoop()
    worker, kid, chunks = _log_pair(loop)
    worker.send(b"answered 1\nanswered 2\n")
    worker.send(b"torn")
    os.close(worker.fd)  # killed inside a write
    kid.drain()
    assert chunks == [b"answered 1\nanswered 2\n"]
    assert kid.closed


def test_a_moved_connection_payload_round_trips() -> None:
    from labsquid.ipc import moved_payload, parse_moved

    state = {"requests": 7, "opened": 12345.678901,
             "tunnel": {"head": ["h:443", "1.1", [["Host", "h:443"]]], "to_client": 39}}
    assert parse_moved(moved_payload(state)) == state
    assert parse_moved(b"") == {}  # passfd: a new connection
