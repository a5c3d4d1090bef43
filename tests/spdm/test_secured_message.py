"""DSP0277 record protection over DOE."""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Callable

import pytest

from spdm.algorithms import Aead
from spdm.errors import ForeignPayload, RecordError
from spdm.identity import DeviceIdentity
from spdm.secured_message import (
    MCTP_TRANSPORT,
    RecordProtection,
    decode_record,
    encode_record,
)
from tests.helpers.spdm_harness import make_link


def _pair() -> tuple[RecordProtection, RecordProtection]:
    key, iv = bytes(range(32)), bytes(range(12))
    return RecordProtection(Aead.AES_256_GCM, key, iv), RecordProtection(Aead.AES_256_GCM, key, iv)


def test_layout_doe() -> None:
    tx, rx = _pair()
    rec = encode_record(tx, 0xFF000001, b"\x12\xe8\x00\x00")
    sid, length = struct.unpack_from("<IH", rec)
    assert sid == 0xFF000001
    # Length = AppLen(2) + message(4) + MAC(16); no sequence number or padding for DOE.
    assert length == 2 + 4 + 16 == len(rec) - 6
    assert decode_record(rx, 0xFF000001, rec) == b"\x12\xe8\x00\x00"


def test_nonce_is_iv_xor_le_sequence() -> None:
    tx, _ = _pair()
    n = tx.nonce(0x0102)
    assert n[0] == tx.iv[0] ^ 0x02 and n[1] == tx.iv[1] ^ 0x01 and n[2:] == tx.iv[2:]


def test_replay_rejected_and_sequence_advances() -> None:
    tx, rx = _pair()
    r0 = encode_record(tx, 1, b"a")
    r1 = encode_record(tx, 1, b"b")
    assert decode_record(rx, 1, r0) == b"a"
    with pytest.raises(RecordError):
        decode_record(rx, 1, r0)  # replay: decrypted with seq 1 -> MAC fails
    assert decode_record(rx, 1, r1) == b"b"


def test_wrong_session_and_tamper() -> None:
    tx, rx = _pair()
    rec = encode_record(tx, 1, b"hello")
    with pytest.raises(RecordError):
        decode_record(rx, 2, rec)
    bad = bytearray(rec)
    bad[-1] ^= 1
    with pytest.raises(RecordError):
        decode_record(rx, 1, bytes(bad))
    assert rx.seq == 0
    assert decode_record(rx, 1, rec) == b"hello"


def test_dword_padding_tolerated_but_not_garbage() -> None:
    tx, rx = _pair()
    rec = encode_record(tx, 1, b"abc")
    assert decode_record(rx, 1, rec + b"\x00\x00") == b"abc"
    tx2, rx2 = _pair()
    rec = encode_record(tx2, 1, b"abc")
    with pytest.raises(RecordError):
        decode_record(rx2, 1, rec + b"\x01")


def test_mac_only() -> None:
    tx, rx = _pair()
    rec = encode_record(tx, 7, b"clear", encrypt=False)
    assert b"clear" in rec and len(rec) == 6 + 5 + 16
    bad = rec.replace(b"clear", b"CLEAR")
    with pytest.raises(RecordError):
        decode_record(rx, 7, bad, encrypt=False)
    assert decode_record(rx, 7, rec, encrypt=False) == b"clear"


def test_mctp_binding_has_seq_and_padding() -> None:
    tx, rx = _pair()
    rec = encode_record(tx, 1, b"x", transport=MCTP_TRANSPORT, random=os.urandom)
    assert rec[4:6] == b"\x00\x00"
    assert decode_record(rx, 1, rec, transport=MCTP_TRANSPORT) == b"x"


def test_mctp_padding_comes_from_the_injected_random() -> None:
    """The codec draws no randomness itself: the same random source, the same record."""
    def counting() -> Callable[[int], bytes]:
        draws = iter(range(256))
        return lambda n: bytes(next(draws) for _ in range(n))

    records = []
    for _ in range(2):
        tx, _rx = _pair()
        records.append(encode_record(tx, 1, b"x", transport=MCTP_TRANSPORT, random=counting()))
    assert records[0] == records[1]
    tx, _rx = _pair()
    with pytest.raises(ValueError, match="pass random"):
        encode_record(tx, 1, b"x", transport=MCTP_TRANSPORT)


def test_mctp_binding_carries_the_mctp_type_inside_the_protected_data() -> None:
    """DSP0275 / libspdm: the decrypted application data is MCTP type 0x05 + SPDM."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    tx, rx = _pair()
    rec = encode_record(tx, 1, b"\x13\xe8\x00\x00", transport=MCTP_TRANSPORT, random=os.urandom)
    hsize = 4 + 2 + 2
    nonce = tx.iv  # sequence number 0: IV XOR 0
    plain = AESGCM(tx.key).decrypt(nonce, rec[hsize:], rec[:hsize])
    (app_len,) = struct.unpack_from("<H", plain)
    assert plain[2 : 2 + app_len] == b"\x05\x13\xe8\x00\x00"
    assert decode_record(rx, 1, rec, transport=MCTP_TRANSPORT) == b"\x13\xe8\x00\x00"


def test_mctp_record_without_the_inner_type_is_rejected() -> None:
    tx, rx = _pair()
    rec = encode_record(tx, 1, b"\x13\xe8\x00\x00")  # DOE binding: no 0x05, no seq field
    with pytest.raises(RecordError):
        decode_record(rx, 1, rec, transport=MCTP_TRANSPORT)


def test_mctp_record_of_another_message_type_is_foreign_not_undecryptable() -> None:
    tx, rx = _pair()
    raw_mctp = dataclasses.replace(MCTP_TRANSPORT, inner_header=b"")
    rec = encode_record(tx, 1, b"\x01\x80\x00\x02", transport=raw_mctp, random=os.urandom)
    with pytest.raises(ForeignPayload) as exc:
        decode_record(rx, 1, rec, transport=MCTP_TRANSPORT)
    assert exc.value.message_type == 0x01
    assert rx.seq == 1  # authenticated: the sequence number was consumed


def test_authenticated_non_spdm_record_keeps_the_session(p384_identity: DeviceIdentity) -> None:
    """An MCTP secured record that authenticates but carries another message type (PLDM,
    0x01) is not a decryption failure: the reply is an SPDM ERROR UnsupportedRequest
    inside the session, and the session goes on (DSP0277 protects any application
    data; DecryptError is for records that fail authentication)."""
    mctp = {"transport": MCTP_TRANSPORT}
    link = make_link(p384_identity, rsp=dict(mctp), req=dict(mctp))
    link.connect()
    sid = link.session()
    sess = link.requester.sessions[sid]
    raw_mctp = dataclasses.replace(MCTP_TRANSPORT, inner_header=b"")
    pldm = b"\x01\x80\x00\x02"  # MCTP type 1 (PLDM): a GetTID request
    record = encode_record(sess.req_prot, sid, pldm, transport=raw_mctp, random=os.urandom)
    kind, reply = link.responder.handle_doe(2, record)
    assert kind == 2
    assert decode_record(sess.rsp_prot, sid, reply, transport=MCTP_TRANSPORT) == bytes(
        [link.requester.version, 0x7F, 0x07, 0x00])
    assert sid in link.responder.sessions
    link.run(link.requester.heartbeat(sid))  # both directions still in step
