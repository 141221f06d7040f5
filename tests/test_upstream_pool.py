"""The idle origin connections of one process (squid's pconn pool), with a
real event loop and real connections to a local listener."""

from __future__ import annotations

import resource
import socket
import time

import pytest

from labsquid.eventloop import EventLoop
from labsquid.proxy.upstream import Upstream, UpstreamPool


class _Owner:
    """What a transaction is to an Upstream: here it only notes the connect."""

    def __init__(self) -> None:
        self.connected = False

    def upstream_connected(self, up: Upstream) -> None:
        self.connected = True

    def upstream_failed(self, up: Upstream, err: int) -> None:
        raise AssertionError(f"connect failed: {err}")

    def upstream_data(self, up: Upstream, data: bytes) -> None: ...
    def upstream_eof(self, up: Upstream) -> None: ...
    def upstream_drained(self, up: Upstream) -> None: ...


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    yield sock, accepted
    for conn in accepted:
        conn.close()
    sock.close()


def _connected(loop: EventLoop, listener, key: tuple[str, int]) -> Upstream:
    sock, accepted = listener
    owner = _Owner()
    up = Upstream(loop, key, "127.0.0.1")
    up.connect(sock.getsockname()[1], owner)
    deadline = time.monotonic() + 5
    while not owner.connected and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert owner.connected
    accepted.append(sock.accept()[0])
    return up


def test_the_newest_idle_connection_is_taken_first_and_no_entry_is_left(listener):
    loop = EventLoop()
    pool = UpstreamPool(loop)
    key = ("origin.test", listener[0].getsockname()[1])
    older, newer = _connected(loop, listener, key), _connected(loop, listener, key)
    pool.release(older)
    pool.release(newer)
    assert pool.count() == 2
    assert pool.take(key) is newer
    assert pool.take(key) is older
    assert pool.take(key) is None
    # Emptied, the origin's entry goes: a proxy meets millions of origins.
    assert pool._idle == {}
    older.close()
    newer.close()


def test_an_idle_connection_the_origin_closes_leaves_the_pool(listener):
    loop = EventLoop()
    pool = UpstreamPool(loop)
    key = ("origin.test", listener[0].getsockname()[1])
    up = _connected(loop, listener, key)
    pool.release(up)
    listener[1][-1].close()  # the origin ends it while idle
    deadline = time.monotonic() + 5
    while pool.count() and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert up.closed
    assert pool.count() == 0 and pool._idle == {}


def test_descriptors_held_outside_the_loop_count_as_in_use(listener):
    """A tunnel's pipes are not watched by the loop; counted as in use, they
    can leave too few free to keep a connection idle."""
    loop = EventLoop()
    pool = UpstreamPool(loop)
    key = ("origin.test", listener[0].getsockname()[1])
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert not pool.descriptors_short()
    pool.unwatched_fds = soft  # as many pipes as the limit allows descriptors
    up = _connected(loop, listener, key)
    pool.release(up)
    assert up.closed and pool.count() == 0
    pool.unwatched_fds = 0
    up = _connected(loop, listener, key)
    pool.release(up)
    assert not up.closed and pool.count() == 1
    up.close()
