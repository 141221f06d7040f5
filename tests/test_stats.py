"""The shared-memory counters, read the way the kid's status and the cache
manager read them: only rows in use, summed across processes."""

from __future__ import annotations

import os

from labsquid.stats import ROWS, STATE_SERVING, Stats


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
