"""Per-process counters in a POSIX shared-memory segment (the notes' experiment 2).

The kid creates ``/dev/shm/labsquid-<kid pid>`` before it forks its pool:
one row of ``FIELDS`` 64-bit counters per serving process (row 0 is the kid
itself).  Each process writes only its own row, with plain aligned stores, so
no lock is needed; any process — the kid for ``STATUS=``, the cache manager
pages, ``labsquid -k status`` from outside — reads all rows without asking the
children.  ``lsof -p`` shows the mapping as ``/dev/shm/labsquid-…``.

After the rows the kid keeps a sample of the totals a minute
(``take_sample``), as squid keeps its per-minute counters: the manager's
``5min``, ``60min`` and ``service_times`` pages are the difference between
now and the sample the window starts at.  A sample's slot is written before
the sample count goes up, and no reader looks back as far as the slot being
written, so readers need no lock either.
"""

from __future__ import annotations

import mmap
import os
import time

# bytes_in/bytes_out are the client side's, tunnels included; server_* the
# origin side of relayed HTTP, tunnel_* that of CONNECT tunnels.
FIELDS = ("pid", "state", "requests", "errors", "bytes_in", "bytes_out", "active",
          "service_us", "started", "generation", "server_requests",
          "reaped_cpu_us",  # the kid's row: CPU of its children that exited
          "server_bytes_in", "server_bytes_out", "tunnels", "tunnel_bytes_in",
          "tunnel_bytes_out")
# Service times as a histogram: bin b counts the requests that took
# [2**(b-1), 2**b) microseconds (bin 0 under one), the last bin any longer.
# One bit_length() a request; percentiles interpolate within a bin.
SERVICE_BINS = 40
SERVICE_BIN_FIELDS = tuple(f"service_bin_{b}" for b in range(SERVICE_BINS))
FIELDS += SERVICE_BIN_FIELDS
# What a process has counted in total; the kid keeps those of its children
# that exited (``retire``), so totals never go back (a reload, a restart).
CUMULATIVE = ("requests", "errors", "bytes_in", "bytes_out", "service_us", "server_requests",
              "server_bytes_in", "server_bytes_out", "tunnels", "tunnel_bytes_in",
              "tunnel_bytes_out", *SERVICE_BIN_FIELDS)
ROWS = 257  # the kid and up to 256 pool children
ROW_SIZE = len(FIELDS) * 8
# A sample: when (µs since the epoch), the pool's CPU time (µs), the totals.
SAMPLE_FIELDS = ("time_us", "cpu_us", *CUMULATIVE)
SAMPLE_INTERVAL = 60.0
SAMPLE_SLOTS = 62  # an hour back and one more, plus the slot being written
_SAMPLES_AT = ROWS * len(FIELDS)  # the sample count, then the slots
SEGMENT_SIZE = (_SAMPLES_AT + 1 + SAMPLE_SLOTS * len(SAMPLE_FIELDS)) * 8
SHM_DIR = "/dev/shm"

STATE_FREE, STATE_STARTING, STATE_SERVING, STATE_STOPPING, STATE_PARENT = 0, 1, 2, 3, 4
STATE_NAMES = {STATE_FREE: "free", STATE_STARTING: "starting", STATE_SERVING: "serving",
               STATE_STOPPING: "stopping", STATE_PARENT: "parent"}

_INDEX = {name: i for i, name in enumerate(FIELDS)}
_REQUESTS, _ERRORS, _SERVICE_US = _INDEX["requests"], _INDEX["errors"], _INDEX["service_us"]
_PID = _INDEX["pid"]
_BIN_0, _LAST_BIN = _INDEX["service_bin_0"], SERVICE_BINS - 1


class Row:
    """One process's counters; attribute access reads or writes the shared row."""

    __slots__ = ("_view", "_base")

    def __init__(self, view: memoryview, row: int) -> None:
        self._view = view
        self._base = row * len(FIELDS)

    def get(self, field: str) -> int:
        return self._view[self._base + _INDEX[field]]

    def set(self, field: str, value: int) -> None:
        self._view[self._base + _INDEX[field]] = value

    def add(self, field: str, value: int = 1) -> None:
        i = self._base + _INDEX[field]
        self._view[i] += value

    def count_request(self, service_us: int, error: bool) -> None:
        """One finished request: ``requests``, ``service_us``, its histogram
        bin and maybe ``errors``."""
        view, base = self._view, self._base
        view[base + _REQUESTS] += 1
        view[base + _SERVICE_US] += service_us
        view[base + _BIN_0 + min(service_us.bit_length(), _LAST_BIN)] += 1
        if error:
            view[base + _ERRORS] += 1

    def as_dict(self) -> dict[str, int]:
        return {name: self._view[self._base + i] for i, name in enumerate(FIELDS)}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User and system time of a process; 0 when it is gone.  Read from
    ``/proc/PID/stat`` alone: the unit's ``ProcSubset=pid`` hides
    ``/proc/stat``, without which psutil cannot open a process at all."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # after "pid (comm)": state is field 3, utime 14, stime 15
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def kid_row(rows: list[dict[str, int]]) -> dict[str, int] | None:
    """The kid's row among ``Stats.rows()``: row 0, the first in use."""
    return next((r for r in rows if r["state"] in (STATE_PARENT, STATE_SERVING)), None)


def pool_cpu_seconds(rows: list[dict[str, int]]) -> float:
    """User and system time of the kid, its serving processes, and the
    children it has reaped (so the figure never goes back)."""
    kid = kid_row(rows)
    total = kid["reaped_cpu_us"] / 1e6 if kid else 0.0
    return total + sum(process_cpu_seconds(r["pid"]) for r in rows)


def segment_path(pid: int) -> str:
    """The segment of the kid with this pid."""
    return os.path.join(SHM_DIR, f"labsquid-{pid}")


#: Set by the master for a kid that replaces a draining one (a port change):
#: the descriptor of the old kid's segment, open, so that the old kid's exit
#: (which unlinks it) cannot take it away before the new kid has read it.
CARRY_ENV = "LABSQUID_STATS_FD"


def carry_over(stats: Stats, fd: int) -> bool:
    """Start ``stats`` (a new kid's) from the totals and the start time in
    the segment open on ``fd`` (the kid it replaces, still draining), so a
    reload that changes ports does not take the cache manager's figures back
    to 0.  Requests the old kid finishes after this are not counted here.
    Closes ``fd``."""
    try:
        old = Stats("previous", fd=fd)
    except (OSError, ValueError):  # ValueError: a segment of another size
        return False
    try:
        totals, rows = old.totals(), old.rows()
    finally:
        old.close()
    for field in CUMULATIVE:
        stats.own.add(field, totals[field])
    if rows:  # row 0, the old kid's
        stats.own.add("reaped_cpu_us", rows[0]["reaped_cpu_us"])
        stats.own.set("started", rows[0]["started"])
    return True


def remove_segment(pid: int) -> None:
    """Remove a dead kid's segment (its own ``close`` does on a clean exit;
    one killed leaves it behind)."""
    try:
        os.unlink(segment_path(pid))
    except FileNotFoundError:
        pass


def remove_stale_segments() -> list[int]:
    """Remove the segments of kids that are gone, whose master could not
    (it was killed too, as systemd's final SIGKILL or a test does): each is
    held in memory until unlinked.  Only our own user's, so another user's
    kid, whose pid a hardened unit cannot see, is never taken for dead.
    Returns the pids removed."""
    removed = []
    uid = os.getuid()
    for entry in os.scandir(SHM_DIR):
        prefix, _, pid = entry.name.partition("-")
        if prefix != "labsquid" or not pid.isdecimal():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            remove_segment(int(pid))
            removed.append(int(pid))
        except OSError:  # alive (EPERM) or gone meanwhile
            continue
    return removed


class Stats:
    """The whole segment, created by the kid (or opened read-only by an inspector)."""

    def __init__(self, name: str, path: str | None = None, create: bool = True, *,
                 fd: int | None = None) -> None:
        """``fd``: read a segment already open (read-only; the fd is closed)."""
        self.name = name
        self.path = path or segment_path(os.getpid())
        size = SEGMENT_SIZE
        if fd is not None:
            create = False
        elif create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o640)
            os.ftruncate(fd, size)
        else:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._mm = mmap.mmap(fd, size) if create else mmap.mmap(fd, size,
                                                                    prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.owner = create
        self._view = memoryview(self._mm).cast("q")
        self.own = Row(self._view, 0)
        if create:
            self.claim(0)
        self._last = (time.monotonic(), 0)

    def row(self, index: int) -> Row:
        return Row(self._view, index)

    def claim(self, index: int, generation: int = 0) -> Row:
        """Reset row ``index`` for the calling process and make it its own."""
        row = Row(self._view, index)
        for field in FIELDS:
            if field not in ("pid", "state"):  # never 0 (free) in between: the
                row.set(field, 0)               # kid may be looking for a free row
        row.set("pid", os.getpid())
        row.set("state", STATE_STARTING)
        row.set("started", int(time.time()))
        row.set("generation", generation)
        self.own = row
        return row

    def retire(self, index: int) -> None:
        """Row ``index``'s process exited: add its counts to our own row (the
        kid's), then free the row for the next child."""
        row = self.row(index)
        for field in CUMULATIVE:
            self.own.add(field, row.get(field))
            row.set(field, 0)
        row.set("active", 0)
        row.set("state", STATE_FREE)
        row.set("pid", 0)

    def free_row(self) -> int:
        for i in range(1, ROWS):
            if self.row(i).get("state") == STATE_FREE:
                return i
        raise RuntimeError("no free statistics row")

    def rows(self) -> list[dict[str, int]]:
        """The rows in use (those with a pid).  Free rows are skipped by their pid
        alone: the kid's status runs this every few seconds over all ROWS."""
        view, width = self._view, len(FIELDS)
        return [self.row(i).as_dict() for i in range(ROWS) if view[i * width + _PID]]

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys((*CUMULATIVE, "active"), 0)
        for r in self.rows():
            for key in out:
                out[key] += r[key]
        return out

    def take_sample(self, when: float, cpu_us: int) -> None:
        """Keep the totals of now (the kid, once a minute)."""
        totals = self.totals()
        view, width = self._view, len(SAMPLE_FIELDS)
        taken = view[_SAMPLES_AT]
        base = _SAMPLES_AT + 1 + (taken % SAMPLE_SLOTS) * width
        for i, value in enumerate((int(when * 1e6), cpu_us, *map(totals.get, CUMULATIVE))):
            view[base + i] = value
        view[_SAMPLES_AT] = taken + 1

    def samples(self) -> list[dict[str, int]]:
        """The samples kept, newest first: an hour back and one more."""
        view, width = self._view, len(SAMPLE_FIELDS)
        taken = view[_SAMPLES_AT]
        out = []
        for n in range(taken - 1, max(taken - SAMPLE_SLOTS + 1, 0) - 1, -1):
            base = _SAMPLES_AT + 1 + (n % SAMPLE_SLOTS) * width
            out.append(dict(zip(SAMPLE_FIELDS, view[base:base + width].tolist(), strict=True)))
        return out

    def summary(self) -> dict[str, object]:
        t = self.totals()
        now = time.monotonic()
        then, before = self._last
        rps = (t["requests"] - before) / (now - then) if now > then else 0.0
        self._last = (now, t["requests"])
        return {"requests": t["requests"], "connections": t["active"], "rps": round(rps, 1)}

    def close(self) -> None:
        self._view.release()
        self._mm.close()
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
