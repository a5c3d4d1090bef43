"""Key pairs, certificate slots and what can be written to them: the responder's side of
DSP0274 1.3 multi-key connections (DIGESTS KeyPairID/CertificateInfo/KeyUsageMask,
GET_KEY_PAIR_INFO) and of device provisioning (1.2 GET_CSR and SET_CERTIFICATE).

A responder holds certificate slots (`spdm.identity.CertSlots`), each a chain whose leaf
key is one of its key pairs.  Key pairs are numbered from 1 (KeyPairID); a slot's key
pair is the one whose public key the slot's leaf carries.  Up to SPDM 1.2 every slot of
one asymmetric algorithm shares a single key (libspdm doc/multikey.md: "for a given
negotiated asymmetric algorithm, leaf certificates throughout all certificate slots
needed to use the same private/public key"), and so does a 1.3 connection that is not
multi-key: such a connection sees only the slots of slot 0's key pair
(`visible_slots`).  A multi-key connection (MULTI_KEY_CONN_RSP) sees them all.

Writing slots is delegated to a `CertificateStore` (the device keeps them on disk); the
engine only judges the request and asks the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from spdm import der
from spdm.codes import CertModel, KeyPairAsym, KeyUsage
from spdm.crypto import PrivateKey, PublicKey
from spdm.errors import RequesterInfoError
from spdm.identity import CertSlots, DeviceIdentity

#: The usages a key pair of ours may serve (DSP0274 1.3 KeyUsageMask).
SIGNING_USAGES = int(KeyUsage.KEY_EX | KeyUsage.CHALLENGE | KeyUsage.MEASUREMENT
                     | KeyUsage.ENDPOINT_INFO)


@dataclass(frozen=True)
class KeyPair:
    """One asymmetric key pair of the responder (DSP0274 1.3 KEY_PAIR_INFO)."""

    key_pair_id: int
    key: PrivateKey
    usage_capabilities: int = SIGNING_USAGES
    current_usage: int = SIGNING_USAGES
    # KeyPairCap bits: what SET_KEY_PAIR_INFO can change.  This responder has no
    # SET_KEY_PAIR_INFO, so none (libspdm_rsp_key_pair_info.c zeroes them without
    # SET_KEY_PAIR_INFO_CAP).
    capabilities: int = 0


def spki(key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a private or public key (what identifies a key pair)."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    out: bytes = pub.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return out


def public_key_info(key: PrivateKey | PublicKey) -> bytes:
    """KEY_PAIR_INFO PublicKeyInfo: the DER AlgorithmIdentifier of the key's
    SubjectPublicKeyInfo (18 bytes for P-384, 15 for RSA, 7 for Ed25519)."""
    body = der.sequence_body(spki(key))
    length, start = der.read_len(body, 1)
    return body[:start + length]


def key_pair_asym(key: PrivateKey | PublicKey) -> int:
    """The KEY_PAIR_INFO AsymAlgoCapabilities bit of a key (0 for a key type the 1.3
    table has no bit for, such as ML-DSA)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {256: KeyPairAsym.ECC256, 384: KeyPairAsym.ECC384,
                521: KeyPairAsym.ECC521}.get(key.curve.key_size, 0)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return {2048: KeyPairAsym.RSA2048, 3072: KeyPairAsym.RSA3072,
                4096: KeyPairAsym.RSA4096}.get(key.key_size, 0)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return int(KeyPairAsym.ED25519)
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return int(KeyPairAsym.ED448)
    return 0


def derive_key_pairs(slots: CertSlots) -> list[KeyPair]:
    """One key pair per distinct leaf key, numbered in the order of the lowest slot that
    uses it (slot 0's key is KeyPairID 1)."""
    out: list[KeyPair] = []
    seen: set[bytes] = set()
    for slot in sorted(slots.slots):
        key = slots.slots[slot].key
        ident = spki(key)
        if ident not in seen:
            seen.add(ident)
            out.append(KeyPair(len(out) + 1, key))
    return out


def key_pair_of(key_pairs: Sequence[KeyPair], ident: DeviceIdentity) -> KeyPair | None:
    wanted = spki(ident.leaf.public_key())
    return next((kp for kp in key_pairs if spki(kp.key) == wanted), None)


def visible_slots(slots: CertSlots, key_pairs: Sequence[KeyPair],
                  multi_key: bool) -> dict[int, DeviceIdentity]:
    """The slots a connection may use: all of them on a multi-key connection, else the
    slots of the first key pair (one key per algorithm, DSP0274 before 1.3)."""
    if multi_key or not key_pairs:
        return dict(slots.slots)
    first = spki(key_pairs[0].key)
    return {s: ident for s, ident in slots.slots.items()
            if spki(ident.leaf.public_key()) == first}


def assoc_slot_mask(slots: CertSlots, key_pair: KeyPair) -> int:
    wanted = spki(key_pair.key)
    mask = 0
    for s, ident in slots.slots.items():
        if spki(ident.leaf.public_key()) == wanted:
            mask |= 1 << s
    return mask


class CertificateStore(Protocol):
    """Where SET_CERTIFICATE writes (the device's state directory).  `install` keeps the
    chain for `key_pair` in `slot` and returns the identity the slot now holds; `erase`
    empties the slot.  Either raises OSError when the store cannot be written."""

    def install(self, slot: int, certs: Sequence[x509.Certificate], key_pair: KeyPair,
                model: int) -> DeviceIdentity: ...

    def erase(self, slot: int) -> None: ...


@dataclass
class MemoryCertificateStore:
    """A CertificateStore that keeps nothing (tests; a device without persistence)."""

    installed: dict[int, tuple[DeviceIdentity, int]] = dataclasses.field(default_factory=dict)

    def install(self, slot: int, certs: Sequence[x509.Certificate], key_pair: KeyPair,
                model: int) -> DeviceIdentity:
        ident = DeviceIdentity(list(certs), key_pair.key)
        self.installed[slot] = (ident, model)
        return ident

    def erase(self, slot: int) -> None:
        self.installed.pop(slot, None)


# --- GET_CSR ------------------------------------------------------------------------------


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, value, next position) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise RequesterInfoError("truncated DER element")
    tag = data[pos]
    length, body = der.read_len(data, pos + 1)
    end = body + length
    if end > len(data):
        raise RequesterInfoError("truncated DER element")
    return tag, data[body:end], end


def _name_from_der(value: bytes) -> x509.Name:
    """An X.501 Name (RDNSequence body) of string attributes."""
    rdns: list[x509.RelativeDistinguishedName] = []
    pos = 0
    while pos < len(value):
        tag, rdn, pos = _tlv(value, pos)
        if tag != 0x31:
            raise RequesterInfoError("subject: expected a SET (RelativeDistinguishedName)")
        attrs = []
        apos = 0
        while apos < len(rdn):
            tag, atv, apos = _tlv(rdn, apos)
            if tag != 0x30:
                raise RequesterInfoError("subject: expected an AttributeTypeAndValue")
            otag, oid_body, vpos = _tlv(atv, 0)
            vtag, text, end = _tlv(atv, vpos)
            if otag != 0x06 or end != len(atv):
                raise RequesterInfoError("subject: malformed AttributeTypeAndValue")
            if vtag not in (0x0C, 0x13, 0x16, 0x14):  # UTF8, Printable, IA5, Teletex
                raise RequesterInfoError(f"subject: unsupported string type {vtag:#04x}")
            try:
                attrs.append(x509.NameAttribute(
                    x509.ObjectIdentifier(der.decode_oid(oid_body)), text.decode()))
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequesterInfoError(f"subject: {exc}") from None
        if not attrs:
            raise RequesterInfoError("subject: empty RelativeDistinguishedName")
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def parse_requester_info(data: bytes) -> x509.Name | None:
    """GET_CSR RequesterInfo (DSP0274 1.2): empty, or a DER CertificationRequestInfo
    (RFC 2986: SEQUENCE { version INTEGER (0), subject Name, subjectPKInfo, [0]
    attributes }) whose subject the CSR takes.  Returns that subject (None when empty)."""
    if not data:
        return None
    tag, body, end = _tlv(data, 0)
    if tag != 0x30 or end != len(data):
        raise RequesterInfoError("RequesterInfo is not one DER SEQUENCE")
    tag, version, pos = _tlv(body, 0)
    if tag != 0x02 or version != b"\x00":
        raise RequesterInfoError("RequesterInfo version is not 0")
    tag, subject, pos = _tlv(body, pos)
    if tag != 0x30:
        raise RequesterInfoError("RequesterInfo subject is not a Name")
    tag, _, pos = _tlv(body, pos)
    if tag != 0x30:
        raise RequesterInfoError("RequesterInfo subjectPKInfo is not a SEQUENCE")
    tag, _, pos = _tlv(body, pos)
    if tag != 0xA0 or pos != len(body):
        raise RequesterInfoError("RequesterInfo attributes are not [0] or data follows")
    return _name_from_der(subject)


def requester_info(subject: x509.Name) -> bytes:
    """A RequesterInfo naming `subject`: the CertificationRequestInfo of a throw-away key
    (the responder uses the subject and ignores the key), as a requester sends it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(
        key, hashes.SHA256())
    return csr.tbs_certrequest_bytes


def _sig_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(key.curve.key_size,
                                                                 hashes.SHA512())
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA384() if key.key_size >= 3072 else hashes.SHA256()
    return None


def build_csr(key: PrivateKey, subject: x509.Name) -> bytes:
    """A DER PKCS #10 CSR for `key`, signed with it (GET_CSR's CSR field)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    csr = builder.sign(key, _sig_hash(key))  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.DER)


def can_issue_csr(key: PrivateKey) -> bool:
    try:
        build_csr(key, x509.Name([]))
    except (TypeError, ValueError, NotImplementedError):
        return False
    return True


def cert_models(slots: CertSlots, models: Mapping[int, int]) -> dict[int, int]:
    """CertificateInfo per provisioned slot: the recorded model, DeviceCert otherwise."""
    return {s: int(models.get(s, CertModel.DEVICE_CERT)) for s in slots.slots}


def issue_from_csr(csr_der: bytes, issuer: x509.Certificate, issuer_key: PrivateKey, *,
                   days: int = 3650,
                   extensions: Sequence[x509.ExtensionType] = ()) -> x509.Certificate:
    """A leaf certificate for the key and subject of a CSR, signed by `issuer` (a CA
    installing a device certificate; tests and `vdev tsm provision` use it)."""
    import datetime

    csr = x509.load_der_x509_csr(csr_der)
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(csr.subject)
               .issuer_name(issuer.subject).public_key(csr.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                              critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                            False, False), critical=True))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, _sig_hash(issuer_key))  # type: ignore[arg-type]
