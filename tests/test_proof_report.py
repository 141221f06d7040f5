"""docs/make_proof_report.py's pure parts: summing records, rendering the report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support.proof import ENV, record

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "make_proof_report.py"


@pytest.fixture(scope="module")
def report():
    """The script as a module (docs/ is no package)."""
    spec = importlib.util.spec_from_file_location("make_proof_report_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def rec(area: str, case: str, tried: int, lost: int, test: str, unit: str = "lines",
        detail: str = "checked") -> dict:
    return {"area": area, "case": case, "tried": tried, "lost": lost, "unit": unit,
            "detail": detail, "test": test}


CHAOS = "tests/test_chaos.py::test_chaos_under_load"


def test_rows_with_the_same_area_and_case_are_summed(report):
    rows = report.sum_rows([
        rec("fault", "kill -9 child", 3, 0, f"{CHAOS}[notify]"),
        rec("bad-input", "obs-fold", 1, 0, "tests/test_bad_input.py::test_case[a]"),
        rec("fault", "kill -9 child", 4, 1, f"{CHAOS}[reuseport]"),
        rec("bad-input", "obs-fold", 1, 1, "tests/test_bad_input.py::test_case[b]"),
        rec("security", "kill -9 child", 1, 0, "tests/test_x.py::test_y"),  # other area
    ])
    assert [(r.area, r.case, r.tried, r.lost) for r in rows] == [
        ("fault", "kill -9 child", 7, 1), ("bad-input", "obs-fold", 2, 1),
        ("security", "kill -9 child", 1, 0)]
    assert rows[0].tests == [f"{CHAOS}[notify]", f"{CHAOS}[reuseport]"]
    assert rows[0].details == ["checked"] and rows[0].units == ["lines"]


def test_disagreeing_units_are_all_shown(report):
    rows = report.sum_rows([rec("fault", "c", 1, 0, "t::a", unit="lines"),
                            rec("fault", "c", 1, 0, "t::b", unit="requests"),
                            rec("fault", "c", 1, 0, "t::c", unit="lines")])
    assert rows[0].units == ["lines", "requests"]


def test_recorder_output_reads_back_and_sums(report, tmp_path, monkeypatch):
    log = tmp_path / "proof.jsonl"
    monkeypatch.setenv(ENV, str(log))
    record("fault", "HUP", 2, 0, unit="requests", detail="d", test="tests/t.py::a")
    record("fault", "HUP", 3, 1, unit="requests", detail="d", test="tests/t.py::b")
    (row,) = report.sum_rows(report.read_json_lines(log))
    assert (row.tried, row.lost, row.tests) == (5, 1, ["tests/t.py::a", "tests/t.py::b"])
    assert report.read_json_lines(tmp_path / "absent.jsonl") == []


def test_worst_phase_is_the_outcome(report):
    outcomes = report.final_outcomes([
        {"test": "t::a", "outcome": "passed"}, {"test": "t::a", "outcome": "error"},
        {"test": "t::b", "outcome": "skipped", "reason": "needs root"},
        {"test": "t::c", "outcome": "failed"}, {"test": "t::c", "outcome": "error"}])
    assert {k: v["outcome"] for k, v in outcomes.items()} == \
        {"t::a": "error", "t::b": "skipped", "t::c": "error"}


def test_tests_cell_lists_few_parameters_counts_many_and_marks_failures(report):
    few = [f"{CHAOS}[notify]", f"{CHAOS}[reuseport]"]
    many = [f"tests/test_bad_input.py::test_case[c{i}]" for i in range(6)]
    outcomes = {many[2]: {"outcome": "failed"}}
    assert report.tests_cell(few, {}) == \
        "`test_chaos.py::test_chaos_under_load` [notify, reuseport]"
    assert report.tests_cell(many, outcomes) == \
        "`test_bad_input.py::test_case` ×6 **FAILED** (c2)"
    assert report.tests_cell(["tests/t.py::plain"], {"tests/t.py::plain": {"outcome": "error"}}) \
        == "`t.py::plain` **FAILED**"


def run_info(report, **kw):
    defaults = {"commit": "abc1234", "date": "2025-01-01 00:00 UTC",
                "summary": "3 passed, 1 failed in 9.5s", "files": ["tests/test_chaos.py"],
                "seconds": 9.5, "returncode": 1}
    return report.Run(**{**defaults, **kw})


def test_render_marks_losses_and_failing_tests(report):
    records = [rec("fault", "kill -9 child", 7, 2, f"{CHAOS}[notify]", unit="requests",
                   detail="only in-flight requests fail"),
               rec("bad-input", "bare CR | LF", 3, 0, "tests/test_bad_input.py::test_case[x]")]
    outcomes = {f"{CHAOS}[notify]": {"outcome": "failed", "reason": "1 line | lost"},
                "tests/test_lifecycle.py::test_never_recorded": {"outcome": "error"},
                "tests/test_lifecycle.py::test_root": {"outcome": "skipped",
                                                       "reason": "needs root"}}
    text = report.render(records, outcomes, run_info(report))
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    assert "`abc1234`, 2025-01-01 00:00 UTC" in text
    assert "`3 passed, 1 failed in 9.5s` (exit code 1" in text
    assert "`.venv/bin/python docs/make_proof_report.py`" in text
    assert ("| kill -9 child | 7 | **2** (requests) | only in-flight requests fail | "
            "`test_chaos.py::test_chaos_under_load` [notify] **FAILED** (notify) |") in lines
    assert "| bare CR \\| LF | 3 | 0 (lines) | checked | `test_bad_input.py::test_case` [x] |" \
        in lines  # a pipe in a case name does not split the cell
    # Sections in a fixed order; an area without rows says so.
    heads = [line for line in lines if line.startswith("## ")]
    assert heads == ["## Faults injected", "## Bad input", "## Security", "## Fuzz",
                     "## Failing tests", "## Skipped tests"]
    assert text.count("_No test recorded a row in this area in this run._") == 2
    # A failing test that recorded nothing is still listed; so is a skipped one.
    assert "- `tests/test_lifecycle.py::test_never_recorded`: error" in lines
    assert f"- `{CHAOS}[notify]`: failed: 1 line \\| lost" in lines
    assert "- `tests/test_lifecycle.py::test_root`: needs root" in lines
    assert "rows: 2; rows with a loss: 1; failing tests: 2" in text
    assert "partial run" not in text


def test_known_bugs_are_marked_and_listed(report):
    nodeid = "tests/test_exhaustion.py::test_fd[notify]"
    records = [rec("fault", "fd exhaustion", 400, 2, nodeid)]
    outcomes = {nodeid: {"outcome": "xfailed", "reason": "accept is never retried"}}
    text = report.render(records, outcomes, run_info(report, returncode=0))
    assert "`test_exhaustion.py::test_fd` [notify] *xfail: known bug* (notify) |" in text
    assert "## Known bugs (xfail)" in text and "## Failing tests" not in text
    assert f"- `{nodeid}`: accept is never retried" in text.splitlines()


def test_a_loss_needs_a_failing_or_xfail_test_behind_it(report):
    rows = report.sum_rows([rec("fault", "a", 1, 1, "t::failed"),
                            rec("fault", "b", 1, 1, "t::xfailed"),
                            rec("fault", "c", 1, 1, "t::passed"),
                            rec("fault", "d", 1, 0, "t::passed")])
    outcomes = {t: {"outcome": t[3:]} for t in ("t::failed", "t::xfailed", "t::passed")}
    assert [r.case for r in report.unexplained_losses(rows, outcomes)] == ["c"]


def test_render_is_pure_and_names_a_partial_run(report):
    records = [rec("fuzz", "http request parser", 1000, 0, "tests/test_fuzz.py::test_parse")]
    run = run_info(report, returncode=0, only=["test_fuzz"])
    first = report.render(records, {}, run)
    assert first == report.render(records, {}, run)
    assert "**partial run** (`--only test_fuzz`)" in first
    assert "## Failing tests" not in first and "## Skipped tests" not in first


def test_an_unknown_area_gets_its_own_section_last(report):
    text = report.render([rec("exhaustion", "fd limit", 1, 0, "t::x")], {}, run_info(report))
    assert text.index("## Fuzz") < text.index("## exhaustion")


def test_summary_line(report):
    output = "collected 3 items\n\n===== 2 passed, 1 skipped in 3.21s =====\n"
    assert report.summary_line(output) == "2 passed, 1 skipped in 3.21s"
    assert report.summary_line("Interrupted\n") == ""


def test_plugin_writes_outcomes(report, tmp_path, monkeypatch):
    log = tmp_path / "outcomes.jsonl"
    monkeypatch.setenv(report.OUTCOME_ENV, str(log))

    def phase(when: str, outcome: str, longrepr: object = None) -> SimpleNamespace:
        return SimpleNamespace(nodeid="t.py::x", when=when, outcome=outcome,
                               passed=outcome == "passed", failed=outcome == "failed",
                               skipped=outcome == "skipped", longrepr=longrepr)

    report.pytest_runtest_logreport(phase("setup", "passed"))  # not written: nothing to say
    report.pytest_runtest_logreport(phase("call", "passed"))
    report.pytest_runtest_logreport(phase("teardown", "failed"))
    report.pytest_runtest_logreport(
        phase("setup", "skipped", longrepr=("f.py", 1, "Skipped: needs root")))
    failed = phase("call", "failed")
    failed.longreprtext = "    assert x\nE   AssertionError: 1 line lost\nE   assert 1 == 0\n"
    report.pytest_runtest_logreport(failed)
    xfailed = phase("call", "skipped")
    xfailed.wasxfail = "a known bug"
    report.pytest_runtest_logreport(xfailed)
    got = [(e["outcome"], e["reason"]) for e in report.read_json_lines(log)]
    assert got == [("passed", ""), ("error", ""), ("skipped", "needs root"),
                   ("failed", "AssertionError: 1 line lost"), ("xfailed", "a known bug")]


def test_the_proof_test_files_are_found(report):
    names = {p.name for p in report.proof_test_files()}
    assert {"test_chaos.py", "test_bad_input.py", "test_lifecycle.py"} <= names
    assert "test_proof_report.py" not in names
