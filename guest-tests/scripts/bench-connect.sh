# Guest-side timing of connect and of lock -> RUN, bracketed by BAR0 MARKER
# writes so the device logs its activity counters at each step.  The host
# prepends EP, MB and MARKER_OFF.
E=/sys/bus/pci/devices/$EP
M=/sys/bus/pci/devices/$MB
up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo $MARKER_OFF > $E/mmio_addr && echo $1 > $E/mmio_data; }
insmod /modules/vdevtest.ko
insmod /modules/vtsm.ko
mark 1
t0=$(up)
echo tsm0 > $E/tsm/connect; rc=$?
t1=$(up)
mark 2
# LOCK, fetch the interface report (the TSM starts only a TDI whose report
# it has seen), START.
echo $EP > $M/tdi_lock && cat $M/tdi_report > /dev/null && echo $EP > $M/tdi_start; rc2=$?
t2=$(up)
mark 3
r bench_connect "$rc $t0 $t1"
r bench_lock_to_run "$rc2 $t1 $t2"
r bench_state "$(cat $M/tdi_state)"
echo $EP > $M/tdi_stop
echo tsm0 > $E/tsm/disconnect
rmmod vtsm
rmmod vdevtest
