#!/usr/bin/env bash
# Build an out-of-tree guest module for Debian's 7.3.4 inside the cached
# trixie root (gcc-14 and the 7.3.4 headers live there; bookworm's gcc-12
# cannot build for this kernel).  The source is copied to OUT so the repo
# stays clean.  Modules for a user's own kernel tree (KDIR=) are built on the
# host with that tree's compiler instead (vdev/vm/kernel.py).
#
# Usage: build-module.sh SRC_DIR OUT_DIR
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: build-module.sh SRC_DIR OUT_DIR" >&2; exit 2; }
src=$(realpath "$1"); out=$(realpath -m "$2")
env_dir=$(realpath "${VDEV_CACHE:-$HOME/.cache/vdev}/vm-env")
root="$env_dir/root"
[ -d "$root" ] || { echo "build-module: no VM environment at $env_dir (run make vm-env)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-module: needs root (chroot into the VM root)" >&2; exit 1; }
rm -rf "$out"; mkdir -p "$out"
cp -a "$src"/. "$out"/
mnt=/mnt/vdev-src
kpath=/usr/lib/modules/7.3.4+deb13-amd64/build
# A private mount namespace keeps the bind mounts away from the host; /proc
# must be mounted or objtool fails (read_stack_limit).
unshare --mount --propagation private bash -euc '
  root=$1; out=$2; mnt=$3; kpath=$4
  mkdir -p "$root$mnt"
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  mount --bind "$out" "$root$mnt"
  chroot "$root" make -s -C "$kpath" M="$mnt" CC=gcc-14 modules
' _ "$root" "$out" "$mnt" "$kpath"
ls "$out"/*.ko >/dev/null
echo "build-module: $(ls "$out"/*.ko)"
