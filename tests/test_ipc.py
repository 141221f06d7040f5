"""The kid <-> worker channel (SEQPACKET): what a peer said before it went away
is delivered, however its going away shows up."""

from __future__ import annotations

from labsquid.eventloop import EventLoop
from labsquid.ipc import Channel, Kind, channel_pair


def _receiver(loop: EventLoop, sock) -> tuple[Channel, list[tuple[bytes, bytes]], list[str]]:
    got: list[tuple[bytes, bytes]] = []
    closed: list[str] = []
    channel = Channel(loop, sock, lambda k, p, _f: got.append((k, p)), lambda: closed.append("x"))
    return channel, got, closed


def test_messages_sent_before_exit_survive_the_reset_of_an_unread_one():
    """A worker exits with the kid's STOP unread: Linux then reports ECONNRESET to
    the kid once, before the worker's last access-log lines.  They must arrive."""
    loop = EventLoop()
    kid_end, worker_end = channel_pair()
    kid, got, closed = _receiver(loop, kid_end)
    worker_end.send(Kind.LOG + b"the last line")
    kid.send(Kind.STOP)  # never read by the worker
    worker_end.close()
    kid.drain()
    assert got == [(Kind.LOG, b"the last line")]
    assert closed == ["x"]


def test_send_to_a_gone_peer_still_delivers_what_it_sent():
    loop = EventLoop()
    kid_end, worker_end = channel_pair()
    kid, got, closed = _receiver(loop, kid_end)
    worker_end.send(Kind.LOG + b"line")
    worker_end.close()
    assert kid.send(Kind.STOP) is True or kid.broken  # EPIPE shows up on send or later
    for _ in range(3):
        loop.run_once(0.05)
    assert got == [(Kind.LOG, b"line")]
    assert closed == ["x"]
    assert kid.send(Kind.STOP) is False
