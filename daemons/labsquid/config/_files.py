"""Where the config reader gets file contents from.

The reader never touches the filesystem itself: it asks a `FileSource`. The
real one is `LocalFiles`; `MemoryFiles` serves a dict, so tests (and fuzzing)
can exercise includes and acl value files without any I/O.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import posixpath
from typing import Protocol


class FileSource(Protocol):
    def read_text(self, path: str) -> str:
        """The file's text; raises OSError when it cannot be read."""

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a shell pattern, sorted (as glob(3) sorts them)."""

    def identity(self, path: str) -> str:
        """A key that is equal for two paths naming the same file (loop detection)."""


def has_magic(pattern: str) -> bool:
    """Whether a path is a glob pattern rather than one literal path."""
    return glob.has_magic(pattern)


def relative_to(including_file: str, path: str) -> str:
    """`path` as seen from the directory of the file that names it."""
    return os.path.join(os.path.dirname(including_file), path)


class LocalFiles:
    # The OS refuses paths with a NUL byte by raising ValueError; the reader
    # only expects OSError, so such paths are turned into "no such file" here.

    def read_text(self, path: str) -> str:
        if "\0" in path:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        # surrogateescape: a stray non-UTF-8 byte must not make the file unreadable.
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def glob(self, pattern: str) -> list[str]:
        return [] if "\0" in pattern else sorted(glob.glob(pattern))

    def identity(self, path: str) -> str:
        return path if "\0" in path else os.path.realpath(path)


class MemoryFiles:
    """Files held in a dict of path -> text; paths are compared normalised."""

    def __init__(self, files: dict[str, str]) -> None:
        self._files = {posixpath.normpath(path): text for path, text in files.items()}

    def read_text(self, path: str) -> str:
        try:
            return self._files[posixpath.normpath(path)]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None

    def glob(self, pattern: str) -> list[str]:
        pattern = posixpath.normpath(pattern)
        return sorted(path for path in self._files if fnmatch.fnmatchcase(path, pattern))

    def identity(self, path: str) -> str:
        return posixpath.normpath(path)
