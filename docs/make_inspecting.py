#!/usr/bin/env python3
"""Regenerate docs/inspecting.md: every transcript in it is produced here, never typed.

    .venv/bin/python docs/make_inspecting.py        (as root, with strace and lsof installed)

It starts a labsquid (serial mode, so one process serves and its system calls
read like the notes' experiment 1), drives it with a telnet-style client, and
records what ps, lsof, strace and ``labsquid -k status`` show.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def run(argv: list[str], timeout: float = 20) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return (out.stdout + out.stderr).rstrip()


def hello(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"hello\r\n")
        while s.recv(65536):
            pass


def traced(pid: int, action, args: list[str]) -> str:  # noqa: ANN001
    """strace -p PID around ``action()``; the trace, with long strings cut."""
    out = Path(tempfile.mktemp(prefix="strace-"))
    tracer = subprocess.Popen(["strace", "-o", str(out), "-s", "48", *args, "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    action()
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(10)
    text = out.read_text()
    out.unlink()
    return text.rstrip()


def under_systemd() -> dict[str, str]:
    """systemctl status and journalctl from the package running in a booted systemd.

    Uses the test suite's harness (tests/support/systemd.py): a real systemd
    252 in namespaces on a throw-away overlay, with the built .deb installed.
    """
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.systemd import SystemdContainer, build_deb, unavailable_reason

    if unavailable_reason():
        return {"systemctl": f"(systemd cannot boot here: {unavailable_reason()})",
                "journal": "", "journal_kid": ""}
    out = {}
    with SystemdContainer() as box:
        box.exec("rm", "-f", "/usr/sbin/policy-rc.d", check=True)
        box.install_deb(build_deb())
        box.systemctl("restart", "labsquid")
        kid = box.exec("pgrep", "-f", "^[(]labsquid-1[)]").stdout.split()[0]
        box.exec("kill", "-9", kid)
        time.sleep(2)
        out["systemctl"] = box.exec("systemctl", "status", "--no-pager", "-l", "-n", "0",
                                    "labsquid").stdout.rstrip()
        out["journal"] = box.exec("journalctl", "-u", "labsquid", "--no-pager", "-n", "12",
                                  "-o", "cat").stdout.rstrip()
        died = [e for e in box.journal_json("-u", "labsquid")
                if e.get("LABSQUID_EVENT") == "kid_died"]
        fields = {k: v for k, v in died[-1].items()
                  if k.startswith("LABSQUID_") or k in ("MESSAGE", "PRIORITY", "_PID")}
        out["journal_kid"] = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return out


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="labsquid-doc-"))
    port = 3128 + os.getpid() % 1000
    conf = work / "labsquid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\npid_filename {work}/labsquid.pid\n"
        f"cache_log {work}/cache.log\naccess_log daemon:{work}/access.log squid\n"
        "pool_dispatch serial\nshutdown_lifetime 1 second\n"
        "acl CONNECT method CONNECT\nhttp_access allow localhost\nhttp_access deny all\n")
    master = subprocess.Popen([PY, "-m", "labsquid", "-f", str(conf), "--foreground", "-sYC"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    for _ in range(100):
        if (work / "access.log").exists() and "kid" in run(["ps", "--ppid", str(master.pid)]):
            break
        time.sleep(0.1)
    time.sleep(1)
    kid = int(run(["pgrep", "-P", str(master.pid)]).split()[0])
    daemon = int(run(["pgrep", "-P", str(kid), "-f", "logfile-daemon"]).split()[0])
    sub = {"PORT": str(port), "MASTER": str(master.pid), "KID": str(kid),
           "DAEMON": str(daemon), "WORK": str(work)}

    t = {}
    t["ps"] = run(["ps", "-o", "user,pid,ppid,args", "--forest", "-p",
                   f"{master.pid},{kid},{daemon}"])
    t["lsof"] = run(["lsof", "-n", "-P", "-a", "-d", "0-255", "-p", str(daemon)])
    t["daemon"] = traced(daemon, lambda: hello(port), [])
    t["kid"] = traced(kid, lambda: hello(port), ["-e", "trace=!getpid,clock_gettime"])
    t["status"] = run([PY, "-m", "labsquid", "-f", str(conf), "-k", "status"])

    def kill_kid() -> None:
        os.kill(kid, signal.SIGKILL)
        time.sleep(1.5)

    t["restart"] = traced(master.pid, kill_kid,
                          ["-f", "-e", "trace=clone,clone3,fork,vfork,execve,socketpair,dup2,"
                           "wait4,setsid,kill,exit_group"])
    master.send_signal(signal.SIGTERM)
    master.wait(20)

    t.update(under_systemd())

    template = (HERE / "inspecting.md.in").read_text()
    for key, text in t.items():
        text = text.replace(str(work), "/tmp/labsquid-doc")
        template = template.replace("{{" + key + "}}", text)
    for key, value in sub.items():
        template = template.replace("{{" + key + "}}", value)
    (HERE / "inspecting.md").write_text(template)
    print(f"wrote {HERE / 'inspecting.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
