"""SPDM 1.4 (DSP0274 1.4): the post-quantum algorithm fields, KEM key exchange, FINISH
OpaqueData, 32-bit ChunkSeqNo, and a requester and responder from this repo agreeing on
every suite we implement.

The byte layouts below are written from DSP0274 1.4's message tables (§10.4
NEGOTIATE_ALGORITHMS / ALGORITHMS, §10.15 FINISH, CHUNK_GET), not from our encoder; the
ML-DSA signature is checked the way §15 describes it, with `cryptography` directly.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.x509.oid import ExtensionOID

from spdm import crypto
from spdm.algorithms import AlgType, BaseAsym, Dhe, Kem, PqcAsym
from spdm.errors import ErrorResponse, PeerError
from spdm.identity import CertSlots, DeviceIdentity
from spdm.requester import AlgorithmOffer, Outgoing
from spdm.responder import AlgorithmPriorities, Responder, ResponderConfig
from tests.helpers.spdm_harness import Link, identity_for, make_link

V14 = 0x14
# (identity key type, KEM or DHE the responder prefers): every PQC suite, and the mixed
# ones the spec allows (a classical identity with a KEM, an ML-DSA identity with ECDHE).
SUITES = [
    ("mldsa-44", Kem.ML_KEM_768), ("mldsa-44", Kem.ML_KEM_1024),
    ("mldsa-65", Kem.ML_KEM_768), ("mldsa-65", Kem.ML_KEM_1024),
    ("mldsa-87", Kem.ML_KEM_768), ("mldsa-87", Kem.ML_KEM_1024),
    ("ecdsa-p256", Kem.ML_KEM_768), ("ecdsa-p384", Kem.ML_KEM_1024),
    ("mldsa-87", Dhe.SECP384R1), ("mldsa-44", Dhe.SECP256R1),
]
SIG_BYTES = {"mldsa-44": 2420, "mldsa-65": 3309, "mldsa-87": 4627,  # FIPS 204 Table 2
             "ecdsa-p256": 64, "ecdsa-p384": 96}
EK_CT_BYTES = {Kem.ML_KEM_768: (1184, 1088), Kem.ML_KEM_1024: (1568, 1568),  # FIPS 203 T. 3
               Dhe.SECP384R1: (96, 96), Dhe.SECP256R1: (64, 64)}


def _suite_link(key_type: str, exchange: int, **kw: object) -> Link:
    kem = exchange in (Kem.ML_KEM_768, Kem.ML_KEM_1024)
    prio = AlgorithmPriorities(kem=(exchange,) if kem else (),
                               dhe=() if kem else (exchange,), pqc_first=kem)
    return make_link(identity_for(key_type), rsp={"algorithms": prio, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("key_type", "exchange"), SUITES,
                         ids=[f"{k}-{getattr(e, 'name', e)}" for k, e in SUITES])
def test_every_suite_interoperates(key_type: str, exchange: int) -> None:
    link = _suite_link(key_type, exchange)
    r = link.requester
    link.connect()
    a = r.algorithms
    assert r.version == V14
    assert a.asym_name == {"mldsa-44": "ML_DSA_44", "mldsa-65": "ML_DSA_65",
                           "mldsa-87": "ML_DSA_87", "ecdsa-p256": "ECDSA_P256",
                           "ecdsa-p384": "ECDSA_P384"}[key_type]
    assert (a.kem or a.dhe) == exchange and not (a.kem and a.dhe)
    assert not (a.base_asym and a.pqc_asym)
    blocks = link.run(r.get_measurements(0xFF, signed=True))
    assert blocks
    sid = link.session()
    # KEY_EXCHANGE / KEY_EXCHANGE_RSP ExchangeData and the signature have the sizes of
    # FIPS 203 / 204 (or the DHE group): DSP0274 1.4 KEY_EXCHANGE table, offset 40.
    k = r.sessions[sid].transcript.k
    ek, ct = EK_CT_BYTES[exchange]
    opaque_len = struct.unpack_from("<H", k, 40 + ek)[0]
    request_len = 40 + ek + 2 + opaque_len
    rsp = bytes(k[request_len:])
    assert rsp[1] == 0x64
    assert len(rsp) == 40 + ct + 2 + struct.unpack_from("<H", rsp, 40 + ct)[0] \
        + SIG_BYTES[key_type] + a.hash_size
    link.run(r.heartbeat(sid))
    link.run(r.key_update(sid))
    link.run(r.end_session(sid))


def test_negotiate_algorithms_14_from_the_table() -> None:
    """DSP0274 1.4 §10.4: PqcAsymAlgo at offset 16 of NEGOTIATE_ALGORITHMS, PqcAsymSel at
    offset 20 of ALGORITHMS, KEMAlg in an AlgStruct of type 7, ReqPqcAsymAlg type 6."""
    rsp = Responder(ResponderConfig(slots=CertSlots({0: identity_for("mldsa-65")}),
                                    algorithms=AlgorithmPriorities(pqc_first=True)))
    rsp.handle(bytes([0x10, 0x84, 0, 0]))
    caps = (1 << 1) | (1 << 6) | (1 << 7) | (1 << 9) | (1 << 17)  # CERT ENCRYPT MAC KEY_EX CHUNK
    rsp.handle(struct.pack("<BBBBBBHIII", V14, 0xE1, 0, 0, 0, 12, 0, caps, 4096, 4096))
    structs = [(AlgType.DHE, Dhe.SECP384R1), (AlgType.AEAD, 0x2), (AlgType.KEY_SCHEDULE, 1),
               (AlgType.KEM, Kem.ML_KEM_768 | Kem.ML_KEM_1024)]
    req = struct.pack("<BBBBHBBIII8sBBBB", V14, 0xE3, len(structs), 0, 32 + 4 * len(structs),
                      1, 0x2, BaseAsym.ECDSA_P384, 0x2,
                      PqcAsym.ML_DSA_44 | PqcAsym.ML_DSA_65 | PqcAsym.ML_DSA_87,
                      bytes(8), 0, 0, 0, 0)
    req += b"".join(struct.pack("<BBH", t, 0x20, v) for t, v in structs)
    out = rsp.handle(req)
    assert out[:2] == bytes([V14, 0x63]) and out[2] == len(structs)
    assert struct.unpack_from("<H", out, 4)[0] == len(out) == 36 + 4 * len(structs)
    assert struct.unpack_from("<I", out, 12)[0] == 0  # BaseAsymSel: the slot is ML-DSA
    assert struct.unpack_from("<I", out, 20)[0] == PqcAsym.ML_DSA_65  # PqcAsymSel
    assert out[24:31] == bytes(7)
    sel = {out[36 + 4 * i]: struct.unpack_from("<H", out, 38 + 4 * i)[0]
           for i in range(len(structs))}
    # pqc_first: the KEM wins over the DHE group the requester also offered.
    assert sel[AlgType.KEM] == Kem.ML_KEM_1024 and sel[AlgType.DHE] == 0


def test_pqc_fields_are_reserved_before_14() -> None:
    """A 1.3 connection ignores what sits in the bytes 1.4 calls PqcAsymAlgo and rejects
    AlgType 7, which 1.3 does not define."""
    ident = identity_for("ecdsa-p384")
    link = make_link(ident, req={"versions": (0x13,)})
    link.run(link.requester.init_connection())
    assert link.requester.algorithms.base_asym == BaseAsym.ECDSA_P384
    assert not link.requester.algorithms.pqc_asym
    rsp = make_link(ident).responder
    rsp.handle(bytes([0x10, 0x84, 0, 0]))
    rsp.handle(struct.pack("<BBBBBBHIII", 0x13, 0xE1, 0, 0, 0, 12, 0, 0x2C2, 4096, 4096))
    req = struct.pack("<BBBBHBBIII8sBBBB", 0x13, 0xE3, 1, 0, 36, 1, 0x2, BaseAsym.ECDSA_P384,
                      0x2, 0xFFFF, bytes(8), 0, 0, 0, 0) + struct.pack("<BBH", 7, 0x20, 2)
    out = rsp.handle(req)
    assert out[1] == 0x7F and out[2] == 0x01  # InvalidRequest


def test_mldsa_signature_is_prefix_hash_with_context() -> None:
    """DSP0274 1.4 §15: the ML-DSA signature in KEY_EXCHANGE_RSP is over the 100-byte
    signing prefix || Hash(TH), with the context string as ML-DSA's ctx."""
    link = _suite_link("mldsa-65", Kem.ML_KEM_768)
    link.connect()
    sid = link.session()
    k = bytes(link.requester.sessions[sid].transcript.k)
    a = link.requester.algorithms
    sig_end = len(k) - a.hash_size
    sig = k[sig_end - 3309 : sig_end]
    sess = link.requester.sessions[sid]
    th = bytes(link.requester.transcript.vca) + sess.transcript.cert_chain_hash \
        + k[: sig_end - 3309]
    ctx = b"responder-key_exchange_rsp signing"
    prefix = b"dmtf-spdm-v1.4.*" * 4 + bytes(100 - 64 - len(ctx)) + ctx
    leaf = link.requester.leaf_keys[0]
    assert isinstance(leaf, mldsa.MLDSA65PublicKey)
    leaf.verify(sig, prefix + hashlib.sha384(th).digest(), ctx)
    with pytest.raises(Exception):  # noqa: B017 - InvalidSignature: ctx is part of it
        leaf.verify(sig, prefix + hashlib.sha384(th).digest(), b"")


def _finish_link(**rsp: object) -> tuple[Link, int]:
    link = _suite_link("mldsa-44", Kem.ML_KEM_768, **rsp)
    link.connect()
    return link, 0


def test_finish_rsp_carries_opaque_length() -> None:
    link, _ = _finish_link()
    sid = link.session()
    f = bytes(link.requester.sessions[sid].transcript.f)
    h = link.requester.algorithms.hash_size
    # FINISH: header, OpaqueDataLength=0, RequesterVerifyData; FINISH_RSP: header,
    # OpaqueDataLength=0 (no ResponderVerifyData inside a session).
    assert f[1] == 0xE5 and f[4:6] == b"\x00\x00" and len(f) == 6 + h + 6
    assert f[6 + h + 1] == 0x65 and f[6 + h + 4 : 6 + h + 6] == b"\x00\x00"


def _finish_with_opaque(opaque: bytes) -> bytes:
    """Drive KEY_EXCHANGE, then send our own FINISH with `opaque` (correct MAC)."""
    link, _ = _finish_link()
    r = link.requester
    op = r.key_exchange()
    assert op.request is not None
    op.feed(link.transport(op.request))  # KEY_EXCHANGE_RSP; FINISH is pending
    sid = next(iter(r.sessions))
    sess = r.sessions[sid]
    sess.req_prot.seq = 0  # the pending FINISH was sealed but never sent
    hdr = bytes([V14, 0xE5, 0, 0]) + struct.pack("<H", len(opaque)) + opaque
    fin = hdr + sess.hmac_th(sess.req_finished_key, sess.transcript.th() + hdr)
    kind, rec = link.responder.handle_doe(2, sess.seal(fin, from_requester=True))
    return sess.open(rec, from_requester=False) if kind == 2 else rec


def test_finish_opaque_data_general_format() -> None:
    # One DMTF element with 2 bytes of data, padded to 4 (general opaque data, Fmt1).
    good = bytes([1, 0, 0, 0, 0, 0]) + struct.pack("<H", 2) + b"\xAA\xBB" + bytes(2)
    assert _finish_with_opaque(good)[1] == 0x65
    bad = bytes([2, 0, 0, 0, 0, 0]) + struct.pack("<H", 2) + b"\xAA\xBB" + bytes(2)
    reply = _finish_with_opaque(bad)  # TotalElements says 2, one is there
    assert reply[1] == 0x7F and reply[2] == 0x01


def test_kem_encapsulation_key_checked() -> None:
    """A KEY_EXCHANGE whose ML-KEM encapsulation key fails FIPS 203's input check
    (coefficients not below q) is InvalidRequest, and no session is created."""
    link = _suite_link("mldsa-44", Kem.ML_KEM_768)
    link.connect()

    def corrupt(out: Outgoing) -> Outgoing:
        if out.data[1] == 0xE4:
            ek = b"\xff" * 1184
            return Outgoing(out.data[:40] + ek + out.data[40 + 1184 :])
        return out

    link.tamper = corrupt
    with pytest.raises(ErrorResponse) as exc:
        link.session()
    assert exc.value.code == 0x01
    assert not link.responder.sessions


def test_requester_refuses_both_families() -> None:
    """ALGORITHMS selecting BaseAsymSel and PqcAsymSel together breaks §10.4's one-of rule."""
    link = make_link(identity_for("ecdsa-p384"))

    r = link.requester
    op = r.init_connection()
    while not op.done:
        assert op.request is not None
        reply = link.transport(op.request)
        if reply[1] == 0x63:
            reply = reply[:20] + struct.pack("<I", PqcAsym.ML_DSA_44) + reply[24:]
            with pytest.raises(PeerError, match="both BaseAsymSel and PqcAsymSel"):
                op.feed(reply)
            return
        op.feed(reply)
    raise AssertionError("no ALGORITHMS")


def test_requester_without_pqc_offer_keeps_classical() -> None:
    """An ML-DSA-only device and a requester that offers no PQC: nothing to sign with."""
    link = make_link(identity_for("mldsa-44"), req={"algorithms": AlgorithmOffer(
        pqc_asym=0, kem=0)})
    with pytest.raises(PeerError, match="no signature algorithm"):
        link.run(link.requester.init_connection())


def test_chunk_get_14_sequence_number_is_u32() -> None:
    """DSP0274 1.4 CHUNK_GET: ChunkSeqNo is 4 bytes; CHUNK_RESPONSE's u32 ChunkSeqNo
    takes the place of 1.3's u16 + reserved."""
    link = _suite_link("mldsa-87", Kem.ML_KEM_1024)
    link.requester.config.data_transfer_size = 1024
    link.connect()
    link.run(link.requester.get_certificate(0, portion=0xFFFF))  # 22.8 KB in one response
    gets = [q for _, q, _ in link.log if q[1] == 0x86]
    responses = [r for _, q, r in link.log if q[1] == 0x86]
    assert gets and all(len(q) == 8 for q in gets)
    seqs = [struct.unpack_from("<I", q, 4)[0] for q in gets]
    assert seqs[:2] == [0, 1] and max(seqs) >= 1
    first = responses[0]
    assert struct.unpack_from("<I", first, 4)[0] == 0
    size, large = struct.unpack_from("<II", first, 8)
    assert len(first) == 16 + size and size == 1024 - 16
    assert all(len(r) <= 1024 for r in responses)
    assert large > 1024


@pytest.mark.parametrize("key_type", ["mldsa-44", "mldsa-65", "mldsa-87"])
def test_mldsa_identity_chain(key_type: str) -> None:
    """The generated chain is ML-DSA end to end and the leaf carries the CMA SAN."""
    ident: DeviceIdentity = identity_for(key_type)
    for cert in ident.certs:
        assert cert.signature_algorithm_oid.dotted_string.startswith("2.16.840.1.101.3.4.3.")
    san = ident.leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert any(n.type_id.dotted_string == "2.23.147" for n in san.value)
    assert crypto.asym_capabilities_of_key(ident.key) >> 32


def test_large_response_through_dword_padded_doe_objects() -> None:
    """Over DOE every reply is padded to a DWORD (PCIe 6.x §6.30.1): ERROR LargeResponse
    (4-byte header + 1-byte Handle) arrives as 8 bytes and the chunks with padding; the
    requester still reassembles the 4.6 KB signed MEASUREMENTS of an ML-DSA-87 device."""
    link = _suite_link("mldsa-87", Kem.ML_KEM_1024)

    def padded(out: Outgoing) -> bytes:
        reply = link.transport(out)
        return reply + bytes(-len(reply) % 4)

    r = link.requester
    r.run(r.init_connection(), padded)
    r.run(r.get_digests(), padded)
    r.run(r.get_certificate(0), padded)
    assert r.run(r.get_measurements(0xFF, signed=True), padded)
    assert any(q[1] == 0x86 for _, q, _ in link.log)  # it did go through CHUNK_GET
    assert r.run(r.key_exchange(), padded)
