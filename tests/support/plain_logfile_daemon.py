#!/usr/bin/env python3
"""A logfile daemon that speaks squid's protocol and nothing more, the way
squid's own ``log_file_daemon`` does: it opens the file named on its command
line, writes the text of each ``L`` record, rotates on ``R``, and never says
a word back (no ``O`` greeting, no ``A`` acknowledgements).  The tests run it
where squid's helper is not installed."""

import os
import sys


def main() -> int:
    path = sys.argv[1]
    out = open(path, "ab")  # noqa: SIM115 - reopened on R
    for record in sys.stdin.buffer:
        letter, text = record[:1], record[1:]
        if letter == b"L":
            out.write(text)
            out.flush()
        elif letter == b"R":
            out.close()
            os.replace(path, path + ".0")
            out = open(path, "ab")  # noqa: SIM115
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
