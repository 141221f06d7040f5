"""The Debian package: ``bash packaging/build-deb.sh`` -> ``dist/labsquid_<ver>_<arch>.deb``.

Built once per session and taken apart with ``dpkg-deb``; the packaged code is then run by
Debian's own interpreter (``/usr/bin/python3``) on Debian's own libraries (python3-structlog
22.3, python3-sdnotify, python3-psutil, python3-setproctitle), as it will be once installed.
Installing it into a real systemd is tests/test_systemd.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.service import free_port, wait_for
from support.systemd import REPO, build_deb, missing_dependencies

pytestmark = pytest.mark.slow

# The compiled hot modules (setup.py) are built for the interpreter that built the package.
NEXT_MINOR = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
DEPENDS = ["python3 (>= 3.11)", f"python3 (<< {NEXT_MINOR})", "python3-structlog",
           "python3-sdnotify", "python3-systemd", "python3-psutil", "python3-setproctitle"]
DEBIAN_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def deb() -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb missing")
    return build_deb()


@pytest.fixture(scope="module")
def tree(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deb-root")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_one_command_builds_versioned_deb_for_this_architecture(deb):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert deb == REPO / "dist" / f"labsquid_{version}_{arch}.deb"
    assert deb.is_file()
    assert field(deb, "Package") == "labsquid"
    assert field(deb, "Version") == version
    assert field(deb, "Architecture") == arch


def test_depends_on_debian_packages_only_and_not_httptools(deb):
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    assert depends == DEPENDS
    # httptools is only the parse benchmark's comparison point, never imported at run time.
    users = subprocess.run(["grep", "-rl", "import httptools", str(REPO / "daemons/labsquid")],
                           capture_output=True, text=True).stdout.split()
    assert [Path(u).name for u in users] == ["_bench.py"]


def test_layout(tree):
    expect = [
        "usr/lib/python3/dist-packages/labsquid/__init__.py",
        "usr/lib/python3/dist-packages/labsquid/master.py",
        "usr/lib/python3/dist-packages/labsquid/proxy/__init__.py",
        "usr/bin/labsquid", "usr/bin/labsquid-logfile-daemon",
        "lib/systemd/system/labsquid.service", "lib/systemd/system/labsquid.socket",
        "etc/labsquid/labsquid.conf", "etc/logrotate.d/labsquid",
        "usr/lib/sysusers.d/labsquid.conf", "usr/lib/tmpfiles.d/labsquid.conf",
        "usr/share/doc/labsquid/copyright",
    ]
    for path in expect:
        assert (tree / path).is_file(), path
    site = tree / "usr/lib/python3/dist-packages"
    assert list(site.glob("labsquid-*.dist-info/METADATA"))
    assert list((site / "labsquid/data/errors").iterdir()), "package data (error pages) missing"
    assert not list(tree.rglob("__pycache__")), "byte-code belongs to postinst (py3compile)"
    for program in ("labsquid", "labsquid-logfile-daemon"):
        path = tree / "usr/bin" / program
        assert os.access(path, os.X_OK)
        assert path.read_text().startswith("#!/usr/bin/python3\n")
    assert (REPO / "units/labsquid.service").read_bytes() == \
        (tree / "lib/systemd/system/labsquid.service").read_bytes()


def test_conffiles_and_packaged_config(tree):
    assert (tree / "DEBIAN/conffiles").read_text().split() == [
        "/etc/labsquid/labsquid.conf", "/etc/logrotate.d/labsquid"]
    lines = (tree / "etc/labsquid/labsquid.conf").read_text().splitlines()
    assert "logfile_rotate 0" in lines
    assert "pid_filename /run/labsquid/labsquid.pid" in lines
    assert "access_log daemon:/var/log/labsquid/access.log squid" in lines
    assert "cache_log /var/log/labsquid/cache.log" in lines


def test_logrotate_runs_labsquid_k_rotate(tree):
    text = (tree / "etc/logrotate.d/labsquid").read_text()
    assert text.lstrip("# \n").count("/var/log/labsquid/*.log {") == 1
    post = re.search(r"postrotate\n(.*?)\n\s*endscript", text, re.S)
    assert post and "/usr/bin/labsquid -k rotate" in post.group(1)
    assert re.search(r"^\s*nocreate$", text, re.M)  # the logfile daemon creates the new file
    if shutil.which("logrotate"):
        check = subprocess.run(["logrotate", "-d", str(tree / "etc/logrotate.d/labsquid")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert "error" not in check.stderr.lower()


def test_sysusers_and_tmpfiles(tree):
    sysusers = [line for line in (tree / "usr/lib/sysusers.d/labsquid.conf").read_text()
                .splitlines() if line and not line.startswith("#")]
    assert len(sysusers) == 1 and sysusers[0].split()[:3] == ["u", "labsquid", "-"]
    tmpfiles = (tree / "usr/lib/tmpfiles.d/labsquid.conf").read_text()
    assert re.search(r"^d /var/log/labsquid\s+0750 labsquid labsquid", tmpfiles, re.M)


def test_maintainer_scripts(tree):
    for name in ("postinst", "prerm", "postrm"):
        script = tree / "DEBIAN" / name
        assert os.access(script, os.X_OK)
        subprocess.run(["sh", "-n", str(script)], check=True)
    postinst = (tree / "DEBIAN/postinst").read_text()
    assert "systemd-sysusers /usr/lib/sysusers.d/labsquid.conf" in postinst
    assert "deb-systemd-helper enable labsquid.service" in postinst
    # systemctl only with a running systemd: a chroot or image build gets no start.
    assert "if [ -d /run/systemd/system ]; then" in postinst
    assert "py3compile -p labsquid" in postinst
    assert "py3clean -p labsquid" in (tree / "DEBIAN/prerm").read_text()


def test_dependencies_are_installed_on_this_host(deb):
    """The systemd tests install the .deb offline: its Depends must be on the host already."""
    assert missing_dependencies(deb) == [], "add them to packaging/setup.sh"


# -- the packaged code on Debian's interpreter and Debian's libraries -------------------------
def debian_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(tree / "usr/lib/python3/dist-packages")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    return env


def debian_python(tree: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([DEBIAN_PYTHON, "-s", *args], capture_output=True, text=True,
                          env=debian_env(tree), timeout=60, **kwargs)


@pytest.fixture(scope="module")
def debian_libs(tree):
    probe = debian_python(tree, "-c", "import importlib.metadata as m, json; print(json.dumps("
                          "{p: m.version(p) for p in ('structlog', 'sdnotify', 'psutil', "
                          "'setproctitle')}))")
    if probe.returncode != 0:
        pytest.fail("Debian's python3-structlog/-sdnotify/-psutil/-setproctitle are not all "
                    f"installed (packaging/setup.sh must install them):\n{probe.stderr}")
    return json.loads(probe.stdout)


def test_runs_on_debian_structlog(tree, debian_libs):
    """Debian 12 ships structlog 22.3: log.py's processors must work with it."""
    assert debian_libs["structlog"], debian_libs  # 22.3.0 on bookworm
    code = (
        "import io, json, structlog\n"
        "from labsquid import log\n"
        "out = io.StringIO()\n"
        "log.configure('kid', 'debug', stream=out)\n"
        "structlog.get_logger().info('kid_died', status='killed by signal 9', exit_code=None)\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    structlog.get_logger().exception('boom')\n"
        "events = [json.loads(line) for line in out.getvalue().splitlines()]\n"
        "assert events[0]['role'] == 'kid' and events[0]['status'] == 'killed by signal 9'\n"
        "assert 'ZeroDivisionError' in events[1]['exception'], events[1]\n"
        "log._JournalRenderer()\n"
        "print(structlog.__file__)\n")
    result = debian_python(tree, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("/usr/lib/python3/dist-packages/structlog/")


def test_packaged_labsquid_serves_on_debian_libraries(tree, debian_libs, tmp_path):
    """The wrapper, the packaged modules and Debian's libraries run the real process tree."""
    version = debian_python(tree, str(tree / "usr/bin/labsquid"), "-v")
    assert version.returncode == 0 and "labsquid version" in version.stdout
    # Shipped stripped, without the generated C, and loaded compiled by Debian's python3.
    site = tree / "usr/lib/python3/dist-packages/labsquid"
    built = sorted(site.rglob("*.so"))
    assert built and not list(site.rglob("*.c"))
    assert f"compiled hot modules: {len(built)} of {len(built)}\n" in version.stdout
    sections = subprocess.run(["objdump", "-h", str(built[0])], capture_output=True, text=True,
                              check=True).stdout
    assert ".debug_info" not in sections
    parse = debian_python(tree, str(tree / "usr/bin/labsquid"), "-k", "parse", "-f",
                          str(tree / "etc/labsquid/labsquid.conf"))
    assert parse.returncode == 0, parse.stderr
    port = free_port()
    conf = tmp_path / "labsquid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\npid_filename {tmp_path}/labsquid.pid\n"
        f"access_log daemon:{tmp_path}/access.log squid\npool_size 2\n"
        "shutdown_lifetime 1 second\nhttp_access allow localhost\nhttp_access deny all\n")
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([DEBIAN_PYTHON, "-s", str(tree / "usr/bin/labsquid"), "-f",
                                 str(conf), "--foreground", "-sYC"], env=debian_env(tree),
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        wait_for(lambda: "service_ready" in stderr.read_text() or proc.poll() is not None,
                 20, what="service_ready")
        assert proc.poll() is None, stderr.read_text()
        curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                               f"http://127.0.0.1:{port}", "http://127.0.0.1:9/"],
                              capture_output=True, text=True, timeout=20)
        assert curl.stdout in ("502", "503", "504"), curl  # nothing listens on port 9
        wait_for(lambda: (tmp_path / "access.log").exists()
                 and "127.0.0.1:9/" in (tmp_path / "access.log").read_text(), 10,
                 what="the access.log line")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0, stderr.read_text()
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    events = [json.loads(line) for line in stderr.read_text().splitlines()
              if line.startswith("{")]
    assert {e["role"] for e in events} >= {"master", "kid"}
