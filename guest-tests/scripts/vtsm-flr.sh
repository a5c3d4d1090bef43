# FLR of the endpoint while its TDI is in RUN: the device must drop the TDI
# to CONFIG_UNLOCKED (TDISP §11.2.4) and the TSM must see it through
# GET_DEVICE_INTERFACE_STATE; STOP, disconnect and rmmod still work.  The host
# prepends EP and MB.

insmod /modules/vtsm.ko && r insmod ok
w connect tsm0 $E/tsm/connect
r authenticated "$(rd $E/authenticated)"
w tdi_lock $EP $M/tdi_lock
# The TSM starts a TDI only after it accepted its interface report.
r report_bytes "$(cat $M/tdi_report 2>/dev/null | wc -c)"
w tdi_start $EP $M/tdi_start
r tdi_state_run "$(rd $M/tdi_state)"
r status_run "$(rd $M/tdi_status)"
r reset_method "$(rd $E/reset_method)"
w reset_method_set flr $E/reset_method
w flr 1 $E/reset
r tdi_state_after_flr "$(rd $M/tdi_state)"
r status_after_flr "$(rd $M/tdi_status)"
r authenticated_after_flr "$(rd $E/authenticated)"
w tdi_stop $EP $M/tdi_stop
r bound_after_stop "$(rd $E/tsm/bound)"
w disconnect tsm0 $E/tsm/disconnect
r authenticated_after "$(rd $E/authenticated)"
rmmod vtsm && r rmmod ok
