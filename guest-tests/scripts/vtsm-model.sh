# vtsm with the real TSM model (tsm) behind the mailbox: connect, TDISP
# LOCK / REPORT / START / STOP, disconnect.  The host prepends EP and MB.

insmod /modules/vtsm.ko && r insmod ok
w connect tsm0 $E/tsm/connect
r authenticated "$(rd $E/authenticated)"
r status_connected "$(rd $M/tdi_status)"
w tdi_lock $EP $M/tdi_lock
r bound "$(rd $E/tsm/bound)"
r report_bytes "$(cat $M/tdi_report 2>/dev/null | wc -c)"
r report_hex "$(od -An -v -tx1 $M/tdi_report 2>/dev/null | tr -d ' \n' | cut -c1-160)"
w tdi_start $EP $M/tdi_start
r tdi_state_run "$(rd $M/tdi_state)"
r status_run "$(rd $M/tdi_status)"
w tdi_stop $EP $M/tdi_stop
r bound_after_stop "$(rd $E/tsm/bound)"
w disconnect tsm0 $E/tsm/disconnect
r authenticated_after "$(rd $E/authenticated)"
rmmod vtsm && r rmmod ok
