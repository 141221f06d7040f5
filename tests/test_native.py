"""The compiled hot modules (setup.py, labsquid/_native.py): built, loaded, and
replaced by their source whenever that is the code that should run."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import labsquid
from support.origin import fetch
from support.service import wait_for

PACKAGE = Path(labsquid.__file__).resolve().parent
REPO = PACKAGE.parents[1]


def hot_modules() -> list[str]:
    """setup.py's HOT_MODULES, read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "HOT_MODULES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no HOT_MODULES")


def env_without_no_extensions() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LABSQUID_NO_EXTENSIONS"}


def python(*args: str, env: dict[str, str] | None = None,
           pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """This interpreter in a fresh process, LABSQUID_NO_EXTENSIONS unset unless `env` sets it."""
    full_env = env_without_no_extensions()
    full_env.update(env or {})
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                         env=full_env, timeout=30)
    assert out.returncode == 0, out.stderr
    return out


def version_report(env: dict[str, str] | None = None, pythonpath: Path | None = None) -> str:
    return python("-m", "labsquid", "-v", env=env, pythonpath=pythonpath).stdout


def copy_of_package(tmp_path: Path) -> Path:
    """The built package (sources, extensions, manifest) under tmp_path/labsquid."""
    copy = tmp_path / "labsquid"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_setup_compiles_every_hot_module_and_they_load_compiled():
    # packaging/setup.sh built them: a build that silently fell back to pure
    # Python would pass every other test, only slower.
    n = len(hot_modules())
    assert n >= 10
    assert f"compiled hot modules: {n} of {n}\n" in version_report()
    for name in hot_modules():
        built = list(PACKAGE.parent.glob(name.replace(".", "/") + ".*.so"))
        assert built, f"no extension module for {name}"


@pytest.mark.slow
def test_setup_run_again_installs_and_compiles_nothing():
    """tests/run.sh has just run packaging/setup.sh: a second run finds the
    Debian packages, the venv and a build that matches the sources, and leaves
    the build alone instead of spending a minute compiling it again."""
    n = len(hot_modules())
    if f"compiled hot modules: {n} of {n}\n" not in version_report():
        # A hot module edited since: setup.sh would (rightly) rebuild it here,
        # in the middle of the suite.
        pytest.fail("the build does not match the sources: run packaging/setup.sh first")
    built = sorted(PACKAGE.rglob("*.so")) + [PACKAGE / "_native.json"]
    before = {path: path.stat().st_mtime_ns for path in built}
    run = subprocess.run(["bash", str(REPO / "packaging" / "setup.sh")], capture_output=True,
                         text=True, env=env_without_no_extensions(), timeout=900)
    assert run.returncode == 0, run.stderr
    assert "labsquid is installed and built already" in run.stdout, run.stdout + run.stderr
    assert {path: path.stat().st_mtime_ns for path in built} == before


def test_no_extensions_loads_every_hot_module_from_source():
    report = version_report({"LABSQUID_NO_EXTENSIONS": "1"})
    n = len(hot_modules())
    assert f"compiled hot modules: 0 of {n}\n" in report
    assert report.count(": LABSQUID_NO_EXTENSIONS is set\n") == n


def test_an_edited_source_runs_instead_of_its_stale_build(tmp_path):
    head = copy_of_package(tmp_path) / "http" / "_head.py"
    head.write_text(head.read_text() + "\n\nEDITED_AFTER_BUILD = True\n")
    probe = ("import labsquid.http._head as h, labsquid.http._readers as r\n"
             "print(h.EDITED_AFTER_BUILD, h.__file__.endswith('.py'), r.__file__.endswith('.py'))")
    out = python("-c", probe, pythonpath=tmp_path)
    # The edit runs; the untouched neighbour stays compiled.
    assert out.stdout.split() == ["True", "True", "False"]
    report = version_report(pythonpath=tmp_path)
    n = len(hot_modules())
    assert f"compiled hot modules: {n - 1} of {n}\n" in report
    assert "  labsquid.http._head: source changed since the build\n" in report


@pytest.mark.parametrize("change, reason", [
    ("edit", "source changed since the build"),
    ("remove", "its extension module is missing"),
])
def test_modules_compiled_against_a_stale_one_run_from_source_too(tmp_path, change, reason):
    # The connection and transaction classes were compiled against the
    # loop's extension types (eventloop.pxd); next to the .py EventLoop they
    # would fail to import or misread its objects, so they follow it.
    package = copy_of_package(tmp_path)
    if change == "edit":
        loop = package / "eventloop.py"
        loop.write_text(loop.read_text() + "\n\nEDITED_AFTER_BUILD = True\n")
    else:
        [built] = package.glob("eventloop.*.so")
        built.unlink()
    report = version_report(pythonpath=tmp_path)
    followers = ["labsquid.proxy.client", "labsquid.proxy.context",
                 "labsquid.proxy.transaction", "labsquid.proxy.upstream"]
    n = len(hot_modules())
    assert f"compiled hot modules: {n - 1 - len(followers)} of {n}\n" in report
    assert f"  labsquid.eventloop: {reason}\n" in report
    for name in followers:
        assert f"  {name}: compiled against labsquid.eventloop, which runs from source\n" in report
    # They work together: a transaction made by the .py classes, over the .py loop.
    probe = ("import labsquid.proxy.transaction as t, labsquid.http._readers as r\n"
             "from labsquid.eventloop import EventLoop\n"
             "from labsquid.proxy.upstream import Upstream\n"
             "up = Upstream(EventLoop(), ('127.0.0.1', 9), '127.0.0.1'); up.close()\n"
             "print(t.__file__.endswith('.py'), r.__file__.endswith('.py'), up.closed)")
    assert python("-c", probe, pythonpath=tmp_path).stdout.split() == ["True", "False", "True"]


def test_an_edited_declaration_file_counts_as_an_edited_source(tmp_path):
    pxd = copy_of_package(tmp_path) / "proxy" / "client.pxd"
    pxd.write_text(pxd.read_text() + "\n# edited after the build\n")
    report = version_report(pythonpath=tmp_path)
    n = len(hot_modules())
    assert f"compiled hot modules: {n - 2} of {n}\n" in report
    assert "  labsquid.proxy.client: source changed since the build\n" in report
    assert ("  labsquid.proxy.transaction: compiled against labsquid.proxy.client,"
            " which runs from source\n") in report


def test_a_declaration_file_added_since_the_build_counts_as_an_edit(tmp_path):
    # forward.py was compiled without a .pxd; one added later changes what
    # Cython would make of it.
    pxd = copy_of_package(tmp_path) / "proxy" / "forward.pxd"
    pxd.write_text("cdef class ForwardPolicy:\n    cdef public object hostname\n")
    report = version_report(pythonpath=tmp_path)
    assert "  labsquid.proxy.forward: source changed since the build\n" in report


def test_an_extension_the_build_did_not_make_never_shadows_its_source(tmp_path):
    # A leftover from a build that compiled more modules: here, the wrong
    # module's code under _writers' name, which would fail to import at all.
    http = copy_of_package(tmp_path) / "http"
    [head_so] = http.glob("_head.*.so")
    shutil.copy(head_so, http / head_so.name.replace("_head.", "_writers."))
    probe = ("import labsquid.http._writers as w, labsquid.http._head as h\n"
             "print(w.__file__.endswith('.py'), h.__file__.endswith('.py'))")
    out = python("-c", probe, pythonpath=tmp_path)
    assert out.stdout.split() == ["True", "False"]


def labsquid_extensions_mapped(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split()[-1] for line in maps.splitlines()
            if line.endswith(".so") and "/labsquid/" in line}


@pytest.mark.slow
@pytest.mark.parametrize("no_extensions", [False, True])
def test_pool_child_serves_from_the_build_it_was_given(make_labsquid, origin, monkeypatch,
                                                        no_extensions):
    if no_extensions:
        monkeypatch.setenv("LABSQUID_NO_EXTENSIONS", "1")
    else:
        monkeypatch.delenv("LABSQUID_NO_EXTENSIONS", raising=False)
    ls = make_labsquid(dispatch="notify", pool_size=1).start()
    resp, body = fetch(ls.port, "GET", origin.url("/native"))
    assert (resp.status, body) == (200, b"path /native\n")
    wait_for(lambda: len(ls.access_lines()) == 1, timeout=5, what="the access.log line")
    assert " TCP_MISS/200 " in ls.access_lines()[0]
    [worker] = ls.workers()
    mapped = {Path(p).name.split(".")[0] for p in labsquid_extensions_mapped(worker.pid)}
    if no_extensions:
        assert mapped == set()
    else:
        assert mapped == {name.rsplit(".", 1)[1] for name in hot_modules()}
    ls.stop()
