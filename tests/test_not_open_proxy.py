"""The shipped config is not an open proxy: a client on another host is denied.

Two network namespaces of this test's own, joined by a veth pair on TEST-NET-1
(192.0.2.0/24, documentation addresses no real host uses): labsquid runs in
one, the client in the other. No packet leaves the two namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import proof
from support.service import Labsquid, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HOST_ADDR, PEER_ADDR = "192.0.2.1", "192.0.2.2"

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
head = "GET " + sys.argv[3] + " HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
s.sendall(head.encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.write(data.split(b"\\r\\n\\r\\n")[0].decode("latin-1"))
"""


def shipped_rules() -> str:
    """The acl and http_access lines of conf/labsquid.conf, as shipped."""
    lines = (REPO / "conf" / "labsquid.conf").read_text().splitlines()
    return "\n".join(ln for ln in lines if ln.startswith(("acl ", "http_access "))) + "\n"


@pytest.fixture
def two_hosts():
    """(proxy namespace, client namespace), joined by a veth pair."""
    tag = os.getpid()
    proxy_ns, client_ns = f"lsqp{tag}", f"lsqc{tag}"
    a, b = f"vlp{tag}"[:15], f"vlc{tag}"[:15]
    steps = [
        ["ip", "netns", "add", proxy_ns],
        ["ip", "netns", "add", client_ns],
        ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
        ["ip", "link", "set", a, "netns", proxy_ns],
        ["ip", "link", "set", b, "netns", client_ns],
        ["ip", "netns", "exec", proxy_ns, "ip", "addr", "add", f"{HOST_ADDR}/24", "dev", a],
        ["ip", "netns", "exec", client_ns, "ip", "addr", "add", f"{PEER_ADDR}/24", "dev", b],
    ]
    for ns, dev in ((proxy_ns, a), (client_ns, b)):
        steps += [["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"],
                  ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot make test network namespaces: {result.stderr.strip()}")
        yield proxy_ns, client_ns
    finally:
        for ns in (proxy_ns, client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_client(ns: str, host: str, port: int, url: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host,
                             str(port), url], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_shipped_rules_deny_a_client_from_another_host(tmp_path, two_hosts):
    proxy_ns, client_ns = two_hosts
    rules = shipped_rules()
    assert "http_access deny all" in rules
    ls = Labsquid(tmp_path, rules=rules)
    text = ls.config_text(rules=rules).replace(
        f"http_port 127.0.0.1:{ls.port}\n",
        f"http_port 127.0.0.1:{ls.port}\nhttp_port {HOST_ADDR}:{ls.port}\n")
    ls.write_config(text=text)
    (tmp_path / "logs").mkdir()
    with open(ls.stderr_path, "ab") as err:
        ls.proc = subprocess.Popen(["ip", "netns", "exec", proxy_ns,
                                    *ls.command("--foreground", "-sYC")],
                                   stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                   cwd=tmp_path)
    ls.stderr = open(ls.stderr_path, "ab")  # noqa: SIM115 - closed by ls.stop()
    try:
        wait_for(lambda: '"service_ready"' in ls.stderr_text(), what="labsquid in its netns")
        remote = run_client(client_ns, HOST_ADDR, ls.port, "http://192.0.2.1:9/from-afar")
        proof.record("security", "open proxy: a client on another host, shipped rules", 1,
                     int(not remote.startswith("HTTP/1.1 403 Forbidden")
                         or "X-Squid-Error: ERR_ACCESS_DENIED" not in remote),
                     unit="requests served", detail="conf/labsquid.conf's acl lines: a "
                     "client in another network namespace gets 403 ERR_ACCESS_DENIED")
        assert remote.startswith("HTTP/1.1 403 Forbidden"), remote
        assert "X-Squid-Error: ERR_ACCESS_DENIED" in remote
        # The same proxy answers this machine (localhost): its manager menu.
        local = run_client(proxy_ns, "127.0.0.1", ls.port,
                           f"http://127.0.0.1:{ls.port}/squid-internal-mgr/menu")
        assert local.startswith("HTTP/1.1 200"), local
        lines = wait_for(lambda: len(ls.access_lines()) >= 2 and ls.access_lines(),
                         what="two access.log lines")
        denied = next(ln.split() for ln in lines if "/from-afar" in ln)
        assert denied[2] == PEER_ADDR and denied[3] == "TCP_DENIED/403"
    finally:
        assert ls.stop() == 0
