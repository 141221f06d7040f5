"""``pool_dispatch serial``: no pool, the kid serves every connection itself.

The notes' blocking ``test_block_http_handler``, made non-blocking: one
process, one epoll loop, every client.  It has the pool engine's interface
(``labsquid.pool.PoolEngine``), so the kid drives either the same way; a
reconfigure happens in place, with the listeners and connections kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from labsquid.config import Config
from labsquid.listeners import stop_listening
from labsquid.stats import STATE_SERVING

if TYPE_CHECKING:
    from labsquid.kid import Kid


class SerialEngine:
    """``pool_dispatch serial``: the kid is the server."""

    def __init__(self, kid: Kid) -> None:
        from labsquid.proxy.context import ServeContext
        from labsquid.proxy.server import ProxyServer

        self.kid = kid
        # The files of the configuration the lines are made with, by index.
        self._ids = kid.logs.ids
        ctx = ServeContext(kid.loop, kid.config, self._queue_lines, kid.stats.own, kid.stats)
        self.server = ProxyServer(ctx)

    def _queue_lines(self, chunk: bytes) -> bool:
        # The kid's own lines are all queued (refusing one would lose it);
        # while that is over the bound, its clients wait for the daemon.
        if chunk:
            self.kid.write_access_lines(chunk, self._ids)
        budget = self.kid.log_budget()
        if budget is None or budget > 0:
            return True
        self.kid.want_log_room()
        return False

    def log_room(self) -> None:
        self.server.ctx.log_unblocked()

    def start(self) -> None:
        for sock in self.kid.listeners:
            self.server.listen(sock)
        self.kid.stats.own.set("state", STATE_SERVING)
        self.kid.engine_ready()

    def status(self) -> dict[str, object]:
        return {"children": 0, "dispatch": "serial"}

    def shutdown(self, lifetime: float, on_drained: Callable[[], None]) -> None:
        def drained() -> None:
            self.server.ctx.hand_over_lines()  # the last turn's, before the loggers close
            on_drained()

        self.server.drain(lifetime, drained)
        stop_listening(self.kid.loop, self.kid.listeners)

    def abort(self, on_done: Callable[[], None]) -> None:
        self.server.stop_accepting()
        self.server.close_all()
        self.server.ctx.hand_over_lines()
        self.kid.loop.call_soon(on_done)

    def reconfigure(self, config: Config) -> None:
        # Lines made with the old configuration go to its files (a file the
        # reload dropped still takes lines until this returns).
        self.server.ctx.hand_over_lines()
        self._ids = self.kid.logs.ids
        self.server.ctx.reconfigure(config)

    def child_exited(self, pid: int, status: int) -> bool:
        return False

    def has_older_children(self) -> bool:
        return False

    def signal_children(self, signum: int) -> None:
        """No children: the kid serves."""
