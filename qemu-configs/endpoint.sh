#!/usr/bin/env bash
# Boot the cached Linux 7.3 guest with the vdev endpoint behind a PCIe root
# port: the invocation `make run` and the guest tests use for one device.
#
#   vdev serve --socket /tmp/vdev.sock &        # the device must listen first
#   qemu-configs/endpoint.sh /tmp/vdev.sock initrd.cpio.gz [extra kernel args]
#
# QEMU=, KERNEL= and ACCEL= as in common.sh.
set -euo pipefail
sock=${1:?socket path}; initrd=${2:?initramfs}; shift 2
. "$(dirname "$0")/common.sh"
exec "${qemu[@]}" "${machine[@]}" \
  -serial stdio \
  -kernel "$kernel" -initrd "$initrd" \
  -append "$cmdline${*:+ $*}" \
  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \
  -device '{"driver":"vfio-user-pci","id":"vu0","bus":"rp1","addr":"0x0","socket":{"type":"unix","path":"'"$sock"'"},"rombar":0}'
