# One boot, the IDE_KM / TDISP steps of the guest's TSM flow failing in chosen ways
# (test_guest_tdisp_faults.py).  Before each step the guest prints "@@VDEV arm <step>"
# and waits $ARM_WAIT s while the host arms that step's fault on the device's control
# socket; "@@VDEV tdi <label>" likewise asks the host to record the device's TDI state
# (vdev ctl tdi) at that point.  Every failure is followed by a clean path to RUN
# (LOCK, REPORT, START, then STOP) in the same boot.  The host prepends EP, MB and
# ARM_WAIT.
arm() { r arm "$1"; sleep "$ARM_WAIT"; }
snap() { r tdi "$1"; sleep "$ARM_WAIT"; }
# The interface report as hex (one REPORT through the TSM), or why it could not be read.
report() {
	hex=$(od -An -v -tx1 $M/tdi_report 2>/tmp/od.err | tr -d ' \n')
	r "$1" "${hex:-$(cat /tmp/od.err)}"
}
# refused KEY: one REPORT through the TSM expected to fail; "rc message" like w.  One
# read(2) by dd: od does not name the errno, and busybox cat retries a failed sendfile
# with read, which would run a second REPORT.
refused() {
	msg=$( { dd if=$M/tdi_report of=/dev/null bs=4096 count=1; } 2>&1 )
	r "$1" "$? ${msg:-ok}"
}
# to_run LABEL: bind (LOCK), REPORT, START to RUN, the TSM's view of the device's TDI
# state (GET_DEVICE_INTERFACE_STATE), then unbind (STOP).
to_run() {
	w "${1}_lock" $EP $M/tdi_lock
	report "${1}_report"
	w "${1}_start" $EP $M/tdi_start
	r "${1}_state" "$(rd $M/tdi_state)"
	r "${1}_status" "$(rd $M/tdi_status)"
	w "${1}_stop" $EP $M/tdi_stop
	r "${1}_bound_after" "$(rd $E/tsm/bound)"
}

# vtsm's failure lines are pci_err(): keep them off the console, where the kernel may
# print them into the middle of a result line (init dumps dmesg at the end anyway).
loglevel=$(cut -f1 /proc/sys/kernel/printk)
echo 1 > /proc/sys/kernel/printk

insmod /modules/vtsm.ko && r insmod ok
r bar0 "$(head -n 1 $E/resource)"

# GET_TDISP_VERSION is asked once per TDI by the TSM: the boot's first bind.
w connect tsm0 $E/tsm/connect
arm tdisp_version
w fail_tdisp_version $EP $M/tdi_lock
r fail_tdisp_version_bound "$(rd $E/tsm/bound)"
to_run clean_tdisp_version
w disconnect_tdisp_version tsm0 $E/tsm/disconnect

# IDE_KM: KP_ACK with a failure status during connect.
arm key_prog
w fail_key_prog tsm0 $E/tsm/connect
r fail_key_prog_authenticated "$(rd $E/authenticated)"
w reconnect_key_prog tsm0 $E/tsm/connect
r reconnect_key_prog_authenticated "$(rd $E/authenticated)"
to_run clean_key_prog

# TDISP_ERROR BUSY to LOCK_INTERFACE_REQUEST: bind fails, the TDI stays unlocked.
arm lock_busy
w fail_lock_busy $EP $M/tdi_lock
r fail_lock_busy_bound "$(rd $E/tsm/bound)"
r fail_lock_busy_state "$(rd $M/tdi_state)"
snap lock_busy
to_run clean_lock_busy

# DEVICE_INTERFACE_REPORT with the first MMIO range one page higher.  vtsm's LOCK told
# the TSM where BAR0 is (mailbox 1.1), so REPORT is refused (EACCES) and START after it
# too (the report stays rejected); the device's TDI stays CONFIG_LOCKED, and tdi_state
# says so.  Unbind, then to RUN.
arm report_mismatch
w mismatch_lock $EP $M/tdi_lock
refused fail_report_mismatch
w fail_mismatch_start $EP $M/tdi_start
r fail_mismatch_state "$(rd $M/tdi_state)"
r fail_mismatch_bound "$(rd $E/tsm/bound)"
r fail_mismatch_status "$(rd $M/tdi_status)"
snap report_mismatch
w mismatch_stop $EP $M/tdi_stop
to_run clean_report_mismatch

# The same report, read by START itself (nothing read it since LOCK): START fails
# EACCES at the report check, before any START_INTERFACE_REQUEST.
arm start_report_mismatch
w start_mismatch_lock $EP $M/tdi_lock
w fail_start_mismatch $EP $M/tdi_start
r fail_start_mismatch_state "$(rd $M/tdi_state)"
r fail_start_mismatch_bound "$(rd $E/tsm/bound)"
snap start_report_mismatch
w start_mismatch_stop $EP $M/tdi_stop
to_run clean_start_mismatch

# LOCK_INTERFACE_RESPONSE with a START_INTERFACE_NONCE the device never issued.
arm wrong_nonce
w wrong_nonce_lock $EP $M/tdi_lock
report wrong_nonce_report
w fail_wrong_nonce $EP $M/tdi_start
r fail_wrong_nonce_state "$(rd $M/tdi_state)"
r fail_wrong_nonce_bound "$(rd $E/tsm/bound)"
r fail_wrong_nonce_status "$(rd $M/tdi_status)"
snap wrong_nonce
w wrong_nonce_stop $EP $M/tdi_stop
to_run clean_wrong_nonce

# GET_DEVICE_INTERFACE_STATE after START answered with the one from before LOCK
# (replayed, re-sealed): START fails though the device's TDI is RUN; unbind (STOP).
arm state_replay
w state_replay_lock $EP $M/tdi_lock
report state_replay_report
w fail_state_replay $EP $M/tdi_start
r fail_state_replay_bound "$(rd $E/tsm/bound)"
snap state_replay
w state_replay_stop $EP $M/tdi_stop
snap state_replay_stopped
to_run clean_state_replay

# The device's TDI goes to ERROR before START_INTERFACE_REQUEST.  Recovery: unbind
# (STOP from ERROR), disconnect, reconnect, then to RUN.
arm tdi_error
w tdi_error_lock $EP $M/tdi_lock
report tdi_error_report
w fail_tdi_error $EP $M/tdi_start
r fail_tdi_error_state "$(rd $M/tdi_state)"
r fail_tdi_error_status "$(rd $M/tdi_status)"
snap tdi_error
w tdi_error_stop $EP $M/tdi_stop
snap tdi_error_stopped
w tdi_error_disconnect tsm0 $E/tsm/disconnect
w tdi_error_reconnect tsm0 $E/tsm/connect
to_run clean_tdi_error

w disconnect tsm0 $E/tsm/disconnect
r authenticated_after "$(rd $E/authenticated)"
rmmod vtsm && r rmmod ok
echo "$loglevel" > /proc/sys/kernel/printk
