"""squid's command line against real instances: -k, -z, -N, daemonising, bad configs."""

from __future__ import annotations

import itertools
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from support import proof
from support.service import DEFAULT_RULES, wait_for

pytestmark = pytest.mark.slow


def _pid(ls) -> int:
    return int(ls.pidfile.read_text())


def test_k_commands_against_a_running_instance(make_labsquid):
    ls = make_labsquid(dispatch="notify").start()
    check = ls.run("-k", "check")
    assert check.returncode == 0 and f"PID {ls.proc.pid}" in check.stdout
    assert _pid(ls) == ls.proc.pid

    assert ls.run("-k", "rotate").returncode == 0
    wait_for(lambda: ls.access_log.with_name("access.log.0").exists(), what="rotation")

    old = {w.pid for w in ls.workers()}
    assert ls.run("-k", "reconfigure").returncode == 0
    wait_for(lambda: old.isdisjoint(w.pid for w in ls.workers()) and len(ls.workers()) == 2,
             what="workers of the new generation")

    assert ls.run("-k", "shutdown").returncode == 0
    assert ls.proc.wait(15) == 0
    gone = ls.run("-k", "check")
    assert gone.returncode == 1 and "No running copy" in gone.stderr


def test_k_interrupt_and_kill(make_labsquid):
    ls = make_labsquid().start()
    assert ls.run("-k", "interrupt").returncode == 0
    assert ls.proc.wait(10) == 0
    ls2 = make_labsquid().start()
    tree = [ls2.master, *ls2.master.children(recursive=True)]
    assert ls2.run("-k", "kill").returncode == 0
    assert ls2.proc.wait(10) == -signal.SIGKILL
    # The kid notices its master is gone and shuts down by itself.
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                             for p in tree[1:]), what="the orphaned tree to exit")


def test_second_instance_is_refused(make_labsquid):
    ls = make_labsquid().start()
    second = subprocess.run(ls.command("--foreground"), capture_output=True, text=True,
                            timeout=20, cwd=ls.folder)
    assert second.returncode == 1
    assert "already running" in second.stderr and str(ls.proc.pid) in second.stderr
    assert ls.proc.poll() is None and _pid(ls) == ls.proc.pid
    assert ls.stop() == 0


def test_second_instance_started_as_a_daemon_says_why_on_the_terminal(make_labsquid):
    ls = make_labsquid().start()
    second = ls.run("-sYC")
    assert second.returncode == 1
    assert "FATAL: labsquid is already running" in second.stderr
    assert ls.proc.poll() is None and ls.stop() == 0


@pytest.mark.parametrize("mode", [("--foreground",), ("-N",), ()],
                         ids=["foreground", "no-daemon", "daemon"])
def test_a_port_in_use_is_a_fatal_line_and_a_failed_start(make_labsquid, mode):
    """squid's 'FATAL: Unable to open HTTP Socket', naming the address: no
    traceback, a non-zero exit, in daemon mode too (the status comes after
    the bind), and no PID file left behind."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ls = make_labsquid(port=port)
        (ls.folder / "logs").mkdir()
        started = ls.run(*mode, "-sYC")
    assert started.returncode == 1, started.stderr
    expected = f"FATAL: Unable to open HTTP Socket: 127.0.0.1:{port}: Address already in use"
    assert expected in started.stderr
    assert "Traceback" not in started.stderr
    assert not ls.pidfile.exists()


def test_a_relative_config_path_still_reloads(make_labsquid):
    """``-f labsquid.conf`` from its folder: the kid, which works from ``/``,
    reads the same file on a reload (it used to refuse the reload)."""
    ls = make_labsquid(dispatch="notify")
    ls.command = lambda *args: [sys.executable, "-m", "labsquid", "-f", "labsquid.conf", *args]
    ls.start()
    ls.write_config(extra="visible_hostname reloaded.test\n")
    assert ls.run("-k", "reconfigure").returncode == 0
    wait_for(lambda: '"reconfigured"' in ls.stderr_text(), what="the reload")
    assert "reconfigure_refused" not in ls.stderr_text()
    assert ls.stop() == 0


def test_relative_file_names_in_the_config_keep_their_folder_over_a_reload(
        make_labsquid, origin):
    """``access_log daemon:rel/access.log`` means the starting folder's rel/ at
    start and after a reload alike (the reload used to read it from ``/``,
    where the kid works, and moved the log to /rel/access.log)."""
    ls = make_labsquid(dispatch="notify")
    text = ls.config_text().replace(f"daemon:{ls.access_log}", "daemon:rel/access.log")
    assert "daemon:rel/access.log" in text
    ls.write_config(text=text)
    (ls.folder / "rel").mkdir()
    ls.start()
    log = ls.folder / "rel" / "access.log"
    assert _fetch(ls.port, origin.url("/id/before")) == 200
    wait_for(lambda: log.exists() and "/id/before" in log.read_text(), what="the first line")
    ls.signal(signal.SIGHUP)
    wait_for(lambda: '"reconfigured"' in ls.stderr_text(), what="the reload")
    assert _fetch(ls.port, origin.url("/id/after")) == 200
    wait_for(lambda: "/id/after" in log.read_text(), what="the line after the reload")
    assert not Path("/rel/access.log").exists()
    assert ls.stop() == 0


def _fetch(port: int, url: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        return int(s.recv(64).split()[1])


def test_stale_pid_file_is_taken_over(make_labsquid):
    ls = make_labsquid()
    ls.pidfile.write_text("999999\n")
    ls.start()
    assert _pid(ls) == ls.proc.pid
    assert ls.stop() == 0


def test_pid_file_symlink_is_refused(make_labsquid, tmp_path):
    ls = make_labsquid()
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.symlink(victim, ls.pidfile)
    ls.start(wait=False)
    code = ls.proc.wait(15)
    kept = victim.read_text() == "keep me\n"
    proof.record("security", "symlink at the pid file's path", 1,
                 int(code != 1 or not kept), unit="files written",
                 detail="the start is refused (exit 1); the link's target is untouched")
    assert code == 1
    assert "symbolic link" in ls.stderr_text()
    assert kept


def test_parse_lists_every_problem(make_labsquid):
    ls = make_labsquid()
    good = ls.run("-k", "parse")
    assert good.returncode == 0 and good.stderr == ""
    ls.write_config(text=ls.config_text() + "htp_port 3129\nshutdown_lifetime 3 parsecs\n"
                    "http_access allow nosuchacl\n")
    bad = ls.run("-k", "parse")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    n = len(ls.config_text().splitlines())
    assert lines == [
        f"FATAL: {ls.conf} line {n + 1}: unknown directive 'htp_port'",
        f"FATAL: {ls.conf} line {n + 2}: shutdown_lifetime: unknown time unit 'parsecs'",
        f"FATAL: {ls.conf} line {n + 3}: http_access: undefined acl 'nosuchacl'",
    ]
    # Starting with that config stops at the first problem and says how to see the rest.
    start = ls.run("--foreground")
    assert start.returncode == 2
    assert start.stderr.startswith(f"FATAL: {ls.conf} line {n + 1}: unknown directive")
    assert "-k parse" in start.stderr


BROKEN = [
    ("http_port notaport", "http_port: "),
    ("workers 2", "workers: "),
    ("logfile_rotate many", "logfile_rotate: "),
    ("acl foo srcc 1.2.3.4", "unknown acl type 'srcc'"),
    ("acl foo src 1.2.3.400", "acl 'foo' src: bad host/IP '1.2.3.400'"),
    ("pool_dispatch magic", "pool_dispatch: "),
    ("via maybe", "via: expected 'on' or 'off', got 'maybe'"),
    ("include /nonexistent/labsquid-*.conf", "include"),
]


@pytest.mark.parametrize(("line", "message"), BROKEN)
def test_broken_config_lines(make_labsquid, line, message):
    ls = make_labsquid()
    ls.write_config(text=ls.config_text() + line + "\n")
    result = ls.run("-k", "parse")
    assert result.returncode == 2
    n = len(ls.config_text().splitlines()) + 1
    assert result.stderr.startswith(f"FATAL: {ls.conf} line {n}: "), result.stderr
    assert message in result.stderr


def test_parse_warns_about_squid_directives_it_ignores(make_labsquid):
    ls = make_labsquid(extra="maximum_object_size 4 MB\ncoredump_dir /var/spool/squid\n")
    done = ls.run("-k", "parse")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 2
    assert f"{ls.conf} line" in warnings[0] and "'maximum_object_size'" in warnings[0]


def test_z_creates_directories(make_labsquid):
    ls = make_labsquid()
    deep = ls.folder / "a" / "b"
    ls.write_config(text=ls.config_text().replace(str(ls.access_log),
                                                  str(deep / "access.log")))
    result = ls.run("-z")
    assert result.returncode == 0
    assert deep.is_dir()


def test_daemonised_start_and_shutdown(make_labsquid):
    ls = make_labsquid()
    (ls.folder / "logs").mkdir()
    started = ls.run("-sYC")
    assert started.returncode == 0, started.stderr
    pid = _pid(ls)
    master = psutil.Process(pid)
    assert master.ppid() != os.getpid()
    # Double fork: a session of its own, but not its leader (it can never
    # acquire a controlling terminal again).
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid
    assert [os.readlink(f"/proc/{pid}/fd/0")] == ["/dev/null"]
    assert os.readlink(f"/proc/{pid}/fd/2") == str(ls.cache_log)
    wait_for(lambda: '"service_ready"' in ls.cache_log.read_text(), what="ready in cache.log")
    assert ls.run("-k", "shutdown").returncode == 0
    wait_for(lambda: not psutil.pid_exists(pid) or
             psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, what="the daemon to exit")
    assert '"master_exiting"' in ls.cache_log.read_text()


@pytest.mark.parametrize("user", [None, "nobody"])
def test_rotate_moves_cache_log_and_every_process_follows(make_labsquid, user):
    """Daemonised, cache_log is every process's stderr.  ``-k rotate``
    renames it by logfile_rotate (as squid does) and the master, the kid and
    each pool child reopen it: none keeps writing into cache.log.0 (or, after
    logrotate, into a deleted file).  With cache_effective_user the new file
    is that user's, or the kid could not reopen it (and access.log did not
    rotate either)."""
    extra = "logfile_rotate 2\n" + (f"cache_effective_user {user}\n" if user else "")
    ls = make_labsquid(dispatch="notify", pool_size=2, extra=extra)
    if user:  # an unprivileged kid must reach its logs
        base = Path(tempfile.mkdtemp(prefix="labsquid-rotate-"))
        base.chmod(0o755)
        ls.cache_log, ls.access_log = base / "logs" / "cache.log", base / "logs" / "access.log"
        ls.write_config(extra=extra)
    ls.cache_log.parent.mkdir(exist_ok=True)
    ls.cache_log.parent.chmod(0o777)
    assert ls.run("-sYC").returncode == 0
    master = psutil.Process(_pid(ls))

    def writers() -> list[psutil.Process]:
        procs = [master, *master.children(recursive=True)]
        return [p for p in procs if os.readlink(f"/proc/{p.pid}/fd/2") != "/dev/null"]

    try:
        wait_for(lambda: len(writers()) == 4, what="master, kid and two children")
        assert {os.readlink(f"/proc/{p.pid}/fd/2") for p in writers()} == {str(ls.cache_log)}
        assert ls.run("-k", "rotate").returncode == 0
        rotated = ls.cache_log.with_name("cache.log.0")
        wait_for(rotated.exists, what="cache.log.0")
        wait_for(lambda: {os.readlink(f"/proc/{p.pid}/fd/2") for p in writers()}
                 == {str(ls.cache_log)}, what="every process writing to the new cache.log")
        assert '"cache_log_rotated"' in ls.cache_log.read_text()
        wait_for(ls.access_log.with_name("access.log.0").exists, what="access.log rotated too")
        if user:
            assert ls.cache_log.stat().st_uid == pwd.getpwnam(user).pw_uid
        assert "cache_log_reopen_failed" not in ls.cache_log.read_text()
    finally:  # a daemon is not stopped by the fixture
        assert ls.run("-k", "shutdown").returncode == 0
        wait_for(lambda: not master.is_running() or master.status() == psutil.STATUS_ZOMBIE,
                 what="the daemon to exit")


def test_no_daemon_mode_is_one_process(make_labsquid):
    ls = make_labsquid()
    ls.start("-N", wait=False)
    wait_for(ls.listening, what="the port")
    with socket.create_connection(("127.0.0.1", ls.port)) as s:
        s.sendall(b"hello\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    # The daemon sets its title once its own start-up is done, which can be
    # after the first request is served: give it that moment.
    def titles() -> list[str]:
        return [" ".join(c.cmdline()).strip() for c in ls.master.children()]

    wait_for(lambda: titles() == [f"(logfile-daemon) {ls.access_log}"], timeout=5,
             what="one child, titled (logfile-daemon)")
    assert titles() == [f"(logfile-daemon) {ls.access_log}"]
    assert ls.stop() == 0
    assert len(ls.access_lines()) == 1


def test_version_help_and_usage():
    run = [sys.executable, "-m", "labsquid"]
    for flag in ("-v", "--version"):  # squid's long forms too
        v = subprocess.run([*run, flag], capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.startswith("labsquid version ")
    for flag in ("-h", "--help"):
        h = subprocess.run([*run, flag], capture_output=True, text=True)
        assert h.returncode == 0 and "-k reconfigure|rotate|shutdown" in h.stdout
    bad = subprocess.run([*run, "-k", "explode"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Usage:" in bad.stderr


def test_a_report_read_only_in_part_ends_quietly():
    # `labsquid -v | head -1`: the reader goes away before the report is done.
    shell = f"{sys.executable} -m labsquid -v | head -c 1 >/dev/null; sleep 0"
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stderr == ""


def test_embedded_default_config(tmp_path):
    """No -f and no /etc/labsquid/labsquid.conf: loopback 3128, files under ./var."""
    if os.path.exists("/etc/labsquid/labsquid.conf"):
        pytest.skip("a system config is installed")
    parse = subprocess.run([sys.executable, "-m", "labsquid", "-k", "parse"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert parse.returncode == 0, parse.stderr
    assert "http_access allow localhost" in DEFAULT_RULES


def test_k_status_prints_the_live_tree_with_ipc_fds(make_labsquid):
    ls = make_labsquid(dispatch="notify").start()
    out = ls.run("-k", "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    kid, daemon = ls.kid(), ls.logfile_daemon()
    assert f"master {ls.proc.pid} [" in text and f"kid {kid.pid} [" in text
    assert f"logfile-daemon {daemon.pid} [" in text
    assert len([ln for ln in text.splitlines() if " worker " in f" {ln.split()[0]} "]) == 2
    # The daemon's fd 0 and fd 1 are the one socketpair end whose peer is the kid.
    block = text.split(f"logfile-daemon {daemon.pid} [")[1].split(" worker ")[0]
    assert block.count(f"<-> kid {kid.pid} fd") == 2
    assert f"fd 3   file       {ls.access_log}" in block
    assert f"TCP 127.0.0.1:{ls.port} (LISTEN)" in text
    assert f"/dev/shm/labsquid-{kid.pid}" in text
    # Each worker's access-log pipe: its write end, the kid's read end.
    for worker in ls.workers():
        after = text.split(f"worker {worker.pid} [")[1].splitlines()[1:]
        block = "\n".join(itertools.takewhile(
            lambda ln: ln.strip().startswith(("fd ", "mmap ")), after))
        assert re.search(rf"pipe:\[\d+\] \(write end\) <-> kid {kid.pid} fd \d+", block), block
        assert re.search(rf"pipe:\[\d+\] \(read end\) <-> worker {worker.pid} fd \d+", text)
    ls.stop()
    gone = ls.run("-k", "status")
    assert gone.returncode == 1 and "No running copy" in gone.stderr


def test_logs_are_json_off_a_terminal_and_readable_on_one(make_labsquid):
    ls = make_labsquid().start()
    first = ls.stderr_text().splitlines()[0]
    assert first.startswith("{") and '"role": "master"' in first and '"pid": ' in first
    ls.stop()
    # The same start on a terminal (script(1) gives it a pty): console lines, not JSON.
    ls2 = make_labsquid()
    cmd = " ".join(ls2.command("--foreground"))
    proc = subprocess.Popen(["script", "-qfec", cmd, "/dev/null"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ls2.folder)
    wait_for(lambda: ls2.pidfile.exists() and ls2.listening(), what="the terminal instance")
    time.sleep(0.5)
    os.kill(int(ls2.pidfile.read_text()), signal.SIGTERM)
    out = proc.communicate(timeout=20)[0].decode(errors="replace")
    lines = [ln for ln in out.splitlines() if "master_started" in ln]
    assert lines and not lines[0].lstrip().startswith("{"), out[:500]
    assert "role=master" in lines[0] and "pid=" in lines[0]
