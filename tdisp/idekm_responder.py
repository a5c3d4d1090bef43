"""Device-side IDE_KM responder (PCIe 6.2 §6.33.3) over an `IdeRegisterTarget`.

`IdeKmResponder.handle(payload, session_id)` takes the VDM payload (ProtocolID 0x00
first) and returns the response payload, or raises `VdmRefused` where IDE_KM defines no
response (there is no IDE_KM error object):

* outside a secured session (IDE_KM keys travel only inside an SPDM session);
* from a second session while the session that first used IDE_KM is still open
  (tee-io-validator IdeKmTestCase 5.1: QUERY/KEY_PROG on session y are discarded
  while session x is open; 5.2: after x ends, y is served).  The SPDM layer must
  call `session_ended(id)` when a session terminates;
* a QUERY for a port that does not exist, malformed QUERY / K_SET_* objects, and a
  K_SET_GO for a key set that holds no key.

KEY_PROG is always answered with KP_ACK, its status chosen as §6.33.3 lists them:
INCORRECT_LENGTH (1) for any size other than 48 bytes, UNSUPPORTED_PORT_INDEX (2) for
a port beyond the target's ports, UNSUPPORTED_VALUE (3) for a Stream ID the port has not
configured, a sub-stream other than PR/NPR/CPL, reserved key_sub_stream bits, or an IFV
other than the initial value 1 (tee-io-validator KeyProg cases 2.4–2.6), and
UNSPECIFIED_FAILURE (4) when the target refuses.

The responder remembers which session programmed each key: `keys_ready(stream, session)`
is what TDISP LOCK_INTERFACE consults (§11.3.8: keys for all sub-streams of the default
stream must have been configured over the session the LOCK arrives on).  On session end
(§11.4.5) every key programmed over that session is stopped in the target, so those
streams go Insecure.  Key material is passed to the target and never logged or kept here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tdisp.errors import MalformedMessage, MalformedVdm, NoKeys, NoSession, OtherSession
from tdisp.ide_target import IdeRegisterTarget
from tdisp.idekm_messages import (
    INITIAL_IFV,
    KEY_PROG_HEADER_SIZE,
    KEY_PROG_SIZE,
    KSS_RESERVED_MASK,
    KeyProg,
    KeySlot,
    KGoStopAck,
    KpAck,
    KpAckStatus,
    KSetGo,
    KSetStop,
    ObjectId,
    Query,
    QueryResp,
    SubStream,
)
from tdisp.vendor_defined import ProtocolId

# (port, stream, key set, tx, sub-stream)
_Slot = tuple[int, int, int, bool, int]
ALL_SUB_STREAM_SLOTS: tuple[tuple[bool, int], ...] = tuple(
    (tx, int(s)) for tx in (False, True) for s in SubStream
)


@dataclass
class IdeKmPolicy:
    """Configurable IDE_KM behaviour."""

    # tee-io-validator KeyProg 2.5: an IFV other than the initial 1 is UNSUPPORTED_VALUE.
    require_initial_ifv: bool = True
    # tee-io-validator IdeKmTestCase 5.1: one IDE_KM session at a time.
    single_session: bool = True


@dataclass
class KeyRecord:
    session_id: int
    go: bool = False


@dataclass
class IdeKmResponder:
    target: IdeRegisterTarget
    policy: IdeKmPolicy = field(default_factory=IdeKmPolicy)
    owner_session: int | None = None
    records: dict[_Slot, KeyRecord] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # evidence; never contains key bytes
    # Called as observer(port, stream_id, reason) when a key set that was active (K_SET_GO)
    # is stopped, i.e. the stream loses its keys for a slot and goes Insecure (§6.33.4).
    # The dispatcher routes this to TDISP enforcement.
    stream_observers: list[Callable[[int, int, str], None]] = field(default_factory=list)

    # ---- entry points ---------------------------------------------------------

    def handle(self, payload: bytes, session_id: int | None) -> bytes:
        if len(payload) < 2 or payload[0] != ProtocolId.IDE_KM:
            raise MalformedVdm("not an IDE_KM object")
        if session_id is None:
            raise NoSession("IDE_KM outside a secured session")
        if self.policy.single_session:
            if self.owner_session is None:
                self.owner_session = session_id
            elif self.owner_session != session_id:
                raise OtherSession(f"IDE_KM in use by session 0x{self.owner_session:08x}",
                )
        object_id = payload[1]
        if object_id == ObjectId.QUERY:
            return self._query(payload)
        if object_id == ObjectId.KEY_PROG:
            return self._key_prog(payload, session_id)
        if object_id in (ObjectId.K_SET_GO, ObjectId.K_SET_STOP):
            return self._k_set(payload, session_id, go=object_id == ObjectId.K_SET_GO)
        raise MalformedVdm(f"IDE_KM object 0x{object_id:02x} is no request")

    def session_ended(self, session_id: int) -> None:
        """§11.4.5: keys configured over an ended session are invalid; streams go Insecure."""
        insecure: set[tuple[int, int]] = set()
        for slot, rec in list(self.records.items()):
            if rec.session_id == session_id:
                port, stream, key_set, tx, sub = slot
                self.target.key_set_stop(port, stream, key_set, tx, sub)
                del self.records[slot]
                if rec.go:
                    insecure.add((port, stream))
        if self.owner_session == session_id:
            self.owner_session = None
        self.log.append(f"session 0x{session_id:08x} ended")
        for port, stream in sorted(insecure):
            self._stream_insecure(port, stream, f"SPDM session 0x{session_id:08x} ended")

    def keys_ready(self, stream_id: int, session_id: int, require_go: bool = False) -> bool:
        """All six (direction x sub-stream) keys of `stream_id` programmed over `session_id`.

        One key set suffices per slot; with `require_go` that key set must also be active.
        """
        for tx, sub in ALL_SUB_STREAM_SLOTS:
            if not any(
                rec.session_id == session_id and (rec.go or not require_go)
                for (_port, stream, _ks, s_tx, s_sub), rec in self.records.items()
                if stream == stream_id and s_tx == tx and s_sub == sub
            ):
                return False
        return True

    # ---- objects --------------------------------------------------------------

    def _query(self, payload: bytes) -> bytes:
        try:
            query = Query.parse(payload)
        except MalformedMessage as exc:
            raise MalformedVdm(str(exc)) from exc
        info = self.target.port_info(query.port_index)
        if info is None:
            raise MalformedVdm(f"QUERY for unknown port {query.port_index}")
        self.log.append(f"QUERY port {query.port_index}")
        return QueryResp(
            query.port_index,
            info.dev_func,
            info.bus,
            info.segment,
            info.max_port_index,
            info.registers,
        ).build()

    def _key_prog(self, payload: bytes, session_id: int) -> bytes:
        # Echo whatever addressing fields arrived, even in a short object (KeyProg 2.2).
        head = payload[:KEY_PROG_HEADER_SIZE].ljust(KEY_PROG_HEADER_SIZE, b"\x00")
        slot = KeySlot(stream_id=head[4], key_sub_stream=head[6], port_index=head[7])
        status = self._key_prog_status(payload, slot, session_id)
        self.log.append(f"KEY_PROG {slot.describe()} -> {status.name}")
        return KpAck(slot, int(status)).build()

    def _key_prog_status(self, payload: bytes, slot: KeySlot, session_id: int) -> KpAckStatus:
        if len(payload) != KEY_PROG_SIZE:
            return KpAckStatus.INCORRECT_LENGTH
        msg = KeyProg.parse(payload)
        if self.target.port_info(slot.port_index) is None:
            return KpAckStatus.UNSUPPORTED_PORT_INDEX
        if (
            not self.target.stream_configured(slot.port_index, slot.stream_id)
            or slot.sub_stream > SubStream.CPL
            or slot.key_sub_stream & KSS_RESERVED_MASK
            or (self.policy.require_initial_ifv and msg.ifv != INITIAL_IFV)
        ):
            return KpAckStatus.UNSUPPORTED_VALUE
        status = self.target.program_key(
            slot.port_index,
            slot.stream_id,
            slot.key_set,
            slot.tx,
            slot.sub_stream,
            msg.key,
            msg.ifv,
        )
        if status == KpAckStatus.SUCCESS:
            key = (slot.port_index, slot.stream_id, slot.key_set, slot.tx, slot.sub_stream)
            # Re-programming an active key set keeps it active (the hardware slot still
            # points at it), so keep the go flag; the session is now the new one.
            prev = self.records.get(key)
            self.records[key] = KeyRecord(session_id, go=prev.go if prev else False)
        return KpAckStatus(status)

    def _k_set(self, payload: bytes, session_id: int, go: bool) -> bytes:
        try:
            slot = (KSetGo.parse(payload) if go else KSetStop.parse(payload)).slot
        except MalformedMessage as exc:
            raise MalformedVdm(str(exc)) from exc
        key = (slot.port_index, slot.stream_id, slot.key_set, slot.tx, slot.sub_stream)
        name = "K_SET_GO" if go else "K_SET_STOP"
        # K_GOSTOP_ACK has no status field (§6.33.3), so addressing errors get no ACK.
        if (
            self.target.port_info(slot.port_index) is None
            or not self.target.stream_configured(slot.port_index, slot.stream_id)
            or slot.sub_stream > SubStream.CPL
            or slot.key_sub_stream & KSS_RESERVED_MASK
        ):
            raise MalformedVdm(f"{name} for {slot.describe()}")
        if go:
            if not self.target.key_set_go(*key):
                raise NoKeys(f"{name} {slot.describe()}: no key")
            rec = self.records.get(key)
            if rec is not None:
                rec.go = True
            # A key set made active replaces the other key set of the same slot (§6.33.4).
            other = (key[0], key[1], key[2] ^ 1, key[3], key[4])
            if other in self.records:
                self.records[other].go = False
        else:
            self.target.key_set_stop(*key)
            rec = self.records.pop(key, None)
            if rec is not None and rec.go:
                self._stream_insecure(slot.port_index, slot.stream_id, f"{name} {slot.describe()}")
        self.log.append(f"{name} {slot.describe()} (session 0x{session_id:08x})")
        return KGoStopAck(slot).build()

    def _stream_insecure(self, port: int, stream_id: int, reason: str) -> None:
        for observer in self.stream_observers:
            observer(port, stream_id, reason)
