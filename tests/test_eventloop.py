"""The event loop: timers, call_soon, signals through the wakeup socketpair."""

from __future__ import annotations

import os
import signal
import socket
import time

from labsquid.eventloop import READ, READY_EVERY, EventLoop


def test_timers_fire_in_order_and_cancelled_ones_never():
    loop = EventLoop()
    fired: list[str] = []
    loop.call_later(0.02, lambda: fired.append("b"))
    loop.call_later(0.01, lambda: fired.append("a"))
    loop.call_later(0.015, lambda: fired.append("x")).cancel()
    deadline = time.monotonic() + 2
    while len(fired) < 2 and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert fired == ["a", "b"]


def test_cancelled_timers_do_not_pile_up():
    """Per-request timeouts are minutes long and nearly always cancelled."""
    loop = EventLoop()
    for _ in range(100_000):
        loop.call_later(900, lambda: None).cancel()
    live = [loop.call_later(900, lambda: None) for _ in range(10)]
    assert len(loop._timers) < 3000
    assert all(not t.cancelled for t in live)


def _run_until(loop: EventLoop, done, limit: float = 2.0) -> float:
    started = time.monotonic()
    while not done() and time.monotonic() - started < limit:
        loop.run_once(0.01)
    return time.monotonic() - started


def test_deadline_fires_once_after_its_delay():
    loop = EventLoop()
    fired: list[float] = []
    deadline = loop.deadline()
    deadline.set(0.05, lambda: fired.append(time.monotonic()))
    took = _run_until(loop, lambda: fired)
    assert len(fired) == 1 and 0.04 <= took < 1.0
    assert not deadline.armed
    _run_until(loop, lambda: False, 0.1)
    assert len(fired) == 1


def test_deadline_moved_later_fires_at_the_new_time_only():
    loop = EventLoop()
    fired: list[str] = []
    deadline = loop.deadline()
    deadline.set(0.03, lambda: fired.append("old"))
    deadline.set(0.20, lambda: fired.append("new"))
    assert len(loop._timers) == 1  # moving later pushes nothing
    took = _run_until(loop, lambda: fired)
    assert fired == ["new"] and took >= 0.18


def test_deadline_moved_earlier_fires_at_the_earlier_time():
    loop = EventLoop()
    fired: list[str] = []
    deadline = loop.deadline()
    deadline.set(30, lambda: fired.append("idle"))
    deadline.set(0.03, lambda: fired.append("request"))
    took = _run_until(loop, lambda: fired)
    assert fired == ["request"] and took < 1.0


def test_cleared_deadline_never_fires_and_can_be_set_again():
    loop = EventLoop()
    fired: list[str] = []
    deadline = loop.deadline()
    deadline.set(0.02, lambda: fired.append("cleared"))
    deadline.clear()
    _run_until(loop, lambda: False, 0.1)
    assert fired == []
    deadline.set(0.02, lambda: fired.append("again"))
    _run_until(loop, lambda: fired)
    assert fired == ["again"]


def test_closed_deadlines_do_not_pile_up():
    """One deadline per connection; 100,000 short connections must not leave
    100,000 entries waiting out their 15-minute read_timeout."""
    loop = EventLoop()
    for _ in range(100_000):
        deadline = loop.deadline()
        deadline.set(900, lambda: None)
        deadline.close()
    assert len(loop._timers) < 3000


def test_call_soon_runs_before_waiting():
    loop = EventLoop()
    ran = []
    loop.call_soon(lambda: ran.append(1))
    started = time.monotonic()
    loop.run_once(5)
    assert ran == [1] and time.monotonic() - started < 1


def test_call_soon_work_does_not_wait_for_a_whole_busy_turn():
    """A pool child's client writes are call_soon work: with many connections
    ready in one turn, what the first callback queued runs after at most
    READY_EVERY more callbacks, not after all of them (and still before the
    loop waits again)."""
    loop = EventLoop()
    pairs = [socket.socketpair() for _ in range(3 * READY_EVERY)]
    order: list[str] = []

    def on_ready(i: int, sock: socket.socket):
        def callback(_mask: int) -> None:
            sock.recv(1)
            order.append(f"fd{i}")
            if not i:
                loop.call_soon(lambda: order.append("soon"))
        return callback

    try:
        for i, (ours, theirs) in enumerate(pairs):
            loop.add(ours.fileno(), READ, on_ready(i, ours))
            theirs.send(b"x")
        loop.run_once(1.0)  # all of them are ready: one turn serves them all
        assert len(order) == len(pairs) + 1
        soon = order.index("soon")
        assert 1 <= soon <= READY_EVERY, order
    finally:
        for ours, theirs in pairs:
            loop.remove(ours.fileno())
            ours.close()
            theirs.close()
        loop.close()


def test_signal_is_handled_in_the_loop_not_in_the_handler():
    loop = EventLoop()
    got = []
    loop.add_signal_handler(signal.SIGUSR2, got.append)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert got == [], "nothing runs until the loop reads the wakeup byte"
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            loop.run_once(0.1)
        assert got == [signal.SIGUSR2]
    finally:
        loop.close()
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_a_failing_callback_does_not_stop_the_loop():
    loop = EventLoop()
    a, b = socket.socketpair()
    seen = []

    def boom(_mask: int) -> None:
        seen.append("boom")
        a.recv(10)
        raise RuntimeError("one bad connection")

    loop.add(a.fileno(), READ, boom)
    loop.call_later(0, lambda: seen.append("timer"))
    b.send(b"x")
    loop.run_once(0.5)
    assert seen == ["boom", "timer"]
    a.close()
    b.close()
