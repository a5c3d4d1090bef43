# The kernel's own pci_ide on the patched QEMU's root port, in one boot: three
# connect rounds to RUN and back, an FLR while the TDI is in RUN, then one
# round with the enable order reversed (vtsm ide_rp_first) for the checkers to
# name.  Both ends' config space after each step; the host decodes the stream
# registers.  The host prepends EP and MB.
RP=/sys/bus/pci/devices/$(basename "$(readlink -f $E/..)")
HB=$(readlink -f $RP/..)
ide() {
	r "avail_$1" "$(rd $HB/available_secure_streams)"
	r "links_$1" "$(ls $HB | grep '^stream' | tr '\n' ' ' | sed 's/ *$//')"
	r "ep_$1" "$(od -An -v -tx1 -N 4096 $E/config | tr -d ' \n')"
	r "rp_$1" "$(od -An -v -tx1 -N 4096 $RP/config | tr -d ' \n')"
}
to_run() {
	w "connect_$1" tsm0 $E/tsm/connect
	r "ide_stream_$1" "$(rd $M/ide_stream)"
	ide "connected_$1"
	w "tdi_lock_$1" $EP $M/tdi_lock
	r "report_bytes_$1" "$(cat $M/tdi_report 2>/dev/null | wc -c)"
	w "tdi_start_$1" $EP $M/tdi_start
	r "tdi_state_$1" "$(rd $M/tdi_state)"
}
back() {
	w "tdi_stop_$1" $EP $M/tdi_stop
	w "disconnect_$1" tsm0 $E/tsm/disconnect
	r "authenticated_$1" "$(rd $E/authenticated)"
	ide "after_$1"
}

insmod /modules/vtsm.ko && r insmod ok
ide start
for i in 1 2 3; do
	to_run $i
	back $i
done

to_run flr
w reset_method_set flr $E/reset_method
w flr 1 $E/reset
r status_after_flr "$(rd $M/tdi_status)"
ide flr
back flr

echo 1 > /sys/module/vtsm/parameters/ide_rp_first
w connect_rp_first tsm0 $E/tsm/connect
ide connected_rp_first
w disconnect_rp_first tsm0 $E/tsm/disconnect
echo 0 > /sys/module/vtsm/parameters/ide_rp_first
ide after_rp_first
rmmod vtsm && r rmmod ok
