#!/usr/bin/env bash
# The tests against a newer QGIS than the host's: Debian's own QGIS packages in a Debian chroot.
#
#   tools/qgis_chroot.sh 3.40|3.44 [pytest arguments]      (as root; `make test-qgis QGIS=3.40` runs it)
#
#   3.40: Debian 13 (trixie): QGIS 3.40 LTR, Python 3.13, NumPy 2, GDAL 3.10
#   3.44: Debian unstable (sid): QGIS 3.44, Python 3.14
#
# The chroot lives outside the tree, in $CHROOT_DIR/<suite> (default /var/cache/segearth-chroots), and is
# made once (debootstrap, then the Makefile's Debian packages; a few minutes) and reused. Each run copies the
# tree's files as git sees them (tracked, and untracked but not ignored) to /src in the chroot, keeps /src/.venv
# (made by the Makefile as a user would: /usr/bin/python3 -m venv --system-site-packages, Debian's numpy
# kept, PyTorch from PyPI) and the wheels pip downloaded ($CHROOT_DIR/wheels, shared by the chroots: a venv made
# again downloads nothing twice; `rm -rf` it to free the space) between runs, and runs pytest there (default: $DEFAULT_TESTS below). Everything it mounts is unmounted on exit, failure or
# interrupt; the chroot itself stays for the next run. Remove a chroot with `rm -rf $CHROOT_DIR/<suite>`
# only when no run is using it (`findmnt | grep $CHROOT_DIR` shows nothing).
set -euo pipefail

usage() { echo "usage: $0 3.40|3.44 [pytest arguments]" >&2; exit 2; }
(($# >= 1)) || usage
version=$1
shift
case "$version" in
    3.40) suite=trixie ;;
    3.44) suite=sid ;;
    *) echo "QGIS $version: no Debian release packages it here (3.40: Debian 13 trixie, 3.44: sid)" >&2; exit 2 ;;
esac
# The plugin, Processing and tools tests, and the backend's tests except the few that build the full-size
# model or make virtual environments of their own (those are the host's `make test`).
DEFAULT_TESTS=(tests -m "not slow and not setup")
if (($# == 0)); then set -- "${DEFAULT_TESTS[@]}"; fi

if [ "$(id -u)" -ne 0 ]; then
    echo "a chroot needs root: run it as root (sudo make test-qgis QGIS=$version)" >&2
    exit 1
fi
tree=$(cd "$(dirname "$0")/.." && pwd)
chroot_dir=$(realpath -m "${CHROOT_DIR:-/var/cache/segearth-chroots}")
case "$chroot_dir/" in
    "$tree"/*) echo "CHROOT_DIR=$chroot_dir is inside the tree: choose a folder outside $tree" >&2; exit 2 ;;
esac
root=$chroot_dir/$suite
wheels=$chroot_dir/wheels
mkdir -p "$chroot_dir" "$wheels"
# One run per chroot at a time (a second would share /src and the venv).
exec 9> "$chroot_dir/$suite.lock"
if ! flock -n 9; then
    echo "another run is using $root: wait for it to end" >&2
    exit 1
fi

# Every mount point at or under $1, deepest first, unmounted (lazily when busy: a process still inside).
unmount_under() {
    local target
    findmnt -rn -o TARGET | awk -v top="$1" '$0 == top || index($0, top "/") == 1' | sort -r \
        | while read -r target; do
            umount "$target" 2> /dev/null || umount -l "$target"
        done
    if findmnt -rn -o TARGET | awk -v top="$1" '$0 == top || index($0, top "/") == 1' | grep -q .; then
        echo "could not unmount everything under $1 (see findmnt): leaving it as it is" >&2
        return 1
    fi
}
# Every process still running inside the chroot (a backend a killed test left): TERM, then KILL after 5 s.
stop_processes_in() {
    local pid pids=() second
    for pid in /proc/[0-9]*; do
        [ "$(readlink "$pid/root" 2> /dev/null)" = "$1" ] && pids+=("${pid#/proc/}")
    done
    ((${#pids[@]} == 0)) && return 0
    kill -TERM "${pids[@]}" 2> /dev/null || true
    for second in 1 2 3 4 5; do
        kill -0 "${pids[@]}" 2> /dev/null || return 0
        sleep 1
    done
    kill -KILL "${pids[@]}" 2> /dev/null || true
}
cleanup() { stop_processes_in "$root"; unmount_under "$root"; unmount_under "$root.partial"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
say() { printf '[qgis-chroot %s %4ds] %s\n' "$suite" $((SECONDS - started)) "$*"; }

# 1. The base system (debootstrap), made in a side folder and moved into place when complete.
if [ ! -e "$root/.segearth-base" ]; then
    if ! command -v debootstrap > /dev/null; then
        say "installing debootstrap on this machine"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    fi
    cleanup  # an interrupted debootstrap may have left its /proc mounted
    rm -rf "$root.partial"
    say "debootstrap $suite into $root (about a minute)"
    debootstrap --variant=minbase --include=ca-certificates,make "$suite" "$root.partial" > "$chroot_dir/debootstrap-$suite.log" 2>&1 \
        || { tail -20 "$chroot_dir/debootstrap-$suite.log" >&2; exit 1; }
    # sid's Release file can be past its Valid-Until date on a mirror between two pushes.
    echo 'Acquire::Check-Valid-Until "false";' > "$root.partial/etc/apt/apt.conf.d/99segearth-valid-until"
    touch "$root.partial/.segearth-base"
    mv "$root.partial" "$root"
fi

# 2. The mounts a QGIS and pip need; made private so that nothing mounted under them reaches the host's.
bind() {  # bind SOURCE TARGET
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mount --make-private "$2"
}
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
bind /dev/shm "$root/dev/shm"
bind "$wheels" "$root/var/cache/segearth-wheels"
# Name resolution and this machine's certificate authorities (a proxy's own CA), or pip cannot verify PyPI.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi

in_chroot() {  # in_chroot COMMAND [ARGS]: a clean environment, the tree's folder
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin QT_QPA_PLATFORM=offscreen \
        DEBIAN_FRONTEND=noninteractive "$@"
}
in_chroot update-ca-certificates > /dev/null 2>&1

# 3. The tree, as git sees it, in /src (its .venv kept).
say "copying the tree to $root/src"
mkdir -p "$root/src"
find "$root/src" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
(cd "$tree" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done \
    | tar --null -T - -cf -) | tar -xf - -C "$root/src"

# 4. Debian's QGIS (the Makefile's `system`: installed when missing), the venv (made when missing or older
#    than backend/pyproject.toml), then the tests.
say "Debian packages (QGIS): installed when missing"
in_chroot make -C /src system
# git: the package tool lists the tree's files with git and builds its archive from a git repository; /src is
# made one (every copied file untracked but not ignored, as in the host's tree).
in_chroot sh -c 'command -v git > /dev/null || { apt-get install -y -q --no-install-recommends git > /dev/null \
    || { apt-get update -q > /dev/null && apt-get install -y -q --no-install-recommends git > /dev/null; }; }'
in_chroot git -C /src init -q
say "the venv /src/.venv: made when missing (PyTorch's download: several minutes the first time)"
in_chroot make -C /src .venv/.installed WHEELHOUSE=/var/cache/segearth-wheels
in_chroot sh -c 'echo "QGIS $(python3 -c "from qgis.core import Qgis; print(Qgis.QGIS_VERSION)")," \
    "Python $(python3 -c "import platform; print(platform.python_version())")," \
    "NumPy $(python3 -c "import numpy; print(numpy.__version__)")," \
    "GDAL $(python3 -c "from osgeo import gdal; print(gdal.__version__)")"'
say "pytest $*"
status=0
in_chroot sh -c 'cd /src && exec .venv/bin/python -m pytest "$@"' pytest "$@" || status=$?
say "done (pytest exit status $status)"
exit "$status"
