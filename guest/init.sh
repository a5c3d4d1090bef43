#!/bin/sh
# /init of the guest initramfs.  Results go to the serial console as
# machine-readable lines "@@VDEV <key> <value...>" that the host side parses.
/bin/busybox --install -s /bin
/bin/busybox --install -s /sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs tmpfs /tmp

r() { echo "@@VDEV $*"; }
r boot "$(uname -r)"
r cmdline "$(cat /proc/cmdline)"

# Test scripts run in name order; each reports its own results.
for t in /tests/*; do
	[ -x "$t" ] || continue
	r script "$(basename "$t")"
	# A subshell: a broken script must not kill init (and panic the guest).
	( . "$t" ) || r script_failed "$(basename "$t") $?"
done

if [ -n "$(grep -o 'vdev.shell=1' /proc/cmdline)" ]; then
	r shell ready
	setsid cttyhack sh
fi

# Kernel log last, so a test can look for WARN/BUG/oops and DOE errors.
dmesg | sed 's/^/@@DMESG /'
r done 0
poweroff -f
