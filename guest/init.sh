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
# From here on only errors and worse reach the console (as with `quiet`), so
# kernel messages cannot split the records; the whole log is dumped at the end.
dmesg -n 4

# Modules added with --initramfs-add load before any test script.
for m in /modules/add/*.ko; do
	[ -e "$m" ] || continue
	if insmod "$m"; then r add_insmod "$(basename "$m") ok"; else r add_insmod "$(basename "$m") failed"; fi
done

# Test scripts run in name order; each reports its own results.
for t in /tests/*; do
	[ -x "$t" ] || continue
	r script "$(basename "$t")"
	# A subshell: a broken script must not kill init (and panic the guest).
	( . "$t" ) || r script_failed "$(basename "$t") $?"
done

# Programs added with --initramfs-add run next, each on its own, with EP and
# MB (the endpoint's and the TSM mailbox's BDFs) in their environment; the
# host reads each one's output (KTAP if it prints any) and exit status.
[ -f /user-env ] && . /user-env
for t in /user-tests/*; do
	[ -x "$t" ] || continue
	r user_script "$(basename "$t")"
	"$t"
	r user_script_done "$(basename "$t") $?"
done

if grep -q 'vdev.shell=1' /proc/cmdline; then
	r shell ready
	# busybox poweroff, reboot and halt ask PID 1, this script, with USR2, TERM and
	# USR1.  A trapped signal ends `wait` at once (a foreground command would run on),
	# so the shell runs in the background with the console as its terminal.
	trap 'kill -HUP $shell 2>/dev/null' USR1 USR2 TERM
	setsid cttyhack sh </dev/console >/dev/console 2>&1 &
	shell=$!
	wait $shell
	# The kernel log goes to the second serial port, a file on the host (make vm:
	# out/vm/dmesg.log), not onto the terminal.
	dmesg >/dev/ttyS1 2>/dev/null
	r done 0
	poweroff -f
fi

# Kernel log last, so a test can look for WARN/BUG/oops and DOE errors.
dmesg | sed 's/^/@@DMESG /'
r done 0
poweroff -f
