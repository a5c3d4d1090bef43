#!/usr/bin/env bash
# Boot the cached Linux 7.3 guest with the vdev endpoint behind a PCIe root
# port — the exact invocation `make run` and the guest tests use.
#
#   vdev serve --socket /tmp/vdev.sock &        # the device must listen first
#   qemu-configs/endpoint.sh /tmp/vdev.sock initrd.cpio.gz [extra kernel args]
#
# QEMU=/path/to/qemu-system-x86_64 and KERNEL=/path/to/vmlinux override the
# cached ones; ACCEL=kvm if KVM works for you (default tcg).
set -euo pipefail
sock=${1:?socket path}; initrd=${2:?initramfs}; shift 2
env_dir=${VDEV_CACHE:-$HOME/.cache/vdev}/vm-env
root=$env_dir/root
if [ -n "${QEMU:-}" ]; then
  qemu=("$QEMU")
else
  # The root's QEMU runs through the root's own loader (no chroot needed).
  qemu=("$root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu"
        "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios")
fi
accel=${ACCEL:-tcg}
cpu=max; [ "$accel" = kvm ] && cpu=host
exec "${qemu[@]}" \
  -machine q35,memory-backend=mem \
  -object memory-backend-memfd,id=mem,size=512M,share=on -m 512M \
  -smp 1 -accel "$accel" -cpu "$cpu" \
  -nographic -nodefaults -no-reboot -serial stdio \
  -kernel "${KERNEL:-$env_dir/vmlinux}" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 quiet $*" \
  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \
  -device '{"driver":"vfio-user-pci","id":"vu0","bus":"rp1","addr":"0x0","socket":{"type":"unix","path":"'"$sock"'"},"rombar":0}'
