#!/usr/bin/env bash
# Build an out-of-tree guest module inside the cached trixie root (gcc-14 and
# the 7.3.4 headers live there; bookworm's gcc-12 cannot build for this
# kernel).  The source is copied to OUT so the repo stays clean.
#
# Usage: build-module.sh SRC_DIR OUT_DIR [KDIR]
#   KDIR: a kernel build tree on the host (the user's own kernel); default is
#         the cached Debian 7.3.4 headers inside the root.
set -euo pipefail
src=$(realpath "$1"); out=$(realpath -m "$2"); kdir=${3:-}
env_dir=$(realpath "${VDEV_CACHE:-$HOME/.cache/vdev}/vm-env")
root="$env_dir/root"
[ -d "$root" ] || { echo "build-module: no VM environment at $env_dir (run make vm-env)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-module: needs root (chroot into the VM root)" >&2; exit 1; }
name=$(basename "$src")
rm -rf "$out"; mkdir -p "$out"
cp -a "$src"/. "$out"/
mnt=/mnt/vdev-src
kmnt=
if [ -n "$kdir" ]; then
  kdir=$(realpath "$kdir")
  case "$kdir/" in
    "$env_dir"/*|"$(realpath "$root")"/*)
      # The cached headers are the default already; reached through another
      # path, kbuild takes them for an external-module output directory and
      # writes build files (and a new Makefile) into them, breaking the cache.
      echo "build-module: KDIR $kdir is inside the VM environment; leave KDIR unset for the default headers" >&2
      exit 2 ;;
  esac
  [ -f "$kdir/Makefile" ] || { echo "build-module: KDIR $kdir has no Makefile (not a kernel build tree)" >&2; exit 2; }
  # Mounted at the same absolute path inside the root: kernel build trees
  # refer to themselves by absolute path (O=, KBUILD_OUTPUT).
  kmnt=$kdir
  kpath=$kdir
else
  kpath=/usr/lib/modules/7.3.4+deb13-amd64/build
fi
# A private mount namespace keeps the bind mounts away from the host; /proc
# must be mounted or objtool fails (read_stack_limit).
unshare --mount --propagation private bash -euc '
  root=$1; out=$2; mnt=$3; kdir=$4; kmnt=$5; kpath=$6
  mkdir -p "$root$mnt"
  mount -t proc proc "$root/proc"
  mount --bind /dev "$root/dev"
  mount --bind "$out" "$root$mnt"
  if [ -n "$kdir" ]; then mkdir -p "$root$kmnt"; mount --bind "$kdir" "$root$kmnt"; fi
  chroot "$root" make -s -C "$kpath" M="$mnt" CC=gcc-14 modules
' _ "$root" "$out" "$mnt" "$kdir" "$kmnt" "$kpath"
ls "$out"/*.ko >/dev/null
echo "build-module: $(ls "$out"/*.ko)"
