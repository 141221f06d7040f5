"""Compiled twins of the hot modules (Cython), built beside their sources.

Everything else about the project is in pyproject.toml; this file only adds
extension modules. A pool child spends most of each small request in the
interpreter, running the head parsers, the proxy's rewrites, the access-log
line and the glue between them. Cython compiles exactly these ``.py`` files
into extension modules, which the import system prefers to the source. A
``.pxd`` beside a source (the loop, the readers, the client and upstream
connections, the transaction and what they share) makes its classes
extension types: their attributes become fields and their calls to each
other direct, without changing what the ``.py`` says. bench/README
("Compiled hot modules") has the measurements.

The sources stay the truth: ``labsquid/_native.py`` loads a module from its
``.py`` whenever a file it was built from no longer hashes as it did at
build time (an edit after ``packaging/setup.sh``), when a module whose
types it was compiled against runs from source, when this build did not
compile it (a leftover extension) or did not finish, or when
LABSQUID_NO_EXTENSIONS is set (the fuzzers, which instrument Python
bytecode). Building with LABSQUID_NO_EXTENSIONS=1, or where Cython is
missing, gives a pure-Python package that behaves the same, only slower.
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
    "labsquid.accesslog._codes",
    "labsquid.accesslog._escape",
    "labsquid.accesslog._logformat",
    "labsquid.accesslog._record",
    "labsquid.acl._access",
    "labsquid.acl._acls",
    "labsquid.acl._addresses",
    "labsquid.acl._values",
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


def manifest_of(built: list) -> dict:
    """What each compiled module is built from, for labsquid/_native.py: the
    SHA-256 of every file Cython reads for it (its .py, its .pxd, the .pxd
    files it cimports; an own .pxd that does not exist is recorded as None,
    so that adding one counts as an edit) and the hot modules whose types
    it uses."""
    if not built:
        return {}
    from Cython.Build.Dependencies import create_dependency_tree

    read_by = create_dependency_tree().all_dependencies
    package = PACKAGE.resolve()
    pxd_of = {m: source_of(m).with_suffix(".pxd").resolve() for m in HOT_MODULES}
    module_of = {pxd: m for m, pxd in pxd_of.items()}
    manifest = {}
    for name in (ext.name for ext in built):
        # Only our own files: a cimport from Cython's includes (libc...) is
        # part of Cython, which a rebuild does not change.
        files = sorted(f for f in (Path(f).resolve() for f in read_by(str(source_of(name))))
                       if f.is_relative_to(package))
        sources: dict[str, str | None] = {
            str(f.relative_to(package)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files}
        sources.setdefault(str(pxd_of[name].relative_to(package)), None)
        manifest[name] = {
            "sources": sources,
            "needs": [module_of[f] for f in files if f in module_of and module_of[f] != name],
        }
    return manifest


class ManifestBuildExt(build_ext):
    """One compiler per CPU (the C files are large and independent), and the
    manifest written only once every extension module has been built: one
    that vouched for a half-built set would load stale extensions."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        super().run()
        text = json.dumps(MANIFEST_DATA, indent=1, sort_keys=True) + "\n"
        MANIFEST.write_text(text)
        if not self.inplace:  # a wheel: its package comes from build_lib
            built = Path(self.build_lib, "labsquid", MANIFEST.name)
            built.parent.mkdir(parents=True, exist_ok=True)
            built.write_text(text)


ext_modules = extensions()
MANIFEST_DATA = manifest_of(ext_modules)  # the sources as Cython compiles them
if ext_modules:
    # Until build_ext has succeeded, no manifest: every module runs from source.
    MANIFEST.unlink(missing_ok=True)
else:
    MANIFEST.write_text("{}\n")  # a pure-Python build: no extension module is current
setup(ext_modules=ext_modules, cmdclass={"build_ext": ManifestBuildExt})
