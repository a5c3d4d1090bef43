"""Requester against responder, in process, across an algorithm/version matrix."""

from __future__ import annotations

import pytest

from spdm.algorithms import Aead, BaseAsym, BaseHash, Dhe, MeasHash
from spdm.codes import (
    KEY_UPDATE_UPDATE_ALL_KEYS,
    KEY_UPDATE_UPDATE_KEY,
    MEAS_SUMMARY_ALL,
    MEAS_SUMMARY_TCB,
)
from spdm.hooks import RequesterHooks, ResponderHooks
from spdm.identity import DeviceIdentity
from spdm.requester import AlgorithmOffer
from tests.helpers.spdm_harness import identity_for, make_link

MATRIX = [
    # (key type, asym, hash, aead, dhe)
    ("ecdsa-p384", BaseAsym.ECDSA_P384, BaseHash.SHA_384, Aead.AES_256_GCM, Dhe.SECP384R1),
    ("ecdsa-p256", BaseAsym.ECDSA_P256, BaseHash.SHA_256, Aead.AES_128_GCM, Dhe.SECP256R1),
]


@pytest.mark.parametrize("version", [0x12, 0x13])
@pytest.mark.parametrize(("key_type", "asym", "hsh", "aead", "dhe"), MATRIX)
def test_full_flow(version: int, key_type: str, asym: int, hsh: int, aead: int,
                   dhe: int) -> None:
    ident = identity_for(key_type)
    link = make_link(ident, req={"versions": (version,), "algorithms": AlgorithmOffer(
        base_asym=asym, base_hash=hsh, aead=aead, dhe=dhe)})
    r = link.requester
    link.connect()
    a = r.algorithms
    assert r.version == version
    assert (a.base_asym, a.base_hash, a.aead, a.dhe) == (asym, hsh, aead, dhe)
    assert a.meas_hash == MeasHash.SHA_384
    summary = link.run(r.challenge(0, MEAS_SUMMARY_ALL))
    assert len(summary) == a.hash_size
    assert link.run(r.get_measurements(0, signed=False)) == 7
    blocks = link.run(r.get_measurements(0xFF, signed=True))
    assert [b.index for b in blocks] == [1, 2, 3, 4, 5, 0xFD, 0xFE]
    assert blocks[4].is_raw and blocks[4].value == b"vdev 0.1.0"
    assert blocks[6].is_raw and len(blocks[6].value) == 16  # device mode
    one = link.run(r.get_measurements(2, signed=True))
    assert one[0].value == blocks[1].value

    sid = link.session(meas_summary=MEAS_SUMMARY_TCB)
    assert sid in link.responder.sessions
    assert link.responder.sessions[sid].state.value == "established"
    link.run(r.heartbeat(sid))
    link.run(r.key_update(sid, KEY_UPDATE_UPDATE_KEY))
    link.run(r.key_update(sid, KEY_UPDATE_UPDATE_ALL_KEYS))
    link.run(r.heartbeat(sid))
    inner = link.run(r.get_measurements(0xFF, signed=True, session_id=sid))
    assert len(inner) == 7
    link.run(r.get_digests(session_id=sid))
    link.run(r.end_session(sid))
    assert sid not in link.responder.sessions


def test_version_11_flow(p256_identity: DeviceIdentity) -> None:
    link = make_link(p256_identity, req={"versions": (0x11,)})
    r = link.requester
    link.connect()
    assert r.version == 0x11
    link.run(r.challenge(0))
    link.run(r.get_measurements(0xFF, signed=True))
    sid = link.session()
    link.run(r.heartbeat(sid))
    link.run(r.end_session(sid))


def test_psk_session(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity)
    r = link.requester
    link.run(r.init_connection())
    sid = link.run(r.psk_exchange(b"hint"))
    link.run(r.heartbeat(sid))
    link.run(r.key_update(sid))
    link.run(r.end_session(sid))


def test_handshake_in_the_clear(p384_identity: DeviceIdentity) -> None:
    from spdm.codes import ReqCap, RspCap
    from spdm.requester import DEFAULT_REQ_CAPS
    from spdm.responder import DEFAULT_RSP_CAPS

    link = make_link(
        p384_identity,
        rsp={"capabilities": int(DEFAULT_RSP_CAPS | RspCap.HANDSHAKE_IN_THE_CLEAR)},
        req={"capabilities": int(DEFAULT_REQ_CAPS | ReqCap.HANDSHAKE_IN_THE_CLEAR)},
    )
    link.connect()
    sid = link.session()
    # FINISH went as a plaintext DOE type 1 object.
    assert link.log[-1][0] == 1 and link.log[-1][1][1] == 0xE5
    link.run(link.requester.heartbeat(sid))


def test_mac_only_session(p384_identity: DeviceIdentity) -> None:
    from spdm.codes import ReqCap
    from spdm.requester import DEFAULT_REQ_CAPS

    link = make_link(p384_identity,
                     req={"capabilities": int(DEFAULT_REQ_CAPS & ~ReqCap.ENCRYPT)})
    link.connect()
    sid = link.session()
    assert link.responder.sessions[sid].mac_only
    link.run(link.requester.heartbeat(sid))
    # The heartbeat request is visible in the clear inside the record.
    assert bytes([link.requester.version, 0xE8, 0, 0]) in link.log[-1][1]


def test_vendor_defined_dispatch(p384_identity: DeviceIdentity) -> None:
    from spdm.responder import VendorRequestContext

    seen: list[VendorRequestContext] = []

    def ide_km(payload: bytes, ctx: VendorRequestContext) -> bytes:
        seen.append(ctx)
        return payload[:1] + b"\x01" + payload[2:]

    link = make_link(p384_identity)
    link.responder.register_vendor_handler(3, b"\x01\x00", ide_km, protocol_id=0)
    link.connect()
    sid = link.session()
    out = link.run(link.requester.vendor_defined(3, b"\x01\x00", b"\x00\x00\x00\x00", sid))
    assert out == b"\x00\x01\x00\x00"
    assert seen[0].session_id == sid and seen[0].in_session
    out = link.run(link.requester.vendor_defined(3, b"\x01\x00", b"\x00\x00\x00\x00"))
    assert seen[1].session_id is None


def test_rsa3072_flow() -> None:
    ident = identity_for("rsa-3072")
    link = make_link(ident, req={"algorithms": AlgorithmOffer(
        base_asym=BaseAsym.RSAPSS_3072 | BaseAsym.RSASSA_3072, dhe=Dhe.FFDHE_3072)})
    link.connect()
    assert link.requester.algorithms.base_asym == BaseAsym.RSAPSS_3072
    link.run(link.requester.challenge())
    sid = link.session()
    link.run(link.requester.heartbeat(sid))


def test_evidence(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity)
    link.connect()
    link.run(link.requester.get_measurements())
    ev = link.requester.evidence()
    assert ev["version"] == 0x14 and 0 in ev["cert_chains"] and len(ev["measurements"]) == 7


def test_linux_cma_like_requester(p384_identity: DeviceIdentity) -> None:
    """Mimic Linux lib/spdm: CERT|CHAL only, no CHUNK, OpaqueDataFmt1 offered, whole chain in
    one GET_CERTIFICATE (length 0xFFFF); the kernel rejects ALGORITHMS whose OtherParamsSel
    differs from what it offered or that carries more AlgStructs than it sent."""
    from spdm.codes import ReqCap

    link = make_link(p384_identity, req={
        "capabilities": int(ReqCap.CERT | ReqCap.CHAL), "versions": (0x12,),
        "data_transfer_size": 0x1200, "max_spdm_msg_size": 0x1200,
        "algorithms": AlgorithmOffer(
            base_asym=BaseAsym.RSASSA_3072 | BaseAsym.ECDSA_P256 | BaseAsym.ECDSA_P384,
            base_hash=BaseHash.SHA_256 | BaseHash.SHA_384)})
    r = link.requester
    link.run(r.init_connection())
    assert r.algorithms.other_params == 0x2
    assert r.algorithms.dhe == 0 and r.algorithms.aead == 0
    link.run(r.get_digests())
    link.run(r.get_certificate(0, portion=0xFFFF))
    assert sum(1 for e in link.log if e[1][1] == 0x82) == 1
    link.run(r.challenge(0))


def test_psk_without_responder_context(p384_identity: DeviceIdentity) -> None:
    from spdm.codes import RspCap
    from spdm.responder import DEFAULT_RSP_CAPS

    caps = int((DEFAULT_RSP_CAPS & ~RspCap.PSK_WITH_CONTEXT) | RspCap.PSK)
    link = make_link(p384_identity, rsp={"capabilities": caps})
    link.run(link.requester.init_connection())
    sid = link.run(link.requester.psk_exchange(b"hint"))
    assert not any(e[1][1:2] == b"\xe7" for e in link.log if e[0] == 1)
    link.run(link.requester.heartbeat(sid))


@pytest.mark.parametrize("version", [0x12, 0x13])
def test_psk_versions_and_summary(p384_identity: DeviceIdentity, version: int) -> None:
    link = make_link(p384_identity, req={"versions": (version,)})
    link.run(link.requester.init_connection())
    sid = link.run(link.requester.psk_exchange(b"hint", MEAS_SUMMARY_ALL))
    link.run(link.requester.heartbeat(sid))
    link.run(link.requester.end_session(sid))


def test_heartbeat_unsupported_without_cap(p384_identity: DeviceIdentity) -> None:
    from spdm.codes import RspCap
    from spdm.errors import ErrorResponse
    from spdm.responder import DEFAULT_RSP_CAPS

    link = make_link(p384_identity, rsp={"capabilities": int(DEFAULT_RSP_CAPS & ~RspCap.HBEAT)})
    link.connect()
    sid = link.session()
    with pytest.raises(ErrorResponse) as exc:
        link.run(link.requester.heartbeat(sid))
    assert exc.value.code == 0x07


def test_multiple_sessions(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity)
    link.connect()
    a, b = link.session(), link.session()
    assert a != b and {a, b} <= set(link.responder.sessions)
    link.run(link.requester.heartbeat(b))
    link.run(link.requester.heartbeat(a))
    link.run(link.requester.end_session(a))
    link.run(link.requester.heartbeat(b))


def test_version_10_authentication(p256_identity: DeviceIdentity) -> None:
    link = make_link(p256_identity, req={"versions": (0x10,)})
    r = link.requester
    link.connect()
    assert r.version == 0x10
    link.run(r.challenge(0))
    blocks = link.run(r.get_measurements(0xFF, signed=True))
    assert len(blocks) == 7
    link.run(r.get_measurements(1, signed=False))


def test_heartbeat_period_enforced(p384_identity: DeviceIdentity) -> None:
    from spdm.errors import ErrorResponse

    clock = {"t": 0.0}
    link = make_link(p384_identity, rsp={"heartbeat_period": 5,
                                         "monotonic": lambda: clock["t"]})
    link.connect()
    sid = link.session()
    assert link.requester.sessions[sid].heartbeat_period == 5
    clock["t"] = 9.0
    link.run(link.requester.heartbeat(sid))
    clock["t"] = 18.5
    link.run(link.requester.heartbeat(sid))
    clock["t"] = 40.0  # more than 2 x HeartbeatPeriod of silence
    with pytest.raises(ErrorResponse) as exc:
        link.run(link.requester.heartbeat(sid))
    assert exc.value.code == 0x0B and sid not in link.responder.sessions


def test_slot_size_requested_13(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, req={"versions": (0x13,)})
    link.connect()
    resp = link.responder.handle(bytes([0x13, 0x82, 0, 1, 0, 0, 0, 0]))
    assert resp[1] == 0x02 and resp[4:6] == b"\x00\x00"
    assert int.from_bytes(resp[6:8], "little") == len(p384_identity.spdm_chain(0x2))


def test_transcript_resets_follow_libspdm(p384_identity: DeviceIdentity) -> None:
    """Interleavings where M1/M2 and L1/L2 must be reset identically on both sides."""
    link = make_link(p384_identity)
    r = link.requester
    link.connect()
    rsp = link.responder
    assert rsp.transcript.b and r.transcript.b == rsp.transcript.b
    link.run(r.get_measurements(1, signed=False))  # before CHALLENGE: drops B
    assert not rsp.transcript.b and not r.transcript.b
    assert r.transcript.m == rsp.transcript.m != b""
    link.run(r.get_digests())  # ends the L1/L2 run, starts a new B
    assert not rsp.transcript.m and not r.transcript.m
    link.run(r.challenge())  # M1 = VCA + B(GET_DIGESTS/DIGESTS) + C
    assert rsp.authenticated and r.authenticated
    link.run(r.get_digests())
    link.run(r.get_measurements(2, signed=False))  # after CHALLENGE: B survives
    assert rsp.transcript.b == r.transcript.b != b""
    link.run(r.challenge())
    link.run(r.get_measurements())


def test_session_observers(p384_identity: DeviceIdentity) -> None:
    events: list[tuple[str, int]] = []
    link = make_link(p384_identity, rsp_hooks=ResponderHooks(
        on_session_established=lambda sid: events.append(("up", sid)),
        on_session_end=lambda sid: events.append(("down", sid))))
    link.connect()
    a = link.session()
    b = link.run(link.requester.psk_exchange(b"hint"))
    link.run(link.requester.end_session(a))
    link.run(link.requester.get_version())  # drops b
    assert events == [("up", a), ("up", b), ("down", a), ("down", b)]


@pytest.mark.parametrize(
    ("key_type", "asym", "hsh", "aead", "dhe"),
    [
        ("ecdsa-p521", BaseAsym.ECDSA_P521, BaseHash.SHA_512, Aead.CHACHA20_POLY1305,
         Dhe.SECP521R1),
        ("ed25519", BaseAsym.EDDSA_25519, BaseHash.SHA_256, Aead.AES_128_GCM, Dhe.FFDHE_2048),
        ("ed448", BaseAsym.EDDSA_448, BaseHash.SHA_384, Aead.AES_256_GCM, Dhe.FFDHE_4096),
    ],
)
def test_other_algorithms(key_type: str, asym: int, hsh: int, aead: int, dhe: int) -> None:
    link = make_link(identity_for(key_type), req={"algorithms": AlgorithmOffer(
        base_asym=asym, base_hash=hsh, aead=aead, dhe=dhe)})
    link.connect()
    a = link.requester.algorithms
    assert (a.base_asym, a.base_hash, a.aead, a.dhe) == (asym, hsh, aead, dhe)
    link.run(link.requester.challenge())
    link.run(link.requester.get_measurements())
    sid = link.session()
    link.run(link.requester.key_update(sid))
    link.run(link.requester.heartbeat(sid))


def test_secret_sink_is_opt_in(p384_identity: DeviceIdentity) -> None:
    seen: dict[str, list[bytes]] = {"rsp": [], "req": []}
    link = make_link(p384_identity,
                     rsp_hooks=ResponderHooks(secret_sink=lambda k, v: seen["rsp"].append(v)),
                     req_hooks=RequesterHooks(secret_sink=lambda k, v: seen["req"].append(v)))
    link.connect()
    link.session()
    link.run(link.requester.psk_exchange(b"hint"))
    assert seen["rsp"] == seen["req"] and len(seen["rsp"]) == 2
    assert seen["rsp"][1] == b"p" * 32
