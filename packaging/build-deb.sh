#!/usr/bin/env bash
# Build the Debian package: bash packaging/build-deb.sh  ->  dist/labsquid_<version>_<arch>.deb
#
# The wheel built from pyproject.toml is unpacked into /usr/lib/python3/dist-packages (as
# dh_python3 would place it); the runtime dependencies are Debian packages (Depends: in
# packaging/debian/control), never pip. The wheel carries the hot modules compiled for this
# interpreter (setup.py), so the package is for this architecture and this Python minor
# version; LABSQUID_NO_EXTENSIONS=1 builds a pure-Python package, architecture all. Needs only
# dpkg-deb, a C compiler, and a Python with pip, setuptools and Cython (the .venv that
# packaging/setup.sh makes); no network.
#
# Layout of the package:
#   /usr/lib/python3/dist-packages/labsquid{,-<version>.dist-info}
#   /usr/bin/labsquid, /usr/bin/labsquid-logfile-daemon      (wrappers on /usr/bin/python3)
#   /lib/systemd/system/labsquid.{service,socket}
#   /etc/labsquid/labsquid.conf                                (conffile; logfile_rotate 0)
#   /etc/logrotate.d/labsquid                                  (conffile; postrotate -k rotate)
#   /usr/lib/sysusers.d/labsquid.conf, /usr/lib/tmpfiles.d/labsquid.conf
#   /usr/share/doc/labsquid/{README.md,copyright,changelog.gz}
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
pkg=packaging

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! { "$PY" -c 'import setuptools' && "$PY" -m pip --version; } >/dev/null 2>&1; then
    echo "build-deb.sh: $PY has no pip/setuptools; run 'bash packaging/setup.sh' first" >&2
    exit 1
fi
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d "${TMPDIR:-/tmp}/labsquid-deb.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
mkdir -p "$root"

# --- the Python package: a wheel from a clean copy (no stale build/ of the checkout) -------
mkdir -p "$work/src" "$work/wheel"
cp pyproject.toml setup.py README.md "$work/src/"
cp -r daemons "$work/src/daemons"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
# and what the editable install compiled in place: the wheel compiles its own
find "$work/src/daemons" \( -name '*.so' -o -name '*.c' -o -name _native.json \) -delete
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --no-cache-dir \
    --disable-pip-version-check -w "$work/wheel" "$work/src" >&2
site=$root/usr/lib/python3/dist-packages
mkdir -p "$site"
"$PY" - "$work"/wheel/labsquid-*.whl "$site" <<'PYEOF'
import pathlib, sys, zipfile
wheel, site = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    z.extractall(site)
info = next(site.glob("labsquid-*.dist-info"))
(info / "INSTALLER").write_text("dpkg\n")
PYEOF
# Compiled modules tie the package to this machine's architecture and Python 3.X;
# stripped as Debian ships them (the debug sections are most of each file).
find "$site" -name '*.so' -exec strip --strip-unneeded {} +
if find "$site/labsquid" -name '*.so' | grep -q .; then
    arch=$(dpkg --print-architecture)
    pyminor=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
    python_depends="python3 (>= 3.11), python3 (<< $pyminor)"
else
    arch=all
    python_depends="python3 (>= 3.11)"
fi
out=dist/labsquid_${version}_${arch}.deb

# --- programs ---------------------------------------------------------------------------
install -D -m 0755 $pkg/labsquid.wrapper "$root/usr/bin/labsquid"
install -D -m 0755 $pkg/labsquid-logfile-daemon.wrapper "$root/usr/bin/labsquid-logfile-daemon"

# --- systemd, sysusers, tmpfiles, logrotate ------------------------------------------------
install -D -m 0644 units/labsquid.service "$root/lib/systemd/system/labsquid.service"
install -D -m 0644 units/labsquid.socket "$root/lib/systemd/system/labsquid.socket"
install -D -m 0644 $pkg/labsquid.sysusers "$root/usr/lib/sysusers.d/labsquid.conf"
install -D -m 0644 $pkg/labsquid.tmpfiles "$root/usr/lib/tmpfiles.d/labsquid.conf"
install -D -m 0644 $pkg/labsquid.logrotate "$root/etc/logrotate.d/labsquid"

# --- /etc/labsquid/labsquid.conf: the commented config, rotation left to logrotate ---------
conf=$root/etc/labsquid/labsquid.conf
install -D -m 0644 conf/labsquid.conf "$conf"
grep -qx 'pid_filename /run/labsquid/labsquid.pid' "$conf" \
    || { echo "build-deb.sh: conf/labsquid.conf must set pid_filename /run/labsquid/labsquid.pid" >&2; exit 1; }
grep -qx 'access_log daemon:/var/log/labsquid/access.log squid' "$conf" \
    || { echo "build-deb.sh: conf/labsquid.conf must log to /var/log/labsquid/access.log" >&2; exit 1; }
[ "$(grep -cx '# logfile_rotate 10' "$conf")" = 1 ] \
    || { echo "build-deb.sh: cannot find the logfile_rotate default in conf/labsquid.conf" >&2; exit 1; }
sed -i 's/^# logfile_rotate 10$/# logfile_rotate 10\n#\tDebian: \/etc\/logrotate.d\/labsquid rotates, then runs "labsquid -k rotate".\nlogfile_rotate 0/' "$conf"
PYTHONPATH=$site "$PY" -m labsquid -k parse -f "$conf" >&2 \
    || { echo "build-deb.sh: the packaged config does not parse" >&2; exit 1; }
grep -qx 'logfile_rotate 0' "$conf"

# --- documentation --------------------------------------------------------------------------
doc=$root/usr/share/doc/labsquid
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 $pkg/debian/copyright "$doc/copyright"
printf 'labsquid (%s) unstable; urgency=medium\n\n  * Built from the labsquid repository (%s).\n\n -- labsquid developers <labsquid@localhost>  %s\n' \
    "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(date -u -R -d "@$epoch")" | gzip -9n > "$doc/changelog.gz"

# --- control area ---------------------------------------------------------------------------
find "$root" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f ! -path "$root/usr/bin/*" -exec chmod 0644 {} +
mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$size/" -e "s/@ARCH@/$arch/" \
    -e "s/@PYTHON@/$python_depends/" $pkg/debian/control > "$root/DEBIAN/control"
install -m 0644 $pkg/debian/conffiles "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    sh -n $pkg/debian/$script
    install -m 0755 $pkg/debian/$script "$root/DEBIAN/$script"
done
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$epoch" {} +

mkdir -p dist
rm -f "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >&2
echo "$out"
