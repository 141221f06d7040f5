"""labsquid.config: the language, the units, every directive, includes, the shipped files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import labsquid
from labsquid.config import (
    EMBEDDED_DEFAULT,
    AccessLine,
    Config,
    Where,
    directive_names,
    load,
    parse_text,
)
from labsquid.config._directives import DIRECTIVES
from labsquid.config._files import MemoryFiles
from labsquid.config._lexer import Quoted, split_lines, tokenize
from labsquid.config._units import BadValue, parse_size, parse_switch, parse_time

REPO = Path(labsquid.__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "conf" / "labsquid.conf"
DAY = 86400.0


def parse(text: str, **files: str) -> Config:
    return parse_text(text, "t.conf", files=MemoryFiles(files))


# -- units -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30 seconds", 30.0),
        ("1 second", 1.0),
        ("1 minute", 60.0),
        ("2 minutes", 120.0),
        ("2 hours", 7200.0),
        ("2 HOURS", 7200.0),
        ("1.5 hours", 5400.0),
        ("1 day", DAY),
        ("1 week", 7 * DAY),
        ("1 fortnight", 14 * DAY),
        ("1 month", 30 * DAY),
        ("1 year", 365.2522 * DAY),
        ("1 decade", 3652.522 * DAY),
        ("250 msec", 0.25),
        ("250 milliseconds", 0.25),
        ("0", 0.0),
        ("45", 45.0),  # a bare number is in the directive's unit: seconds here
    ],
)
def test_time_units(text: str, seconds: float) -> None:
    assert parse_time(text.split()) == pytest.approx(seconds)


def test_bare_time_takes_the_default_unit() -> None:
    assert parse_time(["3"], default_unit="minute") == 180.0
    assert parse_time(["3", "seconds"], default_unit="minute") == 3.0


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100 bytes", 100),
        ("1 byte", 1),
        ("64 KB", 65536),
        ("64 kb", 65536),
        ("1.5 KB", 1536),
        ("8 MB", 8 << 20),
        ("2 GB", 2 << 30),
        ("0", 0),
        ("100", 100),  # bare number: bytes by default
    ],
)
def test_size_units(text: str, size: int) -> None:
    assert parse_size(text.split()) == size


def test_bare_size_takes_the_default_unit() -> None:
    assert parse_size(["2"], default_unit="kb") == 2048


@pytest.mark.parametrize(
    ("word", "value"), [("on", True), ("off", False), ("enable", True), ("disable", False)]
)
def test_switches(word: str, value: bool) -> None:
    assert parse_switch(word) is value


@pytest.mark.parametrize("bad", [["1", "lightyear"], ["x", "seconds"], ["-1", "second"], []])
def test_bad_times_raise(bad: list[str]) -> None:
    with pytest.raises(BadValue):
        parse_time(bad)


# -- the lexer -------------------------------------------------------------------


def test_tokens_split_on_whitespace_and_stop_at_a_comment_token() -> None:
    assert tokenize("acl  a\tsrc 10.0.0.1  # office")[0] == ["acl", "a", "src", "10.0.0.1"]
    # A '#' inside a token is not a comment (squid only ends a line at a token start).
    assert tokenize("cache_mgr a#b")[0] == ["cache_mgr", "a#b"]


def test_quoted_tokens_unescape_and_are_marked() -> None:
    tokens, _ = tokenize(r'x "a b" "tab\there" "q\"uote" "back\\slash" ' + "'single'")
    assert tokens == ["x", "a b", "tab\there", 'q"uote', "back\\slash", "single"]
    assert [isinstance(token, Quoted) for token in tokens] == [False, True, True, True, True, True]


def test_comment_and_blank_lines_are_skipped_and_numbers_kept() -> None:
    text = "# heading\n\n   # indented comment\ncache_mgr me\n\nvia off\n"
    lines = list(split_lines(text, "t.conf"))
    assert [(line.where.line, line.directive) for line in lines] == [(4, "cache_mgr"), (6, "via")]


def test_continuation_lines_join_and_report_the_first_line() -> None:
    text = "via on\nacl a src \\\n   10.0.0.1 \\\n# a comment inside is skipped\n  10.0.0.2\n"
    acl = parse(text + "http_access allow a\n").acls[-1]
    assert acl.args == ("10.0.0.1", "10.0.0.2")
    assert acl.where == Where("t.conf", 2, "acl")


def test_continuation_without_space_glues_words() -> None:
    assert parse("cache_mgr web\\\nmaster@example.com\n").cache_mgr == "webmaster@example.com"


def test_continuation_at_end_of_file_is_kept() -> None:
    assert parse("cache_mgr someone \\").cache_mgr == "someone"


def test_crlf_line_endings() -> None:
    config = parse("cache_mgr me\r\nvia off\r\n")
    assert (config.cache_mgr, config.via) == ("me", False)


def test_trailing_comment_after_a_value() -> None:
    assert parse("cache_mgr admin@example.com   # who to blame\n").cache_mgr == "admin@example.com"


def test_quoted_value_with_spaces() -> None:
    assert parse('visible_hostname "proxy one"\n').visible_hostname == "proxy one"


# -- directives --------------------------------------------------------------------

EXPECTED_DEFAULTS = {
    "pid_filename": "/run/labsquid/labsquid.pid",
    "cache_log": "/var/log/labsquid/cache.log",
    "cache_effective_user": None,
    "cache_effective_group": None,
    "visible_hostname": None,
    "cache_mgr": "webmaster",
    "httpd_suppress_version_string": False,
    "shutdown_lifetime": 30.0,
    "debug_options": "ALL,1",
    "logformat": {},
    "logfile_rotate": 10,
    "logfile_daemon": "internal",
    "buffered_logs": False,
    "logfile_queue_size": 8 << 20,
    "http_access": (),
    "cachemgr_passwd": (),
    "workers": 1,
    "pool_size": None,
    "pool_dispatch": "notify",
    "pool_max_connections": 4096,
    "max_filedescriptors": 0,
    "connect_timeout": 60.0,
    "read_timeout": 900.0,
    "request_timeout": 300.0,
    "client_idle_pconn_timeout": 120.0,
    "client_lifetime": DAY,
    "pconn_timeout": 60.0,
    "half_closed_clients": False,
    "client_persistent_connections": True,
    "server_persistent_connections": True,
    "request_header_max_size": 65536,
    "reply_header_max_size": 65536,
    "request_body_max_size": 0,
    "forwarded_for": "on",
    "via": True,
    "positive_dns_ttl": 6 * 3600.0,
    "negative_dns_ttl": 60.0,
    "dns_timeout": 30.0,
    "hosts_file": "/etc/hosts",
}


def test_empty_config_gives_squid_defaults() -> None:
    config = parse("")
    for name, value in EXPECTED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    (port,) = config.http_port
    assert (port.host, port.port, port.options) == (None, 3128, {})
    (log,) = config.access_log
    assert (log.module, log.path, log.logformat) == (
        "daemon",
        "/var/log/labsquid/access.log",
        "squid",
    )
    assert config.source == "t.conf"


def test_config_has_one_attribute_per_directive() -> None:
    fields = {field.name for field in dataclasses.fields(Config)}
    expected = {"acls" if name == "acl" else name for name in DIRECTIVES} | {"source", "warnings"}
    assert fields == expected
    assert set(EXPECTED_DEFAULTS) | {"http_port", "access_log", "acls", "source",
                                     "warnings"} == fields


SETTINGS = {
    "pid_filename": ("none", None),
    "cache_log": ("var/cache.log", "var/cache.log"),
    "cache_effective_user": ("labsquid", "labsquid"),
    "cache_effective_group": ("proxy", "proxy"),
    "visible_hostname": ("proxy.example.com", "proxy.example.com"),
    "cache_mgr": ("ops@example.com", "ops@example.com"),
    "httpd_suppress_version_string": ("on", True),
    "shutdown_lifetime": ("3 seconds", 3.0),
    "debug_options": ("ALL,1 33,2", "ALL,1 33,2"),
    "logfile_rotate": ("0", 0),
    "logfile_daemon": ("/usr/lib/squid/log_file_daemon", "/usr/lib/squid/log_file_daemon"),
    "buffered_logs": ("on", True),
    "logfile_queue_size": ("512 KB", 512 * 1024),
    "pool_size": ("4", 4),
    "pool_dispatch": ("reuseport", "reuseport"),
    "pool_max_connections": ("100", 100),
    "max_filedescriptors": ("65536", 65536),
    "connect_timeout": ("10 seconds", 10.0),
    "read_timeout": ("2 minutes", 120.0),
    "request_timeout": ("30", 30.0),
    "client_idle_pconn_timeout": ("10 seconds", 10.0),
    "client_lifetime": ("2 hours", 7200.0),
    "pconn_timeout": ("500 msec", 0.5),
    "half_closed_clients": ("on", True),
    "client_persistent_connections": ("off", False),
    "server_persistent_connections": ("off", False),
    "request_header_max_size": ("16 KB", 16384),
    "reply_header_max_size": ("1 MB", 1 << 20),
    "request_body_max_size": ("10 MB", 10 << 20),
    "forwarded_for": ("truncate", "truncate"),
    "via": ("off", False),
    "positive_dns_ttl": ("1 hour", 3600.0),
    "negative_dns_ttl": ("5 seconds", 5.0),
    "dns_timeout": ("2 minutes", 120.0),
    "hosts_file": ("none", None),
}


@pytest.mark.parametrize(("name", "written", "value"), [(k, *v) for k, v in SETTINGS.items()])
def test_every_single_value_directive(name: str, written: str, value: object) -> None:
    config = parse(f"{name} {written}\n")
    assert getattr(config, name) == value
    assert value != EXPECTED_DEFAULTS[name]  # the test would prove nothing otherwise


def test_single_value_directives_keep_the_last_value() -> None:
    assert parse("dns_timeout 5\ndns_timeout 7\n").dns_timeout == 7.0


def test_pool_size_auto_means_one_per_cpu() -> None:
    assert parse("pool_size 2\npool_size auto\n").pool_size is None


@pytest.mark.parametrize(
    ("written", "host", "port", "options"),
    [
        ("3128", None, 3128, {}),
        ("127.0.0.1:3128", "127.0.0.1", 3128, {}),
        ("localhost:8080", "localhost", 8080, {}),
        ("[::1]:3128", "::1", 3128, {}),
        ("[::]:3128 name=main intercept", "::", 3128, {"name": "main", "intercept": None}),
    ],
)
def test_http_port_forms(written: str, host: str | None, port: int, options: dict) -> None:
    (http_port,) = parse(f"http_port {written}\n").http_port
    assert (http_port.host, http_port.port, http_port.options) == (host, port, options)
    assert http_port.where == Where("t.conf", 1, "http_port")


def test_list_directives_replace_their_default_and_keep_order() -> None:
    config = parse("http_port 8080\nhttp_port 127.0.0.1:3129\n")
    assert [port.port for port in config.http_port] == [8080, 3129]


def test_access_log_forms() -> None:
    text = """\
logformat timed %ts.%03tu %>a
access_log none
access_log daemon:/var/log/a.log squid
access_log stdio:/var/log/b.log logformat=common buffer-size=64KB localhost
access_log /var/log/c.log timed !localhost
access_log daemon:/var/log/d.log localhost
"""
    logs = parse(text).access_log
    assert [(log.module, log.path, log.logformat) for log in logs] == [
        ("none", None, "none"),
        ("daemon", "/var/log/a.log", "squid"),
        ("stdio", "/var/log/b.log", "common"),
        ("stdio", "/var/log/c.log", "timed"),  # a bare path is written with stdio
        ("daemon", "/var/log/d.log", "squid"),  # 'localhost' is an acl, not a format
    ]
    assert logs[2].options == {"buffer-size": "64KB"}
    assert [log.acls for log in logs] == [
        (),
        (),
        ((False, "localhost"),),
        ((True, "localhost"),),
        ((False, "localhost"),),
    ]


def test_logformat_keeps_the_rest_of_the_line_verbatim() -> None:
    text = 'logformat f1 %ts.%03tu  %>a "%rm %ru" %>Hs\nlogformat f2 "%ts %tr"\n'
    assert parse(text).logformat == {"f1": '%ts.%03tu  %>a "%rm %ru" %>Hs', "f2": "%ts %tr"}


def test_acl_and_http_access_lines_are_stored_raw_in_order() -> None:
    text = """\
acl office src 10.1.0.0/16
acl sites url_regex -i ^http://example\\.com/ ^http://example\\.org/
acl office src 10.2.0.0/16
http_access allow office !sites
http_access deny all
"""
    config = parse(text)
    assert [(acl.name, acl.type, acl.args) for acl in config.acls] == [
        ("office", "src", ("10.1.0.0/16",)),
        ("sites", "url_regex", ("-i", r"^http://example\.com/", r"^http://example\.org/")),
        ("office", "src", ("10.2.0.0/16",)),
    ]
    assert config.http_access == (
        AccessLine(True, ((False, "office"), (True, "sites")), Where("t.conf", 4, "http_access")),
        AccessLine(False, ((False, "all"),), Where("t.conf", 5, "http_access")),
    )


def test_predefined_acls_are_usable_but_not_stored() -> None:
    # labsquid.acl adds squid's predefined acls itself; Config.acls is the config's lines.
    text = "".join(
        f"http_access allow {name}\n"
        for name in ("all", "manager", "localhost", "to_localhost", "to_linklocal", "CONNECT")
    )
    config = parse(text)
    assert config.acls == ()
    assert len(config.http_access) == 6


def test_acl_names_compare_case_insensitively() -> None:
    config = parse("acl Office src 10.0.0.0/8\nhttp_access allow office LOCALHOST\n")
    assert config.http_access[0].acls == ((False, "office"), (False, "LOCALHOST"))


# -- acl value files -------------------------------------------------------------


def test_quoted_acl_value_reads_the_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "blocked").write_text(
        "# blocked sites\n.example.com\n\n  .example.org   # trailing comment\n#.example.net\n"
    )
    conf = tmp_path / "labsquid.conf"
    conf.write_text('acl blocked dstdomain .first.test "lists/blocked" .last.test\n')
    (acl,) = [acl for acl in load(str(conf)).acls if acl.name == "blocked"]
    assert acl.args == (".first.test", ".example.com", ".example.org", ".last.test")
    assert acl.where == Where(str(conf), 1, "acl")


# -- includes ----------------------------------------------------------------------


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "dns.conf").write_text("dns_timeout 5 seconds\ninclude more.conf\n")
    (tmp_path / "conf.d" / "more.conf").write_text("via off\n")
    main = tmp_path / "main.conf"
    main.write_text("include conf.d/dns.conf\ncache_mgr me\n")
    config = load(str(main))
    assert (config.dns_timeout, config.via, config.cache_mgr) == (5.0, False, "me")


def test_include_glob_reads_matches_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    for name, port in [("20-b.conf", 2), ("10-a.conf", 1), ("30-c.conf", 3)]:
        (tmp_path / "conf.d" / name).write_text(f"http_port 800{port}\n")
    main = tmp_path / "main.conf"
    main.write_text("include conf.d/*.conf\n")
    ports = load(str(main)).http_port
    assert [port.port for port in ports] == [8001, 8002, 8003]
    assert ports[0].where == Where(str(tmp_path / "conf.d" / "10-a.conf"), 1, "http_port")


def test_include_takes_several_patterns() -> None:
    config = parse("include a.conf b.conf\n", **{"a.conf": "via off", "b.conf": "cache_mgr b"})
    assert (config.via, config.cache_mgr) == (False, "b")


def test_includes_may_nest_sixteen_deep() -> None:
    files = {f"f{i}.conf": f"include f{i + 1}.conf\n" for i in range(16)}
    files["f16.conf"] = "cache_mgr deep\n"
    assert parse("include f1.conf\n", **files).cache_mgr == "deep"


def test_same_file_included_twice_is_not_a_loop() -> None:
    config = parse("include a.conf\ninclude a.conf\n", **{"a.conf": "http_port 1"})
    assert [port.port for port in config.http_port] == [1, 1]


# -- load, the shipped config, the embedded default ---------------------------------


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    path.write_text("http_port 8080\n")
    config = load(str(path))
    assert config.source == str(path)
    assert config.http_port[0].port == 8080


def test_shipped_config_parses_with_system_paths() -> None:
    config = load(str(SHIPPED_CONF))
    (port,) = config.http_port
    assert (port.host, port.port) == (None, 3128)
    assert config.pid_filename == "/run/labsquid/labsquid.pid"
    assert config.cache_log == "/var/log/labsquid/cache.log"
    assert [(log.module, log.path) for log in config.access_log] == [
        ("daemon", "/var/log/labsquid/access.log")
    ]
    assert config.cache_effective_user is None  # commented out: systemd runs us as labsquid
    assert config.http_access[-1] == AccessLine(
        False, ((False, "all"),), config.http_access[-1].where
    )


def test_shipped_config_documents_every_directive() -> None:
    text = SHIPPED_CONF.read_text()
    missing = [name for name in DIRECTIVES if f"TAG: {name}" not in text]
    assert missing == []


def test_shipped_config_shows_the_real_defaults() -> None:
    # Every "# NAME VALUE" default line in the file must parse to the actual default.
    text = SHIPPED_CONF.read_text()
    defaults = parse("")
    shown = [
        line[2:]
        for line in text.splitlines()
        if line.startswith("# ") and line[2:].split(" ", 1)[0] in DIRECTIVES
    ]
    assert len(shown) > 30
    for line in shown:
        name = line.split()[0]
        if DIRECTIVES[name].kind.name == "SINGLE":
            assert getattr(parse(line), name) == getattr(defaults, name), line


def test_embedded_default_is_a_local_developer_proxy() -> None:
    config = parse_text(EMBEDDED_DEFAULT)
    (port,) = config.http_port
    assert (port.host, port.port) == ("127.0.0.1", 3128)
    paths = [config.pid_filename, config.cache_log, config.access_log[0].path]
    assert all(path is not None and path.startswith("var/") for path in paths)
    assert not any(os.path.isabs(path or "") for path in paths)
    assert config.shutdown_lifetime == 3.0
    assert config.pool_dispatch == "notify"


def test_embedded_default_is_never_an_open_proxy() -> None:
    config = parse_text(EMBEDDED_DEFAULT)
    allowed = [rule.acls for rule in config.http_access if rule.allow]
    assert allowed == [((False, "localhost"), (False, "manager")), ((False, "localhost"),)]
    assert config.http_access[-1].acls == ((False, "all"),)
    assert not config.http_access[-1].allow


def test_directive_names() -> None:
    names = directive_names()
    assert names == sorted(names)
    assert {"http_port", "acl", "http_access", "include", "pool_dispatch"} <= set(names)
    assert "htp_port" not in names
