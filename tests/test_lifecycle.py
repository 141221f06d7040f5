"""Master and kid lifecycle: faults survived, signals obeyed, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter

import psutil
import pytest

from labsquid.inspect import tcp_connections
from labsquid.kid import LOGGER_CLOSE_LIMIT
from support import proof
from support.origin import manager_page
from support.service import free_port, listening_sockets, wait_for

pytestmark = pytest.mark.slow


def hello(port: int) -> bytes:
    """One telnet-style request: the kid answers 400 and logs one line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"hello\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def get_denied(port: int, url: str) -> None:
    """One GET the default rules deny (port 9): a quick 403, and one line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(20).startswith(b"HTTP/1.1 403")


def move_access_log(ls, new_log) -> None:
    """Reload with access_log moved to ``new_log``, and wait for the reload."""
    ls.write_config(text=ls.config_text().replace(str(ls.access_log), str(new_log)))
    ls.signal(signal.SIGHUP)
    wait_for(lambda: '"reconfigured"' in ls.stderr_text(), what="the reload")


def proxied_get(port: int, url: str) -> int:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
    with opener.open(url, timeout=10) as resp:
        resp.read()
        return resp.status


class Traffic:
    """Requests in a loop from a thread, each with a unique id; records what answered."""

    def __init__(self, port: int, origin) -> None:
        self.port, self.origin = port, origin
        self.ok: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            url = self.origin.url(f"/id/{os.getpid()}-{n}")
            try:
                proxied_get(self.port, url)
                self.ok.append(url)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                self.failed.append((url, repr(exc)))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(20)


def test_logfile_daemon_killed_while_lines_flow(make_labsquid, origin):
    """squid's kid dies with its daemon; ours starts a new one and loses no line."""
    ls = make_labsquid().start()
    kid_pid = ls.kid().pid
    killed: list[int] = []
    with Traffic(ls.port, origin) as traffic:
        wait_for(lambda: len(traffic.ok) > 20, what="traffic")
        for _ in range(3):
            old = ls.logfile_daemon()
            old.kill()
            killed.append(old.pid)
            wait_for(lambda o=old: (d := ls.logfile_daemon()) is not None and d.pid != o.pid,
                     timeout=3, what="a new logfile daemon")
            target = len(traffic.ok) + 10
            wait_for(lambda t=target: len(traffic.ok) > t, what="more traffic")
    kid_now = ls.kid().pid
    last_daemon = ls.logfile_daemon().pid
    ls.stop()
    logged = [line.split()[6] for line in ls.access_lines()]
    # Lines missing, twice, or for no answered request; failed requests; a lost kid.
    lines_off = sum(((Counter(logged) - Counter(traffic.ok))
                     + (Counter(traffic.ok) - Counter(logged))).values())
    proof.record("fault", "kill -9 logfile daemon under traffic", len(killed),
                 lines_off + len(traffic.failed) + int(kid_now != kid_pid),
                 unit="requests/lines", detail="the kid survives and starts a new daemon; no "
                 "request fails; every answered request logged exactly once")
    assert kid_now == kid_pid, "the kid survived"
    assert traffic.failed == []
    assert sorted(logged) == sorted(traffic.ok), "every answered request logged exactly once"
    assert "logfile_daemon_died" in ls.stderr_text()
    # Each replacement says what it found written and what it was sent again.
    resumed = [json.loads(line) for line in ls.stderr_text().splitlines()
               if '"logfile_daemon_resumed"' in line]
    assert len(resumed) == len(killed), resumed
    assert [r["daemon_pid"] for r in resumed] == [*killed[1:], last_daemon], resumed


def test_kid_killed_is_restarted(make_labsquid):
    ls = make_labsquid(dispatch="notify").start()
    old = ls.kid()
    old.kill()
    wait_for(lambda: (k := ls.kid()) is not None and k.pid != old.pid and ls.tree_complete(),
             what="a new kid with its daemon and pool")
    master_alive = ls.proc.poll() is None
    served = hello(ls.port).startswith(b"HTTP/1.1 400")
    proof.record("fault", "kill -9 kid (master restarts it)", 1,
                 int(not master_alive) + int(not served), unit="failures",
                 detail="the master stays up, starts a new kid with its daemon and pool, "
                        "which serves")
    assert master_alive
    assert served
    assert '"kid_died"' in ls.stderr_text() and "killed by signal 9" in ls.stderr_text()
    # Its counters' segment went with it (a clean exit removes its own).
    wait_for(lambda: not os.path.exists(f"/dev/shm/labsquid-{old.pid}"),
             what="the dead kid's /dev/shm segment removed")
    assert ls.stop() == 0


def test_master_gives_up_after_repeated_fast_failures(make_labsquid):
    ls = make_labsquid().start()
    for _ in range(5):
        kid = wait_for(ls.kid, what="a kid")
        kid.kill()
        wait_for(lambda k=kid: (n := ls.kid()) is None or n.pid != k.pid, what="kid gone")
    code = ls.proc.wait(15)
    assert code == 1
    assert "Exiting due to repeated, frequent failures" in ls.stderr_text()
    assert not ls.pidfile.exists()


def test_kid_exit_zero_is_not_restarted(make_labsquid):
    ls = make_labsquid().start()
    ls.kid().send_signal(signal.SIGTERM)
    assert ls.proc.wait(15) == 0
    assert '"kid_died"' not in ls.stderr_text()


def test_hup_with_broken_config_keeps_running(make_labsquid):
    ls = make_labsquid(dispatch="notify").start()
    kid_pid = ls.kid().pid
    ls.write_config(text=ls.conf.read_text() + "htp_port 3129\n")
    ls.signal(signal.SIGHUP)
    wait_for(lambda: "reconfigure_refused" in ls.stderr_text(), what="the refusal")
    assert "unknown directive 'htp_port'" in ls.stderr_text()
    assert ls.kid().pid == kid_pid
    assert hello(ls.port).startswith(b"HTTP/1.1 400")
    assert ls.stop() == 0


def test_hup_with_good_config_reloads_without_closing_the_port(make_labsquid, origin):
    ls = make_labsquid(dispatch="notify").start()
    old_workers = {w.pid for w in ls.workers()}
    listen_inode = _listen_inode(ls)
    with Traffic(ls.port, origin) as traffic:
        wait_for(lambda: len(traffic.ok) > 5, what="traffic")
        ls.signal(signal.SIGHUP)
        wait_for(lambda: '"reconfigured"' in ls.stderr_text(), what="the reload")
        wait_for(lambda: {w.pid for w in ls.workers()}.isdisjoint(old_workers)
                 and len(ls.workers()) == 2, what="a new generation of workers")
        target = len(traffic.ok) + 5
        wait_for(lambda: len(traffic.ok) > target, what="traffic after")
    assert traffic.failed == []
    assert _listen_inode(ls) == listen_inode, "the same listening socket throughout"
    assert ls.stop() == 0


def _listen_inode(ls) -> int:
    for conn in tcp_connections(psutil.Process(ls.proc.pid)):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == ls.port:
            return conn.fd and os.stat(f"/proc/{ls.proc.pid}/fd/{conn.fd}").st_ino
    raise AssertionError("master holds no listening socket")


def test_usr1_rotates_exactly_once(make_labsquid):
    ls = make_labsquid(dispatch="notify").start()
    hello(ls.port)
    wait_for(ls.access_lines, what="a line")
    ls.signal(signal.SIGUSR1)
    rotated = ls.access_log.with_name("access.log.0")
    wait_for(rotated.exists, what="access.log.0")
    hello(ls.port)
    wait_for(lambda: ls.access_log.exists() and ls.access_log.read_text(), what="new log")
    time.sleep(0.5)
    assert not ls.access_log.with_name("access.log.1").exists(), "rotated once, not per worker"
    assert len(rotated.read_text().splitlines()) == 1
    assert len(ls.access_log.read_text().splitlines()) == 1
    assert ls.stop() == 0


@pytest.mark.parametrize("dispatch", ["notify", "serial"])
def test_term_exits_zero_with_every_line_flushed(make_labsquid, dispatch):
    # serial: the kid's own lines wait for the end of their loop turn.
    ls = make_labsquid(dispatch=dispatch, extra="buffered_logs on\n").start()
    for _ in range(25):
        hello(ls.port)
    assert ls.stop() == 0
    assert len(ls.access_lines()) == 25
    assert not ls.pidfile.exists()
    assert not any(p.info["cmdline"] and str(ls.conf) in " ".join(p.info["cmdline"])
                   for p in psutil.process_iter(["cmdline"]))


_SQUID_HELPER = "/usr/lib/squid/log_file_daemon"
_PLAIN_HELPER = os.path.join(os.path.dirname(__file__), "support", "plain_logfile_daemon.py")


@pytest.mark.parametrize("program", [
    _PLAIN_HELPER,
    pytest.param(_SQUID_HELPER, marks=pytest.mark.skipif(
        not os.access(_SQUID_HELPER, os.X_OK), reason="squid's helper is not installed")),
], ids=["plain", "squid"])
def test_a_logfile_daemon_without_acknowledgements_gets_every_line(make_labsquid, program):
    """squid's log_file_daemon never greets nor acknowledges.  The kid stops
    waiting for it (it held every line, then every client at the queue's
    bound) and treats sent as done: every line is written, a warning says
    what is given up, and the exit does not wait for acknowledgements."""
    ls = make_labsquid(dispatch="notify", extra=f"logfile_daemon {program}\n")
    ls.start(wait=False)  # (wait_ready looks for our daemon's title)
    wait_for(lambda: ls.listening() and '"service_ready"' in ls.stderr_text(), what="ready")
    for _ in range(30):
        hello(ls.port)
    wait_for(lambda: len(ls.access_lines()) == 30, timeout=10, what="30 lines on disk")
    assert '"logfile_daemon_without_acknowledgements"' in ls.stderr_text()
    started = time.monotonic()
    assert ls.stop() == 0
    assert time.monotonic() - started < LOGGER_CLOSE_LIMIT / 2, "the exit waited for acks"
    assert len(ls.access_lines()) == 30
    assert "access_log_flush_timeout" not in ls.stderr_text()


def test_a_stdio_access_log_is_written(make_labsquid):
    """squid writes ``stdio:`` logs from the process itself; labsquid's
    logfile daemon writes them like ``daemon:`` ones (they used to be
    accepted and never written)."""
    ls = make_labsquid(dispatch="notify")
    ls.write_config(text=ls.config_text().replace("access_log daemon:", "access_log stdio:"))
    ls.start()
    for _ in range(3):
        hello(ls.port)
    wait_for(lambda: len(ls.access_lines()) == 3, what="three lines")
    assert ls.stop() == 0


def test_term_waits_for_in_flight_request(make_labsquid, origin):
    ls = make_labsquid().start()
    result = {}
    t = threading.Thread(target=lambda: result.update(
        status=proxied_get(ls.port, origin.url("/slow/1"))))
    t.start()
    wait_for(lambda: origin.heads, what="the request to reach the origin")
    ls.signal(signal.SIGTERM)
    t.join(10)
    assert result.get("status") == 200
    assert ls.proc.wait(10) == 0
    assert any("/slow/1" in line for line in ls.access_lines())


def test_hup_that_drops_a_port_closes_it_and_lets_the_old_kid_finish(make_labsquid, origin):
    """A port change replaces the kid: the dropped port stops listening (squid
    closes it too), the kept one never does, and a request in flight on the
    old kid is answered within shutdown_lifetime, not cut."""
    second = free_port()
    ls = make_labsquid(dispatch="notify", extra=f"http_port 127.0.0.1:{second}\n"
                       "shutdown_lifetime 10 seconds\n").start()
    old_kid = ls.kid()
    assert proxied_get(second, origin.url("/id/on-second")) == 200
    before = int(manager_page(ls.port, "counters")["client_http.requests"])
    result = {}
    t = threading.Thread(target=lambda: result.update(
        status=proxied_get(ls.port, origin.url("/slow/3"))))
    t.start()
    wait_for(lambda: any("/slow/3" in h for h in origin.heads), what="the slow request")
    ls.write_config(extra="shutdown_lifetime 10 seconds\n")  # without the second port
    ls.signal(signal.SIGHUP)
    # Closed while the old kid still drains, not when its last request ends.
    wait_for(lambda: not listening_sockets(second), timeout=2, what="the dropped port closed")
    assert t.is_alive(), "the old kid's request ended before the port closed"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", second), timeout=2)
    assert proxied_get(ls.port, origin.url("/id/during")) == 200
    t.join(10)
    assert result.get("status") == 200, "the request in flight on the old kid was cut"
    wait_for(lambda: '"retired_kid_exited"' in ls.stderr_text(), what="the old kid's exit")
    assert old_kid.pid != ls.kid().pid
    # The new kid's cache manager goes on from the old one's figures.
    after = int(manager_page(ls.port, "counters")["client_http.requests"])
    assert after >= before + 1  # + the request during the reload
    assert "stats_carry_over_failed" not in ls.stderr_text()
    assert not os.path.exists(f"/dev/shm/labsquid-{old_kid.pid}")
    for event in ("second_term_exiting_now", "master_gone_shutting_down", "callback_failed"):
        assert event not in ls.stderr_text()
    assert ls.stop() == 0


def test_a_port_change_that_could_not_bind_is_tried_again_on_the_next_reload(make_labsquid,
                                                                             origin):
    """The master kept the new config after a failed bind, so the next reload
    saw no change and the port was never opened; reordered lines, on the
    other hand, are no change at all (the kid stays)."""
    first, second = free_port(), free_port()
    ls = make_labsquid(dispatch="notify", extra=f"http_port 127.0.0.1:{first}\n").start()
    kid = ls.kid()
    swapped = ls.config_text(extra="").replace(f"http_port 127.0.0.1:{ls.port}\n", "")
    ls.write_config(text=f"http_port 127.0.0.1:{first}\nhttp_port 127.0.0.1:{ls.port}\n"
                    + swapped)
    ls.signal(signal.SIGHUP)
    wait_for(lambda: '"reconfigured"' in ls.stderr_text(), what="the reload")
    assert ls.kid().pid == kid.pid and "ports_changed_replacing_kid" not in ls.stderr_text()
    with socket.create_server(("127.0.0.1", second)) as taken:
        ls.write_config(extra=f"http_port 127.0.0.1:{second}\n")
        ls.signal(signal.SIGHUP)
        wait_for(lambda: "reconfigure_bind_failed" in ls.stderr_text(), what="the failed bind")
        assert taken.fileno() >= 0
    ls.signal(signal.SIGHUP)  # the same file again, the port free now
    wait_for(lambda: listening_sockets(second), what="the port bound on the second try")
    assert proxied_get(second, origin.url("/id/retried")) == 200
    assert ls.stop() == 0


def test_second_term_exits_at_once_still_flushing(make_labsquid, origin):
    ls = make_labsquid(extra="shutdown_lifetime 30 seconds\n").start()
    hello(ls.port)
    t = threading.Thread(target=lambda: _swallow(proxied_get, ls.port, origin.url("/slow/20")))
    t.start()
    wait_for(lambda: origin.heads, what="the slow request to start")
    started = time.monotonic()
    ls.signal(signal.SIGTERM)
    time.sleep(0.3)
    ls.signal(signal.SIGTERM)
    assert ls.proc.wait(10) == 0
    assert time.monotonic() - started < 8, "did not wait for shutdown_lifetime"
    assert any(" NONE_NONE/400 " in line for line in ls.access_lines())


def _swallow(fn, *args):  # noqa: ANN001, ANN202
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the connection is cut on purpose
        pass


def test_no_thread_ever_forks(make_labsquid):
    """Every labsquid process is single-threaded (the notes' experiment 4)."""
    ls = make_labsquid(dispatch="notify").start()
    procs = [ls.master, *ls.master.children(recursive=True)]
    assert len(procs) == 5
    assert all(p.num_threads() == 1 for p in procs), [(p.pid, p.num_threads()) for p in procs]
    assert ls.stop() == 0


@pytest.mark.parametrize("dispatch", ["serial", "notify"])
def test_full_queue_holds_clients_back_and_drops_no_line(make_labsquid, dispatch):
    """A wedged logfile daemon (squid drops lines when its buffer overflows):
    once the kid's queue is full it takes no more lines, so the clients wait
    (serial: at once; a pool worker: when its 1 MiB pipe to the kid is full
    too), and when the daemon catches up every request is answered and
    logged, once."""
    ls = make_labsquid(dispatch=dispatch, extra="logfile_queue_size 70 KB\n").start()
    daemon = ls.logfile_daemon()
    daemon.suspend()  # SIGSTOP: as stuck as a daemon on a hung disk
    pad = "x" * 30000  # ~35 lines fill a worker's pipe; two fill the queue
    urls = [f"http://127.0.0.1:9/{i:03d}/{pad}" for i in range(200)]  # port 9: a quick 403
    answered: list[int] = []
    held = None
    try:
        for i, url in enumerate(urls):
            s = socket.create_connection(("127.0.0.1", ls.port), timeout=10)
            s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            s.settimeout(1.5)
            try:
                reply = s.recv(20)
            except TimeoutError:
                held = s  # this client waits for its line to find room
                break
            s.close()
            assert reply.startswith(b"HTTP/1.1 403"), reply
            answered.append(i)
        assert held is not None, "every client answered while the daemon was stopped"
    finally:
        daemon.resume()
    held.settimeout(10)
    assert held.recv(20).startswith(b"HTTP/1.1 403")  # the daemon caught up: it goes on
    held.close()
    answered.append(len(answered))
    for i in range(len(answered), len(answered) + 20):  # and serving goes on
        get_denied(ls.port, urls[i])
        answered.append(i)
    code = ls.stop()
    logged = [line.split()[6] for line in ls.access_lines()]
    sent = [urls[i] for i in answered]
    proof.record("fault", f"wedged logfile daemon (SIGSTOP), queue full ({dispatch})",
                 len(sent), len(set(sent) ^ set(logged)) + abs(len(logged) - len(sent))
                 + int(code != 0), unit="lines",
                 detail="clients held back while the queue and pipes are full; every "
                        "answered request logged once after the daemon resumes")
    assert code == 0
    assert sorted(logged) == sorted(sent)


@pytest.mark.parametrize("dispatch", ["serial", "notify"])
def test_daemon_killed_while_the_kid_drains_at_exit_is_replaced(make_labsquid, dispatch):
    """SIGTERM while the daemon has lines it has not written (stopped: a hung
    disk), then the daemon dies: a new one writes them, every answered request
    is logged once, and labsquid exits 0 without waiting out its flush limit."""
    ls = make_labsquid(dispatch=dispatch).start()
    daemon = ls.logfile_daemon()
    daemon.suspend()
    urls = [f"http://127.0.0.1:9/exit-{i:02d}" for i in range(20)]  # port 9: a quick 403
    for url in urls:
        get_denied(ls.port, url)
    ls.signal(signal.SIGTERM)
    wait_for(lambda: '"connections_drained"' in ls.stderr_text(),
             what="the kid waiting on its logfile daemon at exit")
    began = time.monotonic()
    daemon.kill()
    code = ls.stop()
    took = time.monotonic() - began
    logged = [line.split()[6] for line in ls.access_lines()]
    assert code == 0, ls.stderr_text()[-3000:]
    assert sorted(logged) == urls
    assert took < 5, f"exit took {took:.1f} s after the daemon died"


def test_exit_right_after_a_reload_that_moved_the_log_waits_for_the_old_file(make_labsquid):
    """The old file's daemon is stuck (SIGSTOP) with more lines than its socket
    holds; a reload moves access_log, then SIGTERM: the kid waits for the old
    logger as for the current one, and every line reaches the old file."""
    ls = make_labsquid(dispatch="serial").start()
    old_daemon = ls.logfile_daemon()
    old_daemon.suspend()
    pad = "x" * 6000  # ~100 lines: more than the daemon's socket buffers hold
    urls = [f"http://127.0.0.1:9/{i:03d}/{pad}" for i in range(100)]  # port 9: a quick 403
    for url in urls:
        get_denied(ls.port, url)
    old_log = ls.access_log
    move_access_log(ls, old_log.with_name("moved.log"))
    ls.signal(signal.SIGTERM)
    wait_for(lambda: '"connections_drained"' in ls.stderr_text(), what="the drain")
    time.sleep(0.5)
    assert ls.proc.poll() is None, "exited with the old file's lines still queued"
    old_daemon.resume()
    assert ls.stop() == 0
    wait_for(lambda: not psutil.pid_exists(old_daemon.pid) or old_daemon.status() == "zombie",
             what="the old daemon done")
    logged = [line.split()[6] for line in old_log.read_text().splitlines()]
    assert logged == urls


def test_a_retired_daemon_that_never_drains_is_given_up_after_the_limit(make_labsquid):
    """A reload moves access_log while the old file's daemon is stuck (SIGSTOP)
    with lines unacknowledged: the kid serves on into the new file, waits the
    exit's flush limit for the old daemon, then says so and lets go of it (its
    socket closes: EOF). A daemon that recovers later still writes what it got,
    and its exit is reaped as its own."""
    ls = make_labsquid(dispatch="serial").start()
    kid, old_daemon = ls.kid(), ls.logfile_daemon()
    old_log = ls.access_log
    get_denied(ls.port, "http://127.0.0.1:9/before")
    wait_for(lambda: "/before" in old_log.read_text(), what="the first line")
    fds = kid.num_fds()
    old_daemon.suspend()
    stuck = [f"http://127.0.0.1:9/stuck-{i}" for i in range(5)]
    for url in stuck:
        get_denied(ls.port, url)
    new_log = old_log.with_name("moved.log")
    move_access_log(ls, new_log)
    reloaded = time.monotonic()
    get_denied(ls.port, "http://127.0.0.1:9/after")
    wait_for(lambda: new_log.exists() and "/after" in new_log.read_text(),
             what="the line served after the reload, in the new file")
    assert '"access_log_flush_timeout"' not in ls.stderr_text()
    wait_for(lambda: '"access_log_flush_timeout"' in ls.stderr_text(),
             timeout=LOGGER_CLOSE_LIMIT + 5, what="the kid giving up on the old daemon")
    assert time.monotonic() - reloaded >= LOGGER_CLOSE_LIMIT - 1
    # Its socket is closed: the new daemon's took its place in the count.
    wait_for(lambda: kid.num_fds() == fds, what=f"the kid back to {fds} descriptors")
    assert old_daemon.status() == psutil.STATUS_STOPPED
    assert '"logfile_daemon_stopped"' not in ls.stderr_text()
    old_daemon.resume()
    wait_for(lambda: '"logfile_daemon_stopped"' in ls.stderr_text(),
             what="the old daemon's exit, reaped as its own")
    assert [line.split()[6] for line in old_log.read_text().splitlines()][1:] == stuck
    get_denied(ls.port, "http://127.0.0.1:9/later")
    wait_for(lambda: "/later" in new_log.read_text(), what="serving and logging go on")
    assert ls.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_root_start_drops_to_cache_effective_user(make_labsquid, tmp_path_factory):
    import pwd
    import tempfile
    from pathlib import Path

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="labsquid-user-"))
    base.chmod(0o755)  # the unprivileged kid must reach its log folder
    try:
        ls = make_labsquid(extra="cache_effective_user nobody\n")
        ls.access_log = base / "logs" / "access.log"  # made and chowned by labsquid itself
        ls.write_config(extra="cache_effective_user nobody\n")
        ls.start()
        kid, daemon = ls.kid(), ls.logfile_daemon()
        still_privileged = sum(p is None or p.uids().effective != nobody.pw_uid
                               for p in (kid, daemon))
        proof.record("security", "unprivileged user (cache_effective_user)", 2,
                     still_privileged, unit="processes",
                     detail="started as root: the kid and the logfile daemon run as nobody")
        assert daemon is not None, ls.stderr_text()
        assert ls.master.uids().real == 0, "the master stays root, like squid's"
        assert kid.uids().effective == nobody.pw_uid
        assert daemon.uids().effective == nobody.pw_uid
        hello(ls.port)
        wait_for(ls.access_lines, what="a line written by the unprivileged daemon")
        assert os.stat(ls.access_log).st_uid == nobody.pw_uid
        assert ls.stop() == 0
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
