"""A real systemd (PID 1) booted in namespaces, for tests of labsquid as a systemd service.

The machines that run the tests do not run systemd as PID 1, but a real manager can be booted as
PID 1 of private pid/mount/uts/ipc/cgroup/net namespaces on a throw-away overlay of the host
root, in well under a second::

    with SystemdContainer() as box:
        box.install_deb("dist/labsquid_0.1.0_amd64.deb")
        box.systemctl("start", "labsquid")
        print(box.exec("curl", "-sS", "-x", "http://127.0.0.1:3128", "http://…").stdout)

How (each step is in ``_inner`` below, run as PID 1 of the new namespaces before it execs
systemd):

1. A cgroup of our own under the host's cgroup2 mount.  Only the future PID 1 moves into it, then
   it unshares a cgroup namespace, so systemd sees a clean cgroup2 tree rooted there.
2. ``unshare --pid --fork --kill-child --mount --propagation private --uts --ipc --net``: if the
   launcher dies, the kernel kills the whole pid namespace.
3. The root: an overlay with the host root as its lower layer and a tmpfs as upper layer (every
   write, e.g. ``apt-get install``, dies with the container); fresh ``/proc`` (with ``/proc/sys``
   read-only), read-only ``/sys``, cgroup2, a private ``/dev``, tmpfs ``/run`` and ``/tmp``; a
   host folder bound at ``/lab-share``; then ``pivot_root`` and shared propagation inside.
4. A minimal ``lab.target`` (sysinit, journald); units that touch host-global kernel state are
   masked; journald keeps its journal in memory.
5. ``/lib/systemd/systemd --system --unit=lab.target`` with a reduced capability bounding set.

Teardown sends SIGRTMIN+4 (poweroff) to *our* PID 1, then SIGKILL to it (which kills the whole
pid namespace) if it has not gone within the grace period, waits for the launcher, and removes
our cgroup.  Nothing is ever killed by name, and nothing is mounted in the host's namespace.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWNET = 0x40000000

# Units that would touch host-global kernel state, or that have nothing to do in a container.
MASKED = (
    "systemd-modules-load.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "systemd-sysctl.service", "systemd-timesyncd.service", "systemd-pstore.service",
    "systemd-firstboot.service", "systemd-repart.service", "kmod-static-nodes.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "systemd-journald-audit.socket",
)
# Capabilities the nested manager (and so everything in it) never gets.
DROPPED_CAPS = ("sys_module", "sys_time", "sys_rawio", "wake_alarm", "syslog", "mac_admin",
                "mac_override", "audit_control", "audit_read")

LAB_TARGET = """\
[Unit]
Description=labsquid test container: minimal default target
Requires=sysinit.target
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
After=sysinit.target systemd-journald.socket
AllowIsolate=yes
"""


class SystemdError(RuntimeError):
    pass


def cgroup2_root() -> Path | None:
    """The host's cgroup2 mount: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid)."""
    for candidate in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        try:
            if os.statvfs(candidate) and _fstype(candidate) == "cgroup2":
                return Path(candidate)
        except OSError:
            continue
    return None


def _fstype(path: str) -> str:
    best, fstype = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            target = fields[1].replace("\\040", " ")
            if target == path and len(target) >= len(best):
                best, fstype = target, fields[2]
    return fstype


def unavailable_reason() -> str | None:
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if cgroup2_root() is None:
        return "no cgroup2 hierarchy"
    for tool in ("unshare", "nsenter", "mount", "pivot_root", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) missing"
    if not os.access("/lib/systemd/systemd", os.X_OK):
        return "/lib/systemd/systemd missing (apt-get install systemd)"
    return None


class SystemdContainer:
    """A booted systemd in namespaces; ``exec`` runs commands inside it."""

    def __init__(self, name: str | None = None, base: Path | str | None = None,
                 boot_timeout: float = 60.0, log_level: str = "info") -> None:
        self.name = name or f"labsquid-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.base = Path(base or tempfile.gettempdir())
        self.state = self.base / f"state-{self.name}"
        self.share = self.state / "share"
        self.boot_timeout = boot_timeout
        self.log_level = log_level
        root = cgroup2_root()
        self.cgroup = root / self.name if root else None
        self.launcher: subprocess.Popen | None = None
        self.init_pid: int | None = None  # host PID of the container's PID 1
        self.boot_seconds: float | None = None

    # -- life cycle ---------------------------------------------------------
    def __enter__(self) -> SystemdContainer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> SystemdContainer:
        reason = unavailable_reason()
        if reason:
            raise SystemdError(f"cannot boot systemd here: {reason}")
        assert self.cgroup is not None
        t0 = time.monotonic()
        self.share.mkdir(parents=True, exist_ok=True)
        self.cgroup.mkdir()
        config = {"state": str(self.state), "name": self.name, "cgroup": str(self.cgroup),
                  "share": str(self.share), "log_level": self.log_level}
        (self.state / "config.json").write_text(json.dumps(config))
        console = open(self.state / "console.log", "wb")  # noqa: SIM115 - the launcher's
        try:
            self.launcher = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation",
                 "private", "--uts", "--ipc", "--net", "--",
                 sys.executable, "-I", os.path.abspath(__file__), "--inner",
                 str(self.state / "config.json")],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        finally:
            console.close()
        try:
            self._wait_booted(t0)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _wait_booted(self, t0: float) -> None:
        deadline = t0 + self.boot_timeout
        pid_file = self.state / "init.pid"
        while True:
            assert self.launcher is not None
            if self.launcher.poll() is not None:
                raise SystemdError(f"the container's launcher exited ({self.launcher.returncode})"
                                   f":\n{self.console_log()}")
            if self.init_pid is None and pid_file.exists():
                text = pid_file.read_text().strip()
                self.init_pid = int(text) if text else None
            if self.init_pid and Path(f"/proc/{self.init_pid}/root/run/systemd/private"
                                      ).is_socket():
                break
            if time.monotonic() > deadline:
                raise SystemdError(f"systemd did not come up in {self.boot_timeout}s:\n"
                                   f"{self.console_log()}")
            time.sleep(0.05)
        left = max(1.0, deadline - time.monotonic())
        state = self.exec("systemctl", "is-system-running", "--wait", timeout=left).stdout.strip()
        if state not in ("running", "degraded"):
            raise SystemdError(f"systemd is {state!r} after boot:\n{self.console_log()}")

    def stop(self, grace: float = 15.0) -> None:
        """Power off (SIGRTMIN+4 to our PID 1), SIGKILL it after ``grace``, clean up."""
        pid = self.init_pid if self._init_is_ours() else None
        if pid is not None:
            with _suppress_lookup():
                os.kill(pid, signal.SIGRTMIN + 4)
            if not _wait_gone(pid, grace):
                with _suppress_lookup():
                    os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: takes all with it
                _wait_gone(pid, 5.0)
        if self.launcher is not None:
            try:
                self.launcher.wait(10)
            except subprocess.TimeoutExpired:
                self.launcher.kill()  # our own unshare; --kill-child kills the namespace
                self.launcher.wait(5)
        self.init_pid = None
        self._remove_cgroup()
        if self.state.exists():
            shutil.rmtree(self.state, ignore_errors=True)

    def _init_is_ours(self) -> bool:
        if not self.init_pid:
            return False
        try:
            cgroups = Path(f"/proc/{self.init_pid}/cgroup").read_text()
        except OSError:
            return False
        return f"/{self.name}" in cgroups

    def _remove_cgroup(self) -> None:
        if self.cgroup is None or not self.cgroup.exists():
            return
        deadline = time.monotonic() + 5
        while self.cgroup.exists():
            for sub in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True):
                with _suppress_os():
                    sub.rmdir()
            with _suppress_os():
                self.cgroup.rmdir()
            if time.monotonic() > deadline:
                raise SystemdError(f"cannot remove {self.cgroup}: still populated")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self._init_is_ours()

    def console_log(self) -> str:
        try:
            return (self.state / "console.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- inside -------------------------------------------------------------
    def command(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        """``argv`` as run inside the container (all its namespaces and its root)."""
        if not self.running:
            raise SystemdError("the container is not running")
        variables = {"PATH": INNER_PATH, "TERM": "dumb", "SYSTEMD_PAGER": "cat",
                     "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8", **(env or {})}
        return ["nsenter", "--target", str(self.init_pid), "--mount", "--uts", "--ipc", "--net",
                "--pid", "--cgroup", "--root", "--wdns=/", "--", "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in variables.items()), *argv]

    def exec(self, *argv: str, check: bool = False, timeout: float = 60.0,
             env: dict[str, str] | None = None, input: str | None = None
             ) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*argv, env=env), capture_output=True, text=True,
                                timeout=timeout, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise SystemdError(f"{' '.join(argv)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def popen(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(*argv, env=env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 90.0
                  ) -> subprocess.CompletedProcess:
        return self.exec("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, *args: str) -> str:
        return self.exec("journalctl", "--no-pager", *args, check=True).stdout

    def journal_json(self, *args: str) -> list[dict]:
        out = self.exec("journalctl", "--no-pager", "-o", "json", *args, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def host_path(self, inside: str) -> Path:
        """Where the host sees a path of the container's file system."""
        if not self.running:
            raise SystemdError("the container is not running")
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def write_file(self, inside: str, text: str, mode: int = 0o644) -> None:
        path = self.host_path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    def read_file(self, inside: str) -> str:
        return self.host_path(inside).read_text(errors="replace")

    # -- seen from the host ---------------------------------------------------
    def enter_netns(self) -> None:
        """Move the calling *thread* into the container's network namespace for good:
        sockets it opens from then on are the container's (its 127.0.0.1, its ports).
        Other threads are not affected (for a thread of its own, e.g. a client's)."""
        if not self.running:
            raise SystemdError("the container is not running")
        fd = os.open(f"/proc/{self.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)

    @contextmanager
    def netns(self) -> Iterator[None]:
        """The calling thread in the container's network namespace for a ``with`` block:
        a socket opened (or a server bound) inside keeps that namespace afterwards."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.enter_netns()
            yield
        finally:
            try:
                _setns(own, CLONE_NEWNET)
            finally:
                os.close(own)

    def host_pids(self) -> set[int]:
        """Host PIDs of every process in the container (from its cgroup, seen from the host)."""
        return _cgroup_pids(self.cgroup) if self.cgroup is not None else set()

    def unit_host_pids(self, unit: str, slice_: str = "system.slice") -> set[int]:
        """Host PIDs of the processes in ``unit``'s cgroup (empty once the unit is gone)."""
        if self.cgroup is None:
            return set()
        return _cgroup_pids(self.cgroup / slice_ / unit)

    def host_pid(self, inner: int) -> int | None:
        """The host PID of the container's process ``inner`` (e.g. a unit's MainPID), so
        that the host can look at it with /proc and psutil; None if there is none."""
        if not self.running:
            raise SystemdError("the container is not running")
        assert self.init_pid is not None
        level = len(_nspids(self.init_pid)) - 1  # depth of the container's pid namespace
        for pid in self.host_pids():
            ids = _nspids(pid)
            if len(ids) > level and ids[level] == inner:
                return pid
        return None

    def install_deb(self, deb: Path | str, timeout: float = 180.0) -> subprocess.CompletedProcess:
        """``apt-get install ./x.deb`` inside, offline: the dependencies must be on the host."""
        deb = Path(deb)
        missing = missing_dependencies(deb)
        if missing:
            raise SystemdError(
                f"{deb.name} depends on Debian packages the host lacks: {' '.join(missing)}; "
                "the container has no network, so they must be installed on the host (they "
                "belong in packaging/setup.sh)")
        shutil.copy(deb, self.share / deb.name)
        return self.exec("apt-get", "install", "-y", "-q", "--no-install-recommends",
                         f"/lab-share/{deb.name}", check=True, timeout=timeout,
                         env={"DEBIAN_FRONTEND": "noninteractive"})


def missing_dependencies(deb: Path) -> list[str]:
    """The packages named in ``deb``'s Depends: that are not installed on the host."""
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    missing = []
    for clause in filter(None, (c.strip() for c in depends.split(","))):
        names = [alt.split()[0] for alt in clause.split("|")]
        if not any(_installed(n) for n in names):
            missing.append(names[0])
    return missing


def _installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                            text=True)
    return result.returncode == 0 and "install ok installed" in result.stdout


def _setns(fd: int, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)  # os.setns is Python 3.12+
    if libc.setns(fd, nstype) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _cgroup_pids(folder: Path) -> set[int]:
    """Every PID in the cgroup ``folder`` and its sub-cgroups (empty if it does not exist)."""
    pids: set[int] = set()
    try:
        files = [folder / "cgroup.procs", *folder.rglob("*/cgroup.procs")]
    except OSError:
        return pids
    for procs in files:
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:  # removed meanwhile
            continue
    return pids


def _nspids(pid: int) -> list[int]:
    """``NSpid`` of /proc/PID/status: the PID in each nested pid namespace, outermost first."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, _value, _tb) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


class _suppress_os:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, _value, _tb) -> bool:
        return kind is not None and issubclass(kind, OSError)


# -- PID 1 of the new namespaces, before systemd -----------------------------------------
def _run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def _inner(config_file: str) -> None:
    config = json.loads(Path(config_file).read_text())
    state, cgroup = Path(config["state"]), Path(config["cgroup"])
    # /proc is still the host's here, so /proc/self is our host PID.
    host_pid = os.readlink("/proc/self")
    (state / "init.pid").write_text(host_pid + "\n")
    # Only PID 1 goes into our cgroup, which then becomes the root of a new cgroup namespace.
    (cgroup / "cgroup.procs").write_text("0\n")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWCGROUP) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWCGROUP)")

    _run("mount", "--make-rprivate", "/")  # nothing propagates back to the host
    root, layers = state / "root", state / "layers"
    root.mkdir()
    layers.mkdir()
    _run("mount", "-t", "tmpfs", "-o", "mode=755", "labsquid-layers", str(layers))
    (layers / "upper").mkdir()
    (layers / "work").mkdir()
    _run("mount", "-t", "overlay", "labsquid-root", "-o",
         f"lowerdir=/,upperdir={layers}/upper,workdir={layers}/work", str(root))

    r = str(root)
    _run("mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{r}/proc")
    for knob in ("sys", "sysrq-trigger"):  # host-global: read-only
        if os.path.exists(f"{r}/proc/{knob}"):
            _run("mount", "--bind", f"{r}/proc/{knob}", f"{r}/proc/{knob}")
            _run("mount", "-o", "remount,bind,ro", f"{r}/proc/{knob}")
    _run("mount", "-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{r}/sys")
    _run("mount", "-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2", f"{r}/sys/fs/cgroup")
    _run("mount", "-t", "tmpfs", "-o", "mode=755,nosuid,size=64m", "labsquid-dev", f"{r}/dev")
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(f"{r}/dev/{name}", 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(f"{r}/dev/{name}", 0o666)
    for sub in ("pts", "shm", "net"):
        os.mkdir(f"{r}/dev/{sub}")
    _run("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec",
         "devpts", f"{r}/dev/pts")
    os.symlink("pts/ptmx", f"{r}/dev/ptmx")
    _run("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", f"{r}/dev/shm")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{r}/dev/{link}")
    Path(f"{r}/dev/console").touch()
    _run("mount", "--bind", f"{r}/dev/null", f"{r}/dev/console")  # no terminal: a sink
    _run("mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev,size=256m", "labsquid-run",
         f"{r}/run")
    _run("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "labsquid-tmp", f"{r}/tmp")
    os.makedirs(f"{r}/lab-share", exist_ok=True)
    _run("mount", "--bind", config["share"], f"{r}/lab-share")

    # The container's own configuration, in the upper layer only.
    etc = root / "etc"
    (etc / "hostname").write_text(config["name"][:63] + "\n")
    (etc / "systemd/journald.conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "systemd/journald.conf.d/50-labsquid-test.conf").write_text(
        "[Journal]\nStorage=volatile\nRateLimitBurst=0\n")
    (etc / "systemd/system.conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "systemd/system.conf.d/50-labsquid-test.conf").write_text(
        "[Manager]\nShowStatus=no\nDefaultTimeoutStartSec=30s\nDefaultTimeoutStopSec=15s\n")
    (etc / "systemd/system/lab.target").write_text(LAB_TARGET)
    for unit in MASKED:
        link = etc / "systemd/system" / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")

    os.chdir(r)
    os.mkdir(".oldroot")
    _run("pivot_root", ".", ".oldroot")
    os.chdir("/")
    _run("umount", "-l", "/.oldroot")
    os.rmdir("/.oldroot")
    _run("mount", "--make-rshared", "/")  # as on a real host; peer groups are new and private

    env = {"container": "labsquid-test", "TERM": "dumb", "PATH": INNER_PATH}
    drop = ",".join(f"-{cap}" for cap in DROPPED_CAPS)
    os.execve("/usr/bin/setpriv", [
        "setpriv", f"--bounding-set={drop}", "/lib/systemd/systemd", "--system",
        "--unit=lab.target", "--show-status=false", "--log-target=journal",
        f"--log-level={config['log_level']}"], env)


# -- the package under test --------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
_built: dict[str, Path] = {}


def build_deb() -> Path:
    """``bash packaging/build-deb.sh`` once per test session; the .deb it made."""
    if "deb" not in _built:
        result = subprocess.run(["bash", str(REPO / "packaging/build-deb.sh")], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise SystemdError(f"build-deb.sh failed:\n{result.stdout}{result.stderr}")
        _built["deb"] = REPO / result.stdout.strip().splitlines()[-1]
    return _built["deb"]


if __name__ == "__main__":  # pragma: no cover - run as the container's PID 1
    if len(sys.argv) == 3 and sys.argv[1] == "--inner":
        _inner(sys.argv[2])
    else:
        sys.exit("usage: systemd.py --inner CONFIG (run by SystemdContainer.start)")
