"""Several access_log files and their acls, through real transactions.

squid's rules (``accessLogLogTo``): each ``access_log`` line whose acls all
match takes the request's line, in order, until a matching ``access_log
none``.  Each file has its own logfile daemon, rotated once per file.
"""

from __future__ import annotations

import socket

import psutil
import pytest

from support.origin import RawClient, module_origin
from support.service import Labsquid, wait_for

pytestmark = pytest.mark.slow

FILES = ("a.log", "b.log", "c.log")


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


def with_logs(ls: Labsquid, access_logs: str, extra: str = "") -> str:
    """The instance's config with ``access_logs`` (lines; {logs} is the logs
    folder) instead of its one default access_log line."""
    lines = access_logs.format(logs=ls.access_log.parent)
    return ls.config_text(extra=extra + lines).replace(
        f"access_log daemon:{ls.access_log} squid\n", "")


def filtered_config(ls: Labsquid) -> str:
    return with_logs(ls, "acl health urlpath_regex ^/id/health\n"
                         "acl post method POST\n"
                         "access_log none health\n"
                         "access_log daemon:{logs}/a.log squid\n"
                         "access_log daemon:{logs}/b.log squid post\n"
                         "access_log stdio:{logs}/c.log common !post\n")


def request(ls: Labsquid, method: str, url: str) -> None:
    body = b"hello" if method == "POST" else b""
    with RawClient(ls.port) as c:
        c.send(f"{method} {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert c.read_until_close().startswith(b"HTTP/1.1 200")


def lines_of(ls: Labsquid, name: str) -> list[str]:
    path = ls.access_log.parent / name
    return path.read_text().splitlines() if path.exists() else []


def request_logged(ls: Labsquid, url: str, *names: str) -> None:
    """A GET of ``url``, once its line is in each of the files ``names``."""
    request(ls, "GET", url)
    for name in names:
        wait_lines(ls, name, url)


def logfile_daemons(ls: Labsquid) -> dict[int, str]:
    """pid -> the file each of the kid's logfile daemons writes (from its title).
    A child just forked (no title yet) or just gone (no command line) is skipped."""
    found = {}
    for child in ls.kid().children():
        try:
            words = " ".join(child.cmdline()).split()
        except psutil.Error:
            continue
        if len(words) >= 2 and words[0] == "(logfile-daemon)":
            found[child.pid] = words[1]
    return found


def wait_lines(ls: Labsquid, name: str, needle: str, count: int = 1) -> list[str]:
    return wait_for(lambda: (found := [x for x in lines_of(ls, name) if needle in x])
                    and len(found) >= count and found, timeout=10,
                    what=f"{count} line(s) with {needle} in {name}")


@pytest.mark.parametrize("dispatch", ["serial", "notify"])
def test_each_file_gets_the_lines_its_acls_choose(tmp_path, origin, dispatch):
    ls = Labsquid(tmp_path, dispatch=dispatch, pool_size=1)  # one child: one order
    ls.write_config(text=filtered_config(ls))
    ls.start()
    try:
        want = [str(ls.access_log.parent / name) for name in FILES]
        wait_for(lambda: sorted(logfile_daemons(ls).values()) == want, timeout=10,
                 what=f"a logfile daemon for each of {FILES}")
        get, post, health = (origin.url("/id/get"), origin.url("/id/post"),
                             origin.url("/id/health"))
        request(ls, "GET", health)
        request(ls, "GET", get)
        request(ls, "POST", post)
        # The last request's lines are in their files: then the others are too
        # (one child, one pipe, one order).
        wait_lines(ls, "b.log", post)
        wait_lines(ls, "a.log", post)
        wait_lines(ls, "c.log", get)
        a, b, c = (lines_of(ls, name) for name in FILES)
        assert [x.split()[6] for x in a] == [get, post]  # squid format: %ru is field 7
        assert [x.split()[6] for x in b] == [post]
        assert len(c) == 1 and f'"GET {get} HTTP/1.1" 200' in c[0]  # common format
        assert not any(health in x for x in a + b + c), "access_log none health"
        assert not ls.access_log.exists()  # the default file is not named any more
    finally:
        assert ls.stop() == 0


def test_rotation_renames_each_file_once_and_a_reload_adds_a_file(tmp_path, origin):
    ls = Labsquid(tmp_path, dispatch="notify")
    logs = ls.access_log.parent
    first = with_logs(ls, "access_log daemon:{logs}/a.log squid\n"
                          "access_log daemon:{logs}/b.log squid\n")
    ls.write_config(text=first)
    ls.start()
    try:
        before = origin.url("/id/before-rotate")
        request_logged(ls, before, "a.log", "b.log")
        assert ls.run("-k", "rotate").returncode == 0
        wait_for(lambda: (logs / "a.log.0").exists() and (logs / "b.log.0").exists(),
                 timeout=10, what="both files rotated")
        after = origin.url("/id/after-rotate")
        request_logged(ls, after, "a.log", "b.log")
        for name in ("a.log", "b.log"):
            assert [x.split()[6] for x in (logs / f"{name}.0").read_text().splitlines()] == \
                [before]
            assert [x.split()[6] for x in lines_of(ls, name)] == [after]
        assert not (logs / "a.log.1").exists() and not (logs / "b.log.1").exists(), \
            "one rename per file, not one per child"

        daemons = logfile_daemons(ls)
        ls.write_config(text=first + f"access_log daemon:{logs / 'c.log'} squid\n")
        assert ls.run("-k", "reconfigure").returncode == 0
        third = origin.url("/id/after-reload")

        def logged_everywhere() -> bool:
            request(ls, "GET", third)  # children of the new config serve it in time
            return bool(lines_of(ls, "c.log"))
        wait_for(logged_everywhere, timeout=15, what="a line in the file the reload added")
        wait_lines(ls, "a.log", third)
        wait_lines(ls, "b.log", third)
        want = [str(logs / name) for name in FILES]
        now = wait_for(lambda: sorted((found := logfile_daemons(ls)).values()) == want
                       and found, timeout=10, what="a logfile daemon for c.log too")
        assert daemons.items() < now.items(), "the kept files' daemons go on"
    finally:
        assert ls.stop() == 0


def test_twelve_files_each_get_their_line(tmp_path, origin):
    """A pool child names each file by its index on the pipe to the kid; no
    index may read as a line break (the eleventh file's once did)."""
    ls = Labsquid(tmp_path, dispatch="notify", pool_size=1)  # one child: one order
    names = [f"f{i}.log" for i in range(12)]
    ls.write_config(text=with_logs(ls, "".join(f"access_log daemon:{{logs}}/{name} squid\n"
                                               for name in names)))
    ls.start()
    try:
        urls = [origin.url(f"/id/twelve-{n}") for n in range(3)]
        for url in urls:
            request(ls, "GET", url)
        for name in names:
            wait_lines(ls, name, urls[-1])
        for name in names:
            assert [x.split()[6] for x in lines_of(ls, name)] == urls, name
    finally:
        assert ls.stop() == 0


def test_a_request_in_flight_over_a_reload_is_logged_by_the_files_it_started_with(
        tmp_path, origin):
    """The first configuration writes a.log (squid) and b.log (common); the
    second swaps them and drops b.log.  A request an old child answers after
    the reload still goes to both of its files in their formats, once each;
    b.log's daemon exits when that child is gone."""
    ls = Labsquid(tmp_path, dispatch="notify")
    logs = ls.access_log.parent
    base = with_logs(ls, "")
    ls.write_config(text=base + f"access_log daemon:{logs / 'a.log'} squid\n"
                                f"access_log daemon:{logs / 'b.log'} common\n")
    ls.start()
    try:
        slow = origin.url("/slow/2")
        with RawClient(ls.port) as c:
            c.send(f"GET {slow} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
            wait_for(lambda: any("/slow/2" in h for h in origin.heads), timeout=5,
                     what="the slow request at the origin")
            ls.write_config(text=base + f"access_log daemon:{logs / 'c.log'} common\n"
                                        f"access_log daemon:{logs / 'a.log'} squid\n")
            assert ls.run("-k", "reconfigure").returncode == 0
            wait_for(lambda: str(logs / "c.log") in logfile_daemons(ls).values(), timeout=10,
                     what="c.log's daemon")
            assert c.read_until_close().startswith(b"HTTP/1.1 200")
        wait_lines(ls, "a.log", slow)
        wait_lines(ls, "b.log", slow)
        after = origin.url("/id/after-the-reload")
        request_logged(ls, after, "c.log", "a.log")
        a, b, c = (lines_of(ls, name) for name in ("a.log", "b.log", "c.log"))
        assert [x.split()[6] for x in a] == [slow, after]  # squid's format, both
        assert len(b) == 1 and f'"GET {slow} HTTP/1.1" 200' in b[0]  # common, in b.log
        assert len(c) == 1 and f'"GET {after} HTTP/1.1" 200' in c[0]
        wait_for(lambda: str(logs / "b.log") not in logfile_daemons(ls).values(),
                 timeout=15, what="b.log's daemon to exit after the old children")
    finally:
        assert ls.stop() == 0


def test_a_dst_acl_on_access_log_sees_the_addresses_a_name_had(tmp_path, origin):
    """squid's rule: the addresses known for the host, and none at all when
    it did not resolve (then dst does not match and !dst does)."""
    ls = Labsquid(tmp_path, dispatch="notify")
    ls.write_config(text=with_logs(ls, "acl inside dst 127.0.0.0/8\n"
                                       "access_log daemon:{logs}/in.log squid inside\n"
                                       "access_log daemon:{logs}/out.log squid !inside\n"))
    ls.start()
    try:
        by_name = f"http://localhost:{origin.port}/id/by-name"  # /etc/hosts: 127.0.0.1
        request(ls, "GET", by_name)
        nowhere = "http://no-such-host.invalid/x"
        with RawClient(ls.port) as c:
            c.send(f"GET {nowhere} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
            assert c.read_until_close().startswith(b"HTTP/1.1 503")
        wait_lines(ls, "out.log", nowhere)
        wait_lines(ls, "in.log", by_name)
        assert [x.split()[6] for x in lines_of(ls, "in.log")] == [by_name]
        assert [x.split()[6] for x in lines_of(ls, "out.log")] == [nowhere]
    finally:
        assert ls.stop() == 0


def test_has_request_keeps_connections_that_sent_nothing_out_of_a_file(tmp_path, origin):
    """squid's remedy for lines of TCP health checks (cf.data.pre's example for
    ``acl has``): every transaction with a request goes to one file, the
    connections that sent none to another, and hello's 400, which has one,
    where squid 5.7 put it here.  An ``http_status`` acl picks the errors."""
    ls = Labsquid(tmp_path, dispatch="notify", pool_size=1)  # one child: one order
    ls.write_config(text=with_logs(ls, "acl hasRequest has request\n"
                                       "acl failed http_status 400-\n"
                                       "access_log daemon:{logs}/req.log squid hasRequest\n"
                                       "access_log daemon:{logs}/noreq.log squid !hasRequest\n"
                                       "access_log daemon:{logs}/failed.log squid failed\n"))
    ls.start()
    try:
        for _ in range(3):  # three health checks
            with socket.create_connection(("127.0.0.1", ls.port), timeout=5) as probe:
                probe.shutdown(socket.SHUT_WR)
                assert probe.recv(100) == b""
        with RawClient(ls.port) as c:
            c.send(b"hello\r\n\r\n")
            assert c.read_until_close().startswith(b"HTTP/1.1 400")
        get = origin.url("/id/with-request")
        request(ls, "GET", get)
        wait_lines(ls, "req.log", get)
        wait_lines(ls, "failed.log", "error:invalid-request")
        wait_lines(ls, "noreq.log", "error:transaction-end-before-headers", count=3)
        assert [x.split()[5:7] for x in lines_of(ls, "req.log")] == [
            ["hello", "error:invalid-request"], ["GET", get]]
        assert [x.split()[3:] for x in lines_of(ls, "noreq.log")] == [
            ["NONE_NONE/000", "0", "-", "error:transaction-end-before-headers", "-",
             "HIER_NONE/-", "-"]] * 3
        # http_status sees the reply's status: only the 400 has one from 400 up.
        assert [x.split()[3] for x in lines_of(ls, "failed.log")] == ["NONE_NONE/400"]
        # A request line whose target is that very URL is a request, refused
        # as any bad URL, not a connection that sent none.
        with RawClient(ls.port) as c:
            c.send(b"GET error:transaction-end-before-headers HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_until_close().startswith(b"HTTP/1.1 400")
        wait_lines(ls, "req.log", "GET error:transaction-end-before-headers")
        assert len(lines_of(ls, "noreq.log")) == 3
    finally:
        assert ls.stop() == 0


def test_rotate_option_is_each_files_own(tmp_path, origin):
    """``rotate=0`` on one line: that file is reopened, not renamed, on -k
    rotate (squid's meaning); the other keeps logfile_rotate's copies."""
    ls = Labsquid(tmp_path, dispatch="serial")
    logs = ls.access_log.parent
    ls.write_config(text=with_logs(ls, "access_log daemon:{logs}/a.log squid rotate=0\n"
                                       "access_log daemon:{logs}/b.log squid\n"))
    ls.start()
    try:
        first = origin.url("/id/before")
        request_logged(ls, first, "a.log", "b.log")
        assert ls.run("-k", "rotate").returncode == 0
        wait_for(lambda: (logs / "b.log.0").exists(), timeout=10, what="b.log rotated")
        second = origin.url("/id/after")
        request_logged(ls, second, "a.log", "b.log")
        assert [x.split()[6] for x in lines_of(ls, "a.log")] == [first, second]
        assert not list(logs.glob("a.log.*"))
    finally:
        assert ls.stop() == 0


@pytest.mark.parametrize("dispatch", ["serial", "notify"])
def test_a_wedged_file_with_on_error_drop_holds_nothing_back(tmp_path, origin, dispatch):
    """b.log's daemon is stopped (a hung disk) and its queue fills: with
    ``on-error=drop`` its new lines are dropped and said so, while every
    client is answered and a.log gets every line."""
    ls = Labsquid(tmp_path, dispatch=dispatch)
    ls.write_config(text=with_logs(ls, "access_log daemon:{logs}/a.log squid\n"
                                       "access_log daemon:{logs}/b.log squid on-error=drop\n",
                                   extra="logfile_queue_size 70 KB\n"))
    ls.start()
    pad = "x" * 30000  # two lines fill b.log's queue, ~35 a child's pipe
    urls = [f"http://127.0.0.1:9/{i:03d}/{pad}" for i in range(120)]  # port 9: a quick 403
    try:
        wait_for(lambda: len(logfile_daemons(ls)) == 2, timeout=10, what="both daemons")
        stopped = next(psutil.Process(pid) for pid, path in logfile_daemons(ls).items()
                       if path.endswith("b.log"))
        stopped.suspend()
        try:
            for url in urls:
                with RawClient(ls.port, timeout=5) as c:
                    c.send(f"GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                           .encode())
                    assert c.read_until_close().startswith(b"HTTP/1.1 403")
            # Every line reaches a.log while b.log's daemon is still stopped
            # (two children: the last request's line may come before another's).
            wait_for(lambda: len(lines_of(ls, "a.log")) >= len(urls), timeout=10,
                     what="every line in a.log")
        finally:
            stopped.resume()
        wait_for(lambda: "access_log_lines_dropped" in ls.stderr_text(), timeout=10,
                 what="the drop reported")
        # Two children's lines may come in either order; each line once.
        assert sorted(x.split()[6] for x in lines_of(ls, "a.log")) == urls
    finally:
        assert ls.stop() == 0
    b = [x.split()[6] for x in lines_of(ls, "b.log")]
    assert 0 < len(b) < len(urls) and len(set(b)) == len(b) and set(b) < set(urls)
