"""One SPDM secure session: keys per direction, sequence numbers, transcript (DSP0274
KEY_EXCHANGE .. END_SESSION, DSP0277)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spdm import crypto
from spdm.algorithms import NegotiatedAlgorithms
from spdm.errors import RecordError
from spdm.key_schedule import DirectionKeys, KeySchedule
from spdm.secured_message import (
    DOE_TRANSPORT,
    RecordProtection,
    TransportParams,
    decode_record,
    encode_record,
)
from spdm.state import SessionState
from spdm.transcript import SessionTranscript


@dataclass(repr=False)
class Session:
    session_id: int
    version: int
    algorithms: NegotiatedAlgorithms
    transcript: SessionTranscript
    key_schedule: KeySchedule
    psk: bool = False
    mac_only: bool = False
    handshake_in_clear: bool = False
    mut_auth: int = 0
    req_slot_id: int = 0
    heartbeat_period: int = 0
    secured_version: int = 0x1100
    state: SessionState = SessionState.HANDSHAKING
    transport: TransportParams = field(default_factory=lambda: DOE_TRANSPORT)
    # Draws the records' random padding where the transport binding pads (MCTP).
    random: Callable[[int], bytes] | None = None
    req_keys: DirectionKeys | None = None
    rsp_keys: DirectionKeys | None = None
    req_prot: RecordProtection | None = None  # requester -> responder direction
    # The request direction's protection before the last KEY_UPDATE, kept until a record
    # authenticates under the new key: the KEY_UPDATE_ACK can be lost, and the Requester
    # then retries under the old key (DSP0274 KEY_UPDATE; libspdm keeps a backup key the
    # same way).
    req_prot_retired: RecordProtection | None = None
    rsp_prot: RecordProtection | None = None  # responder -> requester direction
    req_finished_key: bytes = b""
    rsp_finished_key: bytes = b""
    last_key_update_tag: tuple[int, int] | None = None  # (operation, tag)
    # Mutual authentication: the requester's leaf key (responder side) and the state of
    # the encapsulated GET_DIGESTS/GET_CERTIFICATE flow (DSP0274 1.2 GET_ENCAPSULATED_REQUEST).
    req_public_key: Any = None
    encap: Any = None
    # Responder: monotonic time of the last message on this session (HeartbeatPeriod).
    last_activity: float | None = None

    def __repr__(self) -> str:
        return f"Session(id=0x{self.session_id:08x}, state={self.state.value})"

    @property
    def hash_alg(self) -> int:
        return self.algorithms.base_hash

    def hmac_th(self, key: bytes, transcript: bytes) -> bytes:
        """VerifyData = HMAC(finished_key, Hash(transcript)) (libspdm #1136)."""
        return crypto.hmac(self.hash_alg, key, crypto.digest(self.hash_alg, transcript))

    def _install(self, req: DirectionKeys, rsp: DirectionKeys) -> None:
        self.req_keys, self.rsp_keys = req, rsp
        aead = self.algorithms.aead
        self.req_prot = RecordProtection(aead, req.key, req.iv,
                                         little_endian=self.transport.seq_little_endian)
        self.rsp_prot = RecordProtection(aead, rsp.key, rsp.iv,
                                         little_endian=self.transport.seq_little_endian)

    def install_handshake_keys(self, shared_secret: bytes, th1_hash: bytes) -> None:
        self.key_schedule.set_handshake_secret(shared_secret, psk=self.psk)
        req, rsp = self.key_schedule.handshake_keys(th1_hash)
        self._install(req, rsp)
        self.req_finished_key = self.key_schedule.finished_key(req.secret)
        self.rsp_finished_key = self.key_schedule.finished_key(rsp.secret)

    def install_data_keys(self, th2_hash: bytes) -> None:
        req, rsp = self.key_schedule.data_keys(th2_hash)
        self._install(req, rsp)
        self.state = SessionState.ESTABLISHED

    def update_req_keys(self) -> None:
        assert self.req_keys is not None and self.req_prot is not None
        old = self.req_prot
        self.req_prot_retired = RecordProtection(old.aead, old.key, old.iv, old.seq,
                                                 little_endian=old.little_endian)
        self.req_keys = self.key_schedule.updated(self.req_keys)
        self.req_prot.rekey(self.req_keys.key, self.req_keys.iv)

    def update_rsp_keys(self) -> None:
        assert self.rsp_keys is not None and self.rsp_prot is not None
        self.rsp_keys = self.key_schedule.updated(self.rsp_keys)
        self.rsp_prot.rekey(self.rsp_keys.key, self.rsp_keys.iv)

    # Records --------------------------------------------------------------------------------

    def seal(self, message: bytes, *, from_requester: bool) -> bytes:
        prot = self.req_prot if from_requester else self.rsp_prot
        if prot is None:
            raise RecordError("session has no keys yet")
        return encode_record(prot, self.session_id, message, encrypt=not self.mac_only,
                             transport=self.transport, random=self.random)

    def open(self, record: bytes, *, from_requester: bool) -> bytes:
        prot = self.req_prot if from_requester else self.rsp_prot
        if prot is None:
            raise RecordError("session has no keys yet")
        try:
            message = decode_record(prot, self.session_id, record,
                                    encrypt=not self.mac_only, transport=self.transport)
        except RecordError:
            retired = self.req_prot_retired if from_requester else None
            if retired is None:
                raise
            # A retry under the key before KEY_UPDATE; if that fails too, the record is
            # bad under either key.
            try:
                return decode_record(retired, self.session_id, record,
                                     encrypt=not self.mac_only, transport=self.transport)
            except RecordError:
                pass
            raise
        if from_requester:
            self.req_prot_retired = None  # the new key is in use: the old one is gone
        return message
