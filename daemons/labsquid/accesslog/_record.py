"""One finished transaction, as the access log sees it.

``AccessRecord`` is plain data: the worker fills it in when a transaction
ends and hands it to a compiled ``LogFormat``.  It carries raw values (the
URL exactly as received, header values as received); all encoding for the
log happens at render time, so one record can feed several formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AccessRecord"]


@dataclass
class AccessRecord:
    """Everything a logformat code can ask about one transaction."""

    start_time: float  # epoch seconds when the request started (%tS)
    duration_ms: int  # time to handle the request (%tr)
    client_addr: str  # %>a
    client_port: int  # %>p
    local_addr: str = ""  # %la: the address the client connected to
    local_port: int = 0  # %lp
    log_tag: str = "NONE_NONE"  # %Ss: squid logs NONE_NONE when nothing was decided
    http_status: int = 0  # %>Hs: 0 when no reply was sent
    reply_size: int = 0  # %<st: bytes sent to the client, headers included
    request_size: int = 0  # %>st: bytes received from the client
    method: str = ""  # %rm
    url: str = ""  # %ru: raw request target; cleaned at render time
    user: str | None = None  # %ul: authenticated login
    hierarchy: str = "HIER_NONE"  # %Sh
    peer_addr: str | None = None  # %<a: server/peer IP we talked to
    mime_type: str | None = None  # %mt: reply Content-Type
    referer: str | None = None  # %{Referer}>h when request_headers lacks it
    user_agent: str | None = None  # %{User-Agent}>h when request_headers lacks it
    http_version: str = "1.1"  # %rv
    error_code: str | None = None  # %err_code, e.g. ERR_INVALID_URL
    error_detail: str | None = None  # %err_detail
    # Less common fields.
    log_time: float | None = None  # when logged (%ts %tu %tl %tg); see end_time
    peer_port: int | None = None  # %<p
    peer_host: str | None = None  # %<A: server host name or peer name
    peer_status: int | None = None  # %<Hs: status received from the server
    client_fqdn: str | None = None  # %>A; falls back to client_addr like squid
    ident_user: str | None = None  # %ui
    external_user: str | None = None  # %ue: user name set by an external ACL
    request_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # %>h
    reply_headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # %<h

    @property
    def end_time(self) -> float:
        """The time squid stamps the line with.

        squid's ``%ts``/``%tu``/``%tl``/``%tg`` print the *current* time at
        logging, i.e. when the transaction finished, not when it started.
        Without an explicit ``log_time`` that is start plus duration.
        """
        if self.log_time is not None:
            return self.log_time
        return self.start_time + self.duration_ms / 1000.0

    def user_name(self) -> str | None:
        """``%un``: the first known of login, external-ACL user, ident user."""
        for candidate in (self.user, self.external_user, self.ident_user):
            if candidate:
                return candidate
        return None
