"""The response head the proxy relays, as squid writes it (sans-I/O: forward.response_head).

squid 5.7, asked for the same origin replies side by side, rewrites the reason
phrase from its own table, adds Date when the origin sent none, and puts
X-Cache and X-Cache-Lookup before its Via.
"""

from __future__ import annotations

import email.utils
import time

import pytest

from labsquid.http import Headers, Response
from labsquid.proxy.forward import ForwardPolicy, reason_phrase, response_head

POLICY = ForwardPolicy("proxy.example", "labsquid/9", via=True, forwarded_for="on",
                       server_persistent=True, http_port=3128)


def relay(status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
          framing: str | int | None = 2) -> list[bytes]:
    resp = Response(status, reason, b"1.1", Headers(fields))
    head = response_head(resp, POLICY, framing, keep_alive=True)
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_squid_order_after_the_origin_fields() -> None:
    lines = relay(200, b"Fine Thanks", [(b"Content-Type", b"text/plain"),
                                        (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT")])
    assert lines == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"Date: Mon, 01 Jan 2024 00:00:00 GMT",
        b"Content-Length: 2",
        b"X-Cache: MISS from proxy.example",
        b"X-Cache-Lookup: MISS from proxy.example:3128",
        b"Via: 1.1 proxy.example (labsquid/9)",
        b"Connection: keep-alive",
    ]


def test_a_response_without_date_gets_one_of_now() -> None:
    before = int(time.time())
    lines = relay(204, b"No Content", [], framing=None)
    dates = [line[len(b"Date: "):] for line in lines if line.startswith(b"Date: ")]
    assert len(dates) == 1
    when = email.utils.parsedate_to_datetime(dates[0].decode())
    assert before <= when.timestamp() <= time.time() + 1
    assert dates[0].endswith(b" GMT")
    assert lines.index(b"Date: " + dates[0]) < lines.index(b"X-Cache: MISS from proxy.example")


@pytest.mark.parametrize("status, phrase", [
    (200, b"OK"), (404, b"Not Found"), (505, b"HTTP Version not supported"),
    (299, b"Unassigned"), (418, b"Unassigned"), (599, b"Unassigned"),
])
def test_reason_phrase_is_squids_not_the_origins(status: int, phrase: bytes) -> None:
    assert reason_phrase(status) == phrase
    assert relay(status, b"Whatever The Origin Said", [])[0] == b"HTTP/1.1 %d %s" % (status,
                                                                                     phrase)


def test_interim_responses_get_no_cache_fields_or_date() -> None:
    lines = relay(103, b"Hints", [(b"Link", b"</s.css>; rel=preload")], framing=None)
    assert lines[0] == b"HTTP/1.1 103 Early Hints"
    names = {line.split(b":")[0] for line in lines[1:]}
    assert names == {b"Link", b"Via"}


def test_date_is_not_doubled_whatever_its_case() -> None:
    lines = relay(200, b"OK", [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")])
    assert [line for line in lines if line.lower().startswith(b"date:")] == [
        b"date: Mon, 01 Jan 2024 00:00:00 GMT"]
