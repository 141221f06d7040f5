"""squid's logfile-daemon protocol, and the kid's queue for one daemon.

``_protocol`` is the wire grammar (both directions), ``_queue`` the kid's
bookkeeping; both are sans-I/O.  The daemon program is
``labsquid.logfile_daemon``.
"""

from ._protocol import (
    COMMANDS,
    LETTERS,
    MAX_MESSAGE,
    MAX_RECORD,
    MAX_ROTATE,
    Acked,
    LineRun,
    Message,
    MessageDecoder,
    Opened,
    Overlong,
    ProtocolError,
    Record,
    RecordDecoder,
    WriteFailed,
    encode_message,
    encode_record,
    parse_int,
    parse_message,
    parse_record,
    take_line_run,
)
from ._queue import LogQueue

__all__ = [
    "COMMANDS",
    "LETTERS",
    "MAX_MESSAGE",
    "MAX_RECORD",
    "MAX_ROTATE",
    "Acked",
    "LineRun",
    "LogQueue",
    "Message",
    "MessageDecoder",
    "Opened",
    "Overlong",
    "ProtocolError",
    "Record",
    "RecordDecoder",
    "WriteFailed",
    "encode_message",
    "encode_record",
    "parse_int",
    "parse_message",
    "parse_record",
    "take_line_run",
]
