# Three full rounds in one boot against the TSM model: connect, LOCK, START
# (RUN), STOP, disconnect.  Each round must get its own SPDM session and IDE
# keys.  The host prepends EP and MB.

insmod /modules/vtsm.ko && r insmod ok
for i in 1 2 3; do
	w connect$i tsm0 $E/tsm/connect
	r authenticated$i "$(rd $E/authenticated)"
	w tdi_lock$i $EP $M/tdi_lock
	r bound$i "$(rd $E/tsm/bound)"
	# The TSM starts a TDI only after it accepted its interface report.
	r report_bytes$i "$(cat $M/tdi_report 2>/dev/null | wc -c)"
	w tdi_start$i $EP $M/tdi_start
	r tdi_state_run$i "$(rd $M/tdi_state)"
	r status_run$i "$(rd $M/tdi_status)"
	w tdi_stop$i $EP $M/tdi_stop
	r bound_after_stop$i "$(rd $E/tsm/bound)"
	w disconnect$i tsm0 $E/tsm/disconnect
	r authenticated_after$i "$(rd $E/authenticated)"
done
rmmod vtsm && r rmmod ok
