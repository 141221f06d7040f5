"""The shared-memory counters, read the way the kid's status and the cache
manager read them: only rows in use, summed across processes."""

from __future__ import annotations

import os

from labsquid.stats import ROWS, Stats


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
