"""Coverage-guided fuzzing (issue #5): a time-boxed run of every atheris harness.

Each harness in tests/fuzz/ runs as its own process for `SECONDS` seconds,
starting from its committed seeds (tests/fuzz/seeds/<target>/) and writing new
corpus entries to a temporary directory. A run passes when the fuzzer exited
cleanly, reported no crash, and executed well more inputs than it has seeds: a
harness that fuzzes nothing must not look green. The longer campaign and how to
reproduce a crash are in docs/fuzzing.md.

Bugs the fuzzers found are pinned by regression tests below.  A new one not
fixed yet would be a strict xfail naming its diagnosis in `KNOWN_BUGS` (the
harnesses step over those, so a run can go on looking for new ones).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.proof import record

FUZZ = Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ))

from _common import (  # noqa: E402 - lives in tests/fuzz
    KNOWN_BUGS,
    h11_client,
    h11_first,
    h11_server,
    ours_first,
    read_all,
)

from labsquid.accesslog import AccessRecord, LogFormatError, compile_logformat  # noqa: E402
from labsquid.config import ConfigError, parse_text  # noqa: E402
from labsquid.config._files import MemoryFiles  # noqa: E402
from labsquid.http import RequestReader, ResponseReader  # noqa: E402

TARGETS = ["http_request", "http_response", "config", "logfile", "accesslog"]
SECONDS = 8  # per target: five targets stay under a minute with start-up
# Inputs a run must execute beyond replaying its seeds: the slowest harness
# (config, ~400/s alone on this 2-core machine, ~150/s next to another fuzzer) does
# over a thousand in SECONDS; replaying the seeds alone falls well short.
MIN_NEW_EXECUTIONS = 200
SEED = os.environ.get("LABSQUID_FUZZ_SEED", "1")  # fixed: CI runs are repeatable


@dataclass
class FuzzRun:
    returncode: int
    executions: int
    coverage: int
    crashed: bool
    output: str


_STAT = re.compile(r"^stat::number_of_executed_units: (\d+)$", re.M)
_DONE = re.compile(r"^#(\d+)\s+DONE\s+cov: (\d+)", re.M)
_COV = re.compile(r"\bcov: (\d+)")
_CRASH = re.compile(r"Uncaught Python exception|ERROR: libFuzzer|==\d+== ERROR|deadly signal")


def parse_output(returncode: int, output: str) -> FuzzRun:
    """What a libFuzzer/atheris run printed: executions, coverage, crash."""
    stat = _STAT.search(output)
    done = _DONE.search(output)
    executions = int(stat.group(1)) if stat else int(done.group(1)) if done else 0
    coverages = [int(c) for c in _COV.findall(output)]
    crashed = bool(_CRASH.search(output))
    return FuzzRun(returncode, executions, max(coverages, default=0), crashed, output)


def run_harness(script: Path, args: list[str], env: dict[str, str] | None = None,
                timeout: float = 120) -> FuzzRun:
    proc = subprocess.run(
        [sys.executable, str(script), "-print_final_stats=1", *args],
        capture_output=True, text=True, errors="replace", timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return parse_output(proc.returncode, proc.stdout + proc.stderr)


def problems(run: FuzzRun, minimum: int) -> list[str]:
    """Why a run does not count as a clean, real fuzzing run ([] if it does)."""
    out = []
    if run.returncode != 0:
        out.append(f"exit status {run.returncode}")
    if run.crashed:
        out.append("the fuzzer reported a crash")
    if run.executions < minimum:
        out.append(f"only {run.executions} inputs executed (need {minimum})")
    if run.coverage <= 0:
        out.append("no coverage reported: the targets are not instrumented")
    return out


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_time_boxed(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    seeds = FUZZ / "seeds" / target
    n_seeds = sum(1 for p in seeds.iterdir() if p.is_file())
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    known_log = tmp_path / "known.log"
    run = run_harness(
        FUZZ / f"fuzz_{target}.py",
        [f"-max_total_time={SECONDS}", f"-seed={SEED}", "-timeout=10", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus), str(seeds)],
        env={"LABSQUID_FUZZ_KNOWN_LOG": str(known_log)},
        timeout=SECONDS + 90,
    )
    known_hits = len(known_log.read_text().splitlines()) if known_log.exists() else 0
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-",
                                                                         "oom-", "leak-"))]
    found = problems(run, n_seeds + MIN_NEW_EXECUTIONS)
    record(area="fuzz", case=target, tried=run.executions,
           lost=len(crashes) or int(run.crashed), unit="crashes",
           detail=f"atheris {SECONDS}s from {n_seeds} seeds: cov {run.coverage}, "
                  f"{known_hits} hits of known bugs; "
                  + ("; ".join(found) if found else "clean"))
    assert not found, f"{target}: {found}; artifacts {crashes}\n{_tail(run.output)}"


# -- the checker itself can fail --------------------------------------------------------

CANARY = """\
import sys
import atheris

def TestOneInput(data: bytes) -> None:
    if data.startswith(b"boom"):
        raise RuntimeError("canary")

atheris.Setup(sys.argv, TestOneInput)
atheris.Fuzz()
"""


@pytest.mark.slow
def test_checker_flags_a_crash_and_a_run_that_executes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    script = tmp_path / "canary.py"
    script.write_text(CANARY)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "ok").write_bytes(b"fine")
    (seeds / "bad").write_bytes(b"boom")
    crashed = run_harness(script, [f"-artifact_prefix={tmp_path}/", str(seeds)])
    assert crashed.crashed and crashed.returncode != 0
    assert problems(crashed, 0)
    (seeds / "bad").unlink()
    idle = run_harness(script, ["-runs=0", str(seeds)])
    assert idle.returncode == 0 and not idle.crashed
    assert idle.executions <= 2
    # The canary is not instrumented either: that is flagged as well.
    assert problems(idle, 1 + MIN_NEW_EXECUTIONS) == [
        f"only {idle.executions} inputs executed (need {1 + MIN_NEW_EXECUTIONS})",
        "no coverage reported: the targets are not instrumented",
    ]


# -- regressions: bugs the fuzzers found -----------------------------------------------
# Each was a strict xfail carrying its diagnosis until its fix landed; the
# minimised input that found it is tests/fuzz/seeds/<target>/regress-*. A new
# finding starts the same way: a strict xfail whose reason is the diagnosis,
# plus its name in KNOWN_BUGS (tests/fuzz/_common.py), both removed with the fix.

LONG_LINE = b"GET / HTTP/9\r\nX: " + b"a" * 70000 + b"\r\n\r\n"


@pytest.mark.parametrize(
    "data, cut",
    [
        # was: whole, one garbage request line -> 400 ERR_PROTOCOL_UNKNOWN; cut
        # after the LF, the early bare-LF check -> 400 ERR_INVALID_REQ.
        (b"GET /\n\r\n\r\n", 6),
        # was: whole, 431 ERR_TOO_BIG (size checked before the start line); cut
        # after the start line, its bad version was seen first -> 400.
        (LONG_LINE, 14),
    ],
    ids=["bare-lf", "too-big-vs-bad-version"],
)
def test_request_error_does_not_depend_on_segmentation(data: bytes, cut: int) -> None:
    """http-split-error-class: a refused head got the error of whichever check
    fired first, and how the bytes were segmented decided which (early checks on
    an incomplete head against the whole-head path)."""
    whole = read_all(RequestReader, [data])
    assert whole[-1][0] == "error", whole
    assert read_all(RequestReader, [data[:cut], data[cut:]]) == whole


@pytest.mark.parametrize(
    "data, cut",
    [
        # was: whole, 400 ERR_INVALID_REQ (bare LF); with the CRLF after the LF in
        # the first read: the start line is parsed first, 400 ERR_PROTOCOL_UNKNOWN.
        (b"GET /\n\r\n\r\n", 8),
        # was: whole (then EOF), start line first, ERR_PROTOCOL_UNKNOWN; the LF
        # alone first: ERR_INVALID_REQ.
        (b" \n\r\n", 2),
        # was: whole, the bad target byte, 400 ERR_INVALID_URL; over 64 KiB of
        # start line without its end yet: 414 ERR_TOO_BIG.
        (b"GET /" + b"a" * 70000 + b"\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 65540),
    ],
    ids=["lf-then-crlf", "lf-alone-first", "long-line-bad-target"],
)
def test_request_error_class_does_not_depend_on_segmentation_either(
        data: bytes, cut: int) -> None:
    # The rest of what the fuzzers found there: one order of checks on both paths
    # (_Reader._check_start_line) fixed these too.
    whole = read_all(RequestReader, [data])
    if whole[-1][0] != "error":  # not an AssertionError: a real failure, not the xfail
        pytest.fail(f"expected a refusal, got {whole!r}")
    assert read_all(RequestReader, [data[:cut], data[cut:]]) == whole


@pytest.mark.parametrize("reader", [RequestReader, ResponseReader])
def test_trailer_size_limit_does_not_depend_on_segmentation(
    reader: Callable[[], RequestReader | ResponseReader],
) -> None:
    """http-trailer-size-limit: max_header_size bounded a trailer section only
    while it was incomplete; one arriving whole in one read was taken at any size."""
    head = (b"POST / HTTP/1.1\r\nHost: a\r\n" if reader is RequestReader
            else b"HTTP/1.1 200 OK\r\n")
    # One 70 kB trailer field: over the 64 KiB max_header_size that bounds trailers too.
    data = (head + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"a" * 70000
            + b"\r\n\r\n")
    whole = read_all(reader, [data])
    assert whole[-1][0] == "error" and whole[-1][2] == "ERR_TOO_BIG", whole
    assert read_all(reader, [data[:-10], data[-10:]]) == whole


@pytest.mark.parametrize(
    "trailer, reader, h11_conn",
    [
        (b"Transfer-Encoding:", RequestReader, h11_server),
        (b"Transfer-Encoding: gzip", RequestReader, h11_server),
        (b"Content-Length: x", ResponseReader, lambda: h11_client(b"GET")),
    ],
    ids=["request-te-empty", "request-te-gzip", "response-cl-garbage"],
)
def test_chunked_trailers_we_accept_h11_accepts(
    trailer: bytes, reader: Callable[[], RequestReader | ResponseReader],
    h11_conn: Callable[[], object],
) -> None:
    """http-trailer-framing-fields: framing fields with any value were taken in a
    chunked trailer section, where h11 validates (and refuses) them."""
    head = (b"POST / HTTP/1.1\r\nHost: a\r\n" if reader is RequestReader
            else b"HTTP/1.1 200 OK\r\n")
    data = head + b"Transfer-Encoding: chunked\r\n\r\n0\r\n" + trailer + b"\r\n\r\n"
    mine = ours_first(reader(), data)
    if mine is not None:  # refusing such trailers is the fix; accepting needs h11's reading
        summary, reason, _ = h11_first(h11_conn(), data)
        assert summary == mine, f"h11 refuses: {reason}"


@pytest.mark.parametrize(
    "text",
    ['"\\n"\n', 'acl x dstdomain "\\n"\n'],
    ids=["quoted-directive", "acl-value-file"],
)
def test_config_problem_prints_on_one_line(text: str) -> None:
    """config-multiline-message: messages quoted values raw, and a quoted token
    can hold a newline ("\\n" escape), so one problem printed as two lines."""
    with pytest.raises(ConfigError) as err:
        parse_text(text, "fuzz.conf", files=MemoryFiles({}))
    shown = [str(problem) for problem in err.value.problems]
    assert shown and all("\n" not in line for line in shown), shown
    assert all(line.startswith("fuzz.conf line 1: ") for line in shown), shown


def test_logformat_literal_text_never_renders_a_lone_surrogate() -> None:
    """accesslog-surrogate-in-format: a definition's literal text could hold a
    lone surrogate (a non-UTF-8 byte of squid.conf, read with surrogateescape)
    and every rendered line repeated it."""
    definition = "\udcff %ts"
    try:
        line = compile_logformat(definition).render(
            AccessRecord(start_time=0, duration_ms=0, client_addr="a", client_port=1))
    except LogFormatError:
        return  # refusing the definition is a fix
    assert not re.search("[\ud800-\udfff]", line), repr(line)


def test_every_known_bug_has_a_regression_test() -> None:
    # A name in KNOWN_BUGS silences the harnesses; each must stay pinned by a
    # strict xfail here that names it.
    tests = Path(__file__).read_text()
    for bug in KNOWN_BUGS:
        assert tests.count(f'KNOWN_BUGS["{bug}"]') == 1, bug
