"""Chaos under load: kills, reloads and rotations while clients keep asking.

Four client threads send requests through labsquid, each with a unique id in
its URL, while a seeded driver kills pool children and the logfile daemon,
sends SIGHUP with alternately a good and a broken config, and SIGUSR1, at
random moments; then SIGTERM.  Afterwards every answered request must have
exactly one access.log line (across the rotated files), no line may be for a
request nobody sent, the only failures allowed are connections cut by a
killed child, the master exits 0, no process is left, and the master's and
the kid's descriptors and memory are back where they started.

The seed is printed; ``CHAOS_SEED=N pytest tests/test_chaos.py -s`` replays
the same schedule of events (not the same interleaving with the traffic).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections import Counter

import psutil
import pytest

from support import proof
from support.chaos import (
    ChaosDriver,
    Clients,
    QuietOrigin,
    Sample,
    events,
    holder_of,
    settled,
    shm_segment,
)
from support.origin import fetch, parse_squid_line
from support.service import wait_for

pytestmark = pytest.mark.slow

CLIENTS = 4
CHAOS_SECONDS = 22.0
# Rotated files are kept (none is deleted during a run), so every line of the
# run can be counted across access.log*.
KEEP_ROTATED = "logfile_rotate 50\n"
FD_SLACK = 2  # descriptors: the kid and master must come back to within this
RSS_SLACK = 20 * 2**20


@pytest.fixture
def origin():
    with QuietOrigin() as server:
        yield server


def _seed() -> int:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nchaos seed: {seed} (replay with CHAOS_SEED={seed})")
    return seed


def _configs(ls) -> tuple[str, str]:
    """A good config (a harmless value changed, so a reload is a real one) and the
    same with a typo in a directive's name, which the master must refuse."""
    good = ls.config_text(extra=KEEP_ROTATED + "pconn_timeout 61 seconds\n")
    broken = good + "htp_port 3129\n"
    return good, broken


def _logged_urls(ls) -> Counter:
    return Counter(parse_squid_line(line)["url"] for line in ls.access_lines())


# The proof report's rows for the chaos mix: the driver's event kinds (a SIGHUP
# split by its config), each with what the row counts as injected.
CHAOS_ROWS = {
    "kill_worker": "kill -9 pool child (chaos under load)",
    "kill_logfile_daemon": "kill -9 logfile daemon (chaos under load)",
    "hup_good": "SIGHUP, good config (chaos under load)",
    "hup_broken": "SIGHUP, broken config (chaos under load)",
    "usr1": "SIGUSR1 rotate (chaos under load)",
}
CHAOS_CHECKS = {
    "kill_worker": "only requests in flight on the killed child may fail (cut off); every "
                   "answered request logged once",
    "kill_logfile_daemon": "no request fails; every answered request logged exactly once",
    "hup_good": "the kid applies each reload; no request fails; every answer logged once",
    "hup_broken": "the master refuses each broken config; no request fails; every answer "
                  "logged once",
    "usr1": "no request fails; every answered request logged exactly once across the "
            "rotated files",
}


def _kind(action: str, detail: str) -> str:
    """A timeline entry's row: a SIGHUP is good or broken by its detail."""
    if action == "hup":
        return "hup_good" if detail.startswith("SIGHUP, good") else "hup_broken"
    return action


def _record_chaos(driver: ChaosDriver, losses: list[tuple[float, int]], refused: int,
                  reloaded: int, at_exit: int, fds_over: int) -> None:
    """The chaos run's rows: each loss (when, how many) goes to the kind of the last
    event before it; losses before any event, and those only the end can show
    (exit code, leftovers, lines for requests never sent), to the final SIGTERM."""
    lost: Counter = Counter()
    for moment, count in losses:
        before = [(t, a, d) for t, a, d in driver.timeline if t <= moment]
        lost[_kind(*before[-1][1:]) if before else "term"] += count
    lost["hup_good"] += abs(reloaded - driver.counts["hup_good"])
    lost["hup_broken"] += abs(refused - driver.counts["hup_broken"])
    for kind, case in CHAOS_ROWS.items():
        proof.record("fault", case, driver.counts[kind], lost[kind], unit="requests/lines",
                     detail=CHAOS_CHECKS[kind] + "; a loss counts for the last event before it")
    proof.record("fault", "SIGTERM after the chaos", 1, lost["term"] + at_exit,
                 unit="lines/processes",
                 detail="exit 0, no process or shm segment left, no line for a request never "
                        "sent, none lost before the first event")
    proof.record("fault", "descriptors across the chaos mix", len(driver.timeline), fds_over,
                 unit="fds", detail=f"the kid's and the master's fd counts back within "
                                    f"{FD_SLACK} after every event")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_chaos_under_load(make_labsquid, origin, dispatch):
    seed = _seed()
    ls = make_labsquid(dispatch=dispatch, pool_size=2, extra=KEEP_ROTATED).start()
    good, broken = _configs(ls)
    driver = ChaosDriver(ls, good, broken, seed)
    began = time.monotonic()

    with Clients(ls.port, origin, CLIENTS) as clients:
        wait_for(lambda: clients.answered() > 50, timeout=30, what="traffic to flow")
        master, kid = settled(ls)
        kid_pid = kid.pid
        start_master, start_kid = Sample.of(master), Sample.of(kid)
        driver.run(CHAOS_SECONDS)
        # Traffic after the last event proves the proxy still serves.
        target = clients.answered() + 20
        wait_for(lambda: clients.answered() > target, timeout=30, what="traffic after chaos")
    chaos_ended = time.monotonic()

    # Back to a good config, the broken one must have changed nothing.
    ls.write_config(text=good)
    master, kid = settled(ls)
    assert kid.pid == kid_pid, "the kid itself was never restarted"
    end_master, end_kid = Sample.of(master), Sample.of(kid)
    driver.note_tree()

    terminated = time.monotonic()
    ls.signal(signal.SIGTERM)
    code = ls.proc.wait(30)
    ls.stderr.close()
    stopped = time.monotonic()

    outcomes = clients.all()
    answered = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    http_errors = [o for o in failed if o.http_error]
    not_cut = [o for o in failed if o.error is not None and not o.cut_off]
    no_kill = [o for o in failed if not driver.killed_during(o)]
    kills = driver.counts["kill_worker"]
    logged = _logged_urls(ls)
    sent = {o.url for o in outcomes}

    print(f"dispatch {dispatch}: {len(outcomes)} requests, {len(answered)} answered, "
          f"{len(failed)} failed ({len(http_errors)} HTTP errors, {len(not_cut)} not a "
          f"reset/EOF, {len(no_kill)} with no child killed meanwhile); bound {kills} child "
          f"kills x {CLIENTS} clients = {kills * CLIENTS}")
    print(f"events: {dict(sorted(driver.counts.items()))}")
    unlogged = [o.url for o in answered if logged[o.url] == 0]
    twice = {url: n for url, n in logged.items() if n > 1}
    strangers = sorted(set(logged) - sent)
    print(f"access.log lines: {sum(logged.values())} in "
          f"{len(list(ls.access_log.parent.glob('access.log*')))} files; answered but not "
          f"logged: {len(unlogged)}, logged twice: {len(twice)}, never sent: {len(strangers)}")
    print(f"master {start_master} -> {end_master}; kid {start_kid} -> {end_kid}")
    print(f"time: {chaos_ended - began:.1f}s of traffic, {terminated - chaos_ended:.1f}s to "
          f"settle, {stopped - terminated:.1f}s from SIGTERM to exit")
    print(f"failures by kind: {dict(Counter(type(o.error).__name__ for o in failed))}")
    for o in [*no_kill, *http_errors, *not_cut, *failed][:8]:
        print(f"  failed {o.url.rsplit('/', 1)[1]}: status {o.status}, {o.error!r}; "
              f"last event: {driver.event_before(o.ended)}")

    # The proof report's rows, before any assertion.
    ended = {o.url: o.ended for o in outcomes}
    bad_failures = [o for o in failed if o.http_error or not o.cut_off
                    or not driver.killed_during(o)]
    left = driver.left_running()
    refused = [e for e in events(ls, "reconfigure_refused") if e.get("role") == "master"]
    _record_chaos(
        driver,
        losses=[(o.ended, 1) for o in bad_failures]
        + [(o.ended, 1) for o in answered if logged[o.url] == 0]
        + [(ended[url], n - 1) for url, n in twice.items() if url in ended],
        refused=sum("htp_port" in e.get("problem", "") for e in refused),
        reloaded=len(events(ls, "reconfigured")),
        at_exit=int(code != 0) + len(left) + int(os.path.exists(shm_segment(kid_pid)))
        + sum(logged[url] for url in strangers),
        fds_over=max(0, abs(end_kid.fds - start_kid.fds) - FD_SLACK)
        + max(0, abs(end_master.fds - start_master.fds) - FD_SLACK))

    assert code == 0, ls.stderr_text()[-3000:]
    assert not left, f"processes of the tree left behind: {left}"
    assert not os.path.exists(shm_segment(kid_pid)), "the kid's statistics segment remains"

    # The broken configs were refused by the master, each of them, and the kid
    # applied every good one.
    assert len(refused) == driver.counts["hup_broken"]
    assert all("htp_port" in e["problem"] for e in refused)
    assert len(events(ls, "reconfigured")) == driver.counts["hup_good"]

    # Every answered request is logged exactly once; every line is a request we sent.
    assert answered, "no request was answered at all"
    assert not unlogged, f"{len(unlogged)} answered requests not logged: {unlogged[:10]}"
    assert not twice, f"{len(twice)} requests logged more than once: {list(twice.items())[:10]}"
    assert not strangers, f"lines for requests never sent: {strangers[:10]}"

    # The only failures: connections cut (reset/EOF) by a killed child.
    assert not http_errors, [(o.url, o.status) for o in http_errors]
    assert not not_cut, [(o.url, repr(o.error)) for o in not_cut]
    assert not no_kill, [(o.url, repr(o.error), driver.event_before(o.ended)) for o in no_kill]
    assert len(failed) <= kills * CLIENTS, (len(failed), kills)

    # No leak across kills, reloads and rotations.
    assert abs(end_kid.fds - start_kid.fds) <= FD_SLACK, (start_kid, end_kid)
    assert abs(end_master.fds - start_master.fds) <= FD_SLACK, (start_master, end_master)
    assert end_kid.rss - start_kid.rss < RSS_SLACK, (start_kid, end_kid)
    assert end_master.rss - start_master.rss < RSS_SLACK, (start_master, end_master)


ROUNDS = 100


def _reload_and_rotate(ls, signals: list[int], good: str) -> tuple[int, int]:
    """Send each signal and wait until the kid has acted on it (one at a time: a
    signal arriving before the previous one was handled merges with it)."""
    reloads = rotations = 0
    for signum in signals:
        if signum == signal.SIGHUP:
            ls.write_config(text=good)
            reloads += 1
        else:
            rotations += 1
        ls.signal(signum)
        if signum == signal.SIGHUP:
            wait_for(lambda n=reloads: len(events(ls, "reconfigured")) >= n, timeout=15,
                     interval=0.01, what=f"reload {reloads}")
        else:
            wait_for(lambda n=rotations: len(events(ls, "access_log_rotate")) >= n,
                     timeout=15, interval=0.01, what=f"rotation {rotations}")
    return reloads, rotations


@pytest.mark.timeout(240)
def test_no_leak_across_many_reloads_and_rotations(make_labsquid, origin):
    """~100 good HUPs and ~100 USR1s, shuffled, with a little traffic and no kill:
    the master's and the kid's descriptor counts come back exactly, memory barely grows."""
    keep = f"logfile_rotate {ROUNDS + 10}\n"
    ls = make_labsquid(dispatch="notify", pool_size=2, extra=keep).start()
    good = ls.config_text(extra=keep + "pconn_timeout 61 seconds\n")
    signals = [signal.SIGHUP] * ROUNDS + [signal.SIGUSR1] * ROUNDS
    random.Random(_seed()).shuffle(signals)
    began = time.monotonic()
    with Clients(ls.port, origin, 1) as clients:
        wait_for(lambda: clients.answered() > 20, timeout=30, what="traffic to flow")
        master, kid = settled(ls)
        start_master, start_kid = Sample.of(master), Sample.of(kid)
        reloads, rotations = _reload_and_rotate(ls, signals, good)
        target = clients.answered() + 10
        wait_for(lambda: clients.answered() > target, timeout=30, what="traffic after")
    master, kid = settled(ls)
    end_master, end_kid = Sample.of(master), Sample.of(kid)
    print(f"{reloads} reloads, {rotations} rotations in {time.monotonic() - began:.1f}s; "
          f"master {start_master} -> {end_master}; kid {start_kid} -> {end_kid}")
    proof.record("fault", "100 SIGHUP + 100 SIGUSR1, one at a time: descriptors",
                 reloads + rotations,
                 abs(end_master.fds - start_master.fds) + abs(end_kid.fds - start_kid.fds),
                 unit="fds", detail="the master's and the kid's fd counts come back exactly "
                                    "(memory growth under 10 MiB is asserted too)")
    assert ls.stop() == 0
    assert end_master.fds == start_master.fds, (start_master, end_master)
    assert end_kid.fds == start_kid.fds, (start_kid, end_kid)
    assert end_master.rss - start_master.rss < 10 * 2**20, (start_master, end_master)
    assert end_kid.rss - start_kid.rss < 10 * 2**20, (start_kid, end_kid)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_reloads_lose_no_request_and_no_line(make_labsquid, origin, dispatch):
    """~100 reloads (and some rotations) under a steady client: every request is
    answered and logged exactly once."""
    keep = f"logfile_rotate {ROUNDS + 10}\n"
    ls = make_labsquid(dispatch=dispatch, pool_size=2, extra=keep).start()
    good = ls.config_text(extra=keep + "pconn_timeout 61 seconds\n")
    signals = [signal.SIGHUP] * ROUNDS + [signal.SIGUSR1] * (ROUNDS // 4)
    random.Random(_seed()).shuffle(signals)
    with Clients(ls.port, origin, 1) as clients:
        wait_for(lambda: clients.answered() > 20, timeout=30, what="traffic to flow")
        reloads, rotations = _reload_and_rotate(ls, signals, good)
        target = clients.answered() + 10
        wait_for(lambda: clients.answered() > target, timeout=30, what="traffic after")
    code = ls.stop()
    outcomes = clients.all()
    logged = _logged_urls(ls)
    unlogged = [o.url for o in outcomes if o.ok and logged[o.url] == 0]
    failed = [(o.url, o.status, repr(o.error)) for o in outcomes if not o.ok]
    print(f"{len(outcomes)} requests, {len(failed)} failed, {len(unlogged)} answered but "
          "not logged")
    sent = {o.url for o in outcomes}
    proof.record("fault", "100 SIGHUP + 25 SIGUSR1 under a steady client", reloads + rotations,
                 len(failed) + len(unlogged) + sum(n - 1 for n in logged.values())
                 + sum(n for url, n in logged.items() if url not in sent) + int(code != 0),
                 unit="requests/lines",
                 detail="every request answered and logged exactly once, no stray line, exit 0")
    assert code == 0
    assert failed == []
    assert unlogged == []
    assert sorted(logged) == sorted(o.url for o in outcomes)
    assert max(logged.values()) == 1


def test_reload_to_another_access_log_retires_the_old_daemon(make_labsquid, origin):
    """access_log moved by a reload, four times over: each line lands in the file
    in force when it was served, each old daemon's exit is reaped as its own
    (logfile_daemon_stopped), and the kid keeps no descriptor of it."""
    ls = make_labsquid(dispatch="notify", pool_size=1).start()
    kid = ls.kid()
    assert kid is not None
    paths = [ls.access_log, ls.access_log.with_name("other.log")]
    fds = None
    for n in range(4):
        path, url = paths[n % 2], origin.url(f"/id/moved-{n}")
        resp, _ = fetch(ls.port, "GET", url)
        assert resp.status == 200
        wait_for(lambda p=path, u=url: p.exists() and u in p.read_text(),
                 what=f"request {n} logged in {path.name}")
        if fds is None:
            fds = kid.num_fds()
        else:
            # The old daemon's socket closed, the old worker's channels too.
            wait_for(lambda want=fds: kid.num_fds() == want,
                     what=f"the kid back to {fds} descriptors (has {kid.num_fds()})")
        ls.write_config(text=ls.config_text().replace(str(ls.access_log), str(paths[(n + 1) % 2])))
        ls.signal(signal.SIGHUP)
        wait_for(lambda k=n + 1: len(events(ls, "reconfigured")) == k, what=f"reload {n + 1}")
        wait_for(lambda k=n + 1: len(events(ls, "logfile_daemon_stopped")) == k,
                 what=f"the daemon of {path.name} reaped as such")
    assert all(url not in paths[1].read_text() for url in ("/id/moved-0", "/id/moved-2"))
    assert all(url not in paths[0].read_text() for url in ("/id/moved-1", "/id/moved-3"))
    assert ls.stop() == 0


@pytest.mark.parametrize("dispatch", ["notify", "reuseport"])
def test_connection_accepted_before_a_reload_is_served(make_labsquid, origin, dispatch):
    """What the chaos test catches now and then, made certain: a client connects, a
    worker accepts, a reload replaces that worker, then the request arrives."""
    ls = make_labsquid(dispatch=dispatch, pool_size=2).start()
    with socket.create_connection(("127.0.0.1", ls.port), timeout=10) as sock:
        holder = wait_for(lambda: holder_of(ls, sock.getsockname()[1]),
                          what="a worker to accept the connection")
        ls.signal(signal.SIGHUP)
        wait_for(lambda: events(ls, "reconfigured"), what="the reload")
        time.sleep(0.3)  # the old worker has its STOP by now
        url = origin.url("/id/late")
        try:
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         .encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError) as exc:
            reply = repr(exc).encode()
    assert reply.startswith(b"HTTP/1.1 200"), (holder.pid, reply[:200])
    assert reply.endswith(b"path /id/late\n")
    assert ls.stop() == 0
    assert [line for line in ls.access_lines() if url in line], (
        "no access.log line for the request served across the reload", ls.access_lines(),
        ls.stderr_text()[-4000:])


def test_term_right_after_a_reload_exits_promptly(make_labsquid):
    """HUP, then TERM with no traffic between: the exit does not wait on the access log."""
    ls = make_labsquid(dispatch="notify", extra=KEEP_ROTATED).start()
    ls.write_config(text=ls.config_text(extra=KEEP_ROTATED + "pconn_timeout 61 seconds\n"))
    ls.signal(signal.SIGHUP)
    wait_for(lambda: events(ls, "reconfigured"), what="the reload")
    began = time.monotonic()
    assert ls.stop() == 0
    took = time.monotonic() - began
    assert not events(ls, "access_log_flush_timeout"), ls.stderr_text()[-2000:]
    assert took < 5, f"SIGTERM took {took:.1f}s"
    assert not any(p.info["cmdline"] and str(ls.access_log) in " ".join(p.info["cmdline"])
                   for p in psutil.process_iter(["cmdline"]))
