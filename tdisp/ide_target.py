"""What the IDE_KM responder needs from the device's IDE hardware (PCIe 6.2 §6.33).

The device model (vdev/pci/ide_cap.py) implements `IdeRegisterTarget`; `InMemoryIdeTarget`
is a self-contained stand-in for tests and for running the engines without a device.

    port_info(port_index) -> IdePortInfo | None
        None when the port does not exist.  IdePortInfo carries what QUERY_RESP
        reports: dev/func, bus, segment, max port index and the raw IDE Extended
        Capability DWORDs (IDE Capability, IDE Control, link blocks, selective blocks).
    stream_configured(port_index, stream_id) -> bool
        A Selective (or Link) IDE stream with this Stream ID exists on the port; a
        KEY_PROG for any other ID is an "unsupported value" (KP_ACK status 3).
    program_key(port_index, stream_id, key_set, direction_tx, sub_stream, key, ifv)
        -> KpAckStatus
        Store key (32 bytes, natural AES order) and IFV (8 bytes, IV bytes 4..11).
        SUCCESS, or UNSPECIFIED_FAILURE when the hardware refuses.
    key_set_go(port_index, stream_id, key_set, direction_tx, sub_stream) -> bool
        Make the key set active for that slot; False if it holds no key.
    key_set_stop(port_index, stream_id, key_set, direction_tx, sub_stream) -> None
        Stop and invalidate that key set for that slot.

Which SPDM session programmed which key is bookkeeping of the IDE_KM responder
(`IdeKmResponder.keys_ready`), not of the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tdisp.idekm_messages import KpAckStatus


@dataclass(frozen=True)
class IdePortInfo:
    dev_func: int
    bus: int
    segment: int
    max_port_index: int
    registers: tuple[int, ...]


@runtime_checkable
class IdeRegisterTarget(Protocol):
    def port_info(self, port_index: int) -> IdePortInfo | None: ...

    def stream_configured(self, port_index: int, stream_id: int) -> bool: ...

    def program_key(
        self,
        port_index: int,
        stream_id: int,
        key_set: int,
        direction_tx: bool,
        sub_stream: int,
        key: bytes,
        ifv: bytes,
    ) -> KpAckStatus: ...

    def key_set_go(
        self, port_index: int, stream_id: int, key_set: int, direction_tx: bool, sub_stream: int
    ) -> bool: ...

    def key_set_stop(
        self, port_index: int, stream_id: int, key_set: int, direction_tx: bool, sub_stream: int
    ) -> None: ...


SlotKey = tuple[int, int, int, bool, int]  # port, stream, key set, tx, sub-stream


@dataclass
class InMemoryIdeTarget:
    """A dict-backed IDE register target.

    `streams` maps port index -> configured Stream IDs; `registers` are the DWORDs a
    QUERY_RESP returns (default: IDE Capability with Selective IDE + IDE_KM supported,
    one selective stream, then IDE Control = 0).
    """

    dev_func: int = 0x00
    bus: int = 0x01
    segment: int = 0x00
    streams: dict[int, set[int]] = field(default_factory=lambda: {0: {0, 1}})
    registers: tuple[int, ...] = (0x0000_0042, 0x0000_0000)
    fail_program: bool = False  # fault injection: program_key reports UNSPECIFIED_FAILURE
    keys: dict[SlotKey, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    active: dict[tuple[int, int, bool, int], int] = field(default_factory=dict)

    @property
    def max_port_index(self) -> int:
        return max(self.streams) if self.streams else 0

    def port_info(self, port_index: int) -> IdePortInfo | None:
        if port_index not in self.streams:
            return None
        return IdePortInfo(
            self.dev_func, self.bus, self.segment, self.max_port_index, self.registers
        )

    def stream_configured(self, port_index: int, stream_id: int) -> bool:
        return stream_id in self.streams.get(port_index, set())

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
        if self.fail_program:
            return KpAckStatus.UNSPECIFIED_FAILURE
        self.keys[(port_index, stream_id, key_set, direction_tx, sub_stream)] = (key, ifv)
        return KpAckStatus.SUCCESS

    def key_set_go(
        self, port_index: int, stream_id: int, key_set: int, direction_tx: bool, sub_stream: int
    ) -> bool:
        if (port_index, stream_id, key_set, direction_tx, sub_stream) not in self.keys:
            return False
        self.active[(port_index, stream_id, direction_tx, sub_stream)] = key_set
        return True

    def key_set_stop(
        self, port_index: int, stream_id: int, key_set: int, direction_tx: bool, sub_stream: int
    ) -> None:
        self.keys.pop((port_index, stream_id, key_set, direction_tx, sub_stream), None)
        slot = (port_index, stream_id, direction_tx, sub_stream)
        if self.active.get(slot) == key_set:
            del self.active[slot]
