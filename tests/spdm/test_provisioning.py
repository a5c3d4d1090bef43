"""Slots, key pairs, GET_CSR / SET_CERTIFICATE, the measurement extension log and
endpoint information, driven end to end with our requester (spdm.provisioning,
spdm.rsp_provisioning, spdm.req_provisioning)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from spdm.codes import V12, V13, CertModel, ErrorCode, KeyPairAsym, KeyUsage, RspCap
from spdm.errors import ErrorResponse
from spdm.identity import CertSlots, DeviceIdentity, generate_identity
from spdm.provisioning import (
    KeyPair,
    MemoryCertificateStore,
    issue_from_csr,
    requester_info,
)
from spdm.req_provisioning import KeyPairInfoResult
from spdm.responder import DEFAULT_RSP_CAPS
from tests.helpers.spdm_harness import Link, identity_for, make_link

PROVISIONING_CAPS = int(DEFAULT_RSP_CAPS | RspCap.SET_CERT | RspCap.CSR | RspCap.MEL
                        | RspCap.EP_INFO_SIG | RspCap.GET_KEY_PAIR_INFO
                        | RspCap.MULTI_KEY_NEG)
EP_INFO = bytes([1, 0, 0, 0, 7, 3, 2, 0xED, 0x1D, 1, 2, 0x10, 0x7E])
MEL = bytes(range(256)) * 3


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> DeviceIdentity:
    """A provisioning CA of the requester's side (root + intermediate with keys)."""
    return generate_identity()


def link(ident: DeviceIdentity, *, version: int = V13, multi_key: bool = False,
         slots: dict[int, DeviceIdentity] | None = None, store: Any = None,
         extra_anchors: tuple[x509.Certificate, ...] = (), **rsp: Any) -> Link:
    anchors = [ident.root, *extra_anchors, *(s.root for s in (slots or {}).values())]
    lk = make_link(ident, rsp={
        "capabilities": PROVISIONING_CAPS, "versions": tuple(v for v in (V12, V13)
                                                             if v <= version),
        "certificate_store": store if store is not None else MemoryCertificateStore(),
        "mel": lambda: MEL, "endpoint_info": EP_INFO,
        **({"slots": CertSlots(slots)} if slots else {}), **rsp,
    }, req={"trust_anchors": anchors, "multi_key": multi_key})
    lk.run(lk.requester.init_connection())
    return lk


def refused(lk: Link, op: Any) -> tuple[int, int]:
    """(ERROR code, SPDMVersion of the ERROR) of an operation the responder refuses."""
    with pytest.raises(ErrorResponse) as info:
        lk.run(op)
    last = lk.log[-1][2]
    return info.value.code, last[0]


# ---- capabilities follow provisioning --------------------------------------------------------


def test_flags_need_their_provisioning(p384_identity: DeviceIdentity) -> None:
    bare = make_link(p384_identity, rsp={"capabilities": PROVISIONING_CAPS})
    caps = bare.responder.capabilities
    for flag in (RspCap.SET_CERT, RspCap.CSR, RspCap.MEL, RspCap.EP_INFO_SIG,
                 RspCap.MULTI_KEY_NEG):
        assert not caps & flag, flag
    assert caps & RspCap.GET_KEY_PAIR_INFO  # one key pair is enough
    full = link(p384_identity, slots={0: p384_identity, 1: identity_for("ecdsa-p384",
                                                                       common_name="s1")})
    for flag in (RspCap.SET_CERT, RspCap.CSR, RspCap.MEL, RspCap.EP_INFO_SIG,
                 RspCap.MULTI_KEY_NEG, RspCap.GET_KEY_PAIR_INFO):
        assert full.requester.conn.rsp_caps & flag, flag


def test_key_pair_flags_are_not_sent_in_1_4(p384_identity: DeviceIdentity) -> None:
    lk = make_link(p384_identity, rsp={"capabilities": PROVISIONING_CAPS})
    lk.run(lk.requester.init_connection())
    assert lk.requester.version == 0x14
    assert not lk.requester.conn.rsp_caps & (RspCap.GET_KEY_PAIR_INFO | RspCap.MULTI_KEY_NEG)


# ---- slots and key pairs -------------------------------------------------------------------


def two_keys() -> dict[int, DeviceIdentity]:
    return {0: identity_for("ecdsa-p384"), 3: identity_for("ecdsa-p384", common_name="s3")}


def test_key_pair_info_names_each_key() -> None:
    slots = two_keys()
    lk = link(slots[0], slots=slots, multi_key=True)
    info = lk.run(lk.requester.get_key_pair_info(2))
    assert isinstance(info, KeyPairInfoResult)
    assert (info.total_key_pairs, info.key_pair_id, info.assoc_cert_slot_mask) == (2, 2, 0x08)
    assert info.current_asym_algo == info.asym_algo_capabilities == KeyPairAsym.ECC384
    assert info.key_usage_capabilities == info.current_key_usage == 0x0F
    assert info.capabilities == 0  # no SET_KEY_PAIR_INFO
    # PublicKeyInfo: the DER AlgorithmIdentifier of id-ecPublicKey / secp384r1.
    assert info.public_key_info.hex() == "301006072a8648ce3d020106052b81040022"
    for bad in (0, 3):
        assert refused(lk, lk.requester.get_key_pair_info(bad)) == (ErrorCode.INVALID_REQUEST,
                                                                     V13)


def test_key_pair_info_is_a_1_3_request(p384_identity: DeviceIdentity) -> None:
    lk = link(p384_identity, version=V12)
    assert refused(lk, lk.requester.get_key_pair_info(1)) == (ErrorCode.UNSUPPORTED_REQUEST,
                                                              V12)


def test_multi_key_digests_and_usage() -> None:
    slots = two_keys()
    kp1 = KeyPair(1, slots[0].key)
    kp2 = KeyPair(2, slots[3].key, current_usage=int(KeyUsage.MEASUREMENT))
    lk = link(slots[0], slots=slots, multi_key=True, key_pairs=(kp1, kp2))
    assert lk.run(lk.requester.get_digests()).keys() == {0, 3}
    assert lk.requester.supported_slot_mask == 0xFF  # SET_CERTIFICATE can fill any slot
    assert lk.requester.slot_key_info == {0: (1, 1, 0x0F), 3: (2, 1, int(KeyUsage.MEASUREMENT))}
    lk.run(lk.requester.get_certificate(3))
    lk.run(lk.requester.get_measurements(slot=3))  # allowed: MEASUREMENT
    assert refused(lk, lk.requester.challenge(3)) == (ErrorCode.INVALID_REQUEST, V13)
    assert refused(lk, lk.requester.key_exchange(slot=3)) == (ErrorCode.INVALID_REQUEST, V13)


# ---- GET_CSR and SET_CERTIFICATE ---------------------------------------------------------------


def test_csr_for_the_device_key_then_install_it_in_a_session(
        p384_identity: DeviceIdentity, ca: DeviceIdentity) -> None:
    store = MemoryCertificateStore()
    lk = link(p384_identity, store=store, extra_anchors=(ca.root,))
    lk.run(lk.requester.get_digests())
    lk.run(lk.requester.get_certificate(0))
    sid = lk.session()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "installed by the owner")])
    csr_der = lk.run(lk.requester.get_csr(requester_info(subject), session_id=sid))
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid and csr.subject == subject
    assert csr.public_key() == p384_identity.key.public_key()
    leaf = issue_from_csr(csr_der, ca.certs[1], ca.ca_keys[1])
    chain = [der(ca.root), der(ca.certs[1]), der(leaf)]
    assert lk.run(lk.requester.set_certificate(5, chain, session_id=sid)) == 5
    assert 5 in store.installed
    # The new slot is there at once, for the same key (visible without multi-key).
    assert lk.run(lk.requester.get_digests(session_id=sid)).keys() == {0, 5}
    lk.run(lk.requester.get_certificate(5, session_id=sid))
    assert lk.requester.cert_chains[5]


def test_default_csr_subject_is_the_slot_leaf(p384_identity: DeviceIdentity) -> None:
    lk = link(p384_identity)
    csr = x509.load_der_x509_csr(lk.run(lk.requester.get_csr()))
    assert csr.subject == p384_identity.leaf.subject


@pytest.mark.parametrize(("info", "attrs"), [
    (b"\x30\x03\x02\x01\x01", {}),  # CertificationRequestInfo version 1
    (b"\x04\x00", {}),  # not a SEQUENCE
    (b"", {"key_pair_id": 1}),  # KeyPairID outside a multi-key connection
    (b"", {"cert_model": 1}),  # CertModel outside a multi-key connection
])
def test_csr_refusals(p384_identity: DeviceIdentity, info: bytes, attrs: dict[str, int]) -> None:
    lk = link(p384_identity)
    assert refused(lk, lk.requester.get_csr(info, **attrs)) == (ErrorCode.INVALID_REQUEST, V13)


def test_csr_on_a_multi_key_connection_names_key_and_model() -> None:
    slots = two_keys()
    lk = link(slots[0], slots=slots, multi_key=True)
    csr = x509.load_der_x509_csr(lk.run(lk.requester.get_csr(key_pair_id=2, cert_model=3)))
    assert csr.public_key() == slots[3].key.public_key()
    for attrs in ({"key_pair_id": 0, "cert_model": 1}, {"key_pair_id": 2, "cert_model": 0},
                  {"key_pair_id": 3, "cert_model": 1}):
        assert refused(lk, lk.requester.get_csr(**attrs)) == (ErrorCode.INVALID_REQUEST, V13)


def test_set_certificate_rules(p384_identity: DeviceIdentity, ca: DeviceIdentity) -> None:
    lk = link(p384_identity, extra_anchors=(ca.root,))
    csr_der = lk.run(lk.requester.get_csr())
    leaf = issue_from_csr(csr_der, ca.certs[1], ca.ca_keys[1])
    chain = [der(ca.root), der(ca.certs[1]), der(leaf)]
    # Outside a session only slot 0 may be written (no trusted environment).
    assert refused(lk, lk.requester.set_certificate(2, chain)) == (
        ErrorCode.UNEXPECTED_REQUEST, V13)
    # A chain for a key the device does not hold.
    other = generate_identity()
    foreign = [der(c) for c in other.certs]
    assert refused(lk, lk.requester.set_certificate(0, foreign)) == (
        ErrorCode.INVALID_REQUEST, V13)
    assert lk.run(lk.requester.set_certificate(0, chain)) == 0
    assert lk.responder.config.slots.slots[0].leaf == leaf


def test_set_certificate_erase_in_1_3(p384_identity: DeviceIdentity,
                                      ca: DeviceIdentity) -> None:
    lk = link(p384_identity, extra_anchors=(ca.root,))
    leaf = issue_from_csr(lk.run(lk.requester.get_csr()), ca.certs[1], ca.ca_keys[1])
    lk.run(lk.requester.get_digests())
    lk.run(lk.requester.get_certificate(0))
    sid = lk.session()
    lk.run(lk.requester.set_certificate(4, [der(ca.root), der(ca.certs[1]), der(leaf)],
                                        session_id=sid))
    assert lk.run(lk.requester.get_digests(session_id=sid)).keys() == {0, 4}
    lk.run(lk.requester.set_certificate(4, erase=True, session_id=sid))
    assert lk.run(lk.requester.get_digests(session_id=sid)).keys() == {0}


def test_set_certificate_store_failure_is_operation_failed(
        p384_identity: DeviceIdentity, ca: DeviceIdentity) -> None:
    class Broken(MemoryCertificateStore):
        def install(self, *a: Any, **k: Any) -> DeviceIdentity:
            raise OSError("read-only")

    lk = link(p384_identity, store=Broken())
    leaf = issue_from_csr(lk.run(lk.requester.get_csr()), ca.certs[1], ca.ca_keys[1])
    assert refused(lk, lk.requester.set_certificate(
        0, [der(ca.root), der(ca.certs[1]), der(leaf)])) == (ErrorCode.OPERATION_FAILED, V13)


def test_multi_key_set_certificate_needs_key_pair_and_model(ca: DeviceIdentity) -> None:
    slots = two_keys()
    lk = link(slots[0], slots=slots, multi_key=True, set_certificate_outside_session=True)
    csr = lk.run(lk.requester.get_csr(key_pair_id=2, cert_model=3))
    leaf = issue_from_csr(csr, ca.certs[1], ca.ca_keys[1])
    chain = [der(ca.root), der(ca.certs[1]), der(leaf)]
    for attrs in ({"key_pair_id": 0, "cert_model": 3}, {"key_pair_id": 2, "cert_model": 0},
                  {"key_pair_id": 1, "cert_model": 3}):  # key pair 1 is not the leaf's key
        assert refused(lk, lk.requester.set_certificate(6, chain, **attrs)) == (
            ErrorCode.INVALID_REQUEST, V13)
    lk.run(lk.requester.set_certificate(6, chain, key_pair_id=2, cert_model=3))
    lk.run(lk.requester.get_digests())
    assert lk.requester.slot_key_info[6] == (2, int(CertModel.GENERIC_CERT), 0x0F)


# ---- MEL and endpoint information ------------------------------------------------------------


def test_mel_in_portions(p384_identity: DeviceIdentity) -> None:
    lk = link(p384_identity)
    assert lk.requester.algorithms.mel_spec == 1
    assert lk.run(lk.requester.get_mel(portion=100)) == MEL
    assert lk.run(lk.requester.get_mel()) == MEL


def test_mel_offset_beyond_the_log(p384_identity: DeviceIdentity) -> None:
    lk = link(p384_identity)
    from spdm.messages import GetMel, encode
    reply = lk.responder.handle(encode(GetMel, {"version": V13, "offset": len(MEL),
                                                "length": 16}))
    assert reply[:3] == bytes([V13, 0x7F, ErrorCode.INVALID_REQUEST])


def test_endpoint_info_plain_and_signed(p384_identity: DeviceIdentity) -> None:
    lk = link(p384_identity)
    assert lk.run(lk.requester.get_endpoint_info()) == EP_INFO
    lk.run(lk.requester.get_digests())
    lk.run(lk.requester.get_certificate(0))
    assert lk.run(lk.requester.get_endpoint_info(signed=True)) == EP_INFO  # signature checked


def test_endpoint_info_signature_needs_ep_info_sig(p384_identity: DeviceIdentity) -> None:
    lk = link(p384_identity, capabilities=int(
        (PROVISIONING_CAPS & ~RspCap.EP_INFO_SIG) | RspCap.EP_INFO_NO_SIG))
    assert lk.run(lk.requester.get_endpoint_info()) == EP_INFO
    lk.run(lk.requester.get_digests())
    lk.run(lk.requester.get_certificate(0))
    assert refused(lk, lk.requester.get_endpoint_info(signed=True)) == (
        ErrorCode.UNSUPPORTED_REQUEST, V13)
