"""The DNS codec and the system-file parsers: pure functions, no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labsquid.dns import (
    AAAA,
    NXDOMAIN,
    A,
    DnsFormatError,
    build_query,
    canonical_name,
    parse_hosts,
    parse_resolv_conf,
    parse_response,
)

CNAME = 5


# A response written the long way, so the parser is checked against bytes a
# reader can verify with RFC 1035 in hand rather than against our own builder.
def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\x00"


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def _response(qid: int, qname: str, qtype: int, answers: list[bytes], flags: int = 0x8180) -> bytes:
    header = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0)
    return header + _name(qname) + struct.pack("!HH", qtype, 1) + b"".join(answers)


# -- build_query -------------------------------------------------------------


def test_query_bytes_by_hand() -> None:
    expected = (
        b"\xbe\xef"  # id
        b"\x01\x00"  # flags: RD only
        b"\x00\x01\x00\x00\x00\x00\x00\x00"  # 1 question, no records
        b"\x03www\x07example\x03com\x00"
        b"\x00\x01\x00\x01"  # A, IN
    )
    assert build_query(0xBEEF, "WWW.Example.com.", A) == expected


def test_aaaa_query_and_idna() -> None:
    packet = build_query(1, "Bücher.de", AAAA)
    assert packet[12:] == b"\x0dxn--bcher-kva\x02de\x00\x00\x1c\x00\x01"


def test_underscore_and_hyphen_accepted() -> None:
    assert canonical_name("_srv-x.Example.ORG") == "_srv-x.example.org"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "a..b",
        ".a",
        "a" * 64 + ".com",
        ".".join(["a" * 50] * 5),  # 254 characters
        "exa mple.com",
        "exa!mple.com",
        "foo/bar",
        "a\x00b",
    ],
)
def test_bad_names_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        build_query(1, bad, A)


def test_longest_names_accepted() -> None:
    build_query(1, "a" * 63 + ".com", A)
    name = ".".join(["a" * 63] * 3 + ["a" * 61])  # exactly 253 characters
    assert len(name) == 253
    build_query(1, name, A)


def test_query_id_range() -> None:
    with pytest.raises(ValueError):
        build_query(0x10000, "example.com", A)


# -- parse_response ----------------------------------------------------------


def test_simple_a_answer() -> None:
    data = (
        b"\x12\x34\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00"
        b"\x07example\x03com\x00\x00\x01\x00\x01"
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\x5d\xb8\xd8\x22"  # ttl 300
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01"  # ttl 60
    )
    answer = parse_response(data)
    assert answer.qid == 0x1234
    assert answer.rcode == 0
    assert answer.addresses == ["93.184.216.34", "10.0.0.1"]
    assert answer.ttl == 60
    assert answer.truncated is False
    assert (answer.qname, answer.qtype) == ("example.com", A)


def test_aaaa_answer() -> None:
    rdata = bytes.fromhex("20010db8000000000000000000000001")
    answer = parse_response(_response(7, "v6.test", AAAA, [_rr(_name("v6.test"), AAAA, 5, rdata)]))
    assert answer.addresses == ["2001:db8::1"]


def test_nxdomain() -> None:
    answer = parse_response(_response(9, "nope.test", A, [], flags=0x8183))
    assert (answer.rcode, answer.addresses, answer.ttl) == (NXDOMAIN, [], 0)


def test_cname_chain_out_of_order_and_min_ttl() -> None:
    answers = [
        _rr(_name("c.test"), A, 500, bytes([192, 0, 2, 7])),
        _rr(_name("b.test"), CNAME, 40, _name("c.test")),
        _rr(_name("a.test"), CNAME, 900, _name("b.test")),
        _rr(_name("other.test"), A, 1, bytes([6, 6, 6, 6])),  # not on the chain
    ]
    answer = parse_response(_response(1, "A.test", A, answers))
    assert answer.addresses == ["192.0.2.7"]
    assert answer.cnames == ["b.test", "c.test"]
    assert answer.ttl == 40


def test_cname_loop_ends() -> None:
    answers = [
        _rr(_name("a.test"), CNAME, 9, _name("b.test")),
        _rr(_name("b.test"), CNAME, 9, _name("a.test")),
    ]
    assert parse_response(_response(1, "a.test", A, answers)).addresses == []


def test_compressed_cname_target() -> None:
    # CNAME rdata "www" + pointer to "example.com" in the question (offset 12).
    rdata = b"\x03www\xc0\x0c"
    answers = [
        _rr(b"\xc0\x0c", CNAME, 30, rdata),
        _rr(b"\x03www\xc0\x0c", A, 30, bytes([1, 2, 3, 4])),
    ]
    answer = parse_response(_response(2, "example.com", A, answers))
    assert answer.addresses == ["1.2.3.4"]


def test_wrong_type_records_ignored() -> None:
    answers = [_rr(_name("x.test"), AAAA, 9, bytes(16))]
    assert parse_response(_response(1, "x.test", A, answers)).addresses == []


def test_negative_looking_ttl_is_zero() -> None:
    answers = [_rr(_name("x.test"), A, 0x80000001, bytes(4))]
    assert parse_response(_response(1, "x.test", A, answers)).ttl == 0


def test_truncated_answer_keeps_what_arrived() -> None:
    data = _response(3, "t.test", A, [_rr(_name("t.test"), A, 9, bytes([1, 1, 1, 1]))])
    data = data[:2] + b"\x83\x80" + data[4:6] + b"\x00\x05" + data[8:]  # TC, claims 5 answers
    answer = parse_response(data)
    assert answer.truncated
    assert answer.addresses == ["1.1.1.1"]


def test_label_with_dot_cannot_pose_as_two_labels() -> None:
    data = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x03a.b\x00\x00\x01\x00\x01"
    assert parse_response(data).qname == "a\\046b"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "fixed-size"),
        (b"\x00\x01\x01\x00\x00\x01" + bytes(6), "query"),  # QR clear
        (struct.pack("!HHHHHH", 1, 0x8180, 0, 0, 0, 0), "questions"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "back"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x05ab", "past the end"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x40ab\x00", "label type"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(DnsFormatError, match=reason):
        parse_response(data)


def test_pointer_loop_between_two_pointers() -> None:
    # The question name points forward to a pointer that points back at it.
    data = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(DnsFormatError):
        parse_response(data)


def test_long_pointer_chain_is_bounded() -> None:
    # The rdata of an unknown record holds 300 elements, each one label and a
    # pointer to the element before it: every pointer goes backwards, but the
    # name they spell is 600 octets long.  The next record's owner uses it.
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 2, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"
    rdata_start = len(head) + 2 + 10  # after the first record's owner and fixed part
    chain, previous = b"", 12
    for _ in range(300):
        here = rdata_start + len(chain)
        chain += b"\x01a" + struct.pack("!H", 0xC000 | previous)
        previous = here
    data = head + _rr(b"\xc0\x0c", 99, 9, chain)
    data += _rr(struct.pack("!H", 0xC000 | previous), A, 9, bytes(4))
    with pytest.raises(DnsFormatError, match="255"):
        parse_response(data)


def test_address_record_of_wrong_length() -> None:
    answers = [_rr(_name("x.test"), A, 9, bytes(5))]
    with pytest.raises(DnsFormatError):
        parse_response(_response(1, "x.test", A, answers))


_VALID = _response(
    0x4242,
    "a.example",
    A,
    [
        _rr(b"\xc0\x0c", CNAME, 60, b"\x01b\xc0\x0e"),
        _rr(b"\x01b\xc0\x0e", A, 60, bytes([10, 1, 2, 3])),
    ],
)


@given(st.binary(max_size=600))
def test_garbage_only_raises_format_error(data: bytes) -> None:
    try:
        parse_response(data)
    except DnsFormatError:
        pass


@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_answers_only_raise_format_error(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for offset, value in edits:
        data[offset] = value
    try:
        parse_response(bytes(data))
    except DnsFormatError:
        pass


@given(st.integers(0, len(_VALID)))
def test_every_prefix_only_raises_format_error(cut: int) -> None:
    try:
        answer = parse_response(_VALID[:cut])
    except DnsFormatError:
        return
    assert cut == len(_VALID) and answer.addresses == ["10.1.2.3"]


def test_valid_fuzz_seed_parses() -> None:
    answer = parse_response(_VALID)
    assert answer.addresses == ["10.1.2.3"]
    assert answer.cnames == ["b.example"]


# -- hosts and resolv.conf ---------------------------------------------------

HOSTS = """\
# a comment line
127.0.0.1   localhost
::1         localhost ip6-localhost   # trailing comment
10.0.0.5    Proxy.Lab proxy   alias.lab.
10.0.0.6    proxy
not-an-ip   ignored.example
fe80::1%eth0 linklocal

192.0.2.9
"""


def test_hosts_parsing() -> None:
    table = parse_hosts(HOSTS)
    assert table["localhost"] == ["127.0.0.1", "::1"]
    assert table["ip6-localhost"] == ["::1"]
    assert table["proxy.lab"] == ["10.0.0.5"]
    assert table["alias.lab"] == ["10.0.0.5"]
    assert table["proxy"] == ["10.0.0.5", "10.0.0.6"]
    assert table["linklocal"] == ["fe80::1%eth0"]
    assert "ignored.example" not in table
    assert "comment" not in table and "#" not in table


def test_resolv_conf_parsing() -> None:
    text = """\
# nameserver 9.9.9.9
; nameserver 8.8.8.8
search example.com
nameserver 10.0.0.53
nameserver bogus
nameserver 2001:db8::53
options ndots:2
nameserver 10.0.0.54
nameserver 10.0.0.55
"""
    assert parse_resolv_conf(text) == [
        ("10.0.0.53", 53),
        ("2001:db8::53", 53),
        ("10.0.0.54", 53),
    ]


def test_resolv_conf_without_nameserver_means_localhost() -> None:
    assert parse_resolv_conf("search lab\n") == [("127.0.0.1", 53)]
