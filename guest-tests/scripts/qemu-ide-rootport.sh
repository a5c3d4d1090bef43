# What the guest kernel's PCI/IDE code made of the root ports' IDE capability,
# sourced by /init.  The host prepends VID, the vendor ID of our endpoints.
for D in /sys/bus/pci/devices/*; do
	[ "$(cat $D/vendor)" = "$VID" ] || continue
	BDF=$(basename $D)
	RP=$(basename "$(readlink -f $D/..)")
	r endpoint "$BDF $RP"
	# Both ends' config space as the guest reads it; the host decodes the IDE
	# capabilities from these bytes.
	r "rp_config_$BDF" "$(od -An -v -tx1 -N 4096 /sys/bus/pci/devices/$RP/config | tr -d ' \n')"
	r "ep_config_$BDF" "$(od -An -v -tx1 -N 4096 $D/config | tr -d ' \n')"
done
HB=$(readlink -f /sys/bus/pci/devices/0000:00:00.0/..)
r host_bridge "$(basename $HB)"
r available_secure_streams "$(cat $HB/available_secure_streams 2>&1)"
r ide_stream_links "$(ls $HB | grep '^stream' | tr '\n' ' ')"
