"""Where the config comes from, and what the processes read off it.

``labsquid`` without ``-f`` reads ``/etc/labsquid/labsquid.conf``; when that
file does not exist (a developer's checkout), it runs the embedded default:
loopback port 3128, PID file and logs under ``var/`` in the current folder.
"""

from __future__ import annotations

import os

from labsquid.config import EMBEDDED_DEFAULT, Config, load, parse_text
from labsquid.listeners import PortSpec

DEFAULT_CONFIG = "/etc/labsquid/labsquid.conf"


def config_path(explicit: str | None) -> str | None:
    """The file to read, or None for the embedded default."""
    if explicit:
        return explicit
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def load_config(path: str | None) -> Config:
    return load(path) if path else parse_text(EMBEDDED_DEFAULT, "<embedded default>")


def port_specs(config: Config) -> list[PortSpec]:
    return [PortSpec(p.host or "", p.port) for p in config.http_port]
