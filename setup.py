"""Compiled twins of the hot modules (Cython), built beside their sources.

Everything else about the project is in pyproject.toml; this file only adds
extension modules. A pool child spends most of each small request in the
interpreter, running the head parsers, the proxy's rewrites, the access-log
line and the glue between them. Cython compiles exactly these ``.py`` files
into extension modules, which the import system prefers to the source. A
``.pxd`` beside a source (the connection, transaction, reader and loop
classes) makes its classes extension types: their attributes become fields
and their calls to each other direct, without changing what the ``.py``
says. bench/README ("Compiled hot modules") has the measurements.

The sources stay the truth: ``labsquid/_native.py`` loads a module from its
``.py`` whenever a file it was built from no longer hashes as it did at
build time (an edit after ``packaging/setup.sh``), when a module whose
types it was compiled against runs from source, when this build did not
compile it (a leftover extension), or when LABSQUID_NO_EXTENSIONS is set
(the fuzzers, which instrument Python bytecode). Building with
LABSQUID_NO_EXTENSIONS=1, or where Cython is missing, gives a pure-Python
package that behaves the same, only slower.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

PACKAGE = Path("daemons") / "labsquid"
# The request path of a pool child (see labsquid/_native.py for the loading rules).
HOT_MODULES = [
    "labsquid.eventloop",
    "labsquid.http._events",
    "labsquid.http._framing",
    "labsquid.http._head",
    "labsquid.http._headers",
    "labsquid.http._readers",
    "labsquid.http._target",
    "labsquid.proxy.client",
    "labsquid.proxy.context",
    "labsquid.proxy.forward",
    "labsquid.proxy.transaction",
    "labsquid.proxy.upstream",
    "labsquid.accesslog._escape",
    "labsquid.accesslog._logformat",
    "labsquid.accesslog._record",
    "labsquid.acl._access",
    "labsquid.acl._acls",
    "labsquid.acl._addresses",
]
MANIFEST = PACKAGE / "_native.json"


def source_of(module: str) -> Path:
    return Path("daemons", *module.split(".")).with_suffix(".py")


def extensions() -> list:
    if os.environ.get("LABSQUID_NO_EXTENSIONS"):
        print("setup.py: LABSQUID_NO_EXTENSIONS is set: pure-Python build")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("setup.py: Cython is not installed: pure-Python build")
        return []
    from setuptools import Extension

    modules = [Extension(m, [str(source_of(m))]) for m in HOT_MODULES]
    return cythonize(
        modules,
        language_level=3,
        nthreads=os.cpu_count() or 1,
        # binding: compiled functions keep their signatures and __doc__;
        # no annotation typing: an annotation stays a comment, as in CPython
        # (Cython would otherwise turn `x: float` into a C double).
        compiler_directives={"binding": True, "annotation_typing": False},
        quiet=True,
    )


def write_manifest(built: list) -> None:
    """What each compiled module was built from, for labsquid/_native.py: the
    SHA-256 of every file Cython read for it (its .py, its .pxd, the .pxd
    files it cimports) and the hot modules whose types it uses."""
    manifest = {}
    if built:
        from Cython.Build.Dependencies import create_dependency_tree

        read_by = create_dependency_tree().all_dependencies
        for name in (ext.name for ext in built):
            files = sorted(Path(f).resolve() for f in read_by(str(source_of(name))))
            manifest[name] = {
                "sources": {str(f.relative_to(PACKAGE.resolve())):
                            hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
                "needs": [m for m in HOT_MODULES
                          if m != name and source_of(m).with_suffix(".pxd").resolve() in files],
            }
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


class ParallelBuildExt(build_ext):
    """One compiler per CPU: the C files are large and independent."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


ext_modules = extensions()
write_manifest(ext_modules)
setup(ext_modules=ext_modules, cmdclass={"build_ext": ParallelBuildExt})
