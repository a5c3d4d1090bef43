# One of two guests whose endpoints are served by ONE `vdev serve` process
# (test_multi_qemu.py).  The host prepends EP, MB, VID, DID, ID_OFF,
# SCRATCH_OFF and DOORBELL_OFF; this guest's own scratch value comes from
# vdev.scratch=... on the kernel command line (the two guests differ there).
# Round 1 to RUN, then wait for the host on the console: it checks both
# devices over the control socket and SIGKILLs the other QEMU.  After "go",
# MMIO again, STOP, disconnect, and round 2 to RUN and back.
mmio() { echo "$1" > $E/mmio_addr && cat $E/mmio_data; }
SCRATCH=$(sed -n 's/.*vdev\.scratch=\([0-9a-fx]*\).*/\1/p' /proc/cmdline)
r scratch_value "$SCRATCH"

# MMIO and MSI-X in RUN: the ID register, this guest's scratch value, a doorbell.
exercise() {
	r id$1 "$(mmio $ID_OFF)"
	echo $SCRATCH_OFF > $E/mmio_addr && echo $SCRATCH > $E/mmio_data
	r scratch$1 "$(cat $E/mmio_data)"
	before=$(cat $E/irq_count)
	echo $DOORBELL_OFF > $E/mmio_addr && echo 0 > $E/mmio_data
	sleep 0.2
	r irqs$1 "$before $(cat $E/irq_count)"
}
to_run() {
	w connect$1 tsm0 $E/tsm/connect
	r authenticated$1 "$(rd $E/authenticated)"
	w tdi_lock$1 $EP $M/tdi_lock
	r report_bytes$1 "$(cat $M/tdi_report 2>/dev/null | wc -c)"
	w tdi_start$1 $EP $M/tdi_start
	r tdi_state_run$1 "$(rd $M/tdi_state)"
	exercise $1
}
back() {
	w tdi_stop$1 $EP $M/tdi_stop
	r tdi_state_stopped$1 "$(rd $M/tdi_state)"
	w disconnect$1 tsm0 $E/tsm/disconnect
	r authenticated_after$1 "$(rd $E/authenticated)"
}

insmod /modules/vdevtest.ko 2>/dev/null
[ -e $E/irq_count ] || echo "$VID $DID" > /sys/bus/pci/drivers/vdevtest/new_id
insmod /modules/vtsm.ko && r vtsm_insmod ok
to_run 1
r at_run 1
# The host answers on the serial console (the other guest never hears back).
read -t 120 cmd
r host_said "$cmd"
# Still in RUN after the other QEMU died: scratch must still be ours.
r scratch_kept "$(mmio $SCRATCH_OFF)"
exercise _after_kill
back 1
to_run 2
back 2
rmmod vtsm && r vtsm_rmmod ok
rmmod vdevtest && r vdevtest_rmmod ok
