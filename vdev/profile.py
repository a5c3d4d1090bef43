"""Device profile: the knobs that shape the emulated endpoint.

Every field has a documented default, so `DeviceProfile()` is a working
device.  A profile file is TOML with the same flat keys as the dataclass
fields, e.g.::

    vendor_id = 0x1DED        # TOML accepts hex integers
    device_id = 0x7E10
    msix_vectors = 16
    ide_selective_streams = 2

Unknown keys and bad values are rejected with `ProfileError`, whose message
names the key and the reason.

IDs: 0x1DED / 0x7E10 are *emulator placeholders*.  PCI-SIG has no range
reserved for experiments; these values were picked to be recognisably ours
and were not checked against the PCI-SIG member list (no network here), so
anyone shipping this outside a test bed must override them with IDs they
own.  They are not 0xFFFF (no device) or 0x0000, which Linux treats as
absent, and not a well-known vendor such as Red Hat's 0x1B36 that QEMU uses.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLACEHOLDER_VENDOR_ID = 0x1DED
PLACEHOLDER_DEVICE_ID = 0x7E10

MIN_BAR0_SIZE = 0x4000
MSIX_TABLE_OFFSET = 0x1000  # BAR0 layout, see vdev.device_regs


class ProfileError(ValueError):
    """A profile key is unknown or its value is invalid."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"profile key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _msix_layout_end(vectors: int) -> int:
    table_end = MSIX_TABLE_OFFSET + 16 * vectors
    pba_offset = (table_end + 0xFFF) & ~0xFFF
    return pba_offset + ((vectors + 63) // 64) * 8


@dataclass(frozen=True)
class DeviceProfile:
    vendor_id: int = PLACEHOLDER_VENDOR_ID
    """PCI Vendor ID (placeholder, see module docstring)."""
    device_id: int = PLACEHOLDER_DEVICE_ID
    """PCI Device ID (placeholder)."""
    subsystem_vendor_id: int = PLACEHOLDER_VENDOR_ID
    subsystem_id: int = 0x0001
    class_code: int = 0x120000
    """24-bit class code; 0x120000 = Processing accelerator (PCI Code and ID Assignment §1.19)."""
    revision: int = 0x01
    interrupt_pin: int = 0
    """0 = no INTx (QEMU then never sets up INTx); 1..4 = INTA#..INTD#."""
    bar0_size: int = 0x10000
    """BAR0 (64-bit MMIO) size in bytes: power of two, >= 16 KiB and big enough for MSI-X."""
    msix_vectors: int = 8
    """MSI-X table size, 1..2048."""
    doe_max_object_dw: int = 1 << 18
    """Largest DOE object in DW (header included), 3..2^18; Linux uses up to 2^18."""
    doe_interrupt_vector: int = 0
    """MSI-X vector the DOE capability reports as its Interrupt Message Number."""
    ide_selective_streams: int = 1
    ide_address_associations: int = 1
    ide_link_streams: int = 0
    tee_io: bool = True
    """DEVCAP bit 30 TEE-IO Supported."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = bool if f.type in ("bool", bool) else int
            if type(value) is not expected:
                raise ProfileError(f.name, f"expected {expected.__name__}, got {value!r}")
        self._check_range("vendor_id", 0x0001, 0xFFFE)
        self._check_range("device_id", 0x0000, 0xFFFF)
        self._check_range("subsystem_vendor_id", 0x0000, 0xFFFF)
        self._check_range("subsystem_id", 0x0000, 0xFFFF)
        self._check_range("class_code", 0, 0xFFFFFF)
        self._check_range("revision", 0, 0xFF)
        self._check_range("interrupt_pin", 0, 4)
        self._check_range("msix_vectors", 1, 2048)
        self._check_range("doe_max_object_dw", 3, 1 << 18)
        self._check_range("doe_interrupt_vector", 0, self.msix_vectors - 1)
        self._check_range("ide_selective_streams", 1, 256)
        self._check_range("ide_address_associations", 0, 15)
        self._check_range("ide_link_streams", 0, 8)
        size = self.bar0_size
        if size & (size - 1) or size < MIN_BAR0_SIZE:
            raise ProfileError(
                "bar0_size", f"{size:#x} is not a power of two >= {MIN_BAR0_SIZE:#x}"
            )
        if size > 1 << 32:
            raise ProfileError("bar0_size", f"{size:#x} larger than 4 GiB is not supported")
        if _msix_layout_end(self.msix_vectors) > size:
            raise ProfileError(
                "bar0_size", f"{size:#x} too small for {self.msix_vectors} MSI-X vectors"
            )

    def _check_range(self, key: str, low: int, high: int) -> None:
        value = getattr(self, key)
        if not low <= value <= high:
            raise ProfileError(key, f"{value:#x} not in {low:#x}..{high:#x}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeviceProfile:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ProfileError(key, "unknown key")
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | Path) -> DeviceProfile:
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ProfileError("<file>", f"{path}: {exc}") from exc
        return cls.from_mapping(data)

    @classmethod
    def from_toml_string(cls, text: str) -> DeviceProfile:
        return cls.from_mapping(tomllib.loads(text))
