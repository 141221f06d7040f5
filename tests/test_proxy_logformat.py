"""Log formats other than squid's native one, through a real transaction.

The proxy only looks up request header fields when the access log's format
prints them (``%>h``, as in ``combined``); these tests hold that it still
does when one does.
"""

from __future__ import annotations

import re

import pytest

from support.origin import RawClient, module_origin
from support.service import Labsquid, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def origin():
    yield from module_origin()


def start_with_format(folder, fmt_name: str, logformat: str = "") -> Labsquid:
    ls = Labsquid(folder)
    text = ls.config_text().replace(f"access_log daemon:{ls.access_log} squid",
                                    f"{logformat}access_log daemon:{ls.access_log} {fmt_name}")
    ls.write_config(text=text)
    return ls.start()


def logged_line(folder, origin, fmt_name: str, path: str, headers: str,
                logformat: str = "") -> tuple[str, str]:
    """One request through a labsquid logging in ``fmt_name``; (its URL, its line)."""
    ls = start_with_format(folder, fmt_name, logformat)
    try:
        url = origin.url(path)
        with RawClient(ls.port) as c:
            c.send(f"GET {url} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n"
                   .encode())
            assert c.read_until_close().startswith(b"HTTP/1.1 200")
        line = wait_for(lambda: next((x for x in ls.access_lines() if url in x), None),
                        timeout=5, what=f"the {fmt_name} line")
    finally:
        ls.stop()
    return url, line


def test_combined_logs_referer_and_user_agent(tmp_path, origin):
    url, line = logged_line(tmp_path, origin, "combined", "/id/combined",
                            "Referer: http://example.test/from\r\nUser-Agent: probe/1.0\r\n")
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[[^\]]+\] "GET ' + re.escape(url) + r' HTTP/1\.1" 200 \d+ '
        r'"http://example\.test/from" "probe/1\.0" TCP_MISS:HIER_DIRECT', line), line


def test_custom_format_with_a_request_header(tmp_path, origin):
    url, line = logged_line(tmp_path, origin, "agents", "/id/agents",
                            "User-Agent: custom-agent/2\r\n",
                            logformat="logformat agents %rm %ru %{User-Agent}>h\n")
    assert line == f"GET {url} custom-agent/2", line


def test_a_non_ascii_header_is_logged_as_the_bytes_received(tmp_path, origin):
    """squid prints the bytes it got: 'café' in UTF-8 is c3 a9, escaped to
    %C3%A9 unquoted and kept as is inside quotes; decoded as Latin-1 it was
    logged twice encoded (c3 83 c2 a9)."""
    url, line = logged_line(tmp_path, origin, "agents", "/id/utf8",
                            "User-Agent: caf\u00e9/1\r\n",  # sent as UTF-8
                            logformat='logformat agents %ru %{User-Agent}>h "%{User-Agent}>h"\n')
    assert line == f'{url} caf%C3%A9/1 "caf\u00e9/1"', line
