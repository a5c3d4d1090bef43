# The TSM mailbox server is killed by the host while a connect relays DOE
# exchanges: the connect must fail with an errno in bounded time, not hang.
# The host prepends EP and MB.
E=/sys/bus/pci/devices/$EP
M=/sys/bus/pci/devices/$MB

insmod /modules/vtsm.ko step_timeout_ms=3000 && r insmod ok
t0=$(cut -d' ' -f1 /proc/uptime)
msg=$( { echo tsm0 > $E/tsm/connect; } 2>&1 )
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
r connect_dead "$rc ${msg:-ok}"
r connect_seconds "$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}')"
r authenticated_dead "$(cat $E/authenticated 2>/dev/null | tr -d '\n')"
rmmod vtsm && r rmmod ok
