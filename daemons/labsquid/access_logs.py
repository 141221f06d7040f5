"""The kid's access_log files: one ``AccessLogger`` (one logfile daemon) per file.

Theory of operation
-------------------
Every ``access_log`` line that names a file has an index: its place among
those lines.  Serving code renders a request's line for each file the
``access_log`` acls chose and hands it over with that index.  Lines for the
first file travel as they are; a pool child puts ``TAG`` and the index byte
in front of a line for any other file, so that one pipe carries them all and
the usual configuration (one file) pays nothing: its chunks go to the one
logger whole.  Here, a chunk with tagged lines is cut into one batch per
logger.

Two lines naming the same path share its logger (as one daemon per file
keeps rotation to one rename).  A reload keeps the loggers of the paths it
keeps, starts those of new paths, and retires the rest: a retired logger
drains what it was given and its daemon exits.  A tag whose index the
current configuration has no file for (a child of the previous
configuration) goes to the first file, as lines of a replaced file did
before.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from labsquid.access_logger import AccessLogger
from labsquid.config import Config
from labsquid.eventloop import EventLoop

log = structlog.get_logger()

TAG = b"\x00"  # then one byte: the file's index (1-255); no rendered line has a NUL
MAX_FILES = 256
CLOSE_LIMIT = 10.0  # seconds a retired logger may take to write what it holds


def log_file_paths(config: Config) -> list[str]:
    """The path of each ``access_log`` file, by index (``stdio:`` ones too:
    squid writes those itself, labsquid through a daemon like the rest)."""
    return [e.path for e in config.access_log if e.module != "none" and e.path]


def tagged(line: bytes, index: int) -> bytes:
    """A line for file ``index`` on a pool child's pipe."""
    return line if index == 0 else TAG + bytes((index,)) + line


class AccessLogs:
    def __init__(self, loop: EventLoop, on_room: Callable[[], None]) -> None:
        self.loop = loop
        self._on_room = on_room
        self.by_path: dict[str, AccessLogger] = {}
        self.routes: list[AccessLogger] = []  # by file index
        self.retired: list[AccessLogger] = []
        self._program: str | None = None
        self.on_retired_gone: Callable[[], None] = lambda: None

    # -- configuration --------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Start the loggers of ``config`` (at start and after each reload)."""
        paths = log_file_paths(config)
        if config.logfile_daemon != self._program:
            self._program = config.logfile_daemon
            for path in list(self.by_path):
                self._retire(self.by_path.pop(path))
        for path in [p for p in self.by_path if p not in paths]:
            self._retire(self.by_path.pop(path))
        for path in paths:
            logger = self.by_path.get(path)
            if logger is None:
                logger = AccessLogger(self.loop, path, config.logfile_daemon,
                                      rotate_count=config.logfile_rotate,
                                      buffered=config.buffered_logs,
                                      max_bytes=config.logfile_queue_size)
                logger.on_room = self._on_room
                logger.start()
                self.by_path[path] = logger
            elif logger.rotate_count != config.logfile_rotate:
                logger.set_rotate_count(config.logfile_rotate)
        self.routes = [self.by_path[p] for p in paths]

    def _retire(self, logger: AccessLogger) -> None:
        """A logger whose file the configuration no longer names: it drains and
        its daemon exits; it stays known until then, so that exit is reaped as
        its own, not as an unknown child's."""
        logger.on_room = None
        logger.on_idle = lambda: self._forget(logger)
        self.retired.append(logger)
        logger.close()
        # A daemon that cannot write the old file (its disk gone, say) is
        # replaced while lines wait; give up on them after the exit's limit.
        self.loop.call_later(CLOSE_LIMIT, lambda: self._retired_timeout(logger))

    def _forget(self, logger: AccessLogger) -> None:
        if logger in self.retired:
            self.retired.remove(logger)
        self.on_retired_gone()

    def _retired_timeout(self, logger: AccessLogger) -> None:
        if logger in self.retired:
            log.error("access_log_flush_timeout", path=logger.path, limit=CLOSE_LIMIT)
            logger.kill_now()

    # -- lines ------------------------------------------------------------------
    def write_line(self, line: str | bytes, index: int = 0) -> None:
        routes = self.routes
        if routes:
            routes[index if index < len(routes) else 0].write_line(line)

    def write_lines(self, chunk: bytes) -> None:
        """A pool child's lines, each ending in a newline, in one go."""
        routes = self.routes
        if not routes:
            return
        if TAG not in chunk:
            routes[0].write_lines(chunk)
            return
        batches: dict[AccessLogger, list[bytes]] = {}
        for line in chunk.split(b"\n")[:-1]:
            logger = routes[0]
            if line[:1] == TAG:
                index = line[1] if len(line) > 1 else 0
                logger = routes[index] if index < len(routes) else routes[0]
                line = line[2:]
            batches.setdefault(logger, []).append(line)
        for logger, lines in batches.items():
            lines.append(b"")
            logger.write_lines(b"\n".join(lines))

    def budget(self) -> int | None:
        """Bytes of lines that may be taken in now (the fullest queue's); None:
        no file, no bound."""
        loggers = self.by_path.values()
        return min((lg.line_budget() for lg in loggers), default=None)

    def want_room(self) -> None:
        # Every logger: the one that bounded the budget may have room left
        # after the lines just taken in, and only acks of lines it holds
        # call back (an extra call back only makes the caller look again).
        for logger in self.by_path.values():
            logger.want_room()

    # -- control ----------------------------------------------------------------
    def rotate(self) -> None:
        """Each file once, however many lines and children feed it."""
        for logger in self.by_path.values():
            log.info("access_log_rotate", path=logger.path)
            logger.rotate()

    def owner(self, pid: int) -> AccessLogger | None:
        """The logger whose daemon ``pid`` was, current or retired."""
        return next((lg for lg in self.all() if lg.pid == pid), None)

    def all(self) -> list[AccessLogger]:
        return [*self.by_path.values(), *self.retired]

    def close(self, on_idle: Callable[[], object]) -> None:
        """At exit: every current logger flushes and stops."""
        for logger in self.by_path.values():
            if not logger.closed:
                logger.on_idle = on_idle
                logger.close()

    @property
    def closed(self) -> bool:
        return all(lg.closed for lg in self.by_path.values()) and not self.retired

    def kill_now(self) -> None:
        for logger in self.all():
            logger.kill_now()
