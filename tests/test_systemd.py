"""labsquid as a real systemd service: the units on the host, then the package in a real systemd.

``systemd-analyze`` checks the units on the host.  Everything else happens in one systemd 252
booted in namespaces for this module (``support.systemd.SystemdContainer``), with the .deb from
``packaging/build-deb.sh`` installed by ``apt-get install``; the tests then drive it only the
way an administrator would: ``systemctl``, ``journalctl``, ``curl``, ``logrotate``, ``kill``.
The container has its own network namespace (only ``lo``), so port 3128 clashes with nothing.
The tests share that container and run in file order; each starts from the state it needs.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from support.service import wait_for
from support.systemd import REPO, SystemdContainer, build_deb, unavailable_reason

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

UNIT = "labsquid.service"
PROXY = "http://127.0.0.1:3128"
ORIGIN = "http://127.0.0.1:8080"
CGROUP = "/sys/fs/cgroup/system.slice/labsquid.service"

ORIGIN_UNIT = """\
[Unit]
Description=test origin server for labsquid
[Service]
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/origin
"""

# A client inside the container: WORKERS threads send one request per connection to the proxy
# until DURATION seconds have passed (or /tmp/load.stop exists), each with a unique marker in
# its URL; prints what succeeded and what failed, as JSON.
LOAD = r'''
import json, os, socket, sys, threading, time
port, duration, workers, tag = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ok, failed, lock = [], [], threading.Lock()
deadline = time.monotonic() + duration
def worker(w):
    n = 0
    while time.monotonic() < deadline and not os.path.exists("/tmp/load.stop"):
        n += 1
        marker = f"{tag}-{w}-{n}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall((f"GET http://127.0.0.1:8080/hello.txt?{marker} HTTP/1.1\r\n"
                           "Host: 127.0.0.1:8080\r\nConnection: close\r\n\r\n").encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else data[:40]
            good = status == b"200" and data.endswith(b"hello\n")
            with lock:
                (ok if good else failed).append(marker if good else f"{marker}: {status!r}")
        except OSError as exc:
            with lock:
                failed.append(f"{marker}: {exc!r}")
threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ok": ok, "failed": failed}))
'''

# A keep-alive client inside the container: one request, then (once /tmp/go exists) another
# on the same connection; prints each status line, or EOF when the proxy closed it.
KEEPALIVE = r'''
import os, socket, sys, time
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
def exchange(tag):
    s.sendall(f"GET http://127.0.0.1:8080/hello.txt?{tag} HTTP/1.1\r\n"
              "Host: 127.0.0.1:8080\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"hello\n"):
        chunk = s.recv(65536)
        if not chunk:
            return "EOF"
        data += chunk
    return data.split(b"\r\n", 1)[0].decode()
print(exchange("keepalive-1"), flush=True)
while not os.path.exists("/tmp/go"):
    time.sleep(0.05)
print(exchange("keepalive-2"), flush=True)
'''


# -- on the host --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deb() -> Path:
    return build_deb()


def test_units_verify_clean(deb, tmp_path):
    """``systemd-analyze verify``: no warning for either unit.

    verify checks that ExecStart= programs exist, and /usr/bin/labsquid is not installed on the
    host: the packaged wrapper is shown there in a private mount namespace, through an overlay
    of /usr/bin whose upper layer is a tmpfs (nothing changes on the host).
    """
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "pkg")], check=True)
    script = textwrap.dedent(f"""\
        set -e
        mount -t tmpfs labsquid-verify {tmp_path}/layers
        mkdir {tmp_path}/layers/upper {tmp_path}/layers/work
        mount -t overlay labsquid-verify -o lowerdir=/usr/bin,upperdir={tmp_path}/layers/upper,\
workdir={tmp_path}/layers/work /usr/bin
        cp {tmp_path}/pkg/usr/bin/labsquid /usr/bin/labsquid
        cd {REPO}/units
        systemd-analyze verify ./labsquid.service ./labsquid.socket
        """)
    (tmp_path / "layers").mkdir()
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                             script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_security_exposure_at_most_2():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                             str(REPO / "units/labsquid.service")],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for labsquid\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


# -- inside a booted systemd -------------------------------------------------------------------
@pytest.fixture(scope="module")
def box(deb):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot boot systemd here: {reason}")
    with SystemdContainer() as container:
        # This image has a policy-rc.d forbidding service starts (as in a chroot); a fresh
        # Debian 12 host has none, and the package must start its service there.
        container.exec("rm", "-f", "/usr/sbin/policy-rc.d", check=True)
        container.install_deb(deb)
        container.write_file("/srv/origin/hello.txt", "hello\n")
        container.write_file("/etc/systemd/system/lab-origin.service", ORIGIN_UNIT)
        container.write_file("/usr/local/lib/labsquid-test/load.py", LOAD)
        container.write_file("/usr/local/lib/labsquid-test/keepalive.py", KEEPALIVE)
        container.systemctl("daemon-reload")
        container.systemctl("start", "lab-origin.service")
        wait_for(lambda: container.exec("curl", "-sf", f"{ORIGIN}/hello.txt").stdout == "hello\n",
                 10, what="the origin server")
        yield container


def ensure_active(box: SystemdContainer) -> None:
    if box.exec("systemctl", "is-active", "--quiet", UNIT).returncode != 0:
        box.systemctl("start", UNIT)


def proxy_get(box: SystemdContainer, query: str = "") -> tuple[str, str]:
    """(HTTP status, body) of a GET through the proxy with curl."""
    result = box.exec("curl", "-sS", "--max-time", "20", "-x", PROXY, "-w", "\n%{http_code}",
                      f"{ORIGIN}/hello.txt{query}")
    body, _, status = result.stdout.rpartition("\n")
    return status, body.rstrip("\n")


def main_pid(box: SystemdContainer) -> int:
    return int(box.show(UNIT, "MainPID"))


def processes(box: SystemdContainer) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, args) of every process in the container."""
    out = box.exec("ps", "-eo", "pid=,ppid=,args=", check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        table[int(pid)] = (int(ppid), args)
    return table


def kid_pid(box: SystemdContainer) -> int | None:
    master = main_pid(box)
    kids = [pid for pid, (ppid, args) in processes(box).items()
            if ppid == master and "--kid" in args]
    return kids[0] if kids else None


def unit_cgroup_pids(box: SystemdContainer) -> set[int]:
    out = box.exec("cat", f"{CGROUP}/cgroup.procs").stdout
    return {int(p) for p in out.split()}


def run_load(box: SystemdContainer, duration: float, workers: int, tag: str
             ) -> subprocess.Popen:
    box.exec("rm", "-f", "/tmp/load.stop")
    return box.popen("python3", "/usr/local/lib/labsquid-test/load.py", "3128", str(duration),
                     str(workers), tag)


def load_result(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def access_log(box: SystemdContainer, *names: str) -> str:
    return "".join(box.exec("cat", f"/var/log/labsquid/{n}").stdout for n in names)


def events(box: SystemdContainer, since: str | None = None) -> list[dict]:
    args = ["-u", UNIT] + (["--since", since] if since else [])
    return [e for e in box.journal_json(*args) if "LABSQUID_EVENT" in e]


def now_inside(box: SystemdContainer) -> str:
    return box.exec("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()


# -- the tests ---------------------------------------------------------------------------------
def test_apt_install_creates_user_enables_and_starts(box):
    assert box.exec("id", "-u", "labsquid").returncode == 0
    assert box.exec("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert box.exec("systemctl", "is-enabled", "labsquid.socket").stdout.strip() == "disabled"
    wait_for(lambda: box.exec("systemctl", "is-active", UNIT).stdout.strip() == "active", 30,
             what="labsquid started by the package's postinst")
    for folder in ("/var/log/labsquid", "/var/cache/labsquid", "/run/labsquid"):
        assert box.exec("stat", "-c", "%U", folder).stdout.strip() == "labsquid", folder
    # postinst byte-compiled the package: the sandboxed service cannot write under /usr.
    assert box.exec("test", "-d", "/usr/lib/python3/dist-packages/labsquid/__pycache__"
                    ).returncode == 0


def test_start_returns_after_ready_and_the_port_answers(box):
    box.systemctl("stop", UNIT)
    started = time.monotonic()
    box.systemctl("start", UNIT)
    took = time.monotonic() - started
    # Right after `systemctl start` returns: serving, with no retry.
    assert proxy_get(box, "?first") == ("200", "hello"), f"start took {took:.2f}s"
    assert box.show(UNIT, "ActiveState") == "active"
    assert box.show(UNIT, "StatusText").startswith("kid ")
    assert box.exec("ps", "-o", "user=", "-p", str(main_pid(box))).stdout.strip() == "labsquid"
    ready = [e for e in events(box) if e["LABSQUID_EVENT"] == "service_ready"]
    assert ready and ready[-1]["LABSQUID_PID"] == str(main_pid(box))


def test_status_shows_the_whole_tree_in_the_units_cgroup(box):
    ensure_active(box)
    wait_for(lambda: kid_pid(box), 10, what="the kid")
    status = box.exec("systemctl", "status", "--no-pager", "-l", UNIT).stdout
    for title in ("labsquid --foreground -sYC", "(labsquid-1) --kid labsquid-1",
                  "(logfile-daemon) /var/log/labsquid/access.log", "(labsquid-1 worker-1)"):
        assert title in status, status
    assert "CGroup: /system.slice/labsquid.service" in status
    table = processes(box)
    tree = {main_pid(box)}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    assert len(tree) >= 4  # master, kid, logfile daemon, workers
    assert unit_cgroup_pids(box) == tree


def test_curl_through_the_proxy_logs_an_access_line(box):
    ensure_active(box)
    assert proxy_get(box, "?curl-marker") == ("200", "hello")
    wait_for(lambda: "hello.txt?curl-marker" in access_log(box, "access.log"), 10,
             what="the access.log line")
    line = next(ln for ln in access_log(box, "access.log").splitlines() if "curl-marker" in ln)
    assert " GET http://127.0.0.1:8080/hello.txt?curl-marker " in line
    assert "/200 " in line


def test_the_cache_manager_answers_inside_the_hardened_unit(box):
    """ProcSubset=pid leaves the unit no /proc/stat: the CPU figures of the
    pages and of the kid's minute samples come from /proc/PID/stat."""
    ensure_active(box)
    pages = {}
    for action, expect in (("info", "\tCPU Time:\t"), ("counters", "cpu_time = "),
                           ("5min", "cpu_usage = "), ("service_times", "HTTP Requests (All):")):
        result = box.exec("curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:3128/squid-internal-mgr/{action}")
        pages[action], _, status = result.stdout.rpartition("\n")
        assert status == "200", (action, result.stdout, result.stderr)
        assert expect in pages[action], pages[action]
    # a CPU time read as 0 would mean /proc/PID/stat could not be read either
    assert float(pages["counters"].partition("cpu_time = ")[2].split()[0]) > 0


def test_reload_under_load_fails_no_request(box):
    ensure_active(box)
    master = main_pid(box)
    since = now_inside(box)
    load = run_load(box, duration=4, workers=6, tag="reload")
    time.sleep(0.5)
    for _ in range(3):
        box.systemctl("reload", UNIT)
        # systemd 252 ends the reload job when ExecReload (kill -HUP) exits; the unit stays
        # "reloading" (RELOADING=1) until the master's READY=1, once the kid has reconfigured.
        wait_for(lambda: box.show(UNIT, "ActiveState") == "active", 10, interval=0.05,
                 what="READY=1 after the reload")
        time.sleep(0.7)
    result = load_result(load)
    assert result["failed"] == []
    assert len(result["ok"]) > 20
    assert main_pid(box) == master
    reconfigured = [e for e in events(box, since) if e["LABSQUID_EVENT"] == "reconfigured"]
    assert len(reconfigured) == 3
    assert "Reloaded labsquid.service" in box.journal("-u", UNIT, "--since", since)


def test_reload_keeps_a_keep_alive_connection(box):
    """``systemctl reload`` replaces the pool children; the keep-alive connection of a
    client between two requests moves to a new one instead of being closed."""
    ensure_active(box)

    def workers() -> set[str]:
        return set(box.exec("pgrep", "-f", "worker-").stdout.split())

    box.exec("rm", "-f", "/tmp/go")
    client = box.popen("python3", "/usr/local/lib/labsquid-test/keepalive.py")
    try:
        assert client.stdout.readline().strip() == "HTTP/1.1 200 OK"
        old = workers()
        box.systemctl("reload", UNIT)
        wait_for(lambda: workers() and not workers() & old, 15, interval=0.05,
                 what="only new pool children")
        box.exec("touch", "/tmp/go")
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert out.strip() == "HTTP/1.1 200 OK", (out, err)


def test_logrotate_rotates_without_losing_a_line(box):
    ensure_active(box)
    box.exec("rm", "-f", "/var/log/labsquid/access.log.1")
    load = run_load(box, duration=3, workers=4, tag="rotate")
    time.sleep(1.2)
    rotate = box.exec("logrotate", "-f", "/etc/logrotate.d/labsquid")
    assert rotate.returncode == 0, rotate.stderr
    result = load_result(load)
    assert result["failed"] == []
    expected = set(result["ok"])

    def logged() -> list[str]:
        text = access_log(box, "access.log.1", "access.log")
        return re.findall(r"hello\.txt\?(rotate-\d+-\d+) ", text)

    wait_for(lambda: set(logged()) >= expected, 15, what="every line in the logs")
    found = logged()
    assert sorted(found) == sorted(expected), "a line was lost or written twice"
    old, new = access_log(box, "access.log.1"), access_log(box, "access.log")
    assert "rotate-" in old and "rotate-" in new  # reopened: later lines went to the new file
    assert box.exec("stat", "-c", "%U", "/var/log/labsquid/access.log").stdout.strip() == \
        "labsquid"


def test_kid_killed_with_sigkill_is_restarted_unit_stays_active(box):
    ensure_active(box)
    master, restarts = main_pid(box), box.show(UNIT, "NRestarts")
    kid = wait_for(lambda: kid_pid(box), 10, what="the kid")
    since = now_inside(box)
    box.exec("kill", "-9", str(kid), check=True)
    new_kid = wait_for(lambda: (k := kid_pid(box)) not in (None, kid) and k, 15,
                       what="a new kid")
    wait_for(lambda: proxy_get(box, "?after-kill") == ("200", "hello"), 15,
             what="the proxy serving again")
    assert box.show(UNIT, "ActiveState") == "active"
    assert main_pid(box) == master
    assert box.show(UNIT, "NRestarts") == restarts
    assert new_kid in unit_cgroup_pids(box)
    died = [e for e in events(box, since) if e["LABSQUID_EVENT"] == "kid_died"]
    assert died, "no kid_died event in the journal"
    assert died[0]["LABSQUID_ROLE"] == "master"
    assert died[0]["LABSQUID_SIGNAL"] == "9"
    assert "killed by signal 9" in died[0]["LABSQUID_STATUS"]


def test_journal_carries_labsquid_fields(box):
    entries = events(box)
    roles = {e.get("LABSQUID_ROLE") for e in entries}
    assert {"master", "kid"} <= roles
    for e in entries:
        assert e["LABSQUID_PID"].isdigit()
        assert e["SYSLOG_IDENTIFIER"] == "labsquid"
        assert e["_SYSTEMD_UNIT"] == UNIT
    names = {e["LABSQUID_EVENT"] for e in entries}
    assert {"master_started", "kid_spawned", "kid_started", "service_ready"} <= names
    # journalctl filters on them like on any journal field.
    kid_only = box.journal_json("-u", UNIT, "LABSQUID_ROLE=kid")
    assert kid_only and all(e["LABSQUID_ROLE"] == "kid" for e in kid_only)


def test_hung_kid_makes_the_watchdog_restart_the_unit(box):
    dropin = "/etc/systemd/system/labsquid.service.d/50-test-watchdog.conf"
    box.write_file(dropin, "[Service]\nWatchdogSec=3s\n")
    try:
        box.systemctl("daemon-reload")
        box.systemctl("restart", UNIT)
        assert box.show(UNIT, "WatchdogUSec") == "3s"
        master, restarts = main_pid(box), int(box.show(UNIT, "NRestarts"))
        kid = wait_for(lambda: kid_pid(box), 10, what="the kid")
        since = now_inside(box)
        time.sleep(4)  # longer than WatchdogSec: a healthy kid keeps the watchdog fed
        assert box.show(UNIT, "ActiveState") == "active"
        assert int(box.show(UNIT, "NRestarts")) == restarts and main_pid(box) == master
        box.exec("kill", "-STOP", str(kid), check=True)
        wait_for(lambda: int(box.show(UNIT, "NRestarts")) > restarts
                 and box.show(UNIT, "ActiveState") == "active", 30,
                 interval=0.3, what="the watchdog to restart the unit")
        assert main_pid(box) != master
        assert kid not in processes(box)
        journal = box.journal("-u", UNIT, "--since", since)
        assert "Watchdog timeout" in journal
        assert proxy_get(box, "?after-watchdog") == ("200", "hello")
    finally:
        box.exec("rm", "-f", dropin)
        box.systemctl("daemon-reload")
        box.systemctl("restart", UNIT)


def test_stop_leaves_no_process(box):
    ensure_active(box)
    box.systemctl("stop", UNIT)
    assert box.exec("systemctl", "is-active", UNIT).stdout.strip() == "inactive"
    leftovers = [args for _pid, (_ppid, args) in processes(box).items()
                 if "labsquid" in args or "logfile-daemon" in args]
    assert leftovers == []
    assert box.exec("test", "-e", CGROUP).returncode != 0
    assert box.exec("test", "-e", "/run/labsquid").returncode != 0  # RuntimeDirectory
    refused = box.exec("curl", "-sS", "--max-time", "5", "-x", PROXY, f"{ORIGIN}/hello.txt")
    assert refused.returncode == 7  # couldn't connect


def test_socket_activation_starts_on_first_connection_and_restart_queues(box):
    box.systemctl("stop", UNIT)
    box.systemctl("start", "labsquid.socket")
    try:
        assert box.exec("systemctl", "is-active", UNIT).stdout.strip() == "inactive"
        since = now_inside(box)
        assert proxy_get(box, "?activated") == ("200", "hello")
        # READY=1 follows the kid's report that every part serves; systemd may see it a moment
        # after the first, queued, connection was answered.
        wait_for(lambda: box.exec("systemctl", "is-active", UNIT).stdout.strip() == "active", 10,
                 what="the activated service to be active")
        assert "labsquid.socket" in box.show(UNIT, "TriggeredBy")
        # The kid serves systemd's dual-stack socket ([::]:3128), not one the master bound.
        started = [e for e in events(box, since) if e["LABSQUID_EVENT"] == "kid_started"]
        assert started and "::" in started[-1]["LABSQUID_LISTENING"]

        # A restart while clients keep connecting: they wait in systemd's backlog.
        master = main_pid(box)
        load = run_load(box, duration=30, workers=4, tag="socket")
        time.sleep(0.5)
        box.systemctl("restart", UNIT)
        assert main_pid(box) != master
        time.sleep(0.5)
        box.exec("touch", "/tmp/load.stop")
        result = load_result(load)
        assert result["failed"] == [], result["failed"][:5]
        assert len(result["ok"]) > 10
    finally:
        box.systemctl("stop", "labsquid.socket", UNIT, check=False)
    # Without the socket, the service binds the port itself again.
    box.systemctl("start", UNIT)
    assert proxy_get(box, "?standalone") == ("200", "hello")
    started = [e for e in events(box) if e["LABSQUID_EVENT"] == "kid_started"]
    assert "0.0.0.0:3128" in started[-1]["LABSQUID_LISTENING"]


def test_remove_stops_the_service_and_purge_removes_logs(box):
    ensure_active(box)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    box.exec("apt-get", "remove", "-y", "-q", "labsquid", check=True, env=env)
    assert box.exec("systemctl", "is-active", UNIT).stdout.strip() == "inactive"
    assert [a for _p, (_pp, a) in processes(box).items() if "labsquid" in a] == []
    assert box.exec("test", "-e", "/etc/labsquid/labsquid.conf").returncode == 0  # conffile
    assert box.exec("test", "-e", "/usr/lib/python3/dist-packages/labsquid").returncode != 0
    box.exec("apt-get", "purge", "-y", "-q", "labsquid", check=True, env=env)
    assert box.exec("test", "-e", "/etc/labsquid/labsquid.conf").returncode != 0
    assert box.exec("test", "-e", "/var/log/labsquid").returncode != 0
    assert box.exec("id", "-u", "labsquid").returncode == 0  # users stay, as in Debian
