"""The kid's end of the logfile daemon, with the real daemon: how often queued
lines are handed over.  Each hand-over wakes the daemon, which shares the
serving core with the kid, so lines go in paced batches — and none waits for
ever, and a large batch does not wait at all."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labsquid import access_logger
from labsquid.access_logger import AccessLogger
from labsquid.eventloop import EventLoop
from support.service import wait_for

pytestmark = pytest.mark.slow  # a real logfile daemon process


def _read_calls(pid: int) -> int:
    """read(2)-family calls the process made so far (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscr in /proc/{pid}/io")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _turn_until(loop: EventLoop, done: Callable[[], bool], timeout: float) -> float:
    """Run loop turns until ``done()``; returns the seconds it took."""
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < timeout, "timed out"
        loop.run_once(0.002)
    return time.monotonic() - start


class Logger:
    def __init__(self, path: Path) -> None:
        # The logger forks its daemon, and labsquid refuses to fork a threaded
        # process: let an earlier test's origin threads finish their connections.
        wait_for(lambda: threading.active_count() == 1, timeout=15,
                 what=f"other threads to end: {[t.name for t in threading.enumerate()]}")
        self.path = path
        self.loop = EventLoop()
        self.logger = AccessLogger(self.loop, str(path))
        self.logger.start()
        # Greeted once the settings (r, b) are acknowledged: sending may start.
        _turn_until(self.loop, lambda: self.logger.queue.greeted and self.logger.queue.idle(), 10)

    def close(self) -> None:
        """EOF once every line is acknowledged; the daemon then exits."""
        pid = self.logger.pid
        assert pid is not None
        self.logger.close()
        try:
            _turn_until(self.loop, lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, 10)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        finally:
            self.loop.close()


def test_lines_queued_every_turn_reach_the_daemon_in_few_batches(tmp_path, monkeypatch):
    """100 lines, one per loop turn for ~0.2 s or however long a loaded machine
    takes: sent each turn, the daemon would read about 100 times; paced, about
    once per SEND_INTERVAL of that time."""
    monkeypatch.setattr(access_logger, "SEND_INTERVAL", 0.1)
    lg = Logger(tmp_path / "access.log")
    try:
        pid = lg.logger.pid
        reads_before = _read_calls(pid)
        start = time.monotonic()
        for n in range(100):
            lg.logger.write_line(f"line {n}")
            end = time.monotonic() + 0.002
            while time.monotonic() < end:
                lg.loop.run_once(max(0.0, end - time.monotonic()))
        _turn_until(lg.loop, lambda: len(_lines(lg.path)) == 100, 10)
        elapsed = time.monotonic() - start
        reads = _read_calls(pid) - reads_before
        assert _lines(lg.path) == [f"line {n}" for n in range(100)]
        assert reads <= elapsed / 0.1 + 4, f"the daemon read {reads} times in {elapsed:.2f} s"
    finally:
        lg.close()


def test_a_line_after_a_hand_over_is_written_with_no_further_traffic(tmp_path, monkeypatch):
    """It goes on the pacer's timer: not with the hand-over before it, and not
    never (nothing else will come to carry it)."""
    monkeypatch.setattr(access_logger, "SEND_INTERVAL", 1.0)
    lg = Logger(tmp_path / "access.log")
    try:
        lg.logger.write_line("first")
        _turn_until(lg.loop, lambda: _lines(lg.path) == ["first"], 10)
        first_seen = time.monotonic()
        lg.logger.write_line("second")  # under a second after that hand-over
        _turn_until(lg.loop, lambda: len(_lines(lg.path)) == 2, 10)
        assert _lines(lg.path) == ["first", "second"]
        # Its timer is due a second after the hand-over of "first", which
        # happened at most a moment before that line was seen in the file.
        assert time.monotonic() - first_seen > 0.5
    finally:
        lg.close()


def test_a_large_batch_is_sent_without_waiting_for_its_turn(tmp_path, monkeypatch):
    monkeypatch.setattr(access_logger, "SEND_INTERVAL", 30.0)
    # Starting hands the daemon its settings (r, b): the next hand-over of
    # lines is due 30 s later.
    lg = Logger(tmp_path / "access.log")
    try:
        lg.logger.write_line("small")
        for _ in range(50):  # 0.1 s: a small batch waits for its interval
            lg.loop.run_once(0.002)
        assert _lines(lg.path) == []
        big = [f"{n:05d} " + "x" * 200 for n in range(400)]  # ~80 KiB > SEND_BATCH
        for line in big:
            lg.logger.write_line(line)
        waited = _turn_until(lg.loop, lambda: len(_lines(lg.path)) == 401, 20)
        assert _lines(lg.path) == ["small", *big]
        assert waited < 10.0  # long before the 30 s interval
    finally:
        lg.close()


def test_a_due_hand_over_leaves_the_loop_turn_that_queued_it(tmp_path, monkeypatch):
    """The kid's collection and the daemon's turn must not hold the serving
    core in one piece: a hand-over that is due goes out HANDOVER_GAP later,
    once the kid has blocked, not in the turn that queued the lines."""
    monkeypatch.setattr(access_logger, "HANDOVER_GAP", 0.3)
    lg = Logger(tmp_path / "access.log")
    try:
        big = [f"{n:05d} " + "x" * 200 for n in range(400)]  # ~80 KiB > SEND_BATCH: due now
        queued_at = time.monotonic()
        for line in big:
            lg.logger.write_line(line)
        lg.loop.run_once(0)  # the rest of the turn that queued them
        assert lg.logger.queue.output_bytes == lg.logger.queue.queued_bytes > 80_000
        _turn_until(lg.loop, lambda: len(_lines(lg.path)) == 400, 10)
        assert _lines(lg.path) == big
        assert time.monotonic() - queued_at >= 0.3
    finally:
        lg.close()
