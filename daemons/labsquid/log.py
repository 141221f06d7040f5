"""Structured logging for every labsquid process (structlog).

Where the events go, decided once per process by ``configure``:

* under systemd (``JOURNAL_STREAM`` names our stderr): the journal, with each
  event's fields as native journal fields (``LABSQUID_ROLE=kid``…), so
  ``journalctl -u labsquid LABSQUID_ROLE=kid`` filters by role;
* on a terminal: readable console lines;
* otherwise: one JSON object per line on stderr (or on the ``cache_log``
  file once a daemonised master has closed its stdio).

Every event carries ``role`` and ``pid``; ``rebind`` refreshes them after a
fork, when a process takes on a new role.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}

_context: dict[str, Any] = {}

#: Set by a daemonised master: the cache_log file its stdout and stderr (and
#: those of every process it starts) append to.
CACHE_LOG_ENV = "LABSQUID_CACHE_LOG"


def reopen_cache_log() -> str | None:
    """After a rotation: point stdout and stderr at the file now at the
    cache_log path.  Each process does it for itself (a descriptor cannot be
    swapped from outside).  Returns the path, or None when this process's
    output does not go to cache_log (systemd's journal, a terminal)."""
    path = os.environ.get(CACHE_LOG_ENV)
    if not path:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        # Keep writing where we were: a log line in the old file beats none.
        structlog.get_logger().warning("cache_log_reopen_failed", path=path, error=str(exc))
        return None
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path


def _add_process(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in _context.items():
        event.setdefault(key, value)
    return event


def _journal_is_stderr() -> bool:
    """True when systemd connected our stderr to the journal (see systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _JournalRenderer:
    """Send the event to the journal with its fields; return nothing to print."""

    _PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

    def __init__(self) -> None:
        from systemd import journal  # python3-systemd: only needed under systemd

        self._send = journal.send

    def __call__(self, _logger: Any, name: str, event: dict[str, Any]) -> str:
        message = event.pop("event", "")
        level = event.pop("level", name)
        # A field that is None (an exit code when a signal killed the kid) is
        # simply absent, as journal fields usually are.
        event = {k: v for k, v in event.items() if v is not None and k != "timestamp"}
        fields = {"LABSQUID_" + k.upper(): str(v) for k, v in event.items()}
        extra = " ".join(f"{k}={v}" for k, v in event.items()
                         if k not in ("role", "pid", "exception"))
        text = f"{event.get('role', '?')}[{event.get('pid', '?')}]: {message}"
        if extra:
            text += " " + extra
        if "exception" in event:
            text += "\n" + str(event["exception"])
        self._send(text, PRIORITY=self._PRIORITY.get(level, 6),
                   SYSLOG_IDENTIFIER="labsquid", LABSQUID_EVENT=message, **fields)
        raise structlog.DropEvent


def configure(role: str, level: str = "info", stream: TextIO | None = None,
              use_journal: bool | None = None) -> None:
    """Set up structlog for this process: ``role`` and ``pid`` on every event."""
    _context.clear()
    _context.update(role=role, pid=os.getpid())
    out = stream if stream is not None else sys.stderr
    if use_journal is None:
        use_journal = stream is None and _journal_is_stderr()
    processors: list[Any] = [
        structlog.processors.add_log_level,
        _add_process,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if use_journal:
        try:
            processors.append(_JournalRenderer())
        except ImportError:
            use_journal = False
    if not use_journal:
        if out.isatty():
            processors.append(structlog.dev.ConsoleRenderer(colors=False))
        else:
            processors.append(structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def rebind(role: str) -> None:
    """After a fork: same outputs, new role and pid."""
    _context.update(role=role, pid=os.getpid())


def level_from_debug(level: int | None) -> str:
    """squid's ``-d N`` (0..9) mapped onto log levels."""
    if level is None:
        return "info"
    return "debug" if level >= 2 else "info" if level == 1 else "warning"
