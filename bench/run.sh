#!/usr/bin/env bash
# labsquid benchmark: nginx alone vs squid (1 worker, no cache) vs labsquid, side by side.
#
#   bash bench/run.sh            # full run, ~15 minutes
#   bash bench/run.sh --quick    # ~2-minute subset
#
# Installs Debian's wrk, nginx and squid if missing (as root), makes sure the
# services the packages ship are stopped and disabled (we run our own instances
# on free 127.0.0.1 ports from configs in a temp folder), then runs
# bench/bench.py pinned to CPU 0; the proxy under test goes on CPU 1.
# The table is printed and written to bench/results.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
py="$root/.venv/bin/python"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v squid >/dev/null || need+=(squid)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "bench: need root to install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The packages' own services: stop and disable them (they would hold port 80 / 3128).
for svc in nginx squid; do
    if [ -d /run/systemd/system ]; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
        # no systemd (container): stop a daemon started by the package, by its PID file
        for pidfile in "/run/$svc.pid" "/var/run/$svc.pid"; do
            if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "bench: stopping the package's $svc (pid $(cat "$pidfile"))" >&2
                kill -TERM "$(cat "$pidfile")" || true
            fi
        done
        command -v update-rc.d >/dev/null && update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
done

if [ "$(nproc)" -lt 2 ]; then
    echo "bench: warning: fewer than 2 CPUs; the pinning (proxy on 1, load on 0) will fail" >&2
fi
"$py" -c 'import psutil' 2>/dev/null || "$py" -m pip install -q psutil

cd "$root"
exec taskset -c 0 "$py" "$here/bench.py" "$@"
