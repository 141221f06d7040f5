"""Per-process counters in a POSIX shared-memory segment (the notes' experiment 2).

The kid creates ``/dev/shm/labsquid-<kid pid>`` before it forks its pool:
one row of ``FIELDS`` 64-bit counters per serving process (row 0 is the kid
itself).  Each process writes only its own row, with plain aligned stores, so
no lock is needed; any process — the kid for ``STATUS=``, the cache manager
pages, ``labsquid -k status`` from outside — reads all rows without asking the
children.  ``lsof -p`` shows the mapping as ``/dev/shm/labsquid-…``.
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
# What a process has counted in total; the kid keeps those of its children
# that exited (``retire``), so totals never go back (a reload, a restart).
CUMULATIVE = ("requests", "errors", "bytes_in", "bytes_out", "service_us", "server_requests",
              "server_bytes_in", "server_bytes_out", "tunnels", "tunnel_bytes_in",
              "tunnel_bytes_out")
ROWS = 257  # the kid and up to 256 pool children
ROW_SIZE = len(FIELDS) * 8
SHM_DIR = "/dev/shm"

STATE_FREE, STATE_STARTING, STATE_SERVING, STATE_STOPPING, STATE_PARENT = 0, 1, 2, 3, 4
STATE_NAMES = {STATE_FREE: "free", STATE_STARTING: "starting", STATE_SERVING: "serving",
               STATE_STOPPING: "stopping", STATE_PARENT: "parent"}

_INDEX = {name: i for i, name in enumerate(FIELDS)}
_REQUESTS, _ERRORS, _SERVICE_US = _INDEX["requests"], _INDEX["errors"], _INDEX["service_us"]
_PID = _INDEX["pid"]


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
        """One finished request: ``requests``, ``service_us`` and maybe ``errors``."""
        view, base = self._view, self._base
        view[base + _REQUESTS] += 1
        view[base + _SERVICE_US] += service_us
        if error:
            view[base + _ERRORS] += 1

    def as_dict(self) -> dict[str, int]:
        return {name: self._view[self._base + i] for i, name in enumerate(FIELDS)}


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


class Stats:
    """The whole segment, created by the kid (or opened read-only by an inspector)."""

    def __init__(self, name: str, path: str | None = None, create: bool = True, *,
                 fd: int | None = None) -> None:
        """``fd``: read a segment already open (read-only; the fd is closed)."""
        self.name = name
        self.path = path or segment_path(os.getpid())
        size = ROWS * ROW_SIZE
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
