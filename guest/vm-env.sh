#!/usr/bin/env bash
# Build (once) and cache the Debian trixie root that provides QEMU 11 with
# vfio-user-pci, the Linux 7.3.4 guest kernel, its headers/kbuild and gcc-14
# for out-of-tree guest modules, and busybox for the initramfs.
#
# Why a separate root: the host is Debian 12, whose QEMU (7.2) has no
# vfio-user client and whose kernel (6.1) has no PCI/TSM; trixie-backports has
# both (docs/vm-environment.md §1).
#
# Usage: guest/vm-env.sh            build if missing or stale, print the root
#        VDEV_CACHE=/path ...             cache location (default ~/.cache/vdev)
#
# The Debian mirror is taken from the host's own apt configuration; nothing
# here names a mirror host.
set -euo pipefail

KVER="7.3.4+deb13-amd64"
KBUILD="linux-kbuild-7.3.4+deb13"
# Bump ENV_FORMAT when the layout of the cache (not the package list) changes.
ENV_FORMAT=2
# Packages pinned to trixie-backports must be named with /trixie-backports:
# bookworm's apt will not pull versioned dependencies from backports by itself.
BACKPORTS=(
  qemu-system-x86 qemu-system-common qemu-system-data seabios
  "linux-binary-$KVER" "linux-base-$KVER" "linux-modules-$KVER"
  "linux-headers-$KVER" "linux-headers-7.3.4+deb13-common" "$KBUILD"
)
TRIXIE=(gcc-14 make binutils libc6-dev dwarves busybox-static cpio kmod zstd)
NEED_MB=2000

CACHE="${VDEV_CACHE:-$HOME/.cache/vdev}"
# Overridable so the mirror lookup can be tested against sample configurations.
APT_ETC="${VDEV_APT_ETC:-/etc/apt}"
say() { printf '[vm-env] %s\n' "$*" >&2; }
die() { printf '[vm-env] error: %s\n' "$*" >&2; exit 1; }

packages_csv() {
  local out=() p
  for p in "${BACKPORTS[@]}"; do out+=("$p/trixie-backports"); done
  out+=("${TRIXIE[@]}")
  local IFS=,
  echo "${out[*]}"
}

stamp() {
  printf 'format=%s\npackages=%s\n' "$ENV_FORMAT" "$(packages_csv)" | sha256sum | cut -c1-16
}

# The first Debian archive URI of the host's apt configuration (deb822
# .sources files first, then the one-line format).  Security and
# third-party repositories are skipped by looking for the "debian" archive
# that carries the main suite.
host_mirror() {
  local f uri=""
  for f in "$APT_ETC"/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk '
      /^[[:space:]]*#/ {next}
      /^$/ { if (u != "" && s ~ /(bookworm|trixie|stable)([[:space:]]|$)/ && u !~ /security/) { print u; exit } u=""; s=""; next }
      tolower($1)=="uris:" { u=$2 }
      tolower($1)=="suites:" { $1=""; s=$0 }
      END { if (u != "" && s ~ /(bookworm|trixie|stable)([[:space:]]|$)/ && u !~ /security/) print u }
    ' "$f" | head -n1)
    [ -n "$uri" ] && { echo "${uri%/}"; return; }
  done
  for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk '$1=="deb" && $0 !~ /security/ {
             for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { print $i; exit } }' "$f" | head -n1)
    [ -n "$uri" ] && { echo "${uri%/}"; return; }
  done
  return 1
}

ensure_mmdebstrap() {
  command -v mmdebstrap >/dev/null && return
  say "mmdebstrap is missing; installing it with apt-get (bookworm package)"
  apt-get update -qq || die "apt-get update failed: is the Debian archive reachable?"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
    || die "could not install mmdebstrap (apt-get install mmdebstrap)"
}

check_disk() {
  mkdir -p "$CACHE"
  local avail
  avail=$(df -Pm "$CACHE" | awk 'NR==2 {print $4}')
  if [ "${avail:-0}" -lt "$NEED_MB" ]; then
    die "only ${avail} MB free under $CACHE; the VM environment needs about ${NEED_MB} MB (set VDEV_CACHE to another disk)"
  fi
}

# Run a binary of the root through the root's own loader, so it uses trixie's
# libraries without a chroot.
root_exec() {
  local root=$1; shift
  "$root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu" "$@"
}

# The packaged vmlinuz is a bzImage whose payload is zstd-compressed; the
# uncompressed ELF boots with -kernel about a second faster.
extract_vmlinux() {
  local root=$1 out=$2 img off
  img="$root/usr/lib/modules/$KVER/vmlinuz"
  [ -f "$img" ] || die "kernel image $img missing from the root"
  for off in $(grep -abo $'\x28\xb5\x2f\xfd' "$img" | cut -d: -f1); do
    if tail -c +$((off + 1)) "$img" | root_exec "$root" "$root/usr/bin/zstd" -dcq 2>/dev/null >"$out.tmp"; then :; fi
    if [ "$(head -c 4 "$out.tmp" 2>/dev/null | od -An -tx1 | tr -d ' ')" = "7f454c46" ]; then
      mv "$out.tmp" "$out"
      return 0
    fi
  done
  rm -f "$out.tmp"
  die "could not extract an ELF vmlinux from $img"
}

build() {
  local dir=$1 mirror log
  [ "$(id -u)" = 0 ] || die "building the VM environment needs root (mmdebstrap --mode=root); run as root"
  ensure_mmdebstrap
  check_disk
  mirror=$(host_mirror) || die "no Debian archive found in the host's apt configuration ($APT_ETC/sources.list*)"
  say "building the trixie VM root in $dir (mirror from host apt config; about 250 MB download, 1 minute)"
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  log="$dir.partial/mmdebstrap.log"
  if ! mmdebstrap --mode=root --variant=apt --include="$(packages_csv)" \
        trixie "$dir.partial/root" \
        "deb $mirror trixie main" "deb $mirror trixie-backports main" 2>&1 \
      | tee "$log" | grep --line-buffered -E '^I: |^E: |^W: ' | sed -u 's/^/[vm-env]   /' >&2; then
    :
  fi
  if [ ! -x "$dir.partial/root/usr/bin/qemu-system-x86_64" ]; then
    if grep -qiE 'No space left' "$log"; then
      die "disk full while building the root (see $log)"
    elif grep -qiE 'Failed to fetch|Could not resolve|Could not connect|Temporary failure|Unable to locate' "$log"; then
      die "the Debian archive ($mirror) is unreachable or lacks trixie-backports (see $log)"
    fi
    die "mmdebstrap failed (see $log)"
  fi
  say "extracting vmlinux"
  extract_vmlinux "$dir.partial/root" "$dir.partial/vmlinux"
  # Module builds use the headers in place; their Makefile expects /usr/src,
  # which holds inside the chroot.
  stamp >"$dir.partial/stamp"
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
  say "done: $dir"
}

# The module build headers are the part of the root a mistaken build can
# damage (kbuild writes into a tree it takes for an output directory): check
# them before trusting a cached environment.
headers_intact() {
  local h="$1/root/usr/src/linux-headers-$KVER"
  [ -s "$h/Module.symvers" ] && [ -f "$h/Makefile" ] && ! grep -q KBUILD_EXTMOD "$h/Makefile"
}

main() {
  local s dir
  case "${1:-}" in
    --print-mirror) host_mirror || die "no Debian archive found in $APT_ETC"; return ;;
    --print-stamp) stamp; return ;;
    "") ;;
    *) die "unknown option $1 (use --print-mirror or --print-stamp, or no option)" ;;
  esac
  s=$(stamp)
  dir="$CACHE/vm-env-$s"
  if [ -f "$dir/stamp" ] && ! headers_intact "$dir"; then
    say "the cached kernel headers in $dir were modified; rebuilding the environment"
    rm -f "$dir/stamp"
  fi
  if [ ! -f "$dir/stamp" ] || [ "$(cat "$dir/stamp")" != "$s" ] || [ ! -f "$dir/vmlinux" ]; then
    build "$dir"
    # Older environments (other stamps) are stale; remove them to save disk.
    for old in "$CACHE"/vm-env-*; do
      [ "$old" = "$dir" ] || [ ! -d "$old" ] || { say "removing stale $old"; rm -rf "$old"; }
    done
  fi
  ln -sfn "$dir" "$CACHE/vm-env"
  echo "$dir"
}

main "$@"
