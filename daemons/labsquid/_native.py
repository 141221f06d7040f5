"""Which labsquid modules run compiled, and when their source wins instead.

setup.py compiles a fixed list of hot modules with Cython and records, in
``_native.json``, the SHA-256 of each source it compiled. Python's import
system prefers an extension module to a ``.py`` of the same name, so without
a rule an edit made after the build would silently not run. The finder here
is that rule. A labsquid module loads from its extension only if

* the manifest lists it (an extension left over from a build that compiled
  more modules never shadows a source),
* its source still hashes as it did at build time (not edited or checked out
  anew since; ``bash packaging/setup.sh`` rebuilds), and
* LABSQUID_NO_EXTENSIONS is not set (the fuzzers instrument Python bytecode,
  and an operator can rule out the compiled code with one variable).

Otherwise it loads from its ``.py``. The check runs once per module, at its
first import, in the process importing it: a pool child inherits its modules
from the kid.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path

_MANIFEST = Path(__file__).with_name("_native.json")
NO_EXTENSIONS = "LABSQUID_NO_EXTENSIONS"


class SourceFirstFinder:
    """A meta-path finder: a labsquid module's ``.py``, unless its built extension is due."""

    def __init__(self, digests: dict[str, str], no_extensions: bool) -> None:
        self.digests = digests
        self.no_extensions = no_extensions
        self.why_source: dict[str, str] = {}  # module -> reason it loaded from source

    def find_spec(self, name: str, path: list[str] | None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("labsquid.") or not path:
            return None
        spec = _source_spec(name, path)
        if spec is None:
            return None  # no .py: nothing to prefer
        digest = self.digests.get(name)
        if digest is None:
            return spec  # never compiled by this build
        if self.no_extensions:
            self.why_source[name] = f"{NO_EXTENSIONS} is set"
        elif hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest() != digest:
            self.why_source[name] = "source changed since the build"
        else:
            return None  # the extension module, found by the usual finders
        return spec


def _source_spec(name: str, path: list[str]) -> importlib.machinery.ModuleSpec | None:
    loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
    for entry in path:
        spec = importlib.machinery.FileFinder(entry, loader).find_spec(name)
        if spec is not None:
            return spec
    return None


def install() -> SourceFirstFinder:
    """Put the finder on sys.meta_path (once)."""
    for finder in sys.meta_path:
        if isinstance(finder, SourceFirstFinder):
            return finder
    try:
        digests = json.loads(_MANIFEST.read_text())
    except (OSError, ValueError):
        digests = {}  # a pure-Python build, or a tree that was never built
    finder = SourceFirstFinder(digests, bool(os.environ.get(NO_EXTENSIONS)))
    # Just before the standard path finder, not first: import hooks that wrap
    # the finders after them (atheris's instrumentation) must see our specs too.
    at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder),
              len(sys.meta_path))
    sys.meta_path.insert(at, finder)
    return finder


def report() -> list[tuple[str, str]]:
    """(module, "compiled" or why it runs from source) for every module built compiled."""
    finder = install()
    rows = []
    for name in sorted(finder.digests):
        module = importlib.import_module(name)
        compiled = not (module.__file__ or "").endswith(".py")
        rows.append((name, "compiled" if compiled else finder.why_source.get(name, "source")))
    return rows
