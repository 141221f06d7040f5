"""Broken configurations: every problem is found, in order, with an exact message."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import labsquid
from labsquid.config import ConfigError, ConfigProblem, Where, load, parse_text
from labsquid.config._files import MemoryFiles

WORKERS_MESSAGE = (
    "workers: labsquid runs a single kid with a process pool, so workers must be 1, not 2; "
    "use pool_size to set the number of pool processes"
)

BROKEN = [
    # (config text, the one expected message)
    ("htp_port 3128", "t.conf line 1: unknown directive 'htp_port'"),
    (
        "shutdown_lifetime 3 parsecs",
        "t.conf line 1: shutdown_lifetime: unknown time unit 'parsecs'",
    ),
    ("dns_timeout soon", "t.conf line 1: dns_timeout: 'soon' is not a number"),
    ("dns_timeout -5 seconds", "t.conf line 1: dns_timeout: '-5' is negative"),
    (
        "dns_timeout 5 seconds later",
        "t.conf line 1: dns_timeout: unexpected 'later' after the time value",
    ),
    ("dns_timeout", "t.conf line 1: dns_timeout: missing time value"),
    ("pid_filename", "t.conf line 1: pid_filename: missing value"),
    ("cache_log /a /b", "t.conf line 1: cache_log: unexpected '/b' after the value"),
    ("via maybe", "t.conf line 1: via: expected 'on' or 'off', got 'maybe'"),
    ("logfile_rotate ten", "t.conf line 1: logfile_rotate: 'ten' is not a whole number"),
    ("logfile_rotate -1", "t.conf line 1: logfile_rotate: -1 is too small (the minimum is 0)"),
    ("pool_size 0", "t.conf line 1: pool_size: 0 is too small (the minimum is 1)"),
    (
        "request_header_max_size 64 KiB",
        "t.conf line 1: request_header_max_size: unknown size unit 'KiB' "
        "(expected bytes, KB, MB or GB)",
    ),
    (
        "pool_dispatch fast",
        "t.conf line 1: pool_dispatch: unknown value 'fast' "
        "(expected serial, notify, passfd, shared or reuseport)",
    ),
    (
        "forwarded_for maybe",
        "t.conf line 1: forwarded_for: unknown value 'maybe' "
        "(expected on, off, transparent, delete or truncate)",
    ),
    ("workers 2", f"t.conf line 1: {WORKERS_MESSAGE}"),
    (
        "http_port 70000",
        "t.conf line 1: http_port: bad port in '70000': 70000 is too large (the maximum is 65535)",
    ),
    (
        "http_port proxy",
        "t.conf line 1: http_port: bad port in 'proxy': 'proxy' is not a whole number",
    ),
    (
        "http_port ::1:3128",
        "t.conf line 1: http_port: write the IPv6 address in '::1:3128' in brackets: "
        "[ADDRESS]:PORT",
    ),
    ("http_port [::1]", "t.conf line 1: http_port: '[::1]' is not [IPv6-ADDRESS]:PORT"),
    ("http_port [nope]:80", "t.conf line 1: http_port: 'nope' is not an IPv6 address"),
    ("http_port :80", "t.conf line 1: http_port: missing address before the ':' in ':80'"),
    ("http_access allow Foo", "t.conf line 1: http_access: undefined acl 'Foo'"),
    (
        "http_access permit all",
        "t.conf line 1: http_access: expected 'allow' or 'deny', got 'permit'",
    ),
    (
        "http_access allow",
        "t.conf line 1: http_access: 'allow' needs at least one acl name "
        "(use 'all' to match everything)",
    ),
    ("http_access deny !", "t.conf line 1: http_access: missing acl name after '!'"),
    (
        "http_access allow office\nacl office src 10.0.0.0/8",  # squid: define before use
        "t.conf line 1: http_access: undefined acl 'office'",
    ),
    (
        "acl a src 10.0.0.1\nacl a dst 10.0.0.2",
        "t.conf line 2: acl: acl 'a' was defined with type 'src' at t.conf line 1, "
        "it cannot also have type 'dst'",
    ),
    (
        "acl localhost dst 10.0.0.1",
        "t.conf line 1: acl: 'localhost' is a predefined acl of type 'src'",
    ),
    (
        "acl bad!name src 10.0.0.1",
        "t.conf line 1: acl: invalid acl name 'bad!name' (use letters, digits, '-', '.' and '_')",
    ),
    ("acl lonely", "t.conf line 1: acl: missing type for acl 'lonely'"),
    (
        'acl sites dstdomain "lists/sites"',
        "t.conf line 1: acl: cannot read acl values from 'lists/sites': No such file or directory",
    ),
    (
        "access_log syslog:daemon.info",
        "t.conf line 1: access_log: unsupported logging module 'syslog' "
        "(labsquid has daemon, stdio and 'none')",
    ),
    ("access_log daemon:", "t.conf line 1: access_log: missing file name in 'daemon:'"),
    ("access_log daemon:/x logformat=nope", "t.conf line 1: access_log: unknown logformat 'nope'"),
    (
        "access_log daemon:/x colour=blue",
        "t.conf line 1: access_log: unknown access_log option 'colour'",
    ),
    ("access_log daemon:/x squid nobody", "t.conf line 1: access_log: undefined acl 'nobody'"),
    (
        "logformat squid %ts",
        "t.conf line 1: logformat: 'squid' is a built-in format and cannot be redefined",
    ),
    ("logformat mine", "t.conf line 1: logformat: missing format text for 'mine'"),
    ("logformat a %ts\nlogformat a %tr", "t.conf line 2: logformat: 'a' is already defined"),
    ('visible_hostname "abc', 't.conf line 1: missing closing " in "abc'),
    ('cache_mgr "a\\qb"', "t.conf line 1: unsupported escape sequence '\\q' in quoted string"),
    ('cache_mgr "ab"cd', 't.conf line 1: expected a space after the closing quote in "ab"cd'),
    (
        "include nothere.conf",
        "t.conf line 1: include: cannot read 'nothere.conf': No such file or directory",
    ),
    ("include conf.d/*.conf", "t.conf line 1: include: no file matches 'conf.d/*.conf'"),
    ("include", "t.conf line 1: include: missing file name or pattern"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN, ids=[m for _, m in BROKEN])
def test_broken_config_reports_exactly(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_text(text + "\n", "t.conf", files=MemoryFiles({}))
    assert [str(problem) for problem in caught.value.problems] == [message]
    assert str(caught.value) == message


def test_every_problem_is_reported_in_file_order_across_includes() -> None:
    main = """\
htp_port 3128
http_port 3128
include extra.conf
via maybe
http_access allow nobody
workers 2
"""
    extra = "cache_mgr ok\nshutdown_lifetime 3 parsecs\n"
    with pytest.raises(ConfigError) as caught:
        parse_text(main, "t.conf", files=MemoryFiles({"extra.conf": extra}))
    assert [str(problem) for problem in caught.value.problems] == [
        "t.conf line 1: unknown directive 'htp_port'",
        "extra.conf line 2: shutdown_lifetime: unknown time unit 'parsecs'",
        "t.conf line 4: via: expected 'on' or 'off', got 'maybe'",
        "t.conf line 5: http_access: undefined acl 'nobody'",
        f"t.conf line 6: {WORKERS_MESSAGE}",
    ]


def test_problems_carry_where_they_are() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_text("\n\n  via maybe\n", "t.conf")
    (problem,) = caught.value.problems
    assert problem == ConfigProblem("t.conf", 3, "via", "via: expected 'on' or 'off', got 'maybe'")
    assert isinstance(problem, Where)


def test_include_loop_is_reported_at_the_include_line() -> None:
    files = MemoryFiles({"a.conf": "via off\ninclude b.conf\n", "b.conf": "include a.conf\n"})
    with pytest.raises(ConfigError) as caught:
        parse_text("include a.conf\n", "t.conf", files=files)
    assert [str(p) for p in caught.value.problems] == [
        "b.conf line 1: include: 'a.conf' includes itself (include loop)"
    ]


def test_include_loop_on_disk_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "main.conf").write_text("include link.conf\n")
    (tmp_path / "link.conf").symlink_to(tmp_path / "main.conf")
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path / "main.conf"))
    (problem,) = caught.value.problems
    assert problem.line == 1 and "include loop" in problem.message


def test_includes_nested_seventeen_deep_are_refused() -> None:
    files = {f"f{i}.conf": f"include f{i + 1}.conf\n" for i in range(17)}
    files["f17.conf"] = "via off\n"
    with pytest.raises(ConfigError) as caught:
        parse_text("include f1.conf\n", "f0.conf", files=MemoryFiles(files))
    assert [str(p) for p in caught.value.problems] == [
        "f16.conf line 1: include: cannot include 'f17.conf': nested more than 16 deep"
    ]


def test_load_of_a_missing_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load("/nonexistent/labsquid.conf")
    assert str(caught.value) == (
        "/nonexistent/labsquid.conf: cannot read the configuration file: No such file or directory"
    )


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        ConfigError([])


# -- labsquid.acl's own checks -------------------------------------------------------


class FakeAclError(Exception):
    def __init__(self, where: Where, message: str, errors: list | None = None) -> None:
        super().__init__(message)
        self.where, self.message = where, message
        self.errors = errors if errors is not None else [self]


@pytest.fixture
def fake_acl_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in labsquid.acl that rejects every acl of type 'bogus'."""
    module = types.ModuleType("labsquid.acl")

    def compile_acls(lines: list) -> object:
        errors = [
            FakeAclError(line.where, f"unknown acl type '{line.type}'")
            for line in lines
            if line.type == "bogus"
        ]
        if errors:
            raise FakeAclError(errors[0].where, errors[0].message, errors)
        return object()

    module.compile_acls = compile_acls  # type: ignore[attr-defined]
    module.AclError = FakeAclError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "labsquid.acl", module)
    monkeypatch.setattr(labsquid, "acl", module, raising=False)
    return module


def test_acl_module_problems_merge_in_file_order(fake_acl_module: types.ModuleType) -> None:
    text = "via maybe\nacl a bogus x\nacl b src 10.0.0.1\nacl c bogus y\nhtp_port 1\n"
    with pytest.raises(ConfigError) as caught:
        parse_text(text, "t.conf")
    assert [str(p) for p in caught.value.problems] == [
        "t.conf line 1: via: expected 'on' or 'off', got 'maybe'",
        "t.conf line 2: unknown acl type 'bogus'",
        "t.conf line 4: unknown acl type 'bogus'",
        "t.conf line 5: unknown directive 'htp_port'",
    ]


def test_a_line_is_not_reported_twice(fake_acl_module: types.ModuleType) -> None:
    # Our own type-change check already flags line 2; the acl module's word on it is dropped.
    with pytest.raises(ConfigError) as caught:
        parse_text("acl a src 10.0.0.1\nacl a bogus x\n", "t.conf")
    (problem,) = caught.value.problems
    assert problem.line == 2 and "cannot also have type 'bogus'" in problem.message


def test_real_acl_module_is_consulted_when_present() -> None:
    acl = pytest.importorskip("labsquid.acl")
    with pytest.raises(ConfigError) as caught:
        parse_text("acl a nosuchtype x\n", "t.conf")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == ("t.conf", 1)
    # and its predefined acls agree with the names the config accepts undefined
    from labsquid.config._build import PREDEFINED_ACLS

    assert {(name, kind) for name, kind, _ in acl.BUILTIN_ACLS} == set(PREDEFINED_ACLS.items())


def test_a_squid_directive_labsquid_does_not_implement_is_a_warning_not_a_typo() -> None:
    """A squid.conf loads: squid's caching directives are named, placed and
    ignored; a name squid does not know either is still an error."""
    text = ("http_port 3128\n"
            "refresh_pattern ^ftp: 1440 20% 10080\n"
            "coredump_dir /var/spool/squid\n")
    config = parse_text(text, "squid.conf")
    assert [str(w) for w in config.warnings] == [
        "squid.conf line 2: squid directive 'refresh_pattern' is not implemented by "
        "labsquid: ignored",
        "squid.conf line 3: squid directive 'coredump_dir' is not implemented by "
        "labsquid: ignored",
    ]
    assert [w.directive for w in config.warnings] == ["refresh_pattern", "coredump_dir"]
    with pytest.raises(ConfigError) as info:
        parse_text(text + "refresh_patern . 0 20% 4320\n", "squid.conf")
    assert [str(p) for p in info.value.problems] == [
        "squid.conf line 4: unknown directive 'refresh_patern'"]


@pytest.mark.parametrize("line", [
    "http_reply_access deny all", "miss_access deny all", "adapted_http_access deny all",
    "cache_peer 10.9.9.9 parent 3128 0 default", "never_direct allow all",
    "request_header_access Cookie deny all",
])
def test_a_squid_directive_that_could_restrict_the_proxy_is_an_error(line: str) -> None:
    """Ignored, any of these would leave the proxy serving what the
    configuration forbids (a review found them passing with a warning)."""
    name = line.split()[0]
    with pytest.raises(ConfigError) as info:
        parse_text(f"http_port 3128\n{line}\n", "squid.conf")
    assert [str(p) for p in info.value.problems] == [
        f"squid.conf line 2: squid directive '{name}' is not implemented by labsquid"]


def test_cachemgr_passwd_lines_are_kept_in_order() -> None:
    config = parse_text("cachemgr_passwd secret info counters\n"
                        "cachemgr_passwd disable all\n", "t.conf")
    assert [(e.password, e.actions, e.where.line) for e in config.cachemgr_passwd] == [
        ("secret", ("info", "counters"), 1), ("disable", ("all",), 2)]
    assert config.warnings == ()
    assert parse_text("http_port 3128\n", "t.conf").cachemgr_passwd == ()


@pytest.mark.parametrize("line, message", [
    ("cachemgr_passwd secret", "needs a password and at least one action"),
    ("cachemgr_passwd", "needs a password and at least one action"),
    # squid takes any word; a misspelt action would be left open
    ("cachemgr_passwd secret info cuonters", "unknown cache manager action 'cuonters'"),
])
def test_a_cachemgr_passwd_line_that_protects_nothing_is_an_error(line, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(f"http_port 3128\n{line}\n", "squid.conf")
    assert [str(p) for p in info.value.problems] == [
        f"squid.conf line 2: cachemgr_passwd: {message}"]


def test_a_squid_only_manager_action_is_named_in_a_warning() -> None:
    """squid.conf files protect squid's shutdown and reconfigure pages,
    which labsquid does not serve: the line loads and says so."""
    config = parse_text("cachemgr_passwd secret shutdown info reconfigure\n", "squid.conf")
    assert [str(w) for w in config.warnings] == [
        "squid.conf line 1: cachemgr_passwd: labsquid has no cache manager action 'shutdown'",
        "squid.conf line 1: cachemgr_passwd: labsquid has no cache manager action "
        "'reconfigure'"]
    assert config.cachemgr_passwd[0].actions == ("shutdown", "info", "reconfigure")


def test_the_manager_actions_the_config_knows_are_the_pages_served() -> None:
    from labsquid.config._directives import MANAGER_ACTIONS, SQUID_ONLY_MANAGER_ACTIONS
    from labsquid.proxy.mgr import ACTIONS
    assert tuple(ACTIONS) == MANAGER_ACTIONS
    assert not SQUID_ONLY_MANAGER_ACTIONS & set(MANAGER_ACTIONS)


def test_access_log_acls_and_further_files_are_taken_without_warnings() -> None:
    """Both are written now (labsquid.access_logs); an undefined acl on an
    access_log line is still an error that names it."""
    config = parse_text("access_log daemon:/var/log/a.log squid localhost\n"
                        "access_log stdio:/var/log/b.log\n", "t.conf")
    assert config.warnings == ()
    assert [(e.path, e.acls) for e in config.access_log] == [
        ("/var/log/a.log", ((False, "localhost"),)), ("/var/log/b.log", ())]
    with pytest.raises(ConfigError) as info:
        parse_text("access_log daemon:/var/log/a.log squid nosuch\n", "t.conf")
    assert "t.conf line 1" in str(info.value.problems[0])
    assert "undefined acl 'nosuch'" in str(info.value.problems[0])


def test_access_log_options_are_checked_and_the_unapplied_ones_said() -> None:
    config = parse_text("access_log daemon:/var/log/a.log squid rotate=3 on-error=die "
                        "buffer-size=64KB localhost\n"
                        "access_log daemon:/var/log/b.log on-error=drop\n", "t.conf")
    entry, dropping = config.access_log
    assert (entry.logformat, entry.options["rotate"], entry.acls) == (
        "squid", "3", ((False, "localhost"),))
    assert dropping.options == {"on-error": "drop"}  # applied: no warning
    assert [str(w) for w in config.warnings] == [
        "t.conf line 1: access_log: on-error=die is not applied: labsquid does not exit "
        "when a file cannot be written; it keeps the lines and retries every second "
        "(on-error=drop drops them instead once the file's queue is full)",
        "t.conf line 1: access_log: buffer-size=64KB is not applied: lines wait in the "
        "kid's queue, whose bound is logfile_queue_size"]
    spaced = parse_text("access_log daemon:/var/log/a.log buffer-size=1MB\n", "t.conf")
    assert [str(w).split(": ", 2)[2] for w in spaced.warnings] == [
        "buffer-size=1MB is not applied: lines wait in the kid's queue, whose bound is "
        "logfile_queue_size"]
    for bad, message in [("rotate=-1", "bad rotate=-1"), ("rotate=x", "bad rotate=x"),
                         ("on-error=retry", "on-error=retry: expected 'die' or 'drop'"),
                         # drop is on-error's value; a buffer size is a size
                         ("buffer-size=drop", "bad buffer-size=drop: 'drop' is not a size"),
                         ("buffer-size=64XB", "bad buffer-size=64XB: unknown size unit 'XB'")]:
        with pytest.raises(ConfigError) as info:
            parse_text(f"access_log daemon:/var/log/a.log {bad}\n", "t.conf")
        assert str(info.value.problems[0]).startswith(f"t.conf line 1: access_log: {message}")
