"""Identity generation/storage/import and certificate-chain validation."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spdm.algorithms import BaseAsym, BaseHash
from spdm.cert_verify import CertPolicy, verify_chain
from spdm.codes import V12, V13, RspCap
from spdm.errors import CertificateError, ErrorResponse
from spdm.identity import (
    OID_CMA_SAN,
    OID_SPDM_EXTENSION,
    CertSlots,
    DeviceIdentity,
    IdentityParams,
    generate_identity,
    import_identity,
    load_identity,
    save_identity,
    spdm_cert_chain,
    split_spdm_cert_chain,
)
from spdm.responder import DEFAULT_RSP_CAPS
from tests.helpers.spdm_harness import identity_for, make_link


def test_chain_shape_and_extensions(p384_identity: DeviceIdentity) -> None:
    root, inter, leaf = p384_identity.certs
    assert root.subject == root.issuer and inter.issuer == root.subject
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert any(e.oid.dotted_string == OID_SPDM_EXTENSION for e in leaf.extensions)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    other = san.get_values_for_type(x509.OtherName)[0]
    assert other.type_id.dotted_string == OID_CMA_SAN
    # DER UTF8String: tag 0x0C, length, value.
    assert other.value[0] == 0x0C
    assert other.value[2:] == b"Vendor=1234:Device=5678:CC=120000:REV=01"


def test_spdm_chain_format(p384_identity: DeviceIdentity) -> None:
    chain = p384_identity.spdm_chain(BaseHash.SHA_384)
    assert int.from_bytes(chain[:2], "little") == len(chain)
    assert chain[2:4] == b"\x00\x00"
    root_hash, ders = split_spdm_cert_chain(chain, 48)
    assert len(ders) == 3
    assert ders[0] == p384_identity.root.public_bytes(serialization.Encoding.DER)
    import hashlib

    assert root_hash == hashlib.sha384(ders[0]).digest()


def test_saved_identity_loads_back_with_private_modes(tmp_path: Path) -> None:
    params = IdentityParams(key_type="ecdsa-p256", vendor_id=0x8086, device_id=0x0B25,
                            class_code=0x010802, revision=0x02)
    first = generate_identity(params)
    save_identity(first, tmp_path / "slot0")
    for name in ("leaf.key", "root.key", "intermediate.key"):
        assert stat.S_IMODE((tmp_path / "slot0" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "slot0").stat().st_mode) == 0o700
    second = load_identity(tmp_path / "slot0")
    assert second.chain_der() == first.chain_der() and len(second.ca_keys) == 2
    san = second.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert b"Vendor=8086:Device=0b25:CC=010802:REV=02" in san.get_values_for_type(
        x509.OtherName)[0].value


def test_import_pem_and_der(tmp_path: Path, p256_identity: DeviceIdentity) -> None:
    pem_chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                         for c in reversed(p256_identity.certs))  # leaf first
    key_der = p256_identity.key.private_bytes(serialization.Encoding.DER,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
    (tmp_path / "chain.pem").write_bytes(pem_chain)
    (tmp_path / "key.der").write_bytes(key_der)
    ident = import_identity(tmp_path / "chain.pem", tmp_path / "key.der")
    assert ident.chain_der() == p256_identity.chain_der()  # reordered root first
    der_ident = import_identity(p256_identity.chain_der(), key_der)
    assert der_ident.leaf == p256_identity.leaf
    other = identity_for("ecdsa-p384")
    with pytest.raises(ValueError):
        import_identity(p256_identity.chain_der(), other.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def test_slots() -> None:
    slots = CertSlots({0: identity_for("ecdsa-p384"), 3: identity_for("ecdsa-p384")})
    assert slots.mask == 0b1001
    with pytest.raises(ValueError):
        CertSlots({8: identity_for("ecdsa-p384")})


def test_multi_slot_flow() -> None:
    """Two slots with their own keys: a connection that is not multi-key sees only slot
    0's key (one key per algorithm before SPDM 1.3 multi-key), a multi-key one both."""
    a, b = identity_for("ecdsa-p384"), generate_identity()
    caps = int(DEFAULT_RSP_CAPS | RspCap.MULTI_KEY_NEG | RspCap.GET_KEY_PAIR_INFO)
    # Multi-key in the 1.3 layout (spdm.capabilities.caps_for_version).
    rsp = {"capabilities": caps, "versions": (V12, V13)}
    single = make_link(a, rsp=rsp,
                       req={"trust_anchors": [a.root, b.root]})
    single.responder.config.slots = CertSlots({0: a, 2: b})
    single.run(single.requester.init_connection())
    assert sorted(single.run(single.requester.get_digests())) == [0]
    with pytest.raises(ErrorResponse):
        single.run(single.requester.get_certificate(2))

    link = make_link(a, rsp=rsp,
                     req={"trust_anchors": [a.root, b.root], "multi_key": True})
    link.responder.config.slots = CertSlots({0: a, 2: b})
    link.run(link.requester.init_connection())
    assert link.requester.conn.multi_key and link.responder.conn.multi_key
    digests = link.run(link.requester.get_digests())
    assert sorted(digests) == [0, 2]
    assert link.requester.slot_key_info == {0: (1, 1, 0x0F), 2: (2, 1, 0x0F)}
    link.run(link.requester.get_certificate(2))
    link.run(link.requester.challenge(2))
    link.run(link.requester.get_measurements(slot=2))
    link.session(slot=2)


# ---- chain validation failures -----------------------------------------------------------

H = BaseHash.SHA_384
P384 = BaseAsym.ECDSA_P384


def test_valid(p384_identity: DeviceIdentity) -> None:
    verify_chain(p384_identity.spdm_chain(H), [p384_identity.root], H, P384,
                 policy=CertPolicy(require_spdm_oids=True))


def test_wrong_root(p384_identity: DeviceIdentity) -> None:
    other = generate_identity()
    with pytest.raises(CertificateError, match="trusted root"):
        verify_chain(p384_identity.spdm_chain(H), [other.root], H, P384)


def test_expired(p384_identity: DeviceIdentity) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=4000)
    with pytest.raises(CertificateError, match="validity"):
        verify_chain(p384_identity.spdm_chain(H), [p384_identity.root], H, P384, now=later)


def test_wrong_key_type(p384_identity: DeviceIdentity) -> None:
    with pytest.raises(CertificateError, match="BaseAsymAlgo"):
        verify_chain(p384_identity.spdm_chain(H), [p384_identity.root], H, BaseAsym.ECDSA_P256)


def test_missing_spdm_extension() -> None:
    bare = identity_for("ecdsa-p384", include_spdm_oids=False)
    verify_chain(bare.spdm_chain(H), [bare.root], H, P384)  # fine when not required
    with pytest.raises(CertificateError, match="SPDM"):
        verify_chain(bare.spdm_chain(H), [bare.root], H, P384,
                     policy=CertPolicy(require_spdm_oids=True))


def test_root_hash_mismatch(p384_identity: DeviceIdentity) -> None:
    chain = bytearray(p384_identity.spdm_chain(H))
    chain[5] ^= 1
    with pytest.raises(CertificateError, match="RootHash"):
        verify_chain(bytes(chain), [p384_identity.root], H, P384)


def test_broken_link(p384_identity: DeviceIdentity) -> None:
    other = generate_identity()
    ders = [c.public_bytes(serialization.Encoding.DER) for c in
            (p384_identity.root, other.certs[1], other.leaf)]
    with pytest.raises(CertificateError, match="not issued"):
        verify_chain(spdm_cert_chain(ders, H), [p384_identity.root], H, P384)


def test_leaf_without_digital_signature(p384_identity: DeviceIdentity) -> None:
    from spdm.identity import _ca_cert

    ca = p384_identity.ca_keys[1]
    now = datetime.datetime.now(datetime.UTC)
    fake_leaf = _ca_cert("leaf", p384_identity.key, "vdev intermediate CA", ca,
                         now - datetime.timedelta(days=1), now + datetime.timedelta(days=1), None)
    ders = [c.public_bytes(serialization.Encoding.DER) for c in
            (p384_identity.root, p384_identity.certs[1], fake_leaf)]
    with pytest.raises(CertificateError):
        verify_chain(spdm_cert_chain(ders, H), [p384_identity.root], H, P384)


def test_requester_rejects_untrusted_chain(p384_identity: DeviceIdentity) -> None:
    link = make_link(p384_identity, req={"trust_anchors": [generate_identity().root]})
    link.run(link.requester.init_connection())
    with pytest.raises(CertificateError):
        link.run(link.requester.get_certificate())


