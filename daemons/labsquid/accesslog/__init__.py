"""The access log: squid's logformat language over finished transactions.

Build an ``AccessRecord`` when a transaction ends, compile the configured
format once with ``compile_logformat`` and call ``render`` per record.
Rendering is pure; writing lines is the logfile daemon's job.
"""

from ._logformat import (
    LogFormat,
    LogFormatError,
    Quoting,
    builtin_formats,
    compile_logformat,
    native_line,
)
from ._record import AccessRecord

__all__ = [
    "AccessRecord",
    "LogFormat",
    "LogFormatError",
    "Quoting",
    "builtin_formats",
    "compile_logformat",
    "native_line",
]
