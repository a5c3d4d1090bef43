# Guest-side timing of config accesses and of 4 KiB DOE exchanges through the
# kernel's DOE driver (pci_doe), with the device's activity counters logged at
# BAR0 MARKER writes around the exchanges.  The host prepends EP, MARKER_OFF,
# N (config reads per timing), DOE_STATUS (its config offset), VCA (hex SPDM
# requests that set up the connection), CERT (the GET_CERTIFICATE request) and
# K (exchanges).
mark() { echo $MARKER_OFF > $E/mmio_addr && echo $1 > $E/mmio_data; }
insmod /modules/vdevtest.ko
# One config access three ways: the DW at 0x100 (QEMU answers it from its own
# copy: no vfio-user message), the DW at 0 and DOE Status (each a round trip).
echo "0x100 $N" > $E/cfg_bench && r cfg_emulated "$(cat $E/cfg_bench)"
echo "0x0 $N" > $E/cfg_bench && r cfg_forwarded "$(cat $E/cfg_bench)"
echo "$DOE_STATUS $N" > $E/cfg_bench && r cfg_doe_status "$(cat $E/cfg_bench)"
for req in $VCA; do
	echo "1 $req" > $E/doe || r doe_vca_failed "$req"
done
mark 1
ns=""
i=0
while [ $i -lt $K ]; do
	echo "1 $CERT" > $E/doe || break
	ns="$ns $(cat $E/doe_ns)"
	i=$((i + 1))
done
mark 2
r doe_rc "$(cut -d' ' -f1 $E/doe)"
r doe_ns "$ns"
rmmod vdevtest
