"""The cache manager: ``http://HOST:PORT/squid-internal-mgr/ACTION``.

Pages are plain text in squid's layout so squid's own tools (``squidclient
mgr:info``) and eyes trained on them can read them: ``menu`` lists actions
as `` name\\tdescription\\tprotection``, the others print ``Label:\\tvalue``
lines.  Access is decided first by ``http_access`` and the built-in
``manager`` acl, then per action by ``cachemgr_passwd`` as squid 5.7 does
it: the first line naming the action (or ``all``) gives its password,
``none`` opens it, ``disable`` makes it a page that does not exist, and an
action no line names is open.  Figures come from the shared-memory segment,
so any serving process answers for the whole pool without asking the others.
"""

from __future__ import annotations

import base64
import binascii
import resource
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from labsquid import __version__
from labsquid.stats import (
    SERVICE_BIN_FIELDS,
    STATE_NAMES,
    STATE_SERVING,
    kid_row,
    pool_cpu_seconds,
)

if TYPE_CHECKING:
    from labsquid.config import ManagerPassword
    from labsquid.http import Headers
    from labsquid.proxy.client import ClientConnection
    from labsquid.proxy.context import ServeContext


def own_names(ctx: ServeContext, client: ClientConnection) -> set[str]:
    """Hosts that mean "this proxy" in a manager URL."""
    return {ctx.hostname.lower(), socket.gethostname().lower(), "localhost", client.local_ip,
            "127.0.0.1", "::1"}


def _rows(ctx: ServeContext) -> list[dict[str, int]]:
    stats = ctx.all_stats
    return stats.rows() if stats is not None else [ctx.stats.as_dict()]


def _totals(ctx: ServeContext) -> dict[str, int]:
    stats = ctx.all_stats
    return stats.totals() if stats is not None else ctx.stats.as_dict()


def password_for(action: str, entries: Sequence[ManagerPassword]) -> str | None:
    """The password `cachemgr_passwd` gives `action`: the first line that
    names it or ``all``; None when no line does."""
    for entry in entries:
        if action in entry.actions or "all" in entry.actions:
            return entry.password
    return None


def protection(action: str, entries: Sequence[ManagerPassword]) -> str:
    """``public``, ``protected`` or ``disabled``, as squid's menu says it."""
    password = password_for(action, entries)
    if password is None or password == "none":
        return "public"
    return "disabled" if password == "disable" else "protected"


def offered_password(headers: Headers | None, url_password: str | None) -> str | None:
    """The password a request offers: that of an ``Authorization: Basic``
    field holding ``user:password``, else the URL's ``@password``.  A field
    that does not decode to a pair is passed over, as squid passes it."""
    value = headers.first(b"authorization") if headers is not None else None
    if value is not None:
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() == b"basic":
            try:
                pair = base64.b64decode(token.strip(), validate=True)
            except binascii.Error:
                pair = b""
            _user, colon, password = pair.partition(b":")
            if colon:
                return password.decode("latin-1")
    return url_password


def page_menu(ctx: ServeContext) -> str:
    # squid's layout, " %-22s\t%-32s\t%s": squidclient and cachemgr.cgi split on tabs.
    entries = ctx.config.cachemgr_passwd
    lines = [f" {name:<22}\t{desc:<32}\t{protection(name, entries)}"
             for name, (desc, _fn) in ACTIONS.items()]
    return "\n".join(lines) + "\n"


def _kid_row(ctx: ServeContext, rows: list[dict[str, int]]) -> dict[str, int] | None:
    """The kid's row, whichever process answers (none without the segment)."""
    return kid_row(rows) if ctx.all_stats is not None else None


def _started(ctx: ServeContext, rows: list[dict[str, int]]) -> float:
    kid = _kid_row(ctx, rows)
    return kid["started"] if kid else ctx.started


def page_info(ctx: ServeContext) -> str:
    t = _totals(ctx)
    rows = _rows(ctx)
    now = time.time()
    started = _started(ctx, rows)
    uptime = now - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = pool_cpu_seconds(rows)
    serving = sum(r["state"] == STATE_SERVING for r in rows)
    return "".join([
        f"labsquid Object Cache: Version {__version__}\n",
        "Build Info: labsquid (Python)\n",
        "Service Name: labsquid\n",
        f"Start Time:\t{time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(started))}\n",
        f"Current Time:\t{time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(now))}\n",
        "Connection information for labsquid:\n",
        f"\tNumber of clients accessing cache:\t{t['active']}\n",
        f"\tNumber of HTTP requests received:\t{t['requests']}\n",
        f"\tNumber of HTTP errors:\t{t['errors']}\n",
        f"\tAverage HTTP requests per minute since start:\t"
        f"{t['requests'] / max(uptime / 60, 1e-9):.1f}\n",
        *_median_lines(ctx),
        "Resource usage for labsquid:\n",
        f"\tUP Time:\t{uptime:.3f} seconds\n",
        f"\tCPU Time:\t{cpu:.3f} seconds\n",
        f"\tCPU Usage:\t{100 * cpu / max(uptime, 1e-9):.2f}%\n",
        f"\tMaximum Resident Size: {usage.ru_maxrss} KB\n",
        "File descriptor usage for labsquid:\n",
        f"\tMaximum number of file descriptors:   "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}\n",
        f"\tNumber of serving processes:\t{serving}\n",
        f"\tIdle upstream connections (this process):\t{ctx.upstreams.count()}\n",
    ])


def _mean_service(t: dict[str, int]) -> float:
    return t["service_us"] / 1e6 / t["requests"] if t["requests"] else 0.0


# Counters of what labsquid does not do (ICP, cache digests, a disk cache):
# always 0, printed because the tools that read squid's page ask for them.
_NO_ICP_NOR_DIGESTS = (
    [f"icp.{n}" for n in ("pkts_sent", "pkts_recv", "queries_sent", "replies_sent",
                          "queries_recv", "replies_recv", "query_timeouts", "replies_queued",
                          "kbytes_sent", "kbytes_recv", "q_kbytes_sent", "r_kbytes_sent",
                          "q_kbytes_recv", "r_kbytes_recv", "times_used")]
    + [f"cd.{n}" for n in ("times_used", "msgs_sent", "msgs_recv", "memory", "local_memory",
                           "kbytes_sent", "kbytes_recv")]
    + ["unlink.requests"])
_NO_SWAP = ["swap.outs", "swap.ins", "swap.files_cleaned"]


def _server_lines(kind: str, requests: int, bytes_in: int, bytes_out: int) -> list[str]:
    # squid 5.7 never counts server errors (0 after a refused connect here):
    # its failures count in client_http.errors, and so do ours.
    return [f"server.{kind}.requests = {requests}\n", f"server.{kind}.errors = 0\n",
            f"server.{kind}.kbytes_in = {bytes_in >> 10}\n",
            f"server.{kind}.kbytes_out = {bytes_out >> 10}\n"]


def page_counters(ctx: ServeContext) -> str:
    """squid's ``counters`` page, in its order: HTTP relayed to origins is
    ``server.http``, CONNECT tunnels ``server.other``, both ``server.all``;
    the client side counts tunnels' bytes too, as squid's does.  Left out:
    squid's ``page_faults``, ``select_loops`` and ``aborted_requests``,
    which no shared counter keeps."""
    t = _totals(ctx)
    rows = _rows(ctx)
    lines = [
        f"sample_time = {time.time():.6f} ({time.strftime('%a, %d %b %Y %H:%M:%S GMT')})\n",
        f"client_http.requests = {t['requests']}\n",
        "client_http.hits = 0\n",  # no cache, so no hits
        f"client_http.errors = {t['errors']}\n",
        f"client_http.kbytes_in = {t['bytes_in'] >> 10}\n",
        f"client_http.kbytes_out = {t['bytes_out'] >> 10}\n",
        "client_http.hit_kbytes_out = 0\n",
        # not squid's (it has medians on other pages): a mean since start
        f"client_http.all_mean_svc_time = {_mean_service(t):.6f} seconds\n",
        *_server_lines("all", t["server_requests"] + t["tunnels"],
                       t["server_bytes_in"] + t["tunnel_bytes_in"],
                       t["server_bytes_out"] + t["tunnel_bytes_out"]),
        *_server_lines("http", t["server_requests"], t["server_bytes_in"],
                       t["server_bytes_out"]),
        *_server_lines("ftp", 0, 0, 0),  # no FTP
        *_server_lines("other", t["tunnels"], t["tunnel_bytes_in"], t["tunnel_bytes_out"]),
        *(f"{name} = 0\n" for name in _NO_ICP_NOR_DIGESTS),
        f"cpu_time = {pool_cpu_seconds(rows):.6f}\n",
        f"wall_time = {time.time() - _started(ctx, rows):.6f}\n",
        *(f"{name} = 0\n" for name in _NO_SWAP),
    ]
    return "".join(lines)


# -- averages over the last 5 and 60 minutes ------------------------------------

def percentile(bins: Sequence[int], fraction: float) -> float:
    """The service time (seconds) below which `fraction` of the requests
    counted in `bins` (``stats.SERVICE_BIN_FIELDS``) fall, interpolated
    within its bin; 0 when nothing was counted."""
    target = fraction * sum(bins)
    seen = 0
    for b, count in enumerate(bins):
        if count and seen + count >= target:
            low, high = (0, 1) if b == 0 else (1 << (b - 1), 1 << b)
            return (low + (high - low) * (target - seen) / count) / 1e6
        seen += count
    return 0.0


def _windows(ctx: ServeContext, *minutes: int) -> tuple[dict[str, int], list[dict[str, int]]]:
    """The totals of now, and for each length in `minutes` the kid's sample
    that window starts at, each with its ``time_us`` and ``cpu_us``.  Unlike
    squid's pages, which end at the last minute's sample, these end now; a
    window longer than the samples kept starts at the oldest (the kid takes
    one at start).  Now is read once, however many windows a page shows."""
    rows = _rows(ctx)
    now = {**_totals(ctx), "time_us": int(time.time() * 1e6),
           "cpu_us": int(pool_cpu_seconds(rows) * 1e6)}
    samples = ctx.all_stats.samples() if ctx.all_stats is not None else []
    oldest = samples[-1] if samples else {
        **dict.fromkeys(now, 0), "time_us": int(_started(ctx, rows) * 1e6)}
    starts = []
    for length in minutes:
        since = now["time_us"] - length * 60_000_000
        starts.append(next((s for s in samples if s["time_us"] <= since), oldest))
    return now, starts


def _bins(start: dict[str, int], end: dict[str, int]) -> list[int]:
    return [end[name] - start[name] for name in SERVICE_BIN_FIELDS]


def _stamp(time_us: int) -> str:
    seconds = time_us / 1e6
    return f"{seconds:.6f} ({time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(seconds))})"


# squid 5.7's ICP keys on its 5min and 60min pages, always 0 here: in that
# page's order (replies_queued first, no times_used), not counters'.
_NO_ICP = [f"icp.{n}" for n in (
    "pkts_sent", "pkts_recv", "queries_sent", "replies_sent", "queries_recv", "replies_recv",
    "replies_queued", "query_timeouts", "kbytes_sent", "kbytes_recv", "q_kbytes_sent",
    "r_kbytes_sent", "q_kbytes_recv", "r_kbytes_recv")]


# The kinds of service time squid's pages list; every request is a cache
# miss here, so the first two (_MEASURED) read the same and the others 0.
_SERVICE_LABELS = ("HTTP Requests (All):", "Cache Misses:", "Cache Hits:", "Near Hits:",
                   "Not-Modified Replies:", "DNS Lookups:", "ICP Queries:")
_MEASURED = _SERVICE_LABELS[:2]


def _averages(ctx: ServeContext, minutes: int) -> str:
    """squid's ``5min`` and ``60min``: rates over the window, in its order
    and its keys (those labsquid has no figure for read 0)."""
    end, (start,) = _windows(ctx, minutes)
    seconds = max((end["time_us"] - start["time_us"]) / 1e6, 1e-6)

    def rate(*names: str, kilo: bool = False) -> float:
        delta = sum(end[n] - start[n] for n in names)
        return delta / 1024 / seconds if kilo else delta / seconds

    def server(kind: str, counts: tuple[str, ...]) -> list[str]:
        requests, bytes_in, bytes_out = counts
        return [f"server.{kind}.requests = {rate(*requests):.6f}/sec\n",
                f"server.{kind}.errors = 0.000000/sec\n",
                f"server.{kind}.kbytes_in = {rate(*bytes_in, kilo=True):.6f}/sec\n",
                f"server.{kind}.kbytes_out = {rate(*bytes_out, kilo=True):.6f}/sec\n"]

    median = percentile(_bins(start, end), 0.5)
    http = (("server_requests",), ("server_bytes_in",), ("server_bytes_out",))
    other = (("tunnels",), ("tunnel_bytes_in",), ("tunnel_bytes_out",))
    every = tuple(h + o for h, o in zip(http, other, strict=True))
    cpu = (end["cpu_us"] - start["cpu_us"]) / 1e6
    return "".join([
        f"sample_start_time = {_stamp(start['time_us'])}\n",
        f"sample_end_time = {_stamp(end['time_us'])}\n",
        f"client_http.requests = {rate('requests'):.6f}/sec\n",
        "client_http.hits = 0.000000/sec\n",
        f"client_http.errors = {rate('errors'):.6f}/sec\n",
        f"client_http.kbytes_in = {rate('bytes_in', kilo=True):.6f}/sec\n",
        f"client_http.kbytes_out = {rate('bytes_out', kilo=True):.6f}/sec\n",
        f"client_http.all_median_svc_time = {median:.6f} seconds\n",
        f"client_http.miss_median_svc_time = {median:.6f} seconds\n",  # no cache: all miss
        *(f"client_http.{n}_median_svc_time = 0.000000 seconds\n" for n in ("nm", "nh", "hit")),
        *server("all", every), *server("http", http),
        *server("ftp", ((), (), ())), *server("other", other),
        *(f"{name} = 0.000000/sec\n" for name in _NO_ICP),
        "icp.query_median_svc_time = 0.000000 seconds\n",
        "icp.reply_median_svc_time = 0.000000 seconds\n",
        "dns.median_svc_time = 0.000000 seconds\n",
        "unlink.requests = 0.000000/sec\n",
        *(f"{name} = 0.000000/sec\n" for name in _NO_SWAP),
        f"cpu_time = {cpu:.6f} seconds\n",
        f"wall_time = {seconds:.6f} seconds\n",
        f"cpu_usage = {100 * cpu / seconds:.6f}%\n",
    ])


def _median_lines(ctx: ServeContext) -> list[str]:
    """``info``'s median service times over 5 and 60 minutes, as squid's."""
    now, starts = _windows(ctx, 5, 60)
    five, sixty = (percentile(_bins(start, now), 0.5) for start in starts)
    lines = ["Median Service Times (seconds)  5 min    60 min:\n"]
    for label in _SERVICE_LABELS:
        a, b = (five, sixty) if label in _MEASURED else (0.0, 0.0)
        lines.append(f"\t{label:<21}  {a:7.5f}  {b:7.5f}\n")
    return lines


def page_5min(ctx: ServeContext) -> str:
    return _averages(ctx, 5)


def page_60min(ctx: ServeContext) -> str:
    return _averages(ctx, 60)


def page_service_times(ctx: ServeContext) -> str:
    """squid's ``service_times``: percentiles over the last 5 and 60
    minutes, from the power-of-two histogram.  Every request is a cache
    miss here, so both lines read the same; hits, DNS and ICP read 0."""
    now, starts = _windows(ctx, 5, 60)
    five, sixty = (_bins(start, now) for start in starts)
    lines = ["Service Time Percentiles            5 min    60 min:\n"]
    for label in _SERVICE_LABELS:
        for p in range(5, 100, 5):
            a, b = ((percentile(five, p / 100), percentile(sixty, p / 100))
                    if label in _MEASURED else (0.0, 0.0))
            lines.append(f"\t{label:<21}{p:3d}%   {a:7.5f}  {b:7.5f}\n")
    return "".join(lines)


def page_pool(ctx: ServeContext) -> str:
    lines = ["by kid: labsquid-1", f"dispatch: {ctx.config.pool_dispatch}",
             "slot 0 is the kid: in a pool it counts for children that have exited",
             f"{'slot':>4} {'pid':>8} {'state':<9} {'gen':>3} {'conns':>6} {'requests':>9} "
             f"{'errors':>7} {'kb_in':>8} {'kb_out':>8} {'mean_svc_ms':>11}"]
    for slot, r in enumerate(_rows(ctx)):
        if not r["pid"]:
            continue
        mean = r["service_us"] / 1000 / r["requests"] if r["requests"] else 0.0
        lines.append(f"{slot:>4} {r['pid']:>8} {STATE_NAMES.get(r['state'], '?'):<9} "
                     f"{r['generation']:>3} {r['active']:>6} {r['requests']:>9} {r['errors']:>7} "
                     f"{r['bytes_in'] // 1024:>8} {r['bytes_out'] // 1024:>8} {mean:>11.3f}")
    return "\n".join(lines) + "\n"


def page_index(ctx: ServeContext) -> str:
    return page_menu(ctx)


ACTIONS: dict[str, tuple[str, Callable[[ServeContext], str]]] = {
    "index": ("Cache Manager Interface", page_index),
    "menu": ("Cache Manager Menu", page_menu),
    "info": ("General Runtime Information", page_info),
    "service_times": ("Service Times (Percentiles)", page_service_times),
    "counters": ("Traffic and Resource Counters", page_counters),
    "5min": ("5 Minute Average of Counters", page_5min),
    "60min": ("60 Minute Average of Counters", page_60min),
    "pool": ("Process pool: one line per child", page_pool),
}


def render(action: str, ctx: ServeContext) -> str | None:
    entry = ACTIONS.get(action)
    return entry[1](ctx) if entry else None

