"""The event loop: timers, call_soon, signals through the wakeup socketpair."""

from __future__ import annotations

import os
import signal
import socket
import time

from labsquid.eventloop import READ, EventLoop


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


def test_call_soon_runs_before_waiting():
    loop = EventLoop()
    ran = []
    loop.call_soon(lambda: ran.append(1))
    started = time.monotonic()
    loop.run_once(5)
    assert ran == [1] and time.monotonic() - started < 1


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
