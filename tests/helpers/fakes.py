"""Fakes for the device-model tests: an IrqSink, a DmaAccess, config accessors."""

from __future__ import annotations

from dataclasses import dataclass, field

from vdev.endpoint.function import TeeIoEndpoint
from vdev.pci.device_api import RegionIndex


@dataclass
class FakeIrqSink:
    triggered: list[tuple[int, int]] = field(default_factory=list)

    def trigger(self, index: int, vector: int) -> None:
        self.triggered.append((index, vector))


@dataclass
class FakeDma:
    memory: dict[int, bytes] = field(default_factory=dict)

    def read(self, addr: int, length: int) -> bytes:
        return bytes(length)

    def write(self, addr: int, data: bytes) -> None:
        self.memory[addr] = data


class Cfg:
    """Config accessors the way the guest (through QEMU) issues them."""

    def __init__(self, ep: TeeIoEndpoint) -> None:
        self.ep = ep

    def read(self, offset: int, size: int = 4) -> int:
        return int.from_bytes(self.ep.region_read(RegionIndex.CONFIG, offset, size), "little")

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.ep.region_write(RegionIndex.CONFIG, offset, value.to_bytes(size, "little"))
