"""Pacing of access-log hand-overs (a pool child's LOGS wake-ups, the kid's
sends to the logfile daemon): one per interval, and never a line left behind."""

from __future__ import annotations

from labsquid.pacing import Pacer


def test_lines_after_a_wake_up_get_one_of_their_own():
    """The LOGS pacing of a pool child: one wake-up per interval, and lines written
    after it are never left without a later one (the kid may have collected
    already; with no further traffic they would wait in the pipe for ever)."""
    pacer = Pacer(0.05)
    assert pacer.lines_written(10.0) == 0.0  # first lines: wake the kid now
    delay = pacer.lines_written(10.01)  # too soon for another: scheduled for 10.05
    assert delay is not None and abs(delay - 0.04) < 1e-9
    assert pacer.lines_written(10.03) is None  # already on its way
    pacer.timer_fired(10.05)
    assert pacer.lines_written(10.06) is not None  # after that wake-up: another is due
    pacer.timer_fired(10.10)
    assert pacer.lines_written(10.20) == 0.0  # quiet for an interval: at once again


def test_lines_when_a_scheduled_wake_up_is_due_do_not_send_a_second():
    """The loop runs a due timer after the turn's other callbacks: lines written
    in that turn are covered by the timer's wake-up, not given one more (which
    cost the kid a second collection, and the core a second stall, per interval)."""
    pacer = Pacer(0.05)
    assert pacer.lines_written(10.0) == 0.0
    assert pacer.lines_written(10.01) is not None  # scheduled for 10.05
    assert pacer.lines_written(10.051) is None  # due, not fired yet: it covers these
    pacer.timer_fired(10.052)
    delay = pacer.lines_written(10.06)
    assert delay is not None and abs(delay - (10.102 - 10.06)) < 1e-9
