"""IDE extended capability, ID 0x30 (PCIe r6.0 §7.9.26), with a selective-stream model.

Layout (offsets from the capability; docs/linux-pci-tsm.md §8, drivers/pci/ide.c):

  +0x00  extended capability header
  +0x04  IDE Capability   Link b0, Selective b1, IDE_KM b6, Algorithms b12:8
                          (0 = AES-GCM-256 with 96-bit MAC), Link TCs b15:13,
                          Selective streams - 1 b23:16, TEE-Limited Stream b24
  +0x08  IDE Control      (Flow-Through enable b2: unsupported, RO 0)
  +0x0C  Link IDE blocks, 8 bytes each: Link Control, Link Status
  then Selective IDE Stream block i at 0x0C + nr_link*8 + i*(20 + 12*nr_assoc):
    +0x00 SEL_CAP   address association blocks b3:0
    +0x04 SEL_CTL   EN b0, ..., ALG b18:14, TC b21:19, DEFAULT b22,
                    TEE_LIMITED b23, Stream ID b31:24
    +0x08 SEL_STS   state b3:0 (0 Insecure, 2 Secure), RO
    +0x0C RID assoc 1   RID limit b23:8
    +0x10 RID assoc 2   valid b0, RID base b23:8, segment base b31:24
    +0x14 + 12*k    address association block k: ADDR1 (valid b0, base
                    low b19:8, limit low b31:20), ADDR2 limit upper, ADDR3 base upper

The kernel writes the reserved Stream ID 255 into SEL_CTL/LINK_CTL b31:24
of every non-enabled stream at boot; those bits are RW.

Stream state (PCIe r6.2 §6.33 IDE stream states, as SEL_STS shows them): a
selective stream is SECURE exactly when SEL_CTL.EN is 1 and, for all six
(direction, sub-stream) slots, a key set has been made active by K_SET_GO and
that key set's key for the slot is programmed.  The IDE_KM responder (another
module) drives `program_key`, `go`, `stop`; this module only keeps the truth.
Disabling the stream (EN 1 -> 0), K_SET_STOP of an active key set, and
reset drop the stream out of SECURE; disable and reset also invalidate keys.
It is FAIL_INSECURE (1000b), until software clears EN, after being enabled with
the V bit of its RID association clear (§7.9.26.5.2 requires that transition)
or after the key set in use was replaced while enabled (the partner still has
the old key, so the next TLP fails its integrity check).

Key operations are announced to `key_observers` before they take effect, so a
rule checker (vdev.pci.ide_rules) sees the state they change.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from vdev.pci.capability import ExtCapability
from vdev.pci.register import Register

EXT_CAP_ID_IDE = 0x30
IDE_CAP_VERSION = 1

IDE_CAP_LINK = 1 << 0
IDE_CAP_SELECTIVE = 1 << 1
IDE_CAP_IDE_KM = 1 << 6
IDE_CAP_ALG_SHIFT = 8  # 0 = AES-GCM-256-96b
IDE_CAP_LINK_TC_NUM_SHIFT = 13
IDE_CAP_SEL_NUM_SHIFT = 16
IDE_CAP_TEE_LIMITED = 1 << 24

IDE_CAP_REG = 0x04
IDE_CTL_REG = 0x08
IDE_LINK_BLOCK_0 = 0x0C
IDE_LINK_BLOCK_SIZE = 8
IDE_SEL_BLOCK_FIXED = 20
IDE_ADDR_BLOCK_SIZE = 12

SEL_CAP = 0x00
SEL_CTL = 0x04
SEL_STS = 0x08
SEL_RID_1 = 0x0C
SEL_RID_2 = 0x10
SEL_ADDR_1 = 0x14

CTL_EN = 1 << 0
CTL_ALG = 0x1F << 14
CTL_TC = 0x7 << 19
CTL_DEFAULT = 1 << 22
CTL_TEE_LIMITED = 1 << 23
CTL_ID = 0xFF << 24
LINK_CTL_RW = CTL_EN | CTL_ALG | CTL_TC | CTL_ID
# Aggregation, PCRC, CFG_EN and partial header encryption are not advertised: RO 0.
SEL_CTL_RW = CTL_EN | CTL_ALG | CTL_TC | CTL_DEFAULT | CTL_TEE_LIMITED | CTL_ID

RID_1_RW = 0xFFFF << 8
RID_2_RW = 0x1 | (0xFFFF << 8) | (0xFF << 24)
ADDR_1_RW = 0x1 | (0xFFF << 8) | (0xFFF << 20)

MAX_SELECTIVE_STREAMS = 256
MAX_LINK_STREAMS = 8
MAX_ADDRESS_ASSOCIATIONS = 15


class IdeStreamState(enum.IntEnum):
    """SEL_STS bits 3:0 (PCIe r6.2 §7.9.26.5.3, Linux PCI_IDE_SEL_STS_STATE)."""

    INSECURE = 0
    SECURE = 2
    FAIL_INSECURE = 8


class KeyDirection(enum.IntEnum):
    """IDE_KM key_sub_stream bit 1."""

    RX = 0
    TX = 1


class SubStream(enum.IntEnum):
    """IDE_KM key_sub_stream bits 7:4."""

    PR = 0
    NPR = 1
    CPL = 2


SLOTS: tuple[tuple[KeyDirection, SubStream], ...] = tuple(
    (d, s) for d in KeyDirection for s in SubStream
)
"""The six key slots a stream needs: {RX, TX} x {PR, NPR, CPL}."""

KEY_SETS = (0, 1)


@dataclass(frozen=True)
class KeyMaterial:
    key: bytes
    ifv: bytes


StateObserver = Callable[["SelectiveStream", IdeStreamState, IdeStreamState], None]
"""Called as ``observer(stream, old_state, new_state)`` whenever SEL_STS changes."""

ControlObserver = Callable[["SelectiveStream", int, int], None]
"""Called as ``observer(stream, old_sel_ctl, new_sel_ctl)`` after every SEL_CTL write
(before the state observers hear about a resulting state change)."""

KeyObserver = Callable[["SelectiveStream", str, int, "KeyDirection", "SubStream"], None]
"""Called as ``observer(stream, op, key_set, direction, sub_stream)`` before a key
operation (op "key_prog", "k_set_go" or "k_set_stop") takes effect."""


class SelectiveStream:
    """One Selective IDE Stream register block and its key state."""

    def __init__(
        self,
        index: int,
        nr_assoc: int,
        observers: list[StateObserver],
        control_observers: list[ControlObserver] | None = None,
        key_observers: list[KeyObserver] | None = None,
    ) -> None:
        self.index = index
        self.nr_assoc = nr_assoc
        self._observers = observers
        self._control_observers = control_observers if control_observers is not None else []
        self._key_observers = key_observers if key_observers is not None else []
        self._last_control = 0
        self._failed = False
        self.offset = -1
        self.ctl: Register | None = None
        self.rid1: Register | None = None
        self.rid2: Register | None = None
        self._keys: dict[tuple[int, KeyDirection, SubStream], KeyMaterial] = {}
        self._active: dict[tuple[KeyDirection, SubStream], int] = {}
        self._was_enabled = False
        self._last_state = IdeStreamState.INSECURE

    @staticmethod
    def block_size(nr_assoc: int) -> int:
        return IDE_SEL_BLOCK_FIXED + IDE_ADDR_BLOCK_SIZE * nr_assoc

    # ---- registers ----------------------------------------------------

    def registers(self, base: int) -> list[Register]:
        self.offset = base
        self.ctl = Register(
            f"IDE_SEL{self.index}_CTL",
            base + SEL_CTL,
            4,
            rw=SEL_CTL_RW,
            on_write=self._ctl_written,
        )
        self.rid1 = Register(f"IDE_SEL{self.index}_RID1", base + SEL_RID_1, 4, rw=RID_1_RW)
        self.rid2 = Register(f"IDE_SEL{self.index}_RID2", base + SEL_RID_2, 4, rw=RID_2_RW)
        regs = [
            Register(f"IDE_SEL{self.index}_CAP", base + SEL_CAP, 4, reset=self.nr_assoc),
            self.ctl,
            Register(
                f"IDE_SEL{self.index}_STS", base + SEL_STS, 4, on_read=lambda: int(self.state)
            ),
            self.rid1,
            self.rid2,
        ]
        for k in range(self.nr_assoc):
            addr = base + SEL_ADDR_1 + IDE_ADDR_BLOCK_SIZE * k
            name = f"IDE_SEL{self.index}_ADDR{k}"
            regs += [
                Register(f"{name}_1", addr, 4, rw=ADDR_1_RW),
                Register(f"{name}_2", addr + 4, 4, rw=0xFFFF_FFFF),
                Register(f"{name}_3", addr + 8, 4, rw=0xFFFF_FFFF),
            ]
        return regs

    @property
    def control(self) -> int:
        return 0 if self.ctl is None else self.ctl.value

    @property
    def enabled(self) -> bool:
        return bool(self.control & CTL_EN)

    @property
    def stream_id(self) -> int:
        return (self.control & CTL_ID) >> 24

    @property
    def rid_valid(self) -> bool:
        return self.rid2 is not None and bool(self.rid2.value & 0x1)

    @property
    def rid_range(self) -> tuple[int, int]:
        """RID association (base, limit)."""
        base = (self.rid2.value >> 8) & 0xFFFF if self.rid2 is not None else 0
        limit = (self.rid1.value >> 8) & 0xFFFF if self.rid1 is not None else 0
        return base, limit

    def _ctl_written(self, _value: int, _be: int) -> None:
        old, self._last_control = self._last_control, self.control
        for observer in self._control_observers:
            observer(self, old, self._last_control)
        enabled = self.enabled
        if self._was_enabled and not enabled:
            self._drop_keys()  # disabling a stream invalidates its keys
            self._failed = False
        elif enabled and not self._was_enabled and not self.rid_valid:
            self._failed = True  # §7.9.26.5.2: enabled with V clear -> Fail_Insecure
        self._was_enabled = enabled
        self._notify()

    def _announce(self, op: str, key_set: int, direction: KeyDirection,
                  sub_stream: SubStream) -> None:
        for observer in self._key_observers:
            observer(self, op, key_set, direction, sub_stream)

    # ---- key state (driven by IDE_KM) -----------------------------------

    def program_key(
        self,
        key_set: int,
        direction: KeyDirection,
        sub_stream: SubStream,
        key: bytes,
        ifv: bytes = b"",
    ) -> None:
        """KEY_PROG: store the key for one slot of `key_set`."""
        _check_key_set(key_set)
        direction, sub_stream = KeyDirection(direction), SubStream(sub_stream)
        self._announce("key_prog", key_set, direction, sub_stream)
        if self.enabled and self._active.get((direction, sub_stream)) == key_set:
            self._failed = True  # the key in use changed under the partner's feet
        self._keys[(key_set, direction, sub_stream)] = KeyMaterial(bytes(key), bytes(ifv))
        self._notify()

    def key(self, key_set: int, direction: KeyDirection, sub_stream: SubStream) -> KeyMaterial:
        return self._keys[(key_set, direction, sub_stream)]

    def keys_programmed(self, key_set: int) -> bool:
        """All six slots of `key_set` hold a key."""
        return all((key_set, d, s) in self._keys for d, s in SLOTS)

    def go(self, key_set: int, direction: KeyDirection, sub_stream: SubStream) -> bool:
        """K_SET_GO for one slot.  False (and no change) if that slot has no key."""
        _check_key_set(key_set)
        slot = (KeyDirection(direction), SubStream(sub_stream))
        self._announce("k_set_go", key_set, *slot)
        if (key_set, *slot) not in self._keys:
            return False
        self._active[slot] = key_set
        self._notify()
        return True

    def stop(self, key_set: int, direction: KeyDirection, sub_stream: SubStream) -> None:
        """K_SET_STOP for one slot: forget that key; if it was active, the slot stops."""
        _check_key_set(key_set)
        slot = (KeyDirection(direction), SubStream(sub_stream))
        self._announce("k_set_stop", key_set, *slot)
        self._keys.pop((key_set, *slot), None)
        if self._active.get(slot) == key_set:
            del self._active[slot]
        self._notify()

    def active_key_set(self, direction: KeyDirection, sub_stream: SubStream) -> int | None:
        return self._active.get((direction, sub_stream))

    def missing_slots(self) -> list[tuple[KeyDirection, SubStream]]:
        """Slots without an active key set that holds a key."""
        return [slot for slot in SLOTS
                if self._active.get(slot) is None
                or (self._active[slot], *slot) not in self._keys]

    @property
    def state(self) -> IdeStreamState:
        if not self.enabled:
            return IdeStreamState.INSECURE
        if self._failed:
            return IdeStreamState.FAIL_INSECURE
        return IdeStreamState.INSECURE if self.missing_slots() else IdeStreamState.SECURE

    def _drop_keys(self) -> None:
        self._keys.clear()
        self._active.clear()

    def _notify(self) -> None:
        new = self.state
        old, self._last_state = self._last_state, new
        if new is not old:
            for observer in self._observers:
                observer(self, old, new)

    def reset(self) -> None:
        """After the registers were reset (FLR): keys gone, stream INSECURE."""
        self._drop_keys()
        self._failed = False
        self._was_enabled = self.enabled
        self._last_control = self.control
        self._notify()


def _check_key_set(key_set: int) -> None:
    if key_set not in KEY_SETS:
        raise ValueError(f"IDE key set {key_set} not 0 or 1")


class IdeCap(ExtCapability):
    cap_id = EXT_CAP_ID_IDE
    version = IDE_CAP_VERSION
    name = "IDE"

    def __init__(
        self,
        selective_streams: int = 1,
        address_associations: int = 1,
        link_streams: int = 0,
        tee_limited: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= selective_streams <= MAX_SELECTIVE_STREAMS:
            raise ValueError(f"selective streams {selective_streams} not in 1..256")
        if not 0 <= address_associations <= MAX_ADDRESS_ASSOCIATIONS:
            raise ValueError(f"address associations {address_associations} not in 0..15")
        if not 0 <= link_streams <= MAX_LINK_STREAMS:
            raise ValueError(f"link streams {link_streams} not in 0..8")
        self.nr_link = link_streams
        self.nr_assoc = address_associations
        self.tee_limited = tee_limited
        self.observers: list[StateObserver] = []
        self.control_observers: list[ControlObserver] = []
        self.key_observers: list[KeyObserver] = []
        self.streams = tuple(
            SelectiveStream(i, address_associations, self.observers, self.control_observers,
                            self.key_observers)
            for i in range(selective_streams)
        )

    def stream(self, index: int) -> SelectiveStream:
        return self.streams[index]

    def stream_by_id(self, stream_id: int) -> SelectiveStream | None:
        """The selective stream whose SEL_CTL Stream ID is `stream_id` (IDE_KM addresses by ID)."""
        for stream in self.streams:
            if stream.stream_id == stream_id:
                return stream
        return None

    @property
    def capability_value(self) -> int:
        value = IDE_CAP_SELECTIVE | IDE_CAP_IDE_KM
        value |= (len(self.streams) - 1) << IDE_CAP_SEL_NUM_SHIFT
        if self.nr_link:
            value |= IDE_CAP_LINK | ((self.nr_link - 1) << IDE_CAP_LINK_TC_NUM_SHIFT)
        if self.tee_limited:
            value |= IDE_CAP_TEE_LIMITED
        return value

    def selective_block_offset(self, index: int) -> int:
        """Offset of selective block `index` from the capability start (Linux ide.c)."""
        return (
            IDE_LINK_BLOCK_0
            + self.nr_link * IDE_LINK_BLOCK_SIZE
            + index * SelectiveStream.block_size(self.nr_assoc)
        )

    @property
    def size(self) -> int:
        return self.selective_block_offset(len(self.streams))

    def body_registers(self, base: int) -> list[Register]:
        regs = [
            Register("IDE_CAP", base + IDE_CAP_REG, 4, reset=self.capability_value),
            Register("IDE_CTL", base + IDE_CTL_REG, 4),
        ]
        for i in range(self.nr_link):
            link = base + IDE_LINK_BLOCK_0 + IDE_LINK_BLOCK_SIZE * i
            regs.append(Register(f"IDE_LINK{i}_CTL", link, 4, rw=LINK_CTL_RW))
            regs.append(Register(f"IDE_LINK{i}_STS", link + 4, 4))
        for i, stream in enumerate(self.streams):
            regs += stream.registers(base + self.selective_block_offset(i))
        return regs

    def flr(self) -> None:
        for stream in self.streams:
            stream.reset()
