"""Shrink a crash input of one harness to a small reproducer.

    .venv/bin/python tests/fuzz/minimize.py TARGET CRASH_FILE [OUT_FILE]

TARGET is a harness name (``http_request`` for fuzz_http_request.py). The
input is cut down (chunks removed, halving the chunk size down to single
bytes, until nothing more can go) for as long as the harness still fails the
same way: same exception type and same message up to its first colon. Known
bugs count as failures here (LABSQUID_FUZZ_STRICT=1), so their reproducers
shrink too. The result goes to OUT_FILE (default: CRASH_FILE + ".min") and is
printed; commit it as ``tests/fuzz/seeds/TARGET/regress-NAME`` (docs/fuzzing.md).

libFuzzer's own ``-minimize_crash=1`` re-executes the harness as a program,
which a ``python harness.py`` invocation does not survive; this does the same
job in-process.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path


def signature(test: Callable[[bytes], None], data: bytes) -> str | None:
    """How `data` fails ("Type: message head"), or None when it passes."""
    try:
        test(data)
    except Exception as exc:  # noqa: BLE001 - any failure is what we keep
        return f"{type(exc).__name__}: {str(exc).split(':', 1)[0]}"
    return None


def shrink(test: Callable[[bytes], None], data: bytes) -> bytes:
    want = signature(test, data)
    if want is None:
        raise SystemExit("the input does not fail: nothing to minimise")
    size = max(1, len(data) // 2)
    while True:
        pos, progress = 0, False
        while pos < len(data):
            candidate = data[:pos] + data[pos + size :]
            if signature(test, candidate) == want:
                data, progress = candidate, True
            else:
                pos += size
        if size == 1 and not progress:
            return data
        size = max(1, size // 2)


def main() -> None:
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    target, crash = sys.argv[1], Path(sys.argv[2])
    out = Path(sys.argv[3]) if len(sys.argv) == 4 else crash.with_name(crash.name + ".min")
    os.environ["LABSQUID_FUZZ_STRICT"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    harness = importlib.import_module(f"fuzz_{target}")
    data = shrink(harness.TestOneInput, crash.read_bytes())
    out.write_bytes(data)
    print(f"{len(data)} bytes -> {out}\n{data!r}\n{signature(harness.TestOneInput, data)}")


if __name__ == "__main__":
    main()
