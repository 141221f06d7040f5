#!/usr/bin/env python3
"""Regenerate docs/proof.md: what each fault and bad-input test tried and what was lost.

    .venv/bin/python docs/make_proof_report.py                 (as root: some tests need it)
    .venv/bin/python docs/make_proof_report.py --only test_accesslog_escape --out /tmp/p.md

It finds the test files that import the recorder (tests/support/proof.py),
runs them with pytest with ``LABSQUID_PROOF_LOG`` naming a fresh file, sums the
recorded rows that share an (area, case) and writes a table per area.  Nothing
in the table is typed by hand: every number comes from a test that ran.

Each test's outcome is collected by this module itself, loaded into pytest as a
plugin (``-p make_proof_report``), so a row from a failing test is marked as
such, and a test that failed before it could record still shows up.  When
pytest fails the report is written all the same and the script exits non-zero;
so it does when a row lost something although its tests passed (the record
and the test's assertions disagree).  Losses of known bugs (strict xfail)
are shown, and do not fail the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
PROOF_ENV = "LABSQUID_PROOF_LOG"  # tests/support/proof.py reads this one
OUTCOME_ENV = "LABSQUID_PROOF_OUTCOMES"  # where the plugin half writes test outcomes

# A test file takes part if it imports the recorder (whichever way it does).
USES_PROOF = re.compile(
    r"^\s*(from support\.proof import|from support import proof\b|import support\.proof)",
    re.MULTILINE)
NOT_PROOF = {"test_proof_report.py"}  # this script's own tests use the recorder, record nothing

AREAS = {  # the report's sections, in this order; an unknown area gets one after them
    "fault": "Faults injected",
    "bad-input": "Bad input",
    "security": "Security",
    "fuzz": "Fuzz",
}
FAILED = ("failed", "error", "xpassed")  # outcomes that make a test count as failing
_RANK = {"passed": 0, "xfailed": 1, "skipped": 2, "xpassed": 3, "failed": 4, "error": 5}


# -- the pytest plugin half --------------------------------------------------------

def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest's TestReport
    """Append each test phase's outcome (one JSON line) to ``$LABSQUID_PROOF_OUTCOMES``."""
    path = os.environ.get(OUTCOME_ENV)
    if not path or (report.when != "call" and report.passed):
        return
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    elif report.failed and report.when != "call":
        outcome = "error"
    reason = ""
    if hasattr(report, "wasxfail"):
        reason = str(report.wasxfail)
    elif report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        # The first "E   ..." line of the traceback says what went wrong.
        text = str(getattr(report, "longreprtext", "") or "")
        lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
        lines = lines or text.strip().splitlines()[-1:]
        reason = lines[0][:300] if lines else ""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"test": report.nodeid, "outcome": outcome,
                              "reason": reason}) + "\n")


# -- pure parts: summing and rendering -----------------------------------------------

@dataclass
class Row:
    """One line of the report: every record with this (area, case), summed."""

    area: str
    case: str
    tried: int = 0
    lost: int = 0
    units: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)


def sum_rows(records: Iterable[dict]) -> list[Row]:
    """Sum records sharing (area, case), in the order each case first appeared.

    Units, details and tests are kept once each, in order; a case whose records
    disagree on the unit shows every unit rather than hiding the difference.
    """
    rows: dict[tuple[str, str], Row] = {}
    for rec in records:
        key = (rec["area"], rec["case"])
        row = rows.setdefault(key, Row(*key))
        row.tried += int(rec["tried"])
        row.lost += int(rec["lost"])
        for seen, value in ((row.units, rec.get("unit") or "lost"),
                            (row.details, rec.get("detail") or ""),
                            (row.tests, rec.get("test") or "")):
            if value and value not in seen:
                seen.append(value)
    return list(rows.values())


def final_outcomes(lines: Iterable[dict]) -> dict[str, dict]:
    """One outcome per test: the worst of its phases (a teardown error beats a pass)."""
    result: dict[str, dict] = {}
    for entry in lines:
        old = result.get(entry["test"])
        if old is None or _RANK.get(entry["outcome"], 5) > _RANK.get(old["outcome"], 5):
            result[entry["test"]] = entry
    return result


def _split(nodeid: str) -> tuple[str, str, str]:
    """'tests/test_x.py::test_y[a-b]' -> ('test_x.py', 'test_y', 'a-b')."""
    path, _, name = nodeid.partition("::")
    func, _, param = name.partition("[")
    return path.rsplit("/", 1)[-1], func, param.removesuffix("]")


def tests_cell(nodeids: list[str], outcomes: dict[str, dict]) -> str:
    """The tests behind a row, one entry per test function; parameters listed when
    few, counted when many; a failing one marked."""
    groups: dict[tuple[str, str], list[str]] = {}
    for nodeid in nodeids:
        path, func, _param = _split(nodeid)
        groups.setdefault((path, func), []).append(nodeid)
    parts = []
    for (path, func), ids in groups.items():
        params = [_split(n)[2] for n in ids if _split(n)[2]]
        text = f"`{path}::{func}`"
        if len(params) > 4 or len(", ".join(params)) > 40:  # a list too long to read
            text += f" ×{len(params)}"
        elif params:
            text += " [" + ", ".join(params) + "]"
        for outcome, mark in (("failed", " **FAILED**"), ("xfailed", " *xfail: known bug*")):
            hit = [_split(n)[2] for n in ids if _status(outcomes, n) == outcome]
            if hit:
                named = [h for h in hit if h]
                text += mark + (f" ({', '.join(named)})" if named else "")
        parts.append(text)
    return "<br>".join(_cell(p) for p in parts)


def _status(outcomes: dict[str, dict], nodeid: str) -> str:
    """'failed' for a test that failed, errored or passed an xfail; else its outcome."""
    outcome = outcomes.get(nodeid, {}).get("outcome", "")
    return "failed" if outcome in FAILED else outcome


def _cell(text: str) -> str:
    """Table-safe text: no pipe ends a cell early, no newline breaks the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[Row], outcomes: dict[str, dict]) -> list[str]:
    lines = ["| case | tried | lost (unit) | what was checked | test(s) |",
             "|---|--:|---|---|---|"]
    for row in rows:
        lost = f"**{row.lost}**" if row.lost else "0"
        unit = ", ".join(row.units)
        lines.append(f"| {_cell(row.case)} | {row.tried} | {lost} ({_cell(unit)}) | "
                     f"{_cell('; '.join(row.details))} | {tests_cell(row.tests, outcomes)} |")
    return lines


@dataclass
class Run:
    """What the report says about how it was made."""

    commit: str = "unknown"
    date: str = ""
    summary: str = ""  # pytest's last line, e.g. "120 passed, 2 skipped in 300.1s"
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    returncode: int = 0
    only: list[str] = field(default_factory=list)


def render(records: list[dict], outcomes: dict[str, dict], run: Run) -> str:
    """The whole of docs/proof.md, from the records and the tests' outcomes alone."""
    rows = sum_rows(records)
    lossy = [r for r in rows if r.lost]
    failing = {k: v for k, v in outcomes.items() if v["outcome"] in FAILED}
    known = {k: v for k, v in outcomes.items() if v["outcome"] == "xfailed"}
    out = [
        "# Proof: faults injected, bad input sent, what was lost",
        "",
        "<!-- Generated by docs/make_proof_report.py: do not edit by hand. -->",
        "",
        "Each row below is a kind of fault injected into a running labsquid, or a class "
        "of hostile or malformed input sent to it, with how many times it was tried and "
        "what was lost because of it (requests failed that were not in flight in a "
        "killed process, access.log lines missing or duplicated, inputs with the wrong "
        "outcome...). The goal is 0 everywhere. The numbers are recorded by the tests "
        "themselves (`tests/support/proof.py`) as they run, and rows with the same case "
        "are summed over tests and parameters.",
        "",
        "A loss in a row behind a failing test is a regression; in a row behind an xfail "
        "test it is a known bug, named at the end.",
        "",
        "Regenerate with `.venv/bin/python docs/make_proof_report.py` (as root: some tests "
        "need it, and are listed as skipped otherwise).",
        "",
        f"- generated at commit `{run.commit}`, {run.date}",
        f"- pytest: `{run.summary or 'no summary line'}` "
        f"(exit code {run.returncode}, {run.seconds:.0f} s for the whole run)",
        f"- test files: {', '.join(f'`{f}`' for f in run.files) or 'none'}",
        f"- rows: {len(rows)}; rows with a loss: {len(lossy)}; failing tests: {len(failing)}; "
        f"known bugs (xfail): {len(known)}",
    ]
    if run.only:
        out.append(f"- **partial run** (`--only {' '.join(run.only)}`): not the whole proof")
    areas = list(AREAS) + sorted({r.area for r in rows} - set(AREAS))
    for area in areas:
        in_area = [r for r in rows if r.area == area]
        out += ["", f"## {AREAS.get(area, area)}", ""]
        if in_area:
            out += render_table(in_area, outcomes)
        else:
            out.append("_No test recorded a row in this area in this run._")
    if failing:
        out += ["", "## Failing tests", "",
                "A failing test may have recorded its row before failing (then the row "
                "shows its losses) or failed before it could record anything.", ""]
        out += [f"- `{name}`: {entry['outcome']}"
                + (f": {_cell(entry['reason'])}" if entry.get("reason") else "")
                for name, entry in sorted(failing.items())]
    if known:
        out += ["", "## Known bugs (xfail)", "",
                "Tests marked as expected to fail, with the bug each one names; their rows "
                "count what the bug lost.", ""]
        out += [f"- `{name}`: {_cell(entry.get('reason') or 'xfail')}"
                for name, entry in sorted(known.items())]
    skipped = {k: v for k, v in outcomes.items() if v["outcome"] == "skipped"}
    if skipped:
        out += ["", "## Skipped tests", "",
                "Skipped tests recorded nothing; their rows are missing above.", ""]
        out += [f"- `{name}`: {_cell(entry.get('reason') or 'skipped')}"
                for name, entry in sorted(skipped.items())]
    return "\n".join(out) + "\n"


def unexplained_losses(rows: list[Row], outcomes: dict[str, dict]) -> list[Row]:
    """Rows that lost something although every test behind them passed: a record that
    disagrees with its test's verdict (a loss in a failing or xfail test is explained)."""
    return [row for row in rows if row.lost and all(
        _status(outcomes, t) not in ("failed", "xfailed") for t in row.tests)]


def read_json_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def summary_line(output: str) -> str:
    """pytest's closing line, without its '=' frame: '3 passed in 1.2s'."""
    for line in reversed(output.splitlines()):
        m = re.fullmatch(r"=+ (.* in [0-9.]+s.*?) =+", line.strip())
        if m:
            return m.group(1)
    return ""


# -- running it ----------------------------------------------------------------------

def proof_test_files() -> list[Path]:
    """Test files (tests/**/test_*.py) that use the recorder."""
    return sorted(p for p in TESTS.rglob("test_*.py") if p.name not in NOT_PROOF
                  and USES_PROOF.search(p.read_text(encoding="utf-8", errors="replace")))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_pytest(targets: list[str], proof_log: Path, outcome_log: Path) -> tuple[int, str]:
    """Run pytest on ``targets``, echoing its output; (exit code, output)."""
    env = dict(os.environ, **{PROOF_ENV: str(proof_log), OUTCOME_ENV: str(outcome_log)})
    # This file's folder on the path, so that pytest can load it as a plugin.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
            "-p", Path(__file__).stem, *targets]
    print("+", " ".join(argv), flush=True)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        sys.stdout.write(line)
        output.append(line)
    return proc.wait(), "".join(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the proof test files whose path contains PATTERN, "
                             "or this pytest node id (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "proof.md",
                        help="where to write the report (default: docs/proof.md)")
    args = parser.parse_args(argv)

    files = [str(p.relative_to(REPO)) for p in proof_test_files()]
    targets = files
    if args.only:
        targets = [t for pattern in args.only
                   for t in ([pattern] if "::" in pattern else
                             [f for f in files if pattern in f])]
        if not targets:
            parser.error(f"no proof test file matches {args.only}; there are: {files}")
    run = Run(commit=_git("rev-parse", "--short", "HEAD") or "unknown",
              files=sorted({t.split("::")[0] for t in targets}), only=args.only)
    if _git("status", "--porcelain", "--untracked-files=no"):
        run.commit += " + uncommitted changes"
    run.date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    with tempfile.TemporaryDirectory(prefix="labsquid-proof-") as tmp:
        proof_log, outcome_log = Path(tmp) / "proof.jsonl", Path(tmp) / "outcomes.jsonl"
        began = time.monotonic()
        run.returncode, output = run_pytest(targets, proof_log, outcome_log)
        run.seconds = time.monotonic() - began
        records = read_json_lines(proof_log)
        outcomes = final_outcomes(read_json_lines(outcome_log))
    run.summary = summary_line(output)

    args.out.write_text(render(records, outcomes, run), encoding="utf-8")
    rows = sum_rows(records)
    print(f"wrote {args.out}: {len(rows)} rows from {len(records)} records, "
          f"{sum(r.lost for r in rows)} lost; pytest exit {run.returncode}; "
          f"{run.seconds:.0f} s")
    if run.returncode != 0:
        return run.returncode
    unexplained = unexplained_losses(rows, outcomes)
    for row in unexplained:
        print(f"a loss no test failed on: {row.area} / {row.case}: {row.lost} {row.units}",
              file=sys.stderr)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
