#!/usr/bin/env bash
# Boot the cached Linux 7.3 guest the way `make vm` (vdev vm) does: the TEE-IO
# endpoint (0000:01:00.0) and the TSM mailbox (0000:02:00.0), each behind its own
# PCIe root port, the guest's shell on this terminal.
#
#   vdev identity generate --state-dir /tmp/vdev-id
#   vdev serve --socket /tmp/vdev.sock --state-dir /tmp/vdev-id --control /tmp/vdev.ctl &
#   vdev tsm serve --socket /tmp/tsm.sock \
#       --trust-anchor "$(vdev identity trust-anchor --state-dir /tmp/vdev-id)" &
#   qemu-configs/tee-io.sh /tmp/vdev.sock /tmp/tsm.sock out/vm/initrd.cpio.gz /tmp/vm-logs
#
# The initramfs is the one `make vm` left in out/vm/ (vtsm.ko, vdevtest.ko and the
# shell's /init); vdev.shell=1 makes /init give you the shell.  The console is
# multiplexed with QEMU's monitor (Ctrl-A X quits, Ctrl-A C the monitor; Ctrl-C goes
# to the guest) and logged to LOGDIR/console.log; the guest writes its kernel log to
# the second serial port, LOGDIR/dmesg.log, when you `poweroff`.  Extra arguments go
# on the kernel command line.  QEMU=, KERNEL= and ACCEL= as in common.sh.
set -euo pipefail
dev=${1:?device socket}; tsm=${2:?TSM mailbox socket}; initrd=${3:?initramfs}
logs=${4:?log directory}; shift 4
. "$(dirname "$0")/common.sh"
mkdir -p "$logs"
exec "${qemu[@]}" "${machine[@]}" \
  -chardev "stdio,id=console,mux=on,signal=off,logfile=$logs/console.log" \
  -serial chardev:console -monitor chardev:console \
  -serial "file:$logs/dmesg.log" \
  -kernel "$kernel" -initrd "$initrd" \
  -append "$cmdline vdev.shell=1${*:+ $*}" \
  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \
  -device '{"driver":"vfio-user-pci","id":"vu0","bus":"rp1","addr":"0x0","socket":{"type":"unix","path":"'"$dev"'"},"rombar":0}' \
  -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2 \
  -device '{"driver":"vfio-user-pci","id":"vu1","bus":"rp2","addr":"0x0","socket":{"type":"unix","path":"'"$tsm"'"},"rombar":0}'
