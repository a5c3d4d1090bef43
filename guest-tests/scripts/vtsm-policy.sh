# Two TSM mailboxes in one boot: tsm0's measurement policy does not match the
# device, tsm1's does.  Connect via tsm0 must be refused (EACCES, one dmesg
# line with the reason), connect via tsm1 must work.  The host prepends EP,
# MB0 and MB1.

insmod /modules/vtsm.ko && r insmod ok
r tsm_class "$(ls /sys/class/tsm 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')"
r tsm0_parent "$(readlink -f /sys/class/tsm/tsm0 2>/dev/null)"
r tsm1_parent "$(readlink -f /sys/class/tsm/tsm1 2>/dev/null)"
# Which mailbox got which tsm name depends on probe order: the host says.
w connect_bad $BAD $E/tsm/connect
r authenticated_bad "$(rd $E/authenticated)"
r connect_read_bad "$(rd $E/tsm/connect)"
w connect_good $GOOD $E/tsm/connect
r authenticated_good "$(rd $E/authenticated)"
w disconnect_good $GOOD $E/tsm/disconnect
r authenticated_after "$(rd $E/authenticated)"
rmmod vtsm && r rmmod ok
