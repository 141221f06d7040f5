#!/usr/bin/env bash
# Set up everything (Debian packages, .venv) and run every test, slow and
# systemd ones included.  This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/setup.sh
.venv/bin/ruff check daemons tests bench setup.py
exec .venv/bin/python -m pytest -p no:cacheprovider "$@" tests
