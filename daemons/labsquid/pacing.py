"""When to pass batched access-log lines on: at most once per interval.

Two hops use it.  A pool child tells the kid its log pipe holds lines (a LOGS
wake-up); the kid sends queued lines to the logfile daemon.  Each hop wakes a
process that shares the core with the one serving, so one hand-over per
interval, carrying everything that arrived by then, replaces one per loop
turn.  But lines that come after a hand-over need one of their own, or with no
further traffic they would wait for ever: such lines schedule the hand-over
for when it may happen.  Sans-I/O: the caller sends and schedules.
"""

from __future__ import annotations


class Pacer:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_due = 0.0
        self.scheduled = False

    def lines_written(self, now: float) -> float | None:
        """0.0: hand over now; a delay: hand over after that (schedule a timer);
        None: a hand-over is already scheduled."""
        if self.scheduled:
            # Even when its time has come: the timer fires this turn or the
            # next, and a hand-over of our own as well would make the receiver
            # wake twice.
            return None
        if now >= self.next_due:
            self.next_due = now + self.interval
            return 0.0
        self.scheduled = True
        return self.next_due - now

    def timer_fired(self, now: float) -> None:
        """The scheduled hand-over is being made."""
        self.scheduled = False
        self.next_due = now + self.interval
