"""Parse-speed benchmark: ``python -m labsquid.http._bench``.

Times a typical ~470-byte browser request through `RequestReader` and,
for comparison, through httptools (llhttp) with the checks it lacks added
back: llhttp accepts HTTP/0.9 and HTTP/2.0 request lines, double spaces in
the request line, any request-target, missing/duplicate/invalid Host, and
``Transfer-Encoding: gzip, chunked``; so the request line and the Host,
target and framing rules must still run in Python on top of it.
"""

from __future__ import annotations

import timeit

from . import Request, RequestReader
from ._framing import FRAMING_FIELDS, request_framing
from ._head import check_head_bytes, parse_fields, parse_request_line
from ._headers import Headers
from ._target import parse_target, validate_host_header

REQUEST = (
    b"GET http://www.example.com/some/path/to/resource.html?query=string&x=1 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=abcdef0123456789; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Cache-Control: max-age=0\r\n\r\n"
)


def ours_full() -> None:
    reader = RequestReader()
    reader.feed(REQUEST)
    reader.next_event()  # Request
    reader.next_event()  # EndOfMessage


def ours_head() -> None:
    head = REQUEST[:-4]
    lines = head.split(b"\r\n")
    parse_request_line(lines[0])
    check_head_bytes(head, len(lines) - 1)
    parse_fields(lines[1:], 100)


class _Collect:
    __slots__ = ("items", "url")

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.items.append((name.lower(), name, value))


def httptools_head() -> None:
    import httptools

    sink = _Collect()
    httptools.HttpRequestParser(sink).feed_data(REQUEST)


def httptools_full() -> None:
    import httptools

    sink = _Collect()
    parser = httptools.HttpRequestParser(sink)
    parser.feed_data(REQUEST)
    # What llhttp does not check, as RequestReader does it after the head:
    parse_request_line(REQUEST[: REQUEST.find(b"\r\n")])
    headers = Headers._from_items(sink.items)
    request = Request(parser.get_method(), sink.url, parser.get_http_version().encode(), headers)
    parse_target(request.method, request.target)
    fields = headers.collect(FRAMING_FIELDS)
    validate_host_header(fields[b"host"][0])
    request_framing(request, fields)


def main() -> None:
    print(f"request: {len(REQUEST)} bytes, 10 fields; best of 7 runs, microseconds/request")
    cases = [
        ("labsquid RequestReader (Request + EndOfMessage)", ours_full),
        ("labsquid head parse only", ours_head),
    ]
    try:
        import httptools  # noqa: F401
    except ImportError:
        pass
    else:
        cases += [
            ("httptools head parse only (lenient)", httptools_head),
            ("httptools + missing checks (same rules)", httptools_full),
        ]
    for name, fn in cases:
        n = 20000
        best = min(timeit.repeat(fn, number=n, repeat=7)) / n
        print(f"  {name:48} {best * 1e6:6.2f}")


if __name__ == "__main__":
    main()
