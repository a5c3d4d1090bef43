# Sourced by the invocations here: what every one of them shares with vdev/vm/qemu.py.
# QEMU=/path/to/qemu-system-x86_64 and KERNEL=/path/to/vmlinux override the cached
# ones; ACCEL=kvm if KVM works for you (default tcg).
env_dir=${VDEV_CACHE:-$HOME/.cache/vdev}/vm-env
root=$env_dir/root
if [ -n "${QEMU:-}" ]; then
  qemu=("$QEMU")
else
  # The root's QEMU runs through the root's own loader (no chroot needed).
  qemu=("$root/usr/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu"
        "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios")
fi
kernel=${KERNEL:-$env_dir/vmlinux}
accel=${ACCEL:-tcg}
cpu=max; [ "$accel" = kvm ] && cpu=host
# The machine: guest RAM in a shared memfd (QEMU hands the device its fd with every
# DMA_MAP), one CPU, no default devices, QEMU exits when the guest reboots or panics.
machine=(-machine q35,memory-backend=mem
         -object memory-backend-memfd,id=mem,size=512M,share=on -m 512M
         -smp 1 -accel "$accel" -cpu "$cpu"
         -nographic -nodefaults -no-reboot)
# The kernel command line every run has (vdev/vm/qemu.py kernel_cmdline).
cmdline="console=ttyS0 panic=-1 no_timer_check quiet"
