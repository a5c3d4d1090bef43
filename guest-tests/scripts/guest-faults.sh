# One boot, several connects that each fail in a chosen way (test_guest_faults.py).
# For every step in $STEPS the guest prints "@@VDEV arm <step>"; the host arms that
# step's fault on the device's control socket (vdev ctl faults arm) while the guest
# waits $ARM_WAIT s.  Then a connect must fail with the step's errno, a second
# connect must work (the fault is spent; device and TSM still usable) and is
# disconnected.  The host prepends EP, STEPS and ARM_WAIT.
insmod /modules/vtsm.ko && r insmod ok
for s in $STEPS; do
	r arm "$s"
	sleep "$ARM_WAIT"
	w "fail_$s" tsm0 $E/tsm/connect
	r "fail_${s}_authenticated" "$(rd $E/authenticated)"
	w "clean_$s" tsm0 $E/tsm/connect
	r "clean_${s}_authenticated" "$(rd $E/authenticated)"
	w "disconnect_$s" tsm0 $E/tsm/disconnect
done
rmmod vtsm && r rmmod ok
