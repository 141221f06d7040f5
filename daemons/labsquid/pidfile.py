"""The master's PID file: written, locked while the master lives, read by ``-k``.

The lock (``flock`` on the open file, held by the master only — the fd is
close-on-exec) is what says "an instance runs", not the file's existence: a
stale file left by a crash is simply taken over.  The file is opened with
``O_NOFOLLOW`` so a symlink planted in a shared directory cannot redirect our
write.
"""

from __future__ import annotations

import errno
import fcntl
import os


class PidFileError(Exception):
    pass


class AlreadyRunning(PidFileError):
    def __init__(self, path: str, pid: int | None) -> None:
        self.path, self.pid = path, pid
        who = f"with PID {pid}" if pid else "PID unknown"
        super().__init__(
            f"labsquid is already running: {path} is locked by a live instance ({who})")


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PidFileError(f"refusing PID file {self.path}: it is a symbolic link") from exc
            raise PidFileError(f"cannot open PID file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _parse_pid(os.pread(fd, 64, 0))
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        self.fd = fd
        self.write(os.getpid())

    def write(self, pid: int) -> None:
        assert self.fd is not None
        data = f"{pid}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            # Unlink only the file we hold: compare inodes in case it was replaced.
            if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _parse_pid(data: bytes) -> int | None:
    try:
        pid = int(data.split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def read_running_pid(path: str) -> int | None:
    """The PID of the live instance that holds ``path``'s lock, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse_pid(os.pread(fd, 64, 0))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: stale
    finally:
        os.close(fd)
