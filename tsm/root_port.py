"""The root-port end of the selective IDE stream, as the TSM programs it.

A platform TSM (AMD PSP, TDX module, ...) programs the root port's IDE keys itself while
it sends the device's over IDE_KM; PCIe 6.2 §6.33.3 has the key of each direction and
sub-stream (PR, NPR, CPL) shared by the two ends: what one port transmits the other
receives, so the device's RX key of a sub-stream is the root port's TX key and vice
versa.  `mirror_of` encodes that rule; the model programs both ends from one key.

Keys live here like in write-only key registers: nothing reads them back.  Evidence
(`snapshot`) shows slot states only; tests check the pairing with `holds_key`, a
constant-time comparison, so no code path ever hands key bytes out.

Stream state follows §6.33.4: Secure once every (direction x sub-stream) slot has an
active key set, Insecure otherwise.

An emulated platform may also have a real root port to program: `platform` (a
`PlatformRootPort`, e.g. vdev.vm.rootport_ide.QmpRootPortKeys for QEMU's
pcie-root-port with an IDE capability) hears every key operation, without the key
material, and reports its own view for the evidence.  Its failures to take keys fail
the operation; a failure while tearing down is recorded in the history instead.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tdisp.idekm_messages import KeySlot, SubStream

SLOT_EMPTY = "empty"
SLOT_PROGRAMMED = "programmed"  # key loaded, not active
SLOT_ACTIVE = "active"  # K_SET_GO done
SLOT_STOPPED = "stopped"  # K_SET_STOP / teardown: key invalidated


@dataclass(frozen=True, order=True)
class RpSlot:
    """One root-port key slot: direction, sub-stream, key set."""

    tx: bool
    sub_stream: int
    key_set: int

    def describe(self) -> str:
        return f"{'TX' if self.tx else 'RX'} {SubStream(self.sub_stream).name} K{self.key_set}"


def mirror_of(device_slot: KeySlot) -> RpSlot:
    """The root-port slot sharing a key with the device's slot: opposite direction."""
    return RpSlot(not device_slot.tx, device_slot.sub_stream, device_slot.key_set)


class PlatformRootPort(Protocol):
    """A root port outside the model that takes the platform's key operations."""

    def key_prog(self, stream_id: int, slot: RpSlot) -> None: ...

    def k_set_go(self, stream_id: int, slot: RpSlot) -> None: ...

    def k_set_stop(self, stream_id: int, key_set: int) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


@dataclass
class RootPortIde:
    """Key slots and state of the root port's end of one stream."""

    clock: Callable[[], float]
    stream_id: int | None = None
    platform: PlatformRootPort | None = None
    _keys: dict[RpSlot, tuple[bytes, bytes]] = field(default_factory=dict, repr=False)
    states: dict[RpSlot, str] = field(default_factory=dict)
    history: list[tuple[float, str]] = field(default_factory=list)

    def program(self, device_slot: KeySlot, key: bytes, ifv: bytes) -> RpSlot:
        slot = mirror_of(device_slot)
        if self.stream_id is None:
            self.stream_id = device_slot.stream_id
        elif self.stream_id != device_slot.stream_id:
            raise ValueError("root-port model holds one stream at a time")
        if self.platform is not None:
            self.platform.key_prog(device_slot.stream_id, slot)
        self._keys[slot] = (bytes(key), bytes(ifv))
        self.states[slot] = SLOT_PROGRAMMED
        return slot

    def go(self, device_slot: KeySlot) -> None:
        slot = mirror_of(device_slot)
        if self.states.get(slot) != SLOT_PROGRAMMED and self.states.get(slot) != SLOT_ACTIVE:
            raise ValueError(f"root port {slot.describe()}: no key to activate")
        if self.platform is not None:
            self.platform.k_set_go(device_slot.stream_id, slot)
        # Only one key set per direction/sub-stream is active (§6.33.3 K_SET_GO).
        for other, st in self.states.items():
            if (other.tx, other.sub_stream) == (slot.tx, slot.sub_stream) and st == SLOT_ACTIVE:
                self.states[other] = SLOT_PROGRAMMED
        before = self.secure
        self.states[slot] = SLOT_ACTIVE
        if self.secure and not before:
            self.history.append((self.clock(), f"stream {self.stream_id} Secure"))

    def stop_all(self, reason: str) -> None:
        """Invalidate every key (teardown, lost session, failed connect)."""
        if not self.states:
            return
        was_secure = self.secure
        live = sorted({s.key_set for s, st in self.states.items()
                       if st in (SLOT_PROGRAMMED, SLOT_ACTIVE)})
        self._keys.clear()
        for slot in self.states:
            self.states[slot] = SLOT_STOPPED
        if was_secure:
            self.history.append((self.clock(), f"stream {self.stream_id} Insecure: {reason}"))
        for key_set in live:
            self._stop_platform(key_set, quiet=True)

    def _stop_platform(self, key_set: int, *, quiet: bool) -> None:
        if self.platform is None or self.stream_id is None:
            return
        try:
            self.platform.k_set_stop(self.stream_id, key_set)
        except Exception as exc:
            if not quiet:
                raise
            # Teardown goes on (the port may be gone with its VM); say what happened.
            self.history.append((self.clock(), f"root port K_SET_STOP key set {key_set} "
                                               f"failed: {exc}"))

    def retire_key_set(self, key_set: int) -> None:
        """Invalidate one key set after the stream moved to the other (key refresh)."""
        for slot in list(self.states):
            if slot.key_set == key_set:
                if self.states[slot] == SLOT_ACTIVE:
                    raise ValueError(f"root port {slot.describe()} is still active")
                self._keys.pop(slot, None)
                self.states[slot] = SLOT_STOPPED
        self._stop_platform(key_set, quiet=False)

    def clear(self) -> None:
        self._keys.clear()
        self.states.clear()
        self.stream_id = None

    @property
    def secure(self) -> bool:
        active = {(s.tx, s.sub_stream) for s, st in self.states.items() if st == SLOT_ACTIVE}
        return len(active) == 2 * len(SubStream)

    def holds_key(self, slot: RpSlot, key: bytes) -> bool:
        held = self._keys.get(slot)
        return held is not None and hmac.compare_digest(held[0], key)

    def snapshot(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "state": "Secure" if self.secure else "Insecure",
            "slots": [
                {"direction": "TX" if s.tx else "RX", "sub_stream": SubStream(s.sub_stream).name,
                 "key_set": s.key_set, "state": st}
                for s, st in sorted(self.states.items())
            ],
            "history": [{"t": t, "event": e} for t, e in self.history],
            **({"platform": self.platform.snapshot()} if self.platform is not None else {}),
        }
