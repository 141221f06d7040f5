"""Headers: ordered, case-insensitive lookups, list fields, hop-by-hop removal."""

from __future__ import annotations

from labsquid.http import Headers


def make() -> Headers:
    return Headers(
        [
            (b"Host", b"a"),
            (b"Connection", b"keep-alive, X-Custom"),
            (b"Accept", b"text/html, ,text/plain"),
            (b"accept", b"*/*"),
            (b"X-Custom", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic eA=="),
            ("Via", "1.1 other"),
        ]
    )


def test_lookups_are_case_insensitive_and_ordered() -> None:
    h = make()
    assert h.get(b"HOST") == b"a"
    assert h.get("missing") is None
    assert h.get(b"missing", b"d") == b"d"
    assert h.get_all(b"Accept") == [b"text/html, ,text/plain", b"*/*"]
    assert h.count(b"ACCEPT") == 2
    assert b"x-custom" in h and b"nope" not in h
    assert h.get(b"via") == b"1.1 other"


def test_list_fields_split_on_commas() -> None:
    h = make()
    assert h.get_list(b"accept") == [b"text/html", b"text/plain", b"*/*"]
    assert h.has_token(b"connection", b"KEEP-ALIVE")
    assert not h.has_token(b"connection", b"close")


def test_edits_keep_position_and_spelling() -> None:
    h = Headers([(b"A", b"1"), (b"B", b"2"), (b"a", b"3")])
    h.set(b"a", b"9")
    assert list(h) == [(b"a", b"9"), (b"B", b"2")]
    h.add(b"C", b"3")
    assert h.remove(b"b") == 1
    assert h == [(b"a", b"9"), (b"C", b"3")]
    assert h.lowered() == [(b"a", b"9"), (b"c", b"3")]
    c = h.copy()
    c.add(b"D", b"4")
    assert len(h) == 2 and len(c) == 3


def test_remove_hop_by_hop_uses_connection_tokens() -> None:
    h = make()
    h.remove_hop_by_hop()
    assert [n for n, _ in h] == [b"Host", b"Accept", b"accept", b"Via"]
    h = make()
    h.remove_hop_by_hop([b"Accept"])  # caller-supplied tokens replace Connection's
    assert [n for n, _ in h] == [b"Host", b"X-Custom", b"Via"]
