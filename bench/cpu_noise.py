"""How steady is the proxy's core?  Interpreted work against native work, side by side.

The machines here are virtual, and their cores slow down in spells of a few
to tens of milliseconds (other tenants on the host).  A closed-loop client's
p99 is set by those spells, and they do not hit all code alike: run pinned
to the proxy's core, this alternates half-millisecond chunks of interpreter
work (dicts, small bytes objects: what a Python proxy does per request) and
of native work (sha256 over a buffer that fits in L1, like squid's tight C
loops), so both see the same spells, and reports how much each one's chunk
time spreads.  bench.py runs it before and after the benchmark and prints it
in the report's header, next to the load average.

    taskset -c 1 python bench/cpu_noise.py --seconds 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable

CHUNK_S = 0.0005
_BUFFER = bytes(range(256)) * 64  # 16 KiB


def _interpreted() -> None:
    fields = {}
    for i in range(300):
        fields[i] = str(i).encode() + b"x"
    b"".join(fields.values())


def _native() -> None:
    hashlib.sha256(_BUFFER).digest()


def _chunk(work: Callable[[], None], times: int) -> float:
    start = time.thread_time()
    for _ in range(times):
        work()
    return time.thread_time() - start


def _repeats(work: Callable[[], None]) -> int:
    """How many calls of ``work`` make about one chunk."""
    one = _chunk(work, 20) / 20
    return max(1, round(CHUNK_S / one))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(seconds: float) -> dict[str, float]:
    """Spread of chunk times (p90 and p99 over the median) for each kind of
    work, and how much the native chunks slowed during the interpreter's slow
    spells (chunks over 1.5x its median)."""
    n_interp, n_native = _repeats(_interpreted), _repeats(_native)
    interp: list[float] = []
    native: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        interp.append(_chunk(_interpreted, n_interp))
        native.append(_chunk(_native, n_native))
    mid_i, mid_n = _quantile(interp, 0.5), _quantile(native, 0.5)
    slow = [i for i, t in enumerate(interp) if t > 1.5 * mid_i]
    return {
        "chunks": len(interp),
        "interp_p90": _quantile(interp, 0.9) / mid_i,
        "interp_p99": _quantile(interp, 0.99) / mid_i,
        "native_p90": _quantile(native, 0.9) / mid_n,
        "native_p99": _quantile(native, 0.99) / mid_n,
        "slow_share": len(slow) / len(interp),
        "native_in_slow": (sum(native[i] for i in slow) / len(slow) / mid_n) if slow else 1.0,
    }


def describe(result: dict[str, float]) -> str:
    return (f"interpreted work p90 {result['interp_p90']:.2f}× / p99 {result['interp_p99']:.2f}× "
            f"its median, native work p90 {result['native_p90']:.2f}× / p99 "
            f"{result['native_p99']:.2f}×; {result['slow_share']:.1%} of the interpreter's "
            f"chunks ran over 1.5× its median, native chunks beside them "
            f"{result['native_in_slow']:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    result = measure(args.seconds)
    print(describe(result))
    print("BENCHJSON " + json.dumps(result))


if __name__ == "__main__":
    main()
