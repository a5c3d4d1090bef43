# N connect/disconnect cycles through the kernel's PCI/TSM ABI, each to RUN
# and back.  The host prepends EP, MB and N.
avail() { awk '/MemAvailable/ {print $2}' /proc/meminfo; }
slab() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
insmod /modules/vtsm.ko
i=0
ok=0
while [ $i -lt $N ]; do
	i=$((i + 1))
	echo tsm0 > $E/tsm/connect && echo $EP > $M/tdi_lock \
		&& cat $M/tdi_report > /dev/null && echo $EP > $M/tdi_start \
		&& grep -q RUN $M/tdi_state && echo $EP > $M/tdi_stop \
		&& echo tsm0 > $E/tsm/disconnect && ok=$((ok + 1))
	[ $i -eq 1 ] && r cycle1_mem "$(avail) $(slab)" && r mark_after_first ok
	[ $i -eq 1 ] && sleep 1
done
r cycles_ok "$ok $N"
r cycleN_mem "$(avail) $(slab)"
r mark_after_last ok
sleep 1
rmmod vtsm && r rmmod ok
