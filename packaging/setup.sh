#!/usr/bin/env bash
# Set up everything labsquid needs on a Debian 12 machine (run as root):
# the Debian packages, then a virtualenv in .venv with labsquid installed
# editable plus its test tools. Idempotent: a second run installs and compiles
# nothing new.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

debs=(
    python3 python3-venv python3-dev python3-systemd   # interpreter, venv, journal/daemon bindings
    python3-structlog python3-sdnotify python3-psutil  # what the .deb depends on: the
    python3-setproctitle                               #  systemd tests install it offline
    gcc                                                 # compiles the hot modules (setup.py) and binary-less wheels
    lsof strace curl procps psmisc iproute2 util-linux  # what the tests (and users) inspect with
    squidclient squid-cgi                               # squid's cache-manager clients, the tests' too
    systemd logrotate                                   # the real-systemd tests and log rotation
)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's interpreter on purpose: it is the one the package runs on, and
# python3-systemd is built for it (--system-site-packages makes it visible).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import systemd.journal' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi

# The editable install compiles the hot modules (setup.py, about a minute on
# 2 cores).  Skip it when the last completed one used the same pyproject.toml,
# setup.py and LABSQUID_NO_EXTENSIONS, and every module it compiled still
# matches its source (labsquid -v counts them; an edited one would run from
# its .py until rebuilt).
stamp=.venv/.labsquid-install
want=$( (cat pyproject.toml setup.py; echo "no_extensions=${LABSQUID_NO_EXTENSIONS:-}") | sha256sum)
report=$(.venv/bin/labsquid -v 2>/dev/null || true)
if [ -n "${LABSQUID_NO_EXTENSIONS:-}" ]; then
    built='compiled hot modules: 0 of 0 \(a pure-Python build\)'
else
    built='compiled hot modules: ([1-9][0-9]*) of \1'  # not a build that lost its manifest
fi
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && grep -qxE "$built" <<<"$report"; then
    echo "setup.sh: labsquid is installed and built already (.venv)"
else
    rm -f "$stamp"
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
    echo "$want" > "$stamp"
fi
