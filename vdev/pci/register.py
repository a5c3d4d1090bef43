"""Registers with access masks, and a register file that serves byte-granular accesses.

Every PCI register we model is a `Register`: a reset value plus masks saying
which bits software may write (RW), which it clears by writing 1 (RW1C), and
which survive a function-level reset (sticky, PCIe r6.0 §7.4 "RWS"/"RW1CS").
Everything else is read-only: writes to RO bits are silently ignored, which is
what config space requires (QEMU forwards BAR sizing and ROM BAR writes to us,
PCIe r6.0 §7.5.1.2.1).

Registers whose value lives in a model rather than in storage (the DOE
mailbox, IDE stream state) supply `on_read`; registers whose writes have side
effects (FLR, DOE Control GO/ABORT) supply `on_write`, which receives the raw
written value and the byte-enable mask.  Hooks run after *all* registers
touched by one access have been updated, so a multi-register write that
triggers a reset is not half-undone by the tail of the same write.

`RegisterFile` maps a flat address range (4 KiB config space, a BAR) onto
registers and accepts byte/word/dword (or any-length) accesses at any
alignment; bytes not covered by a register read as 0 and ignore writes
(reserved space, PCIe r6.0 §7.2.2 "RsvdP"/"RsvdZ" read as 0 in our model).

Read shadow: the file keeps an image of what every byte reads as, for the
bytes whose register has no `on_read` (storage registers and unmapped bytes).
It is written through, never refreshed: `Register.value` is a property whose
setter updates the image of the file the register belongs to, and storage
registers change only through it (writes, W1C, FLR and every model update
alike), so the image cannot go stale.  A read whose bytes are all shadowed
is one slice of the image; a read that touches a model-backed register (DOE,
IDE stream state, counters: live state, possibly with side effects) always
calls the model, so nothing live is ever answered from the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

WriteHook = Callable[[int, int], None]
"""Called as ``hook(value, byte_enable_mask)`` after a write touched the register."""

ReadHook = Callable[[], int]
"""Returns the live value of a model-backed register."""


def _width_mask(size: int) -> int:
    return (1 << (8 * size)) - 1


@dataclass(eq=False)
class Register:
    """One register of 1, 2, 4 or 8 bytes at an absolute offset in its file."""

    name: str
    offset: int
    size: int
    reset: int = 0
    rw: int = 0
    w1c: int = 0
    sticky: int = 0
    on_write: WriteHook | None = None
    on_read: ReadHook | None = None

    def __post_init__(self) -> None:
        if self.size not in (1, 2, 4, 8):
            raise ValueError(f"register {self.name}: size {self.size} not 1/2/4/8")
        full = _width_mask(self.size)
        for label, mask in (("reset", self.reset), ("rw", self.rw), ("w1c", self.w1c)):
            if mask & ~full:
                raise ValueError(f"register {self.name}: {label} {mask:#x} wider than register")
        if self.rw & self.w1c:
            raise ValueError(f"register {self.name}: bits both RW and RW1C")
        self.mask = full
        self._image: bytearray | None = None  # the read shadow of the file holding us
        self._value = self.reset

    @property
    def value(self) -> int:
        """The stored value (what a read returns unless `on_read` supplies it)."""
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        self._value = value
        if self._image is not None:
            self._image[self.offset : self.offset + self.size] = (
                (value & self.mask).to_bytes(self.size, "little"))

    @property
    def end(self) -> int:
        return self.offset + self.size

    def read(self) -> int:
        if self.on_read is not None:
            return self.on_read() & self.mask
        return self._value

    def store(self, data: int, byte_enable: int) -> None:
        """Apply a write to storage according to the masks (hooks not called)."""
        rw = self.rw & byte_enable
        w1c = self.w1c & byte_enable
        new = (self._value & ~rw) | (data & rw)
        new &= ~(data & w1c)
        self.value = new & self.mask

    def write(self, data: int, byte_enable: int | None = None) -> None:
        """Write through masks, then call the hook (single-register convenience)."""
        be = self.mask if byte_enable is None else byte_enable
        self.store(data, be)
        if self.on_write is not None:
            self.on_write(data & be, be)

    def reset_value(self, keep_sticky: bool = True) -> None:
        """Return to the reset value, preserving sticky bits if asked (FLR)."""
        if keep_sticky:
            self.value = (self.reset & ~self.sticky) | (self._value & self.sticky)
        else:
            self.value = self.reset


class RegisterFile:
    """A flat address space of `size` bytes populated with non-overlapping registers."""

    def __init__(self, size: int, name: str = "") -> None:
        self.size = size
        self.name = name
        self._by_byte: list[Register | None] = [None] * size
        self._registers: list[Register] = []
        # Read shadow (module docstring): the image, and per offset the number of
        # model-backed bytes before it, so a range [a, b) is shadowed exactly when
        # _live_before[a] == _live_before[b].
        self._image = bytearray(size)
        self._live_before = [0] * (size + 1)

    def add(self, reg: Register) -> Register:
        if reg.offset < 0 or reg.end > self.size:
            raise ValueError(f"{self.name}: register {reg.name} at {reg.offset:#x} out of range")
        for i in range(reg.offset, reg.end):
            other = self._by_byte[i]
            if other is not None:
                raise ValueError(
                    f"{self.name}: register {reg.name} at {reg.offset:#x} overlaps "
                    f"{other.name} at {other.offset:#x}"
                )
        if reg._image is not None:
            raise ValueError(f"{self.name}: register {reg.name} already belongs to a file")
        for i in range(reg.offset, reg.end):
            self._by_byte[i] = reg
        self._registers.append(reg)
        if reg.on_read is None:
            reg._image = self._image
            reg.value = reg.value  # its bytes in the image
        else:
            live = self._live_before
            for i in range(reg.offset + 1, self.size + 1):
                live[i] += min(i, reg.end) - reg.offset
        return reg

    def add_all(self, regs: Iterable[Register]) -> None:
        for reg in regs:
            self.add(reg)

    @property
    def registers(self) -> tuple[Register, ...]:
        return tuple(self._registers)

    def register_at(self, offset: int) -> Register | None:
        return self._by_byte[offset]

    def find(self, name: str) -> Register:
        for reg in self._registers:
            if reg.name == name:
                return reg
        raise KeyError(name)

    def _check(self, offset: int, count: int) -> None:
        if count < 0 or offset < 0 or offset + count > self.size:
            raise ValueError(f"{self.name}: access {offset:#x}+{count} outside {self.size:#x}")

    def read(self, offset: int, count: int) -> bytes:
        end = offset + count
        if offset >= 0 and count > 0 and end <= self.size:
            live = self._live_before
            if live[offset] == live[end]:
                return bytes(self._image[offset:end])  # storage only: the shadow
        else:
            self._check(offset, count)
            return b""
        reg = self._by_byte[offset]
        if reg is not None and reg.offset == offset and reg.size == count:
            # Fast path: exactly one whole register (most CPU accesses).
            on_read = reg.on_read
            value = reg._value if on_read is None else on_read() & reg.mask
            return value.to_bytes(count, "little")
        if count <= 8:
            return self._read_small(offset, count)
        out = bytearray(count)
        end = offset + count
        pos = offset
        while pos < end:
            reg = self._by_byte[pos]
            if reg is None:
                pos += 1
                continue
            raw = reg.read().to_bytes(reg.size, "little")
            stop = min(end, reg.end)
            out[pos - offset : stop - offset] = raw[pos - reg.offset : stop - reg.offset]
            pos = stop
        return bytes(out)

    def _read_small(self, offset: int, count: int) -> bytes:
        """An access of at most 8 bytes assembled as an integer (no bytearray slicing)."""
        by_byte = self._by_byte
        value = 0
        end = offset + count
        pos = offset
        while pos < end:
            reg = by_byte[pos]
            if reg is None:
                pos += 1
                continue
            stop = min(end, reg.offset + reg.size)
            part = (reg.read() >> (8 * (pos - reg.offset))) & ((1 << (8 * (stop - pos))) - 1)
            value |= part << (8 * (pos - offset))
            pos = stop
        return value.to_bytes(count, "little")

    def write(self, offset: int, data: bytes) -> None:
        count = len(data)
        if offset < 0 or offset + count > self.size:
            self._check(offset, count)
        reg = self._by_byte[offset] if count else None
        if reg is not None and reg.offset == offset and reg.size == count:
            # Fast path: exactly one whole register (same effect as the loop below;
            # a register without writable bits keeps its value).
            value = int.from_bytes(data, "little")
            be = reg.mask
            if reg.rw or reg.w1c:
                reg.store(value, be)
            if reg.on_write is not None:
                reg.on_write(value, be)
            return
        end = offset + len(data)
        pos = offset
        hooks: list[tuple[WriteHook, int, int]] = []
        while pos < end:
            reg = self._by_byte[pos]
            if reg is None:
                pos += 1
                continue
            stop = min(end, reg.end)
            shift = 8 * (pos - reg.offset)
            width = 8 * (stop - pos)
            value = int.from_bytes(data[pos - offset : stop - offset], "little") << shift
            be = ((1 << width) - 1) << shift
            reg.store(value, be)
            if reg.on_write is not None:
                hooks.append((reg.on_write, value, be))
            pos = stop
        for hook, value, be in hooks:
            hook(value, be)

    def read_int(self, offset: int, size: int) -> int:
        return int.from_bytes(self.read(offset, size), "little")

    def write_int(self, offset: int, size: int, value: int) -> None:
        self.write(offset, (value & _width_mask(size)).to_bytes(size, "little"))

    def reset(self, keep_sticky: bool = True) -> None:
        for reg in self._registers:
            reg.reset_value(keep_sticky)
