"""The endpoint's IDE model seen through `tdisp.ide_target.IdeRegisterTarget`.

The IDE_KM responder (tdisp/idekm_responder.py) programs keys through that
protocol; this adapter maps it onto `vdev.pci.ide_cap.IdeCap`:

- The endpoint has one IDE port, index 0 (PCIe r6.0 §6.33.3: Port Index 0
  is the function's own port; an endpoint has no other).
- QUERY_RESP needs the function's Bus/Dev/Func and Segment.  A device learns
  its bus number from Type 0 configuration requests; vfio-user never tells
  us, so these are constructor arguments (default 01:00.0, segment 0, the
  placement in qemu-configs) that the caller may update.
- The register DWORDs are read live from config space, from the IDE
  Capability register to the end of the capability, as QUERY_RESP carries them.
- A stream is "configured" when a selective stream's SEL_CTL Stream ID equals
  the requested ID (Linux writes the ID in pci_ide_stream_setup before the
  TSM programs keys).
"""

from __future__ import annotations

from tdisp.ide_target import IdePortInfo
from tdisp.idekm_messages import KpAckStatus
from vdev.pci.config_space import ConfigSpace
from vdev.pci.ide_cap import IdeCap, KeyDirection, SelectiveStream, SubStream
from vdev.pci.ide_rules import IdeRuleChecker

ENDPOINT_PORT_INDEX = 0


class EndpointIdeTarget:
    """Implements `tdisp.ide_target.IdeRegisterTarget` for a `TeeIoEndpoint`."""

    def __init__(
        self,
        ide: IdeCap,
        config: ConfigSpace,
        *,
        bus: int = 0x01,
        dev_func: int = 0x00,
        segment: int = 0x00,
        rules: IdeRuleChecker | None = None,
    ) -> None:
        self.ide = ide
        self.config = config
        self.bus = bus
        self.dev_func = dev_func
        self.segment = segment
        self.rules = rules

    def _stream(self, port_index: int, stream_id: int) -> SelectiveStream | None:
        if port_index != ENDPOINT_PORT_INDEX:
            return None
        return self.ide.stream_by_id(stream_id)

    def port_info(self, port_index: int) -> IdePortInfo | None:
        if port_index != ENDPOINT_PORT_INDEX:
            return None
        start = self.ide.offset + 4
        end = self.ide.offset + self.ide.size
        registers = tuple(self.config.read_int(off, 4) for off in range(start, end, 4))
        return IdePortInfo(
            dev_func=self.dev_func,
            bus=self.bus,
            segment=self.segment,
            max_port_index=ENDPOINT_PORT_INDEX,
            registers=registers,
        )

    def stream_configured(self, port_index: int, stream_id: int) -> bool:
        return self._stream(port_index, stream_id) is not None

    def program_key(
        self,
        port_index: int,
        stream_id: int,
        key_set: int,
        direction_tx: bool,
        sub_stream: int,
        key: bytes,
        ifv: bytes,
    ) -> KpAckStatus:
        stream = self._stream(port_index, stream_id)
        if stream is None and port_index == ENDPOINT_PORT_INDEX and self.rules is not None:
            self.rules.unconfigured_stream("KEY_PROG", stream_id)
        if stream is None or sub_stream not in SubStream.__members__.values():
            return KpAckStatus.UNSPECIFIED_FAILURE
        stream.program_key(key_set, _direction(direction_tx), SubStream(sub_stream), key, ifv)
        return KpAckStatus.SUCCESS

    def key_set_go(
        self, port_index: int, stream_id: int, key_set: int, direction_tx: bool, sub_stream: int
    ) -> bool:
        stream = self._stream(port_index, stream_id)
        if stream is None and port_index == ENDPOINT_PORT_INDEX and self.rules is not None:
            self.rules.unconfigured_stream("K_SET_GO", stream_id)
        if stream is None or sub_stream not in SubStream.__members__.values():
            return False
        return stream.go(key_set, _direction(direction_tx), SubStream(sub_stream))

    def key_set_stop(
        self, port_index: int, stream_id: int, key_set: int, direction_tx: bool, sub_stream: int
    ) -> None:
        stream = self._stream(port_index, stream_id)
        if stream is None or sub_stream not in SubStream.__members__.values():
            return
        stream.stop(key_set, _direction(direction_tx), SubStream(sub_stream))


def _direction(tx: bool) -> KeyDirection:
    return KeyDirection.TX if tx else KeyDirection.RX
