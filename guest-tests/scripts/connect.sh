# The full connect flow `make run` shows, sourced by /init after foundation.sh.
# The host prepends EP (endpoint BDF), MB (mailbox BDF), ID_OFF, SCRATCH_OFF
# and DOORBELL_OFF.
# IDE as the kernel sees it: the host bridge's stream pool and streamH.R.E links,
# and both ends' config space (the host decodes the stream registers).
RP=/sys/bus/pci/devices/$(basename "$(readlink -f $E/..)")
HB=$(readlink -f $RP/..)
ide() {
	r "ide_avail_$1" "$(rd $HB/available_secure_streams)"
	r "ide_links_$1" "$(ls $HB | grep '^stream' | tr '\n' ' ' | sed 's/ *$//')"
	r "ep_config_$1" "$(od -An -v -tx1 -N 4096 $E/config | tr -d ' \n')"
	r "rp_config_$1" "$(od -An -v -tx1 -N 4096 $RP/config | tr -d ' \n')"
}

# The endpoint's own driver enables memory decode and bus mastering before
# the TDI is locked: changing them while LOCKED or RUN is a TDISP violation.
insmod /modules/vdevtest.ko 2>/dev/null
[ -e $E/irq_count ] || echo "$VID $DID" > /sys/bus/pci/drivers/vdevtest/new_id
insmod /modules/vtsm.ko && r vtsm_insmod ok
r tsm_class "$(ls /sys/class/tsm 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')"
r tsm_parent "$(readlink -f /sys/class/tsm/tsm0 2>/dev/null)"
ide before
w connect tsm0 $E/tsm/connect
r ide_stream "$(rd $M/ide_stream)"
ide connected
r tsm_connect "$(rd $E/tsm/connect)"
r authenticated "$(rd $E/authenticated)"
r tsm_dsm "$(rd $E/tsm/dsm)"
r ep_bar0 "$(head -1 $E/resource)"
w tdi_lock $EP $M/tdi_lock
r tsm_bound "$(rd $E/tsm/bound)"
r tdi_state_locked "$(rd $M/tdi_state)"
r report_hex "$(od -An -v -tx1 $M/tdi_report 2>/dev/null | tr -d ' \n')"
w tdi_start $EP $M/tdi_start
r tdi_state_run "$(rd $M/tdi_state)"
# MMIO to the device while its TDI is in RUN.
echo $ID_OFF > $E/mmio_addr && r run_id_reg "$(cat $E/mmio_data)"
echo $SCRATCH_OFF > $E/mmio_addr && echo 0x600d600d > $E/mmio_data && r run_scratch "$(cat $E/mmio_data)"
before=$(cat $E/irq_count)
echo $DOORBELL_OFF > $E/mmio_addr && echo 0 > $E/mmio_data
sleep 0.2
r run_irqs "$before $(cat $E/irq_count)"
r tdi_status_run "$(rd $M/tdi_status)"
w tdi_stop $EP $M/tdi_stop
r tdi_state_stopped "$(rd $M/tdi_state)"
r tsm_bound_after_stop "$(rd $E/tsm/bound)"
w disconnect tsm0 $E/tsm/disconnect
r authenticated_after "$(rd $E/authenticated)"
ide after
rmmod vtsm && r vtsm_rmmod ok
rmmod vdevtest && r vdevtest_rmmod ok
