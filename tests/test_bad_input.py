"""Bad input, end to end: the corpus in tests/corpus/requests/ against a real labsquid.

Each corpus case is sent as raw bytes (in one write, or in the pieces its
``{split}`` lines make) to one labsquid started for the whole module; its
origin is the strict origin (``support/strict_origin.py``), which re-parses
whatever the proxy forwards with h11. For every case:

* the proxy answers, within a deadline, exactly the responses the corpus
  expects, each a well-formed HTTP/1.1 response (read with h11 too): squid's
  error page with ``X-Squid-Error`` and ``Connection: close`` then EOF for a
  rejection, the origin's own reply (``X-Strict-Origin``) for a 200;
* what reached the origin is exactly the requests the corpus names — same
  method, target and body in h11's reading, one Host, the right authority —
  and nothing else: no h11 error, no message cut short, no extra request;
* the proxy is still alive afterwards (and a normal request goes through
  every ``HEALTH_EVERY`` cases).

After all cases: every response has its access.log line (tag, status, size),
no access.log line holds a control character, the origin saw nothing beyond
what was counted, and no process of the tree died, was replaced or spins.

The corpus format is described in tests/corpus/README.md.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import psutil
import pytest

from support import proof
from support.origin import module_labsquid, parse_squid_line
from support.service import wait_for
from support.strict_origin import StrictOrigin

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "corpus" / "requests"
EXTRA = "request_body_max_size 64 KB\n"
HEAD_LIMIT = 64 * 1024  # request_header_max_size: squid's default, which EXTRA keeps
DEADLINE = 3.0  # seconds for the proxy to answer a case (and to close after an error)
SPLIT_PAUSE = 0.1
HEALTH_EVERY = 10

# Cases where labsquid is wrong today: the assertion stays, the case is a strict
# xfail, so it turns into a failure (to remove from here) once fixed.
KNOWN_BUGS: dict[str, str] = {}


# -- the corpus ----------------------------------------------------------------

@dataclass
class Expect:
    statuses: frozenset[int]
    codes: frozenset[str] | None  # X-Squid-Error names allowed; None for a 200

    @property
    def ok(self) -> bool:
        return self.statuses == {200}


@dataclass
class Upstream:
    method: str
    target: str
    body: str
    headers: list[str] = field(default_factory=list)  # "Name: value" templates


@dataclass
class Case:
    name: str
    source: str
    expects: list[Expect]
    upstream: list[Upstream]
    log: str | None  # "TAG [METHOD]" of the rejection's access.log line, if not the default
    lines: list[str]  # the data lines, unrendered

    def segments(self, port: int) -> list[bytes]:
        out = [b""]
        for line in self.lines:
            if line == "{split}":
                out.append(b"")
            else:
                out[-1] += render(line, port)
        return [s for s in out if s]

    def log_entry(self, status: int, method: str) -> tuple[str, str]:
        """(tag, method) of the access.log line for a rejection with ``status``.

        By default a 403 is TCP_DENIED and anything else failed on the head:
        NONE_NONE, with the method squid 5.7 reads in its request line
        (``method``, from ``_parsed_method``: the token the line starts with,
        NONE when there is none; checked against squid here).
        Otherwise the request's own method is logged unless ``log:`` names one.
        """
        if not self.log:
            return ("TCP_DENIED", method) if status == 403 else ("NONE_NONE", method)
        tag, _, logged = self.log.partition(" ")
        return tag, logged or method


_REPEAT = re.compile(r"\{repeat (\d+) ((?:[^\\{}]|\\.)*)\}")
_SIMPLE_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\",
                   "{": b"{", "}": b"}"}


def unescape(text: str) -> bytes:
    """Corpus escapes -> bytes; other characters stand for their UTF-8 bytes."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1: i + 2]
            if nxt in _SIMPLE_ESCAPES:
                out += _SIMPLE_ESCAPES[nxt]
                i += 2
                continue
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2: i + 4]):
                out.append(int(text[i + 2: i + 4], 16))
                i += 4
                continue
            raise ValueError(f"unknown escape in {text!r} at {i}")
        if ch in "{}":
            raise ValueError(f"unescaped brace (not a macro) in {text!r}")
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)


def render(text: str, port: int) -> bytes:
    text = text.replace("{ORIGIN}", f"127.0.0.1:{port}").replace("{PORT}", str(port))
    out = bytearray()
    pos = 0
    for m in _REPEAT.finditer(text):
        out += unescape(text[pos: m.start()])
        out += unescape(m.group(2)) * int(m.group(1))
        pos = m.end()
    out += unescape(text[pos:])
    return bytes(out)


def _parse_expect(value: str, where: str) -> Expect:
    parts = value.split()
    statuses = frozenset(int(s) for s in parts[0].split("|"))
    if statuses == {200}:
        if len(parts) != 1:
            raise ValueError(f"{where}: a 200 names no error code")
        return Expect(statuses, None)
    if len(parts) != 2 or 200 in statuses:
        raise ValueError(f"{where}: expected 'STATUS ERR_CODE', got {value!r}")
    return Expect(statuses, frozenset(parts[1].split("|")))


def _parse_upstream(value: str, where: str) -> Upstream:
    m = re.fullmatch(r'(\S+) ((?:\{[^}]*\}|\S)+)(?: "((?:[^"\\]|\\.)*)")?', value)
    if m is None:
        raise ValueError(f"{where}: expected 'METHOD TARGET [\"BODY\"]', got {value!r}")
    return Upstream(m.group(1), m.group(2), m.group(3) or "")


def load_corpus(folder: Path = CORPUS) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(folder.glob("*.txt")):
        current: Case | None = None
        in_data = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.name}:{number}"
            if line.startswith("=== "):
                current = Case(line[4:].strip(), path.name, [], [], None, [])
                cases.append(current)
                in_data = False
                continue
            if current is None:
                if line and not line.startswith("#"):
                    raise ValueError(f"{where}: text outside a case")
                continue
            if in_data:
                if line != line.rstrip():
                    raise ValueError(f"{where}: trailing whitespace (write \\x20 or \\t)")
                if line:
                    current.lines.append(line)
                continue
            if not line or line.startswith("#"):
                continue
            if line == "---":
                in_data = True
                continue
            key, _, value = line.partition(": ")
            if key == "expect":
                current.expects.append(_parse_expect(value.strip(), where))
            elif key == "upstream":
                current.upstream.append(_parse_upstream(value.strip(), where))
            elif key == "upstream-header":
                if not current.upstream:
                    raise ValueError(f"{where}: upstream-header before any upstream")
                current.upstream[-1].headers.append(value)
            elif key == "log":
                current.log = value.strip()
            elif line in ("upstream-header:",):
                raise ValueError(f"{where}: empty upstream-header")
            else:
                raise ValueError(f"{where}: unknown line {line!r}")
    names = Counter(c.name for c in cases)
    dupes = [n for n, k in names.items() if k > 1]
    if dupes:
        raise ValueError(f"duplicate case names: {dupes}")
    for c in cases:
        if not c.expects or not c.lines:
            raise ValueError(f"{c.source}: case {c.name} needs expect lines and data")
        if sum(e.ok for e in c.expects) != len(c.upstream):
            raise ValueError(f"{c.source}: case {c.name}: one upstream line per 200")
        if any(not e.ok for e in c.expects[:-1]):
            raise ValueError(f"{c.source}: case {c.name}: only the last response may be "
                             "an error (the proxy closes after one)")
        c.segments(1)  # every line must render
    return cases


CASES = load_corpus()


# The proof report's classes of bad input: (corpus file, case-name pattern, class).
# The first match wins; a case no rule names gets a row of its own file's.
INPUT_CLASSES: list[tuple[str, str, str]] = [
    ("smuggling.txt", r"cl-te-both|te-cl-both|te-identity-with-cl",
     "smuggling CL.TE / TE.CL (both framings)"),
    ("smuggling.txt", r"te-.*", "smuggling TE.TE (Transfer-Encoding variants)"),
    ("smuggling.txt", r"cl-(?!shorter-than-sent|named-in-connection).*",
     "duplicate, signed, malformed Content-Length"),
    ("smuggling.txt", r".*", "body framing and pipelining"),
    ("chunked.txt", r"chunk-size-.*|chunk-empty-size-line", "chunk-size overflow, malformed"),
    ("chunked.txt", r"chunk-ext-.*", "chunk extensions"),
    ("chunked.txt", r".*", "chunk data, last chunk, trailers"),
    ("head.txt", r"obs-fold-.*|first-field-line-indented", "obs-fold (folded field lines)"),
    ("head.txt", r"bare-(cr|lf)-.*", "bare CR, bare LF"),
    ("head.txt", r"(nul|escape|del|form-feed)-.*", "NUL and control bytes"),
    ("head.txt", r"space-in-field-name|space-before-colon-.*|tab-before-colon|empty-field-.*|"
                 r"field-line-without-colon|tab-inside-field-value",
     "field syntax: spaces in names, empty names, no colon"),
    ("head.txt", r"non-ascii-.*", "non-ASCII bytes"),
    ("head.txt", r"host-.*|http10-without-host", "Host missing, duplicated, conflicting"),
    ("head.txt", r"leading-empty-lines|whitespace-before-method|two-spaces-after-method|"
                 r"space-after-version|space-in-target|tab-in-target", "request-line whitespace"),
    ("head.txt", r".*", "body framing and pipelining"),
    ("request_line.txt", r"method-.*", "invalid methods"),
    ("request_line.txt", r"version-.*", "invalid versions"),
    ("request_line.txt", r".*", "absurd lengths (URI, head, field count)"),
    ("connect.txt", r".*", "CONNECT abuse"),
    ("uri.txt", r"userinfo-.*|fragment-before-at|query-before-at",
     "URI userinfo, authority confusion"),
    ("uri.txt", r"port-.*", "URI port tricks"),
    ("uri.txt", r"host-.*|percent-encoded-host", "URI host tricks (numeric, encoded, IPv6)"),
    ("uri.txt", r".*", "URI forms and schemes"),
]


def input_class(case: Case) -> str:
    for source, pattern, name in INPUT_CLASSES:
        if case.source == source and re.fullmatch(pattern, case.name):
            return name
    return f"other ({case.source})"


def _marks(case: Case) -> list:
    reason = KNOWN_BUGS.get(case.name)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


# -- talking to the proxy --------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    size: int  # bytes on the wire, head and body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower().encode():
                return v.decode("latin-1")
        return None


@dataclass
class Outcome:
    replies: list[Reply] = field(default_factory=list)
    problem: str | None = None  # timeout, EOF, unparseable reply
    closed: bool | None = None  # after an error reply: did the proxy close?
    after_close: bytes = b""  # anything the proxy sent after the last expected reply
    send_error: str | None = None


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def exchange(port: int, segments: list[bytes], expected: int) -> Outcome:
    """Send the segments, read up to ``expected`` replies, then watch for the close."""
    out = Outcome()
    deadline = time.monotonic() + DEADLINE
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        for i, segment in enumerate(segments):
            if i:
                time.sleep(SPLIT_PAUSE)
            try:
                sock.sendall(segment)
            except OSError as exc:  # the proxy may close on an error before all is sent
                out.send_error = f"{type(exc).__name__}: {exc}"
                break
        pending = b""
        try:
            for _ in range(expected):
                reply, pending = _read_reply(sock, pending, deadline)
                out.replies.append(reply)
                if reply.status != 200:
                    break
        except TimeoutError:
            out.problem = f"no complete reply within {DEADLINE}s"
            return out
        except EOFError as exc:
            out.problem = str(exc)
            return out
        except h11.RemoteProtocolError as exc:
            out.problem = f"the proxy's reply is not valid HTTP/1.1 to h11: {exc}"
            return out
        if out.replies and out.replies[-1].status != 200:
            extra = bytearray(pending)
            close_deadline = time.monotonic() + DEADLINE
            try:
                while True:
                    data = _recv(sock, close_deadline)
                    if not data:
                        out.closed = True
                        break
                    extra += data
            except TimeoutError:
                out.closed = False
            out.after_close = bytes(extra)
    return out


def _read_reply(sock: socket.socket, pending: bytes, deadline: float) -> tuple[Reply, bytes]:
    """One response, parsed by h11 as a client that sent a GET would."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "proxy.test")]))
    conn.send(h11.EndOfMessage())
    received = len(pending)
    if pending:  # (receive_data(b"") would mean EOF)
        conn.receive_data(pending)
    status, headers, body = 0, [], bytearray()
    eof = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            if not eof:
                raise
            raise EOFError("the proxy closed the connection " + (
                "mid-reply" if status else "without a reply")) from None
        if event is h11.NEED_DATA:
            data = _recv(sock, deadline)
            eof = not data
            received += len(data)
            conn.receive_data(data)
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = [(bytes(k), bytes(v)) for k, v in event.headers.raw_items()]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            leftover = conn.trailing_data[0]
            return Reply(status, headers, bytes(body), received - len(leftover)), leftover
        elif isinstance(event, h11.ConnectionClosed):
            raise EOFError("the proxy closed the connection mid-reply")


# -- module fixtures and the ledger ------------------------------------------------

@dataclass
class Ledger:
    """What the module sent and got, for the checks that run after all cases."""

    log_entries: list[tuple[str, int, int, str]] = field(default_factory=list)
    upstream_expected: int = 0
    cases_run: int = 0
    names: set[str] = field(default_factory=set)  # the cases that ran
    abnormal: int = 0  # cases without a complete, expected exchange
    pids: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def origin():
    with StrictOrigin() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, origin):
    yield from module_labsquid(tmp_path_factory, dispatch="notify", pool_size=2, extra=EXTRA)


@pytest.fixture(scope="module")
def ledger(proxy):
    led = Ledger()
    led.pids = _tree_pids(proxy)
    return led


def _tree_pids(proxy) -> dict[str, int]:
    kid = proxy.kid()
    assert kid is not None
    pids = {"master": proxy.master.pid, "kid": kid.pid}
    for n, worker in enumerate(sorted(proxy.workers(kid), key=lambda p: p.pid)):
        pids[f"worker{n}"] = worker.pid
    return pids


def _first_method(data: bytes) -> str:
    return data.lstrip(b"\r\n").split(b" ", 1)[0].decode("latin-1")


# A method token as squid reads it (at most 32 characters), after the empty
# lines a request may start with.  Written out here on its own.
_METHOD = re.compile(rb"(?:\r\n)*([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32})")


def _parsed_method(data: bytes) -> str:
    """The method a refused head's log line names, as squid 5.7's: the token
    its request line starts with, NONE when it starts with none."""
    m = _METHOD.match(data)
    return m.group(1).decode("latin-1") if m else "NONE"


def _assert_alive(proxy) -> None:
    assert proxy.proc.poll() is None, "labsquid's master exited:\n" + proxy.stderr_text()[-2000:]
    assert proxy.tree_complete(), "labsquid's process tree lost a member"


def _normal_request(proxy, origin, ledger: Ledger, tag: str) -> None:
    target = f"http://{origin.authority}/health/{tag}"
    request = f"GET {target} HTTP/1.1\r\nHost: {origin.authority}\r\n\r\n".encode()
    out = exchange(proxy.port, [request], 1)
    assert out.problem is None and out.replies and out.replies[0].status == 200, \
        f"a normal request after {tag} failed: {out.problem or out.replies[0].status}"
    assert out.replies[0].header("X-Strict-Origin") is not None
    ledger.log_entries.append(("TCP_MISS", 200, out.replies[0].size, "GET"))
    ledger.upstream_expected += 1


# -- one test per corpus case -------------------------------------------------------

CASE_CHECKS = ("status and error page as the corpus says, closed after an error; exactly "
               "the named requests reached the origin, whole (h11); proxy alive")


@contextmanager
def _proof_row(case: Case) -> Iterator[None]:
    """Record the case in its class's row of the proof report: lost if any check in the
    block fails, recorded before the failure propagates."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, pytest.skip.Exception):
            proof.record("bad-input", input_class(case), 1, 1, unit="cases",
                         detail=CASE_CHECKS)
        raise
    proof.record("bad-input", input_class(case), 1, 0, unit="cases", detail=CASE_CHECKS)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=_marks(c)) for c in CASES])
def test_case(case: Case, proxy, origin, ledger: Ledger) -> None:
    segments = case.segments(origin.port)
    requests_before, errors_before, truncated_before = origin.snapshot()
    out = exchange(proxy.port, segments, len(case.expects))

    # Book-keeping first, so that the module-wide checks see every reply.
    ledger.cases_run += 1
    ledger.names.add(case.name)
    complete = out.problem is None and len(out.replies) == len(case.expects)
    if not complete:
        ledger.abnormal += 1
    method = _first_method(segments[0])
    for n, reply in enumerate(out.replies):
        if reply.status == 200:
            # a pipelined reply's method is the one its upstream line names
            ok = sum(e.ok for e in case.expects[:n])
            logged = case.upstream[ok].method if ok < len(case.upstream) else method
            ledger.log_entries.append(("TCP_MISS", 200, reply.size, logged))
            ledger.upstream_expected += 1
        else:
            refused = method if case.log else _parsed_method(segments[0])
            tag, logged_method = case.log_entry(reply.status, refused)
            ledger.log_entries.append((tag, reply.status, reply.size, logged_method))

    # The verdict of every check below is the case's row in the proof report.
    with _proof_row(case):
        time.sleep(0.01)  # let a (wrongly) forwarded request land before counting
        requests_after, errors_after, truncated_after = origin.snapshot()
        _assert_alive(proxy)
        if ledger.cases_run % HEALTH_EVERY == 0:
            _normal_request(proxy, origin, ledger, case.name)

        # The replies.
        assert out.problem is None, (
            f"{out.problem} (got {[r.status for r in out.replies]}; "
            f"send: {out.send_error or 'ok'})")
        got = [r.status for r in out.replies]
        assert len(out.replies) == len(case.expects), f"replies {got}, expected {case.expects}"
        accepted = 0
        for reply, expect in zip(out.replies, case.expects, strict=True):
            assert reply.status in expect.statuses, (
                f"status {reply.status}, expected {sorted(expect.statuses)}: "
                f"{reply.body[:300]!r}")
            if expect.ok:
                _check_forwarded(reply, case.upstream[accepted], origin, requests_before)
                accepted += 1
            else:
                _check_error_page(reply, expect)
        if not case.expects[-1].ok:
            assert out.closed, "the proxy kept the connection open after an error reply"
            assert out.after_close == b"", \
                f"bytes after the error reply: {out.after_close[:200]!r}"

        # Exactly the expected requests reached the origin, each a clean message.
        assert origin.errors[errors_before:errors_after] == [], \
            "h11 refused what the proxy forwarded"
        assert origin.truncated[truncated_before:truncated_after] == [], \
            "the proxy cut a forwarded request short"
        arrived = origin.requests[requests_before:requests_after]
        assert len(arrived) == accepted, \
            f"{len(arrived)} request(s) reached the origin, {accepted} expected: " \
            f"{[(r.method, r.target[:80]) for r in arrived]}"


def _check_error_page(reply: Reply, expect: Expect) -> None:
    squid_error = reply.header("X-Squid-Error")
    assert squid_error is not None, f"no X-Squid-Error on a {reply.status}"
    code = squid_error.split(" ")[0]
    assert expect.codes is not None and code in expect.codes, \
        f"X-Squid-Error {squid_error!r}, expected one of {sorted(expect.codes or ())}"
    assert (reply.header("Content-Type") or "").startswith("text/html")
    assert code.encode() in reply.body, "the error page does not name its error"
    assert (reply.header("Connection") or "").lower() == "close"
    assert reply.header("X-Strict-Origin") is None


def _check_forwarded(reply: Reply, want: Upstream, origin: StrictOrigin, since: int) -> None:
    index = reply.header("X-Strict-Origin")
    assert index is not None, "a 200 that did not come from the origin"
    got = origin.requests[int(index)]
    assert got.index >= since, "the reply belongs to an earlier request"
    port = origin.port
    assert got.complete
    assert (got.method, got.target) == (render(want.method, port), render(want.target, port))
    assert got.body == render(want.body, port)
    assert got.header_values(b"Host") == [origin.authority.encode()], "Host as forwarded"
    assert got.http_version == b"1.1"
    for spec in want.headers:
        raw = render(spec, port)
        name, _, value = raw.partition(b":")
        values = got.header_values(name)
        assert value.strip(b" \t") in values, f"{name!r} forwarded as {values!r}"
    assert reply.body == b"strict origin request #%d\n" % got.index


# -- after all cases -------------------------------------------------------------

def _require_cases(ledger: Ledger) -> None:
    if ledger.cases_run == 0:
        pytest.skip("no corpus case ran in this session")


def test_proxy_serves_after_the_corpus(proxy, origin, ledger: Ledger) -> None:
    _require_cases(ledger)
    _assert_alive(proxy)
    _normal_request(proxy, origin, ledger, "the-end")


TREE_CASE = "whole corpus: the process tree"
TREE_CHECKS = "no process of the tree died or was replaced; none burns CPU when idle"


def test_no_process_died_or_spins(proxy, ledger: Ledger) -> None:
    _require_cases(ledger)
    now = _tree_pids(proxy)
    replaced = sum(now.get(name) != pid for name, pid in ledger.pids.items())
    if replaced:  # the CPU check below cannot run on a dead process: record now
        proof.record("bad-input", TREE_CASE, ledger.cases_run, replaced, unit="processes",
                     detail=TREE_CHECKS)
    assert now == ledger.pids, "a process of the tree was replaced"
    procs = [psutil.Process(pid) for pid in ledger.pids.values()]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(1.0)
    after = [sum(p.cpu_times()[:2]) for p in procs]
    busy = {name: round(b - a, 2) for name, a, b in zip(ledger.pids, before, after, strict=True)
            if b - a > 0.3}
    proof.record("bad-input", TREE_CASE, ledger.cases_run, len(busy), unit="processes",
                 detail=TREE_CHECKS)
    assert not busy, f"processes burning CPU while idle (s of CPU in 1s): {busy}"


def test_origin_got_nothing_unexpected(origin, ledger: Ledger) -> None:
    _require_cases(ledger)
    time.sleep(0.2)  # anything forwarded late would land now
    unexpected = (len(origin.errors) + len(origin.truncated)
                  + sum(not r.complete for r in origin.requests)
                  + abs(len(origin.requests) - ledger.upstream_expected))
    proof.record("bad-input", "whole corpus: what reached the origin", ledger.cases_run,
                 unexpected, unit="requests",
                 detail="the origin got exactly the requests counted, none refused by h11 "
                        "or cut short")
    assert origin.errors == [], [(e.error, e.received[:300]) for e in origin.errors]
    assert origin.truncated == [], [(e.error, e.received[:300]) for e in origin.truncated]
    assert all(r.complete for r in origin.requests)
    assert len(origin.requests) == ledger.upstream_expected, \
        [(r.method, r.target[:80]) for r in origin.requests]


def _log_lines(proxy) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(proxy.access_log.parent.glob(proxy.access_log.name + "*")):
        # split on LF only: a stray CR inside a line must stay visible
        lines += [line for line in path.read_bytes().split(b"\n") if line]
    return lines


def test_every_reply_has_its_access_log_line(proxy, ledger: Ledger) -> None:
    _require_cases(ledger)
    wanted = Counter(ledger.log_entries)
    wait_for(lambda: len(_log_lines(proxy)) >= len(ledger.log_entries), timeout=10,
             what=f"{len(ledger.log_entries)} access.log lines")
    seen: Counter = Counter()
    odd_none: list[dict[str, str]] = []  # method NONE but not one of squid's error: URLs
    for raw in _log_lines(proxy):
        line = parse_squid_line(raw.decode("utf-8", "replace"))
        seen[(line["tag"], int(line["status"]), int(line["size"]), line["method"])] += 1
        if line["method"] == "NONE" and (line["tag"] != "NONE_NONE" or line["url"] not in (
                "error:invalid-request", "error:request-too-large")):
            odd_none.append(line)
    missing = wanted - seen
    extra = seen - wanted
    proof.record("bad-input", "whole corpus: an access.log line per reply",
                 sum(wanted.values()),
                 sum(missing.values()) + max(0, sum(extra.values()) - ledger.abnormal)
                 + len(odd_none), unit="lines",
                 detail="every reply has its line (tag, status, size, method); no other line")
    assert not odd_none, odd_none
    assert not missing, f"replies without their access.log line: {dict(missing)}"
    # An exchange that went wrong may log an extra (aborted) line; nothing else may.
    assert sum(extra.values()) <= ledger.abnormal, f"unexpected access.log lines: {dict(extra)}"


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def test_access_log_has_no_control_characters(proxy, ledger: Ledger) -> None:
    _require_cases(ledger)
    lines = _log_lines(proxy)
    bad = [line for line in lines if _CONTROL.search(line)]
    proof.record("security", "log forging: the corpus's control bytes in access.log",
                 len(lines), len(bad), unit="lines",
                 detail="no access.log line written for the corpus holds a control byte")
    assert not bad, bad[:5]


def test_access_log_hides_userinfo_credentials(proxy, ledger: Ledger) -> None:
    if "userinfo-stripped" not in ledger.names:
        pytest.skip("the userinfo-stripped case did not run")
    lines = _log_lines(proxy)
    leaked = [line for line in lines if b"user:secret@" in line]
    proof.record("security", "credentials in a URI's userinfo", len(lines), len(leaked),
                 unit="lines", detail="no access.log line shows the userinfo's password")
    assert not leaked, leaked
