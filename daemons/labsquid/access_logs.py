"""The kid's access_log files: one ``AccessLogger`` (one logfile daemon) per file.

Theory of operation
-------------------
Every ``access_log`` line that names a file has an index: its place among
those lines.  Serving code renders a request's line for each file the
``access_log`` acls chose and hands it over with that index.  Lines for the
first file travel as they are; a pool child puts ``TAG`` and the index in
two hex digits in front of a line for any other file, so that one pipe
carries them all and the usual configuration (one file) pays nothing: its
chunks go to the one logger whole.  Here, a chunk with tagged lines is cut
into one batch per logger.

An index means a file of the configuration the child was started with, and
after a reload that may not be the current one: each file path gets an id
for the kid's lifetime, each child is handed the ids of its configuration
(``ids`` when it starts), and its lines go by those.  Two lines naming the
same path share its logger (one daemon per file keeps rotation to one
rename).  A reload keeps the loggers of the paths it keeps, starts those of
new paths, and retires the rest; a retired logger still takes the lines of
the children that name it, and is closed (it drains, its daemon exits) once
the kid says none of them is left.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from labsquid.access_logger import AccessLogger
from labsquid.config import Config
from labsquid.eventloop import EventLoop

log = structlog.get_logger()

TAG = b"\x00"  # then the file's index in two hex digits; no rendered line has a NUL
CLOSE_LIMIT = 10.0  # seconds a retired logger may take to write what it holds


def log_file_paths(config: Config) -> list[str]:
    """The path of each ``access_log`` file, by index (``stdio:`` ones too:
    squid writes those itself, labsquid through a daemon like the rest)."""
    return [e.path for e in config.access_log if e.module != "none" and e.path]


def file_options(config: Config) -> dict[str, tuple[int, bool]]:
    """Each file's own settings: how many old copies it keeps (its
    ``rotate=``, else ``logfile_rotate``) and whether it drops lines rather
    than hold the others back when its queue is full (``on-error=drop``).
    The first line naming a path decides for it."""
    options: dict[str, tuple[int, bool]] = {}
    for entry in config.access_log:
        if entry.module != "none" and entry.path and entry.path not in options:
            options[entry.path] = (int(entry.options.get("rotate", config.logfile_rotate)),
                                   entry.options.get("on-error") == "drop")
    return options


def tagged(line: bytes, index: int) -> bytes:
    """A line for file ``index`` on a pool child's pipe (two hex digits: the
    config allows no more files, ``MAX_ACCESS_LOG_FILES``)."""
    return line if index == 0 else b"%b%02x%b" % (TAG, index, line)


class AccessLogs:
    def __init__(self, loop: EventLoop, on_room: Callable[[], None]) -> None:
        self.loop = loop
        self._on_room = on_room
        self.by_path: dict[str, AccessLogger] = {}
        self.retired: list[AccessLogger] = []  # closing: their lines drain
        self.held: list[AccessLogger] = []  # retired, but older children may log to them
        self._ids: dict[str, int] = {}  # a path's id, for the kid's lifetime
        self._by_id: dict[int, AccessLogger] = {}  # current, held and closing loggers
        self.ids: list[int] = []  # the current configuration's file ids, by index
        self._program: str | None = None
        self.on_retired_gone: Callable[[], None] = lambda: None

    # -- configuration --------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Start the loggers of ``config`` (at start and after each reload)."""
        paths = log_file_paths(config)
        settings = file_options(config)
        if config.logfile_daemon != self._program:
            self._program = config.logfile_daemon
            for path in list(self.by_path):
                self._retire(self.by_path.pop(path))
        for path in [p for p in self.by_path if p not in paths]:
            self._retire(self.by_path.pop(path))
        for path in paths:
            self._ids.setdefault(path, len(self._ids) + 1)
            logger = self.by_path.get(path) or self._unhold(path)
            if logger is None:
                logger = AccessLogger(self.loop, path, config.logfile_daemon,
                                      rotate_count=settings[path][0],
                                      buffered=config.buffered_logs,
                                      max_bytes=config.logfile_queue_size)
                logger.drop_when_full = settings[path][1]
                logger.on_room = self._on_room
                logger.start()
                self.by_path[path] = logger
            else:
                logger.reconfigure(settings[path][0], config.buffered_logs,
                                   config.logfile_queue_size)
                logger.drop_when_full = settings[path][1]
        self.ids = [self._ids[p] for p in paths]
        for path, logger in self.by_path.items():
            self._by_id[self._ids[path]] = logger

    def _unhold(self, path: str) -> AccessLogger | None:
        """A path a reload had dropped and this one names again: the logger
        still held for it goes on (one daemon per file)."""
        logger = next((lg for lg in self.held if lg.path == path), None)
        if logger is not None:
            self.held.remove(logger)
            self.by_path[path] = logger
        return logger

    def _retire(self, logger: AccessLogger) -> None:
        """A logger whose file the configuration no longer names: held open
        for the children that still log to it (``close_held``)."""
        self.held.append(logger)

    def close_held(self) -> None:
        """No child of an older configuration is left: the loggers a reload
        retired drain and their daemons exit; each stays known until then, so
        that exit is reaped as its own, not as an unknown child's."""
        held, self.held = self.held, []
        for logger in held:
            logger.on_room = None
            logger.on_idle = lambda lg=logger: self._forget(lg)
            self.retired.append(logger)
            logger.close()
            # A daemon that cannot write the old file (its disk gone, say) is
            # replaced while lines wait; give up on them after the exit's limit.
            self.loop.call_later(CLOSE_LIMIT, lambda lg=logger: self._retired_timeout(lg))

    def _forget(self, logger: AccessLogger) -> None:
        if logger in self.retired:
            self.retired.remove(logger)
        for key in [k for k, lg in self._by_id.items() if lg is logger]:
            del self._by_id[key]
        self.on_retired_gone()

    def _retired_timeout(self, logger: AccessLogger) -> None:
        if logger in self.retired:
            log.error("access_log_flush_timeout", path=logger.path, limit=CLOSE_LIMIT)
            logger.kill_now()

    # -- lines ------------------------------------------------------------------
    def write_lines(self, chunk: bytes, ids: list[int]) -> None:
        """A serving process's lines (a pool child's, or the kid's own in
        serial mode), each ending in a newline, in one go; ``ids``: the files
        of the configuration they were made with, by index."""
        if not ids:
            return
        by_id = self._by_id
        # One file (the usual config): no line is tagged, and a collection
        # (~100 KB at low concurrency) is not scanned for tags either.
        if len(ids) == 1 or TAG not in chunk:
            first = by_id.get(ids[0])
            if first is not None:
                first.write_lines(chunk)
            return
        batches: dict[AccessLogger, list[bytes]] = {}
        for line in chunk.split(b"\n")[:-1]:
            index = 0
            if line[:1] == TAG:
                index, line = int(line[1:3], 16), line[3:]
            logger = by_id.get(ids[index]) if index < len(ids) else None
            if logger is None:  # cannot happen: a held logger outlives its children
                log.warning("access_log_line_without_file", index=index)
                continue
            batches.setdefault(logger, []).append(line)
        for logger, lines in batches.items():
            lines.append(b"")
            logger.write_lines(b"\n".join(lines))

    def _bounding(self) -> list[AccessLogger]:
        """The loggers whose queues bound what the kid takes in: every open
        one but those that drop lines when full (on-error=drop)."""
        return [lg for lg in (*self.by_path.values(), *self.held) if not lg.drop_when_full]

    def budget(self) -> int | None:
        """Bytes of lines that may be taken in now (the fullest queue's); None:
        no file, no bound."""
        return min((lg.line_budget() for lg in self._bounding()), default=None)

    def want_room(self) -> None:
        # Every logger that bounds the budget and holds lines: the one that
        # bounded it may have room left after the lines just taken in, and
        # only acks of lines it holds call back (an extra call back only
        # makes the caller look again).  When none holds any (the lines taken
        # in went to files that drop), no ack will come: look again now.
        waiting = False
        for logger in self._bounding():
            if not logger.queue.idle():
                logger.want_room()
                waiting = True
        if not waiting:
            self.loop.call_soon(self._on_room)

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
        return [*self.by_path.values(), *self.held, *self.retired]

    def close(self, on_idle: Callable[[], object]) -> None:
        """At exit: every current logger flushes and stops (the serving
        processes are gone: nobody logs to a held one any more)."""
        self.close_held()
        for logger in self.by_path.values():
            if not logger.closed:
                logger.on_idle = on_idle
                logger.close()

    @property
    def closed(self) -> bool:
        return (all(lg.closed for lg in self.by_path.values())
                and not self.retired and not self.held)

    def kill_now(self) -> None:
        for logger in self.all():
            logger.kill_now()
