# The device holds its first SPDM DOE response back longer than pci_doe's
# 1 s timeout (vdev serve --doe-delay-ms): the kernel aborts the mailbox and
# the connect fails; the next connect must work.  The host prepends EP and MB.
up() { cut -d' ' -f1 /proc/uptime; }
connect() {
	t0=$(up)
	msg=$( { echo tsm0 > $E/tsm/connect; } 2>&1 )
	rc=$?
	r "$1" "$rc ${msg:-ok}"
	r "$1_seconds" "$(echo "$t0 $(up)" | awk '{printf "%.2f", $2 - $1}')"
	r "$1_authenticated" "$(rd $E/authenticated)"
}

insmod /modules/vtsm.ko && r insmod ok
connect connect_slow
connect connect_again
r status_connected "$(rd $M/tdi_status)"
msg=$( { echo tsm0 > $E/tsm/disconnect; } 2>&1 ); r disconnect "$? ${msg:-ok}"
r authenticated_after "$(rd $E/authenticated)"
rmmod vtsm && r rmmod ok
