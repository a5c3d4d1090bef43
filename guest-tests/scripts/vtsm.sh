# vtsm checks, sourced by /init.  The host prepends EP (the TEE-IO endpoint's
# BDF) and MB (the TSM mailbox's BDF).  The mailbox server runs a scripted
# backend: connect #1 ok, #2 fails with -EACCES, #3 ok (test_vtsm.py).

lsw() { ls "$@" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//'; }

r ep_id "$(cat $E/vendor):$(cat $E/device)"
r mb_id "$(cat $M/vendor):$(cat $M/device)"
r mb_class "$(cat $M/class)"
r ep_doe_features "$(lsw $E/doe_features)"
r ep_tsm_before "$(lsw $E/tsm)"

# The device's own answer to SPDM GET_VERSION through the kernel's pci_doe()
# (vdevtest), to compare with what the relay carried to the TSM.
insmod /modules/vdevtest.ko && echo "1 10840000" > $E/doe && r ep_get_version "$(cat $E/doe)"

insmod /modules/vtsm.ko && r insmod ok
r tsm_class "$(lsw /sys/class/tsm)"
r tsm_path "$(readlink -f /sys/class/tsm/tsm0)"
r mb_tsm_dir "$(lsw $M/tsm)"
r mb_attrs "$(lsw $M | tr ' ' '\n' | grep '^tdi_' | tr '\n' ' ' | sed 's/ *$//')"
r ep_tsm_files "$(lsw $E/tsm)"
r authenticated_before "$(rd $E/authenticated)"

w connect1 tsm0 $E/tsm/connect
r authenticated1 "$(rd $E/authenticated)"
r connect_read1 "$(rd $E/tsm/connect)"
r dsm1 "$(rd $E/tsm/dsm)"
r bound_before_lock "$(rd $E/tsm/bound)"
w connect_again tsm0 $E/tsm/connect

w tdi_lock $EP $M/tdi_lock
r bound_after_lock "$(rd $E/tsm/bound)"
r tdi_state_locked "$(rd $M/tdi_state)"
r tdi_report "$(rd $M/tdi_report)"
r tdi_status "$(rd $M/tdi_status)"
w tdi_start $EP $M/tdi_start
r tdi_state_run "$(rd $M/tdi_state)"
w tdi_stop $EP $M/tdi_stop
r bound_after_stop "$(rd $E/tsm/bound)"
r tdi_state_stopped "$(rd $M/tdi_state)"
w tdi_start_unbound $EP $M/tdi_start
w tdi_lock_bad_bdf 0000:77:00.0 $M/tdi_lock

w disconnect1 tsm0 $E/tsm/disconnect
r authenticated_after_disconnect "$(rd $E/authenticated)"

w connect2 tsm0 $E/tsm/connect
r authenticated2 "$(rd $E/authenticated)"

w connect3 tsm0 $E/tsm/connect
r authenticated3 "$(rd $E/authenticated)"
w tdi_lock3 $EP $M/tdi_lock
r bound3 "$(rd $E/tsm/bound)"

# Unload while connected and bound: tsm_unregister() unbinds and disconnects.
rmmod vtsm && r rmmod ok
r tsm_class_after "$(lsw /sys/class/tsm)"
r ep_tsm_after "$(lsw $E/tsm)"
