"""The process tree a user sees with ps and lsof: titles, parents, the daemon's fds."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess

import pytest

from labsquid.inspect import tcp_connections
from support.service import listening_sockets, wait_for

pytestmark = pytest.mark.slow


def title(p) -> str:
    """What ``ps -o args`` shows (setproctitle pads the argv area with spaces)."""
    return " ".join(p.cmdline()).strip()


def _fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


@pytest.mark.parametrize("dispatch", ["serial", "notify"])
def test_titles_and_parents(make_labsquid, dispatch):
    ls = make_labsquid(dispatch=dispatch).start()
    master = ls.master
    args = f"-f {ls.conf} --foreground -sYC"
    assert title(master) == f"labsquid {args}"
    kid = ls.kid()
    assert kid is not None and kid.ppid() == master.pid
    assert title(kid) == f"(labsquid-1) --kid labsquid-1 {args}"
    daemon = ls.logfile_daemon(kid)
    assert daemon is not None and daemon.ppid() == kid.pid
    assert title(daemon) == f"(logfile-daemon) {ls.access_log}"
    workers = ls.workers(kid)
    if dispatch == "serial":
        assert workers == []
    else:
        titles = sorted(title(w) for w in workers)
        assert titles == ["(labsquid-1 worker-1)", "(labsquid-1 worker-2)"]
        assert all(w.ppid() == kid.pid for w in workers)
    assert ls.stop() == 0


def test_logfile_daemon_fds_exactly_as_squid(labsquid):
    daemon = labsquid.logfile_daemon()
    fds = _fd_targets(daemon.pid)
    assert sorted(fds) == [0, 1, 2, 3], fds
    assert fds[0] == fds[1] and fds[0].startswith("socket:"), "fd 0 and 1: one socketpair end"
    assert fds[2] == "/dev/null"
    assert fds[3] == str(labsquid.access_log)
    # fd 3 is open for append only (lsof shows 3w)
    flags = int(open(f"/proc/{daemon.pid}/fdinfo/3").read().split("flags:")[1].split()[0], 8)
    assert flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY
    # fd 0's peer is in the kid: the inode pair of one AF_UNIX SOCK_STREAM socketpair
    kid_sockets = set(_fd_targets(labsquid.kid().pid).values())
    inode = int(fds[0][len("socket:["):-1])
    assert any(t.startswith("socket:[") for t in kid_sockets)
    ss = subprocess.run(["ss", "-xpn"], capture_output=True, text=True).stdout
    line = next(ln for ln in ss.splitlines() if f" {inode} " in ln)
    assert line.startswith("u_str"), line
    assert f"pid={labsquid.kid().pid}," in ss.split(f" {inode} ")[0] or "labsquid" in ss
    assert stat.S_ISREG(os.stat(labsquid.access_log).st_mode)


@pytest.mark.skipif(shutil.which("lsof") is None, reason="lsof not installed")
def test_lsof_view_of_the_daemon(labsquid):
    daemon = labsquid.logfile_daemon()
    out = subprocess.run(["lsof", "-n", "-P", "-p", str(daemon.pid)], capture_output=True,
                         text=True).stdout
    rows = [ln.split() for ln in out.splitlines() if ln.split()[3:4] and
            ln.split()[3][:1].isdigit()]
    fds = {r[3]: r for r in rows}
    assert set(fds) == {"0u", "1u", "2u", "3w"}, out
    assert fds["0u"][4] == "unix" and fds["1u"][4] == "unix"
    assert fds["0u"][5] == fds["1u"][5], "the same socket (same kernel address)"
    assert fds["2u"][-1] == "/dev/null"
    assert fds["3w"][-1] == str(labsquid.access_log)


def test_no_fd_leaks_into_kid(labsquid):
    kid = labsquid.kid()
    targets = _fd_targets(kid.pid)
    # Nothing of the master's leaks: no PID file, no pipe to the test runner.
    assert str(labsquid.pidfile) not in targets.values()
    assert not any(t.startswith("pipe:") for t in targets.values()), targets


def test_telnet_hello_walks_the_whole_path(labsquid):
    """The notes' experiment 1: kid reads 'hello', answers 400, the daemon appends a line."""
    with socket.create_connection(("127.0.0.1", labsquid.port)) as s:
        s.sendall(b"hello\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"X-Squid-Error: ERR_PROTOCOL_UNKNOWN 0" in head
    assert b"<html" in body.lower()
    lines = wait_for(labsquid.access_lines, what="an access.log line")
    fields = lines[-1].split()
    assert fields[2] == "127.0.0.1"
    assert fields[3] == "NONE_NONE/400"
    assert int(fields[4]) == len(reply)
    assert fields[5:] == ["hello", "error:invalid-request", "-", "HIER_NONE/-", "text/html"]


def test_reuseport_children_each_have_their_own_socket(make_labsquid):
    """reuseport: one SO_REUSEPORT socket per child on the same port, bound by the master."""
    ls = make_labsquid(dispatch="reuseport", pool_size=2).start()
    listening = {}
    for worker in ls.workers():
        inodes = set()
        for conn in tcp_connections(worker):
            if conn.status == "LISTEN" and conn.laddr.port == ls.port:
                inodes.add(os.stat(f"/proc/{worker.pid}/fd/{conn.fd}").st_ino)
        assert len(inodes) == 1, (worker.pid, inodes)
        listening[worker.pid] = inodes.pop()
    assert len(listening) == 2 and len(set(listening.values())) == 2, listening
    listening = listening_sockets(ls.port)
    assert len(listening) == 2, listening
    assert ls.stop() == 0
