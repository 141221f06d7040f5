"""Where does a labsquid worker spend its time?  py-spy on one pool child under wrk.

    .venv/bin/python bench/profile.py [--dispatch notify] [--body 100B] [--conns 50]

Starts nginx and one labsquid (pool_size 1, pinned to CPU 1) the way bench.py
does, drives it with wrk for ``--seconds``, and samples the serving process
(the worker; the kid in serial mode) with py-spy (installed with
``pip install --target /tmp/pyspy py-spy`` if it is not on PATH).  Prints the
functions with the most samples, by own time and by inclusive time, and
leaves the collapsed stacks (flamegraph input) in the work folder.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


def py_spy() -> str:
    found = shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
    if not os.path.exists(found):
        subprocess.run([str(bench.PYTHON), "-m", "pip", "install", "-q", "--target",
                        "/tmp/pyspy", "py-spy"], check=True)
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dispatch", default="notify")
    ap.add_argument("--body", default="100B", choices=list(bench.BODIES))
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    spy = py_spy()

    work = Path(tempfile.mkdtemp(prefix="labsquid-profile-"))
    work.chmod(0o755)
    bench.make_files(work / "www")
    nginx = bench.Nginx("nginx", "origin", work / "nginx", port=bench.free_port())
    nginx.start(work / "www")
    lab = bench.Labsquid("labsquid", "labsquid", work / "labsquid", port=bench.free_port(),
                         dispatch=args.dispatch, pool_size="1")
    try:
        lab.start(nginx.port)
        bench.check_proxy(lab.port, nginx.port)
        members = lab.members()
        target = next((pid for pid, cmd in members if "worker-" in cmd), None)
        if target is None:  # serial: the kid serves
            target = next(pid for pid, cmd in members if "--kid" in cmd)
        raw = work / "stacks.txt"
        case = bench.Case(args.body, args.conns, "keepalive")
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(
            bench.run_wrk(case, nginx.port, lab.port, args.seconds + 2)))
        load.start()
        subprocess.run(["taskset", "-c", bench.LOAD_CPU, spy, "record", "--pid", str(target),
                        "--duration", str(args.seconds), "--rate", "250", "--format", "raw",
                        "--output", str(raw)], check=True, capture_output=True)
        load.join()
    finally:
        lab.stop()
        nginx.stop()

    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    rps = result.get("requests", 0) / (result.get("duration_us", 1) / 1e6)
    print(f"# py-spy of pid {target} ({args.dispatch}, {case.label}), {total} samples, "
          f"wrk {rps:,.0f} req/s while sampled")
    print(f"stacks: {raw}\n\n## own time\n")
    for name, n in own.most_common(args.top):
        print(f"{n / total:6.1%}  {name}")
    print("\n## inclusive time\n")
    for name, n in incl.most_common(args.top):
        print(f"{n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
