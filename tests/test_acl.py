"""Squid's acl types and http_access semantics (labsquid.acl)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labsquid.acl import (
    BUILTIN_ACLS,
    AccessContext,
    AclError,
    Decision,
    compile_access,
    compile_acls,
)

try:
    from labsquid.config import AccessLine, AclLine, Where
except ImportError:  # the config package is written in parallel; same shapes

    @dataclass(frozen=True)
    class Where:  # type: ignore[no-redef]
        file: str
        line: int
        directive: str

    @dataclass(frozen=True)
    class AclLine:  # type: ignore[no-redef]
        name: str
        type: str
        args: tuple[str, ...]
        where: Where

    @dataclass(frozen=True)
    class AccessLine:  # type: ignore[no-redef]
        allow: bool
        acls: tuple[tuple[bool, str], ...]
        where: Where


_lines = count(1)


def acl(text: str) -> AclLine:
    name, kind, *args = text.split()
    return AclLine(name, kind, tuple(args), Where("squid.conf", next(_lines), "acl"))


def rule(text: str) -> AccessLine:
    action, *names = text.split()
    assert action in ("allow", "deny")
    acls = tuple((n.startswith("!"), n.lstrip("!")) for n in names)
    return AccessLine(action == "allow", acls, Where("squid.conf", next(_lines), "http_access"))


def ctx(**overrides: object) -> AccessContext:
    fields: dict[str, object] = {
        "src": ipaddress.ip_address("192.0.2.10"), "local_port": 3128, "method": "GET",
        "proto": "HTTP", "host": "example.com", "port": 80, "url": "http://example.com/",
        "path": "/", "dst": None,
    }
    fields.update(overrides)
    if isinstance(fields["src"], str):
        fields["src"] = ipaddress.ip_address(fields["src"])
    if isinstance(fields["dst"], tuple):
        fields["dst"] = tuple(ipaddress.ip_address(a) for a in fields["dst"])
    return AccessContext(**fields)  # type: ignore[arg-type]


def matches(acl_lines: list[str], **overrides: object) -> bool | None:
    """Whether the acl named by the first line matches a request."""
    acls = compile_acls([acl(text) for text in acl_lines])
    return acls[acl_lines[0].split()[0]].match(ctx(**overrides))


def access(acl_lines: list[str], rules: list[str]):
    acls = compile_acls([acl(text) for text in acl_lines])
    return compile_access([rule(text) for text in rules], acls)


def error_of(acl_lines: list[str], rules: list[str] | None = None) -> AclError:
    with pytest.raises(AclError) as info:
        access(acl_lines, rules or [])
    return info.value


# -- src ----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "inside", "outside"), [
    ("192.0.2.10", "192.0.2.10", "192.0.2.11"),
    ("10.0.0.0/8", "10.255.1.2", "11.0.0.1"),
    ("10.1.0.0/255.255.0.0", "10.1.200.3", "10.2.0.1"),
    ("192.168.1.10-192.168.1.20", "192.168.1.20", "192.168.1.21"),
    ("2001:db8::/32", "2001:db8::5", "2001:db9::5"),
    ("fe80::1", "fe80::1", "fe80::2"),
    ("ipv4", "8.8.8.8", "2001:db8::1"),
    ("ipv6", "2001:db8::1", "8.8.8.8"),
    ("all", "2001:db8::1", None),
])
def test_src_values(value: str, inside: str, outside: str | None) -> None:
    assert matches([f"net src {value}"], src=inside) is True
    if outside is not None:
        assert matches([f"net src {value}"], src=outside) is False


def test_src_ipv4_client_seen_through_a_dual_stack_socket() -> None:
    assert matches(["net src 10.0.0.0/8"], src="::ffff:10.1.2.3") is True
    assert matches(["net src 10.0.0.0/8"], src="::ffff:11.1.2.3") is False


def test_src_ipv6_zero_prefix_covers_ipv4_like_squid() -> None:
    assert matches(["net src ::/0"], src="192.0.2.1") is True


def test_src_range_with_mask_masks_the_client_first() -> None:
    # squid: client & 255.255.255.0 must lie in the masked range
    assert matches(["net src 10.0.1.0-10.0.3.0/24"], src="10.0.2.77") is True
    assert matches(["net src 10.0.1.0-10.0.3.0/24"], src="10.0.4.1") is False


def test_src_lines_with_the_same_name_append() -> None:
    lines = ["net src 10.0.0.0/8", "net src 192.168.0.0/16"]
    assert matches(lines, src="192.168.3.4") is True
    assert matches(lines, src="10.3.4.5") is True
    assert matches(lines, src="172.16.0.1") is False


def test_dotted_netmask_and_masked_bits_warn() -> None:
    acls = compile_acls([acl("a src 10.1.0.0/255.255.0.0"), acl("b src 10.1.2.3/16")])
    messages = [w.message for w in acls.warnings]
    assert any("netmasks are deprecated" in m for m in messages)
    assert any("masks away part of the specified IP in '10.1.2.3/16'" in m for m in messages)


def test_old_all_spellings_become_all() -> None:
    acls = compile_acls([acl("any src 0.0.0.0/0.0.0.0")])
    assert acls["any"].match(ctx(src=ipaddress.ip_address("2001:db8::1"))) is True
    assert "needs to be replaced by the term 'all'" in acls.warnings[0].message


# -- dst ----------------------------------------------------------------------------

def test_dst_ip_literal_host_needs_no_lookup() -> None:
    assert matches(["d dst 198.51.100.0/24"], host="198.51.100.7") is True
    assert matches(["d dst 198.51.100.0/24"], host="203.0.113.7") is False
    assert matches(["d dst ::1"], host="[::1]") is True


def test_dst_named_host_waits_for_resolution() -> None:
    assert matches(["d dst 198.51.100.0/24"], host="www.example.com") is None
    assert matches(["d dst 198.51.100.0/24"], dst=("203.0.113.1", "198.51.100.9")) is True
    assert matches(["d dst 198.51.100.0/24"], dst=("203.0.113.1",)) is False
    assert matches(["d dst 198.51.100.0/24"], dst=()) is False  # lookup failed


def test_dst_without_lookup_flag() -> None:
    assert matches(["d dst -n 198.51.100.0/24"], host="www.example.com") is False
    assert matches(["d dst -n 198.51.100.0/24"], host="198.51.100.1") is True


# -- ports, methods, protocols ------------------------------------------------------

def test_port_numbers_and_ranges() -> None:
    lines = ["p port 80 443 1025-65535"]
    assert [matches(lines, port=n) for n in (80, 443, 1025, 65535, 22, 1024)] == [
        True, True, True, True, False, False]


def test_localport_and_its_old_name_myport() -> None:
    assert matches(["lp localport 3128"], local_port=3128) is True
    assert matches(["lp localport 3128"], local_port=8080) is False
    assert matches(["lp myport 8080-8090"], local_port=8085) is True
    assert compile_acls([acl("lp myport 1")])["lp"].type == "localport"


def test_method_is_case_sensitive() -> None:
    assert matches(["m method GET POST"], method="POST") is True
    assert matches(["m method GET POST"], method="get") is False
    assert matches(["m method GET POST"], method="PUT") is False


def test_method_values_squid_knows_count_in_any_case() -> None:
    """squid reads its own method names in any case, in acl values as in
    requests (whose methods reach the acls in upper case); an extension
    method stays case-sensitive."""
    assert matches(["m method get"], method="GET") is True
    assert matches(["m method Version-Control"], method="VERSION-CONTROL") is True
    assert matches(["m method patch"], method="patch") is True
    assert matches(["m method patch"], method="PATCH") is False


@pytest.mark.parametrize("lines, enabled", [
    ([], False),
    (["m method GET POST"], False),
    (["p method PURGE"], True),
    (["p method purge"], True),  # squid's own method name, in any case
    (["m method GET", "m method PURGE"], True),  # a later line of the same acl
    (["u url_regex PURGE"], False),  # only a method acl turns it on
])
def test_purge_is_enabled_by_a_method_acl_naming_it(lines, enabled) -> None:
    assert compile_acls([acl(line) for line in lines]).purge_enabled is enabled


def test_proto_uses_squid_scheme_names() -> None:
    assert matches(["p proto HTTP FTP"], proto="HTTP") is True
    assert matches(["p proto http"], proto="HTTP") is True
    assert matches(["p proto HTTP"], proto="HTTPS") is False
    assert matches(["p proto NONE"], proto="NONE", method="CONNECT") is True


# -- domains and regexes ------------------------------------------------------------

@pytest.mark.parametrize(("host", "expected"), [
    ("example.com", True),
    ("www.example.com", True),
    ("a.b.example.com", True),
    ("WWW.Example.COM", True),
    ("www.example.com.", True),
    ("badexample.com", False),
    ("example.com.evil.net", False),
    ("com", False),
    ("", False),
])
def test_dstdomain_leading_dot_matches_domain_and_subdomains(host: str, expected: bool) -> None:
    assert matches(["d dstdomain .example.com"], host=host) is expected


def test_dstdomain_without_dot_is_exact() -> None:
    assert matches(["d dstdomain example.org"], host="EXAMPLE.org") is True
    assert matches(["d dstdomain example.org"], host="www.example.org") is False


def test_dstdomain_ip_literal_host_matches_as_text() -> None:
    assert matches(["d dstdomain 192.0.2.1"], host="192.0.2.1") is True
    assert matches(["d dstdomain 192.0.2.1"], host="192.0.2.2") is False


def test_dstdom_regex_case_flag() -> None:
    assert matches([r"r dstdom_regex ^ads\."], host="ads.example.com") is True
    assert matches([r"r dstdom_regex ^ads\."], host="cdn.example.com") is False
    assert matches([r"r dstdom_regex -i ADS"], host="ads.example.com") is True


def test_url_regex_plus_i_switches_case_back() -> None:
    lines = ["r url_regex -i ^http://A/ +i ^http://B/"]
    assert matches(lines, url="http://a/x") is True
    assert matches(lines, url="http://B/x") is True
    assert matches(lines, url="http://b/x") is False


def test_url_regex_sees_the_decoded_url() -> None:
    assert matches([r"r url_regex \.exe$"], url="http://h/setup%2Eexe") is True


def test_urlpath_regex_looks_at_the_path_only() -> None:
    lines = [r"r urlpath_regex ^/admin"]
    assert matches(lines, path="/admin/x", url="http://h/admin/x") is True
    assert matches(lines, path="/x", url="http://admin/x") is False


def test_regexes_that_cannot_be_joined_still_work() -> None:
    lines = [r"r url_regex (a)\1 (?P<n>q)(?P=n) (?P<n>z)z"]
    assert matches(lines, url="http://h/aa") is True
    assert matches(lines, url="http://h/qq") is True
    assert matches(lines, url="http://h/zz") is True
    assert matches(lines, url="http://h/az") is False


# -- built-ins ----------------------------------------------------------------------

def test_builtins_are_always_defined() -> None:
    acls = compile_acls([])
    assert {name for name, _kind, _args in BUILTIN_ACLS} == set(acls)
    assert {"all", "manager", "localhost", "to_localhost", "CONNECT"} <= set(acls)


def test_builtin_all_localhost_connect() -> None:
    acls = compile_acls([])
    assert acls["all"].match(ctx(src=ipaddress.ip_address("2001:db8::1"))) is True
    assert acls["all"].match(ctx()) is True
    assert acls["localhost"].match(ctx(src=ipaddress.ip_address("127.0.0.1"))) is True
    assert acls["localhost"].match(ctx(src=ipaddress.ip_address("::1"))) is True
    assert acls["localhost"].match(ctx(src=ipaddress.ip_address("127.0.0.2"))) is False
    assert acls["CONNECT"].match(ctx(method="CONNECT")) is True
    assert acls["CONNECT"].match(ctx(method="GET")) is False


def test_builtin_to_localhost() -> None:
    acls = compile_acls([])
    to_localhost = acls["to_localhost"]
    assert to_localhost.needs_dst
    assert to_localhost.match(ctx(host="127.1.2.3")) is True
    assert to_localhost.match(ctx(host="0.0.0.0")) is True
    assert to_localhost.match(ctx(host="[::]")) is True
    assert to_localhost.match(ctx(host="0.0.0.1")) is False
    assert to_localhost.match(ctx(host="localhost")) is None
    assert to_localhost.match(ctx(host="localhost").resolved(
        (ipaddress.ip_address("::1"),))) is True


@pytest.mark.parametrize(("url", "expected"), [
    ("http://proxy:3128/squid-internal-mgr/menu", True),
    ("https://proxy/squid-internal-mgr/info", True),
    ("http://proxy:3128/%73quid-internal-mgr/menu", True),
    ("CACHE_OBJECT://proxy/info", True),
    ("http://proxy/SQUID-INTERNAL-MGR/menu", False),
    ("http://example.com/squid-internal-mgr", False),
])
def test_builtin_manager(url: str, expected: bool) -> None:
    assert compile_acls([])["manager"].match(ctx(url=url)) is expected


def test_config_lines_append_to_builtins_and_names_ignore_case() -> None:
    acls = compile_acls([acl("localhost src 10.9.9.9"), acl("LocalHost src 10.8.8.8")])
    assert acls["localhost"].match(ctx(src=ipaddress.ip_address("10.8.8.8"))) is True
    assert acls["LOCALHOST"].match(ctx(src=ipaddress.ip_address("127.0.0.1"))) is True


def test_old_manager_proto_line_is_skipped() -> None:
    acls = compile_acls([acl("manager proto cache_object")])
    assert acls["manager"].type == "url_regex"
    assert "built-in" in acls.warnings[0].message


def test_empty_acl_matches_nothing_with_a_warning() -> None:
    acls = compile_acls([acl("nothing dstdomain")])
    assert acls["nothing"].match(ctx()) is False
    assert acls.warnings[0].message.startswith("empty ACL")


# -- http_access --------------------------------------------------------------------

LAN = ["lan src 192.0.2.0/24", "web port 80", "ads dstdomain .ads.example"]


def test_and_within_a_rule() -> None:
    rules = access(LAN, ["allow lan web", "deny all"])
    assert rules.check(ctx()).allowed is True
    assert rules.check(ctx(port=8080)).allowed is False
    assert rules.check(ctx(src=ipaddress.ip_address("198.51.100.1"))).allowed is False


def test_negation() -> None:
    rules = access(LAN, ["deny !lan", "allow all"])
    assert rules.check(ctx()).allowed is True
    assert rules.check(ctx(src=ipaddress.ip_address("198.51.100.1"))).allowed is False


def test_first_match_wins_and_reports_its_rule() -> None:
    lines = [rule("deny ads"), rule("allow lan"), rule("deny all")]
    rules = compile_access(lines, compile_acls([acl(t) for t in LAN]))
    assert rules.check(ctx(host="x.ads.example")) == Decision(False, lines[0])
    assert rules.check(ctx()) == Decision(True, lines[1])
    assert rules.check(ctx(src=ipaddress.ip_address("198.51.100.1"))) == Decision(False, lines[2])


def test_no_match_is_the_opposite_of_the_last_rule() -> None:
    outsider = ctx(src=ipaddress.ip_address("198.51.100.1"))
    assert access(LAN, ["allow lan"]).check(outsider) == Decision(False, None)
    assert access(LAN, ["deny lan"]).check(outsider) == Decision(True, None)


def test_no_rules_deny() -> None:
    assert access(LAN, []).check(ctx()) == Decision(False, None)


def test_rule_without_acls_is_skipped() -> None:
    acls = compile_acls([acl(t) for t in LAN])
    rules = compile_access([rule("allow lan"), AccessLine(True, (), Where("f", 9, "http_access"))],
                           acls)
    assert len(rules) == 1
    assert "no ACLs" in rules.warnings[0].message
    assert rules.check(ctx(src=ipaddress.ip_address("198.51.100.1"))).allowed is False


def test_needs_dst_then_decides_once_resolved() -> None:
    rules = access(["inside dst 10.0.0.0/8"], ["deny inside", "allow all"])
    first = rules.check(ctx(host="intranet.example"))
    assert first.needs_dst and first.rule is None
    resolved = ctx(host="intranet.example", dst=("10.1.1.1",))
    assert rules.check(resolved).allowed is False
    assert rules.check(ctx(host="intranet.example", dst=("192.0.2.1",))).allowed is True


def test_needs_dst_only_when_the_rule_gets_that_far() -> None:
    rules = access(LAN + ["inside dst 10.0.0.0/8"], ["allow lan", "deny web inside", "allow all"])
    lan_decision = rules.check(ctx(host="intranet.example"))
    assert lan_decision.allowed and lan_decision.rule.acls == ((False, "lan"),)
    outsider = ctx(src=ipaddress.ip_address("198.51.100.1"), host="intranet.example")
    assert rules.check(outsider).needs_dst is True
    assert rules.check(ctx(src=outsider.src, host="intranet.example", port=22)).allowed is True


# -- squid's default configuration ----------------------------------------------------

DEFAULT_ACLS = [
    "localnet src 10.0.0.0/8", "localnet src 172.16.0.0/12", "localnet src 192.168.0.0/16",
    "localnet src fc00::/7", "localnet src fe80::/10",
    "SSL_ports port 443",
    "Safe_ports port 80 21 443 70 210 1025-65535 280 488 591 777",
]
DEFAULT_RULES = [
    "deny !Safe_ports", "deny CONNECT !SSL_ports", "allow localhost manager", "deny manager",
    "allow localnet", "allow localhost", "deny all",
]


@pytest.fixture(scope="module")
def default_rules():
    return access(DEFAULT_ACLS, DEFAULT_RULES)


def test_default_config_allows_the_lan(default_rules) -> None:
    assert default_rules.check(ctx(src=ipaddress.ip_address("10.1.2.3"))).allowed is True
    assert default_rules.check(ctx(src=ipaddress.ip_address("fd00::1"))).allowed is True


def test_default_config_denies_other_sources(default_rules) -> None:
    decision = default_rules.check(ctx(src=ipaddress.ip_address("198.51.100.1")))
    assert decision.allowed is False
    assert decision.rule is not None and decision.rule.acls == ((False, "all"),)


def test_default_config_connect_only_to_443(default_rules) -> None:
    lan = ipaddress.ip_address("10.1.2.3")
    tunnel = {"method": "CONNECT", "proto": "NONE", "url": "example.com:443", "path": ""}
    assert default_rules.check(ctx(src=lan, port=443, **tunnel)).allowed is True
    assert default_rules.check(ctx(src=lan, port=22, **tunnel)).allowed is False
    assert default_rules.check(ctx(src=lan, port=8443, **tunnel)).allowed is False


def test_default_config_unsafe_port(default_rules) -> None:
    assert default_rules.check(ctx(src=ipaddress.ip_address("10.1.2.3"), port=25)).allowed is False


def test_default_config_manager_only_from_localhost(default_rules) -> None:
    mgr = {"url": "http://proxy:3128/squid-internal-mgr/menu", "path": "/squid-internal-mgr/menu",
           "host": "proxy", "port": 3128}
    assert default_rules.check(ctx(src=ipaddress.ip_address("127.0.0.1"), **mgr)).allowed is True
    assert default_rules.check(ctx(src=ipaddress.ip_address("10.1.2.3"), **mgr)).allowed is False


# -- time ------------------------------------------------------------------------------

def time_spans(*lines: str):
    from labsquid.acl._base import Problems, Values
    from labsquid.acl._time import _spans_of

    problems = Problems()
    spans = [span for text in lines
             for span in _spans_of(Values(None, frozenset(), tuple(text.split())), "t",
                                   problems)]
    return tuple(spans), problems


MON, SAT, SUN = 0, 5, 6


# What squid 5.7 answered here (a Saturday, 09:07) for `http_access allow x`:
# each range takes the days before it, or every day; days after the last
# range are whole days; both ends of a range are included, to the minute.
@pytest.mark.parametrize(("spec", "allowed"), [
    ("A", True), ("M", False), ("D", False), ("SA 09:00-10:00", True),
    ("A 00:00-01:00", False), ("A 09:00-10:00", True), ("09:00-10:00", True),
    ("M 00:00-01:00 A", True), ("00:00-01:00 A", True), ("A 09:00-10:00 M", True),
    ("M 00:00-01:00 09:00-10:00", True), ("A-M", True),
    ("A 08:00-09:07", True), ("A 09:07-23:00", True), ("A 08:00-09:06", False),
])
def test_time_reads_days_and_ranges_as_squid(spec: str, allowed: bool) -> None:
    from labsquid.acl._time import span_matches

    spans, problems = time_spans(spec)
    assert not problems.errors
    assert span_matches(spans, SAT, 9 * 60 + 7) is allowed


def test_time_a_range_to_midnight_and_lines_ored() -> None:
    from labsquid.acl._time import span_matches

    spans, _ = time_spans("S 22:00-24:00", "M 00:00-01:00")
    assert span_matches(spans, SUN, 23 * 60 + 59)
    assert span_matches(spans, MON, 30)
    assert not span_matches(spans, MON, 23 * 60)


def test_time_warns_when_a_range_falls_back_to_every_day() -> None:
    _, problems = time_spans("MTWHF 08:00-12:00 13:00-17:00")
    assert [w.message for w in problems.warnings] == [
        "t: the range '13:00-17:00' has no days of its own, so it applies to every day "
        "(as in squid); put days before it to limit it"]
    _, quiet = time_spans("08:00-12:00 13:00-17:00")  # no days at all: nothing to miss
    assert quiet.warnings == []


def test_time_matches_the_local_clock_now() -> None:
    import time

    letter = "MTWHFAS"[time.localtime().tm_wday]
    assert matches([f"t time {letter}"]) is True
    others = "MTWHFAS".replace(letter, "")
    # (a day later only if midnight passed between the two reads)
    assert matches([f"t time {others}"]) is ("MTWHFAS"[time.localtime().tm_wday] != letter)


# -- request headers and reply status -------------------------------------------------

def test_browser_matches_the_user_agent() -> None:
    from labsquid.http import Headers

    agent = Headers([(b"User-Agent", b"Mozilla/5.0 Firefox/128")])
    assert matches(["b browser -i firefox"], headers=agent) is True
    assert matches(["b browser firefox"], headers=agent) is False  # case counts without -i
    assert matches(["b browser ."], headers=Headers([(b"Accept", b"*/*")])) is False
    assert matches(["b browser ."], headers=None) is False  # no request head


def test_req_header_names_its_header_first() -> None:
    from labsquid.http import Headers

    headers = Headers([(b"X-Team", b"Blue"), (b"x-team", b"red")])
    assert matches(["h req_header X-Team -i ^blue, red$"], headers=headers) is True
    assert matches(["h req_header x-team ^blue"], headers=headers) is False
    # Lines with the same name: any of their headers.
    assert matches(["h req_header X-Other .", "h req_header X-Team red"],
                   headers=headers) is True


@pytest.mark.parametrize(("status", "expected"), [
    (0, False), (200, False), (403, True), (404, True), (499, False), (500, True),
    (599, True),
])
def test_http_status_codes_and_ranges(status: int, expected: bool) -> None:
    assert matches(["s http_status 400-404 500-"], status=status) is expected


# -- maxconn ---------------------------------------------------------------------------

@pytest.mark.parametrize(("open_", "expected"), [(1, False), (3, False), (4, True)])
def test_maxconn_matches_above_its_number(open_: int, expected: bool) -> None:
    """squid: "more than <number> TCP connections", this one counted."""
    assert matches(["m maxconn 3"], client_connections=open_) is expected


def test_myportname_names_a_port_by_name_or_as_written() -> None:
    from labsquid.config import parse_text
    from labsquid.proxy.context import port_names

    config = parse_text("http_port 3128\nhttp_port 127.0.0.1:3129 name=inside\n"
                        "http_port [::1]:3130\n", "t.conf")
    assert port_names(config) == {3128: [(None, "3128")], 3129: [("127.0.0.1", "inside")],
                                  3130: [("::1", "[::1]:3130")]}
    assert matches(["p myportname inside 3128"], port_name="3128") is True
    assert matches(["p myportname inside"], port_name="3128") is False


# -- has ------------------------------------------------------------------------------

# What squid 5.7 put where, here, with `has request` and `has response` acls on
# its access_log lines: a 400 for telnet's hello has both, a line for a
# connection that ended before its head has neither, an aborted request that
# was never answered has a request only.
@pytest.mark.parametrize(("has_request", "has_response"),
                         [(True, True), (False, False), (True, False)],
                         ids=["answered", "ended before headers", "aborted unanswered"])
def test_has_matches_the_parts_the_transaction_has(has_request: bool, has_response: bool) -> None:
    facts = {"has_request": has_request, "has_response": has_response}
    assert matches(["r has request"], **facts) is has_request
    assert matches(["r has response"], **facts) is has_response
    assert matches(["r has ALE"], **facts) is True  # every transaction has its log entry
    # Two lines with one name: either component (squid ORs them).
    assert matches(["r has request", "r has response"], **facts) is (has_request or
                                                                       has_response)


def test_has_in_http_access_sees_a_request_and_no_response_yet() -> None:
    rules = access(["r has request", "s has response"], ["deny s", "allow r"])
    assert rules.check(ctx()).allowed is True


def test_has_request_keeps_connections_without_a_request_out_of_a_file() -> None:
    """squid's own example (cf.data.pre, acl has): one file for transactions
    with a request, another for the rest."""
    from labsquid.acl import compile_log_targets
    from labsquid.config import parse_text

    config = parse_text("acl hasRequest has request\n"
                        "access_log daemon:/l/a squid hasRequest\n"
                        "access_log daemon:/l/b squid !hasRequest\n", "t.conf")
    targets = compile_log_targets(list(config.access_log), compile_acls(list(config.acls)))
    assert targets.choose(ctx()) == [0]
    assert targets.choose(ctx(has_request=False)) == [1]


# -- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "message"), [
    ("x srcc 10.0.0.1", "unknown acl type 'srcc'"),
    ("x src 10.0.0.0/33", "acl 'x' src: unknown netmask '33' in '10.0.0.0/33'"),
    ("x src 10.0.0.0/255.0.255.0", "acl 'x' src: unknown netmask '255.0.255.0' in "
                                   "'10.0.0.0/255.0.255.0'"),
    ("x src 10.0.0.256/8", "acl 'x' src: unknown first address in '10.0.0.256/8'"),
    ("x src 10.0.0.1-10.0.0.x", "acl 'x' src: unknown second address in '10.0.0.1-10.0.0.x'"),
    ("x src 10.0.0.9-10.0.0.1", "acl 'x' src: bad range '10.0.0.9-10.0.0.1': first address "
                                "is above the second"),
    ("x dst www.example.com", "acl 'x' dst: bad host/IP 'www.example.com': acl values must be "
                              "addresses, hostnames are not resolved"),
    ("x port 1025-x", "acl 'x' port: bad port range '1025-x'"),
    ("x port 70000", "acl 'x' port: bad port '70000'"),
    ("x port 90-80", "acl 'x' port: bad port range '90-80'"),
    ("x url_regex a(b", "acl 'x' url_regex: invalid regular expression 'a(b': missing ), "
                        "unterminated subpattern at position 1"),
    ("x method GE/T", "acl 'x' method: bad method 'GE/T'"),
    ("x proto GOPHERS", "acl 'x' proto: unknown protocol 'GOPHERS'"),
    ("x dstdomain a/b", "acl 'x' dstdomain: bad domain 'a/b'"),
    ("x port -i 80", "acl 'x' port: unsupported option '-i'"),
    # squid 5.7 refuses these three too ("unsupported component 'Request' for
    # 'has' acl", "multiple components not supported", "argument missing").
    ("x has Request", "acl 'x' has: unsupported component 'Request' (one of request, "
                      "response, ALE)"),
    ("x has request response", "acl 'x' has: multiple components not supported; give each "
                               "its own line with the same acl name"),
    ("x has", "acl 'x' has: argument missing (one of request, response, ALE)"),
    ("x maxconn 0", "acl 'x' maxconn: needs one number, 1 or more"),
    ("x maxconn 5 6", "acl 'x' maxconn: needs one number, 1 or more"),
    ("x maxconn five", "acl 'x' maxconn: needs one number, 1 or more"),
    ("x time MTWHX", "acl 'x' time: bad day 'X' in 'MTWHX' (S M T W H F A, or D for M-F)"),
    ("x time 17:00-08:00", "acl 'x' time: reversed time range '17:00-08:00'"),
    ("x time 08:00", "acl 'x' time: bad time range '08:00' (h1:m1-h2:m2, 00:00 to 24:00)"),
    ("x time 08:00-24:30", "acl 'x' time: bad time range '08:00-24:30' (h1:m1-h2:m2, "
                           "00:00 to 24:00)"),
    ("x time -", "acl 'x' time: no day and no time range"),
    ("x req_header", "acl 'x' req_header: missing header name"),
    ("x http_status abc", "acl 'x' http_status: bad status code 'abc' (100-999, a range "
                          "such as 400-403, or 500-)"),
    ("x http_status 404-400", "acl 'x' http_status: bad status code '404-400' (100-999, a "
                              "range such as 400-403, or 500-)"),
    ("x" * 64 + " src all", f"ACL name '{'x' * 64}' too long, max 63 characters supported"),
])
def test_error_messages(line: str, message: str) -> None:
    error = error_of([line])
    assert str(error) == error.message == message
    assert error.where.directive == "acl" and error.where.file == "squid.conf"


def test_redefined_with_another_type() -> None:
    error = error_of(["Safe_ports port 80", "safe_ports src 10.0.0.1"])
    assert str(error) == "ACL 'Safe_ports' already exists with different type"
    assert str(error_of(["CONNECT port 443"])) == "ACL 'CONNECT' already exists with different type"


def test_unknown_acl_in_a_rule() -> None:
    error = error_of(LAN, ["allow lan", "deny !nosuch webb"])
    assert [e.message for e in error.errors] == ["ACL not found: nosuch", "ACL not found: webb"]
    assert error.where.directive == "http_access"


def test_all_errors_are_reported_with_their_lines() -> None:
    lines = [acl("a srcc 1"), acl("b port x"), acl("c src 10.0.0.1"), acl("d method A;B")]
    with pytest.raises(AclError) as info:
        compile_acls(lines)
    assert [e.where.line for e in info.value.errors] == [
        lines[0].where.line, lines[1].where.line, lines[3].where.line]
    assert info.value.where == lines[0].where
    assert info.value.errors[0] is not info.value


# -- robustness -----------------------------------------------------------------------

ALL_TYPES = DEFAULT_ACLS + [
    "d dst 10.0.0.0/8 2001:db8::/32", "dn dst -n 192.0.2.0/24", "dom dstdomain .example.com x.org",
    "dr dstdom_regex -i ^ads", r"ur url_regex -i \.exe$ +i ^ftp:", "up urlpath_regex ^/a",
    "pr proto HTTP", "lp localport 3128", "m method GET",
]
ANY_RULES = ["deny d", "allow dn dom !dr", "deny ur up", "allow pr lp m", "deny to_localhost",
             "allow localnet !manager"]
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
texts = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(src=addresses, local_port=st.integers(-5, 70000), method=texts, proto=texts,
       host=st.one_of(texts, addresses.map(str), addresses.map(lambda a: f"[{a}]")),
       port=st.integers(-5, 70000), url=texts, path=texts,
       dst=st.one_of(st.none(), st.lists(addresses, max_size=3).map(tuple)))
def test_check_never_raises(src, local_port, method, proto, host, port, url, path, dst) -> None:
    rules = access(ALL_TYPES, ANY_RULES)
    request = AccessContext(src, local_port, method, proto, host, port, url, path, dst)
    decision = rules.check(request)
    assert isinstance(decision, Decision)
    if dst is not None:
        assert decision.needs_dst is False


# -- access_log acls: which files take a line (squid's accessLogLogTo) ------------
def log_targets(lines: str):
    from labsquid.acl import compile_log_targets
    from labsquid.config import parse_text

    config = parse_text("acl post method POST\nacl health urlpath_regex ^/health\n"
                        "acl inside dst 10.0.0.0/8\n" + lines, "t.conf")
    return compile_log_targets(list(config.access_log), compile_acls(list(config.acls)))


def test_one_plain_file_needs_no_check() -> None:
    assert log_targets("access_log daemon:/l/a squid\n") is None
    assert log_targets("") is None  # the default: one file


LOG_LINES = ("access_log none health\n"
             "access_log daemon:/l/a squid\n"
             "access_log daemon:/l/b squid post\n"
             "access_log daemon:/l/c common !post\n")


@pytest.mark.parametrize("method, path, files", [
    ("GET", "/x", [0, 2]),
    ("POST", "/x", [0, 1]),
    ("GET", "/health", []),   # `none` matched first: no file at all
    ("POST", "/health", []),
])
def test_files_whose_acls_match_until_a_matching_none(method, path, files) -> None:
    targets = log_targets(LOG_LINES)
    assert targets.choose(ctx(method=method, path=path, url=f"http://h{path}")) == files


def test_none_after_a_file_stops_only_the_files_after_it() -> None:
    targets = log_targets("access_log daemon:/l/a squid\naccess_log none health\n"
                          "access_log daemon:/l/b squid\n")
    assert targets.choose(ctx(path="/health", url="http://h/health")) == [0]
    assert targets.choose(ctx(path="/x", url="http://h/x")) == [0, 1]


def test_a_bare_none_logs_nothing_and_a_dst_acl_without_addresses_does_not_match() -> None:
    assert log_targets("access_log none\naccess_log daemon:/l/a squid\n").choose(ctx()) == []
    targets = log_targets("access_log daemon:/l/a squid inside\n"
                          "access_log daemon:/l/b squid !inside\n")
    unresolved = ctx(host="name.test", dst=None)
    assert targets.choose(unresolved) == []  # cannot tell: neither line's acls hold
    nowhere = ctx(host="name.test", dst=())  # known to have no address (what logging passes)
    assert targets.choose(nowhere) == [1]
    inside = ctx(host="name.test", dst=(ipaddress.ip_address("10.1.2.3"),))
    assert targets.choose(inside) == [0]
