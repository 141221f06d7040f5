"""The shared-memory counters, read the way the kid's status and the cache
manager read them: only rows in use, summed across processes."""

from __future__ import annotations

import os
import subprocess

from labsquid.stats import (
    ROWS,
    SAMPLE_SLOTS,
    SERVICE_BIN_FIELDS,
    SERVICE_BINS,
    STATE_SERVING,
    Stats,
    remove_stale_segments,
    segment_path,
)


def test_rows_lists_only_rows_in_use_and_totals_sum_them(tmp_path):
    stats = Stats("kid", path=str(tmp_path / "labsquid-test"))
    try:
        stats.own.count_request(service_us=100, error=False)
        child = stats.claim(ROWS - 1)  # the last row: free rows between are skipped
        child.count_request(service_us=50, error=True)
        child.add("bytes_out", 512)
        rows = stats.rows()
        assert [r["pid"] for r in rows] == [os.getpid(), os.getpid()]
        assert [r["requests"] for r in rows] == [1, 1]
        totals = stats.totals()
        assert (totals["requests"], totals["errors"], totals["service_us"],
                totals["bytes_out"]) == (2, 1, 150, 512)
        child.set("pid", 0)  # the kid frees a dead child's row
        assert [r["requests"] for r in stats.rows()] == [1]
    finally:
        stats.close()
    assert not (tmp_path / "labsquid-test").exists()


def test_a_retired_row_leaves_its_counts_with_the_kid(tmp_path):
    """A child that exits (a reload, a crash) takes nothing from the totals:
    the kid adds its cumulative counts to its own row, and frees the row."""
    stats = Stats("kid", path=str(tmp_path / "labsquid-test"))
    try:
        child = stats.row(3)
        child.set("pid", 12345)
        child.set("state", STATE_SERVING)
        child.count_request(service_us=70, error=True)
        child.add("server_requests")
        child.add("bytes_in", 100)
        child.add("active", 2)
        before = stats.totals()
        stats.retire(3)
        after = stats.totals()
        assert after == {**before, "active": 0}
        assert [r["pid"] for r in stats.rows()] == [os.getpid()]
        assert child.as_dict()["state"] == 0 and child.get("requests") == 0
    finally:
        stats.close()


def test_service_times_fall_in_power_of_two_bins(tmp_path):
    """Bin b holds [2**(b-1), 2**b) microseconds; the last any longer; a
    retired child's bins stay with the kid like its other counts."""
    stats = Stats("kid", path=str(tmp_path / "labsquid-test"))
    try:
        child = stats.row(2)
        child.set("pid", 12345)
        child.set("state", STATE_SERVING)
        for us in (0, 1, 2, 3, 4, 1000, 1023, 1024, 10**15):
            child.count_request(service_us=us, error=False)
        bins = [child.get(name) for name in SERVICE_BIN_FIELDS]
        assert {b: n for b, n in enumerate(bins) if n} == {
            0: 1, 1: 1, 2: 2, 3: 1, 10: 2, 11: 1, SERVICE_BINS - 1: 1}
        stats.retire(2)
        assert [stats.own.get(name) for name in SERVICE_BIN_FIELDS] == bins
        assert sum(stats.totals()[name] for name in SERVICE_BIN_FIELDS) == 9
    finally:
        stats.close()


def test_samples_are_read_newest_first_and_an_hour_back(tmp_path):
    stats = Stats("kid", path=str(tmp_path / "labsquid-test"))
    try:
        assert stats.samples() == []
        for minute in range(70):  # more than the slots: the oldest are overwritten
            stats.own.count_request(service_us=10, error=minute % 2 == 0)
            stats.take_sample(1000.0 + 60 * minute, cpu_us=minute * 7)
        samples = stats.samples()
        assert len(samples) == SAMPLE_SLOTS - 1
        assert [s["time_us"] for s in samples] == [
            int((1000.0 + 60 * m) * 1e6) for m in range(69, 69 - len(samples), -1)]
        newest, oldest = samples[0], samples[-1]
        assert (newest["requests"], newest["errors"], newest["cpu_us"]) == (70, 35, 69 * 7)
        assert oldest["requests"] == 70 - len(samples) + 1
        assert newest["service_bin_4"] == 70  # 10 µs: [8, 16)
    finally:
        stats.close()


def test_segments_of_gone_kids_are_removed_and_no_others():
    """A kid killed with its master leaves its segment in /dev/shm, in
    memory; the next kid removes it, and leaves a living process's alone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    paths = {pid: segment_path(pid) for pid in (gone.pid, alive.pid)}
    try:
        for path in paths.values():
            with open(path, "wb") as f:
                f.write(b"\0" * 64)
        assert gone.pid in remove_stale_segments()
        assert not os.path.exists(paths[gone.pid])
        assert os.path.exists(paths[alive.pid])
    finally:
        alive.kill()
        alive.wait()
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)
