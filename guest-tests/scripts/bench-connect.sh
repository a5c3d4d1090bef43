# Guest-side timing of connect and of lock -> RUN, bracketed by BAR0 MARKER
# writes so the device logs its activity counters at each step (first round).
# The host prepends EP, MB, MARKER_OFF and ROUNDS: each round connects, locks,
# reads the report, starts, then stops and disconnects again.
up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo $MARKER_OFF > $E/mmio_addr && echo $1 > $E/mmio_data; }
insmod /modules/vdevtest.ko
insmod /modules/vtsm.ko
i=1
while [ $i -le ${ROUNDS:-1} ]; do
    [ $i = 1 ] && mark 1
    t0=$(up)
    echo tsm0 > $E/tsm/connect; rc=$?
    t1=$(up)
    [ $i = 1 ] && mark 2
    # LOCK, fetch the interface report (the TSM starts only a TDI whose report
    # it has seen), START.
    echo $EP > $M/tdi_lock && cat $M/tdi_report > /dev/null && echo $EP > $M/tdi_start; rc2=$?
    t2=$(up)
    [ $i = 1 ] && mark 3
    r bench_connect_$i "$rc $t0 $t1"
    r bench_lock_to_run_$i "$rc2 $t1 $t2"
    [ $i = 1 ] && r bench_state "$(cat $M/tdi_state)"
    echo $EP > $M/tdi_stop
    echo tsm0 > $E/tsm/disconnect
    i=$((i + 1))
done
rmmod vtsm
rmmod vdevtest
