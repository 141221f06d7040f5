"""Property: whatever a record holds, a rendered line is one well-formed line."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from labsquid.accesslog import AccessRecord, builtin_formats, compile_logformat

FORMATS = {name: compile_logformat(fmt) for name, fmt in builtin_formats().items()}
BAD = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

# Any code point, lone surrogates included (surrogateescape-decoded bytes).
text = st.text(st.characters(blacklist_categories=()))
maybe_text = st.none() | text
number = st.integers(min_value=-(2**40), max_value=2**40)
headers = st.lists(st.tuples(st.text(min_size=1), text), max_size=3).map(tuple)

records = st.builds(
    AccessRecord,
    start_time=st.floats(min_value=0, max_value=4e9),
    duration_ms=st.integers(min_value=0, max_value=10**9),
    client_addr=text,
    client_port=number,
    local_addr=text,
    local_port=number,
    log_tag=text,
    http_status=number,
    reply_size=number,
    request_size=number,
    method=text,
    url=text,
    user=maybe_text,
    hierarchy=text,
    peer_addr=maybe_text,
    mime_type=maybe_text,
    referer=maybe_text,
    user_agent=maybe_text,
    http_version=text,
    error_code=maybe_text,
    error_detail=maybe_text,
    peer_port=st.none() | number,
    peer_host=maybe_text,
    peer_status=st.none() | number,
    client_fqdn=maybe_text,
    ident_user=maybe_text,
    external_user=maybe_text,
    request_headers=headers,
    reply_headers=headers,
)


@given(records)
def test_native_line_keeps_its_ten_fields(rec: AccessRecord) -> None:
    line = FORMATS["squid"].render(rec)
    assert BAD.search(line) is None
    assert line.isascii()  # everything squid does not print as-is is %-encoded
    assert len(line.split()) == 10, line


@given(records)
def test_every_builtin_renders_one_clean_line(rec: AccessRecord) -> None:
    for fmt in FORMATS.values():
        line = fmt.render(rec)
        assert BAD.search(line) is None
        assert len(line.splitlines()) == 1
        line.encode("utf-8")  # writable: no lone surrogates left


@given(records)
def test_all_codes_render_clean(rec: AccessRecord) -> None:
    every = compile_logformat(
        "%ts %tu %tl %tg %tS %tr %>a %>p %>A %<a %<p %<A %la %lp %ru %>ru %rm %rp %rv "
        "%>Hs %<Hs %Ss %Sh %mt %st %<st %>st %un %ul %ue %ui %>h %<h %{X}>h "
        "%err_code %err_detail %'ru %/>ru %#>ru %\">ru %[>h"
    )
    assert BAD.search(every.render(rec)) is None


@settings(max_examples=500, deadline=None)
@given(records)
def test_hand_written_native_renderer_equals_the_generic_one(rec: AccessRecord) -> None:
    native = builtin_formats()["squid"]
    assert compile_logformat(native).render(rec) == \
        compile_logformat(native, fast=False).render(rec)
