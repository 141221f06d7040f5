"""Which labsquid modules run compiled, and when their source wins instead.

setup.py compiles a fixed list of hot modules with Cython and records, in
``_native.json``, the SHA-256 of every file each was built from (its
``.py``, its ``.pxd`` and the ``.pxd`` files it cimports) and which other
hot modules' types it was compiled against. Python's import system prefers
an extension module to a ``.py`` of the same name, so without a rule an
edit made after the build would silently not run. The finder here is that
rule. A labsquid module loads from its extension only if

* the manifest lists it (an extension left over from a build that compiled
  more modules never shadows a source),
* every file it was built from still hashes as it did at build time (not
  edited or checked out anew since; a ``.pxd`` added since counts too;
  ``bash packaging/setup.sh`` rebuilds),
* its extension file is there,
* every module whose types it was compiled against loads compiled too (an
  extension type compiled against ``EventLoop`` cannot work with the
  ``.py`` class of that name), and
* LABSQUID_NO_EXTENSIONS is not set (the fuzzers instrument Python bytecode,
  and an operator can rule out the compiled code with one variable).

Otherwise it loads from its ``.py``. The check runs once per module, in the
process importing it, when it or a module compiled against it is first
imported: a pool child inherits its modules from the kid.
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

    def __init__(self, manifest: dict[str, dict], no_extensions: bool,
                 package: Path = _MANIFEST.parent) -> None:
        self.manifest = manifest
        self.no_extensions = no_extensions
        self.package = package
        self.why_source: dict[str, str | None] = {}  # module -> why it loads from source

    def find_spec(self, name: str, path: list[str] | None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith("labsquid.") or not path:
            return None
        spec = _source_spec(name, path)
        if spec is None:
            return None  # no .py: nothing to prefer
        if name not in self.manifest or self.source_reason(name) is not None:
            return spec  # never compiled by this build, or stale
        return None  # the extension module, found by the usual finders

    def source_reason(self, name: str) -> str | None:
        """Why the compiled module ``name`` must load from source; None if it need not."""
        if name not in self.why_source:
            # What a (malformed) manifest whose needs loop back here gets.
            self.why_source[name] = "its manifest entry depends on itself"
            self.why_source[name] = self._check(name)
        return self.why_source[name]

    def _check(self, name: str) -> str | None:
        if self.no_extensions:
            return f"{NO_EXTENSIONS} is set"
        entry = self.manifest[name]
        for dependency in entry["needs"]:
            if self.source_reason(dependency) is not None:
                return f"compiled against {dependency}, which runs from source"
        for relative, digest in entry["sources"].items():
            try:
                current = hashlib.sha256((self.package / relative).read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None  # a .pxd that was not there at build time must still not be
            except OSError as exc:
                return f"{relative}: {exc.strerror}"
            if current != digest:
                return "source changed since the build" if current else f"{relative} is missing"
        if not self._extension_exists(name):
            return "its extension module is missing"
        return None

    def _extension_exists(self, name: str) -> bool:
        stem = self.package.joinpath(*name.split(".")[1:])
        return any(stem.with_name(stem.name + suffix).exists()
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)


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
        manifest = json.loads(_MANIFEST.read_text())
    except (OSError, ValueError):
        manifest = {}  # a pure-Python build, or a tree that was never built
    if not _well_formed(manifest):
        manifest = {}  # an older setup.py's, or damaged: nothing in it can be trusted
    finder = SourceFirstFinder(manifest, bool(os.environ.get(NO_EXTENSIONS)))
    # Just before the standard path finder, not first: import hooks that wrap
    # the finders after them (atheris's instrumentation) must see our specs too.
    at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder),
              len(sys.meta_path))
    sys.meta_path.insert(at, finder)
    return finder


def _well_formed(manifest: object) -> bool:
    return isinstance(manifest, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("sources"), dict)
        and isinstance(entry.get("needs"), list) and set(entry["needs"]) <= manifest.keys()
        for entry in manifest.values())


def report() -> list[tuple[str, str]]:
    """(module, "compiled" or why it runs from source) for every module built compiled."""
    finder = install()
    rows = []
    for name in sorted(finder.manifest):
        module = importlib.import_module(name)
        compiled = not (module.__file__ or "").endswith(".py")
        rows.append((name, "compiled" if compiled else finder.why_source.get(name) or "source"))
    return rows
