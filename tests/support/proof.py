"""Records for the proof report (issue #5): what each fault or bad-input test tried
and what was lost.

A test calls ``record(...)`` once per row of the report, *before* it asserts, so a
failing run still shows up in the table with its losses.  When the environment
variable ``LABSQUID_PROOF_LOG`` names a file, each record is appended to it as
one JSON line; otherwise ``record`` does nothing, so ordinary test runs are
unaffected.  ``docs/make_proof_report.py`` sets the variable, runs the proof
tests and turns the lines into ``docs/proof.md``.

Vocabulary, so rows from different tests add up:
- ``area``: ``fault`` (something killed, signalled or exhausted), ``bad-input``
  (a class of hostile or malformed input), ``security``, ``fuzz``.
- ``case``: short name of the fault or input class, e.g. ``kill -9 pool child``.
- ``tried``: how many times it was done (faults injected, inputs sent).
- ``lost``: what went missing or wrong because of it, in ``unit``: requests that
  failed although they were not in flight in a killed process, access.log lines
  missing or duplicated, inputs with the wrong outcome.  The goal is 0.
- ``detail``: one short sentence of what was checked, for the report's last column.
"""

from __future__ import annotations

import json
import os
import time

ENV = "LABSQUID_PROOF_LOG"


def record(area: str, case: str, tried: int, lost: int, *, unit: str = "lost",
           detail: str = "", test: str | None = None) -> None:
    """Append one report row (a no-op unless ``LABSQUID_PROOF_LOG`` is set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    row = {
        "area": area,
        "case": case,
        "tried": int(tried),
        "lost": int(lost),
        "unit": unit,
        "detail": detail,
        # pytest names the running test in the environment; keep its node id.
        "test": test or os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
        "time": time.time(),
    }
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(row, sort_keys=True) + "\n")
