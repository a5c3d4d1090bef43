# Foundation checks, sourced by /init.  The host prepends the variables
# VID DID BDF DOORBELL_OFF SCRATCH_OFF SCRATCH_RESET ID_OFF from the profile.
D=/sys/bus/pci/devices/$BDF
if [ ! -d "$D" ]; then
	r error "device $BDF not enumerated: $(ls /sys/bus/pci/devices | tr '\n' ' ')"
	return 0 2>/dev/null || exit 0
fi
r vendor "$(cat $D/vendor)"
r device "$(cat $D/device)"
r class "$(cat $D/class)"
r revision "$(cat $D/revision)"
# The whole 4 KiB config space as the guest sees it; the host decodes the
# capability chains from it independently of the device model.
r config "$(od -An -v -tx1 -N 4096 $D/config | tr -d ' \n')"
r doe_features "$(ls $D/doe_features 2>/dev/null | tr '\n' ' ')"
r reset_method "$(cat $D/reset_method 2>/dev/null)"

insmod /modules/vdevtest.ko && r insmod ok
[ -e $D/irq_count ] || echo "$VID $DID" > /sys/bus/pci/drivers/vdevtest/new_id
if [ -e $D/irq_count ]; then r bound vdevtest; else r bound none; fi

mmio_rd() { echo $1 > $D/mmio_addr; cat $D/mmio_data; }
mmio_wr() { echo $1 > $D/mmio_addr; echo $2 > $D/mmio_data; }

r id_reg "$(mmio_rd $ID_OFF)"
# SPDM GET_VERSION (DSP0274: version 1.0, code 0x84) as a CMA/SPDM DOE
# object through the kernel's own DOE driver (pci_doe()).
echo "1 10840000" > $D/doe && r doe_get_version "$(cat $D/doe)"
r irq_before "$(cat $D/irq_count)"
mmio_wr $DOORBELL_OFF 0
sleep 0.2
r irq_after_doorbell "$(cat $D/irq_count)"

mmio_wr $SCRATCH_OFF 0x5a5aa5a5
r scratch_before_flr "$(mmio_rd $SCRATCH_OFF)"
echo flr > $D/reset_method 2>/dev/null && r reset_method_set flr
if echo 1 > $D/reset; then r flr ok; else r flr failed; fi
r scratch_after_flr "$(mmio_rd $SCRATCH_OFF)"
r id_after_flr "$(mmio_rd $ID_OFF)"
mmio_wr $DOORBELL_OFF 0
sleep 0.2
r irq_after_flr_doorbell "$(cat $D/irq_count)"
r vendor_after_flr "$(cat $D/vendor)"
rmmod vdevtest && r rmmod ok
