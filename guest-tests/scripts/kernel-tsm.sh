# What the kernel itself does with the endpoint when vtsm.ko is left out
# (`make run VTSM=0`: a kernel that brings its own TSM driver).  Sourced by
# /init after foundation.sh; the host prepends EP (endpoint BDF) and MB
# (TSM mailbox BDF).  Every TSM the kernel registered is tried once.

r ktsm_class "$(ls /sys/class/tsm 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')"
for t in /sys/class/tsm/*; do
	[ -e "$t" ] || continue
	r ktsm_dev "$(basename "$t") $(readlink -f "$t")"
done
r ktsm_attrs "$(ls "$E/tsm" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')"
r kauthenticated "$(rd "$E/authenticated")"
for t in /sys/class/tsm/*; do
	[ -e "$t" ] && [ -e "$E/tsm/connect" ] || continue
	n=$(basename "$t")
	msg=$( { echo "$n" > "$E/tsm/connect"; } 2>&1 )
	r kconnect "$n $? ${msg:-ok}"
	r kconnected "$n connect=$(rd "$E/tsm/connect") authenticated=$(rd "$E/authenticated") dsm=$(rd "$E/tsm/dsm") bound=$(rd "$E/tsm/bound")"
	msg=$( { echo "$n" > "$E/tsm/disconnect"; } 2>&1 )
	r kdisconnect "$n $? ${msg:-ok}"
done
# The kernel's own words about the device security path.
dmesg | grep -iE '(^|[^a-z])(tsm[0-9]*|ide|doe|spdm|tdisp)([^a-z]|$)' | sed 's/^/@@VDEV kdmesg /'
