"""fork, exec and exit statuses: the few places labsquid creates processes.

Two rules from the notes hold here:

* nothing forks while another thread exists (experiment 4: the child would
  inherit locks held by threads that do not exist in it) — ``fork`` asserts it;
* a signal that arrives between fork and exec must not reach the parent's
  loop: the child would write the signal byte into the wakeup socketpair it
  shares with the parent.  Signals are blocked around ``fork``; the child
  drops the wakeup fd and resets dispositions before unblocking.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence

_ALL_SIGNALS = set(signal.valid_signals())
_HANDLED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGCHLD, signal.SIGALRM)


class ThreadedForkError(RuntimeError):
    pass


def assert_single_threaded() -> None:
    if threading.active_count() != 1:
        names = [t.name for t in threading.enumerate()]
        raise ThreadedForkError(f"refusing to fork with {len(names)} threads alive: {names}")


def fork(child_setup: Callable[[], None] | None = None) -> int:
    """``os.fork`` with the two rules above; returns 0 in the child like ``os.fork``."""
    assert_single_threaded()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for signum in _HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        if child_setup is not None:
            child_setup()
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return pid


def spawn(argv: Sequence[str], fd_map: Mapping[int, int] | None = None,
          pass_fds: Sequence[int] = (), env: Mapping[str, str] | None = None) -> int:
    """fork + exec ``argv``; ``fd_map`` places fds at fixed numbers (target → source).

    Every fd labsquid opens is close-on-exec (PEP 446), so only 0-2, the
    targets of ``fd_map`` and ``pass_fds`` survive into the new program.
    """
    pid = fork()
    if pid:
        return pid
    try:
        # Move sources out of the way first so a dup2 cannot clobber a later source.
        staged = {target: os.dup(source) for target, source in (fd_map or {}).items()}
        for target, temp in staged.items():
            os.dup2(temp, target, inheritable=True)
            os.close(temp)
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        # Inheritable fds we did not open (the caller of ``labsquid`` may have
        # left some) must not reach the new program either.
        keep = {0, 1, 2, *staged, *pass_fds}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep and _is_open(fd) and os.get_inheritable(fd):
                os.close(fd)
        os.execve(argv[0], list(argv), dict(env if env is not None else os.environ))
    except BaseException as exc:  # noqa: BLE001 - the child must never return into our code
        try:
            os.write(2, f"labsquid: exec {argv[0]} failed: {exc}\n".encode())
        finally:
            os._exit(127)
    raise AssertionError("unreachable")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def describe_status(status: int) -> tuple[str, int | None, int | None]:
    """(text, exit code, signal) for a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})", None, sig
    code = os.WEXITSTATUS(status)
    return f"exited with status {code}", code, None


def reap() -> list[tuple[int, int]]:
    """Collect every exited child without blocking: [(pid, status)]."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        done.append((pid, status))
    return done


def set_title(title: str, comm: str = "labsquid") -> None:
    """What ``ps -ef`` shows (argv), and the short name ``ps -e``/``lsof`` show (comm).

    setproctitle also copies the title's first 15 bytes into comm; a comm like
    ``(logfile-daemon`` with an unbalanced parenthesis breaks tools that parse
    ``/proc/PID/stat`` (lsof shows nothing at all), so comm gets a plain name,
    as squid's processes have (``squid``, ``log_file_daemon``).
    """
    import setproctitle

    setproctitle.setproctitle(title)
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(comm[:15])
    except OSError:
        pass
