"""Device identity: certificate chains and keys for SPDM slots (DSP0274 1.2
GET_DIGESTS/GET_CERTIFICATE and Annex 'Leaf certificate requirements'); classical keys or,
for SPDM 1.4, ML-DSA-44/65/87.

Generated chains are root CA -> intermediate CA -> device leaf. The leaf carries:
  * KeyUsage digitalSignature (critical), BasicConstraints CA:FALSE;
  * ExtendedKeyUsage id-DMTF-eku-responder-auth (1.3.6.1.4.1.412.274.3);
  * the SPDM extension id-DMTF-SPDM-extension (1.3.6.1.4.1.412.274.6) listing
    id-DMTF-hardware-identity (…274.2), DSP0274 §'Definition of SPDM certificate extension';
  * for Linux CMA (drivers/pci/cma-x509.c) a SAN otherName 2.23.147 whose UTF8 value is
    "Vendor=%04x:Device=%04x:CC=%06x:REV=%02x".

This module does file I/O (the state directory); protocol engines only receive objects.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from construct import Bytes, GreedyBytes, Int16ul, Struct, this
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, mldsa, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spdm import crypto, der
from spdm.codes import MAX_SLOTS
from spdm.crypto import PrivateKey

OID_DMTF_SPDM = "1.3.6.1.4.1.412.274"
OID_DEVICE_INFO = OID_DMTF_SPDM + ".1"
OID_HARDWARE_IDENTITY = OID_DMTF_SPDM + ".2"
OID_EKU_RESPONDER_AUTH = OID_DMTF_SPDM + ".3"
OID_EKU_REQUESTER_AUTH = OID_DMTF_SPDM + ".4"
OID_MUTABLE_CERTIFICATE = OID_DMTF_SPDM + ".5"
OID_SPDM_EXTENSION = OID_DMTF_SPDM + ".6"
OID_CMA_SAN = "2.23.147"  # PCI-SIG CMA otherName

KEY_TYPES = ("ecdsa-p384", "ecdsa-p256", "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096",
             "ed25519", "ed448", "mldsa-44", "mldsa-65", "mldsa-87")

# ML-DSA (FIPS 204) key types: SPDM 1.4 PqcAsymAlgo identities.  Certificates are signed
# with ML-DSA too (RFC 9881 / X.509 id-ml-dsa-*), so a whole chain is post-quantum.
_MLDSA_KEYS: dict[str, type[crypto.MlDsaPrivateKey]] = {
    "mldsa-44": mldsa.MLDSA44PrivateKey,
    "mldsa-65": mldsa.MLDSA65PrivateKey,
    "mldsa-87": mldsa.MLDSA87PrivateKey,
}


def generate_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ecdsa-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(key_type[4:]))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if key_type in _MLDSA_KEYS:
        return _MLDSA_KEYS[key_type].generate()
    raise ValueError(f"unknown key type {key_type!r}")


def key_type_of(key: PrivateKey) -> str:
    """The `KEY_TYPES` name of a private key (the inverse of `generate_key`)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ecdsa-p{key.curve.key_size}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "ed448"
    for name, cls in _MLDSA_KEYS.items():
        if isinstance(key, cls):
            return name
    return "ed25519"


def _sig_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(key.curve.key_size, hashes.SHA512())
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA384() if key.key_size >= 3072 else hashes.SHA256()
    return None


def cma_san_value(vendor_id: int, device_id: int, class_code: int, revision: int) -> str:
    return f"Vendor={vendor_id:04x}:Device={device_id:04x}:CC={class_code:06x}:REV={revision:02x}"


def spdm_extension_value(oids: Sequence[str]) -> bytes:
    """SPDMExtension ::= SEQUENCE OF SEQUENCE { id OID, value OCTET STRING OPTIONAL }."""
    return der.sequence(*(der.sequence(der.oid(o)) for o in oids))


@dataclass(frozen=True)
class IdentityParams:
    key_type: str = "ecdsa-p384"
    vendor_id: int = 0x1234
    device_id: int = 0x5678
    class_code: int = 0x120000
    revision: int = 0x01
    common_name: str = "vdev"
    validity_days: int = 3650
    include_spdm_oids: bool = True
    include_cma_san: bool = True
    # "responder" (device) or "requester" (for mutual authentication): selects the DMTF EKU.
    role: str = "responder"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vdev reference emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_cert(
    subject: str,
    key: PrivateKey,
    issuer: str,
    issuer_key: PrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    path_len: int | None,
) -> x509.Certificate:
    # KeyUsage keyCertSign and cRLSign only (RFC 5280 §4.2.1.3).
    builder = _cert_builder(_name(subject), _name(issuer), key, not_before, not_after,
                            x509.BasicConstraints(ca=True, path_length=path_len),
                            x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False))
    return builder.sign(issuer_key, _sig_hash(issuer_key))  # type: ignore[arg-type]


def _cert_builder(subject: x509.Name, issuer: x509.Name, key: PrivateKey,
                  not_before: datetime.datetime, not_after: datetime.datetime,
                  constraints: x509.BasicConstraints,
                  usage: x509.KeyUsage) -> x509.CertificateBuilder:
    """What every certificate of the chain has: names, key, a random serial, the
    validity, critical BasicConstraints and KeyUsage, the SubjectKeyIdentifier."""
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(constraints, critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )


def build_leaf(
    params: IdentityParams,
    key: PrivateKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    # KeyUsage digitalSignature only: the leaf signs SPDM transcripts.
    builder = _cert_builder(_name(f"{params.common_name} device"), issuer.subject, key,
                            not_before, not_after,
                            x509.BasicConstraints(ca=False, path_length=None),
                            x509.KeyUsage(True, False, False, False, False, False, False, False,
                                          False))
    if params.include_spdm_oids:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [x509.ObjectIdentifier(OID_EKU_RESPONDER_AUTH), ExtendedKeyUsageOID.SERVER_AUTH]
                if params.role == "responder"
                else [x509.ObjectIdentifier(OID_EKU_REQUESTER_AUTH),
                      ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        ).add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(OID_SPDM_EXTENSION),
                spdm_extension_value([OID_HARDWARE_IDENTITY]),
            ),
            critical=False,
        )
    if params.include_cma_san:
        value = cma_san_value(params.vendor_id, params.device_id, params.class_code,
                              params.revision)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.OtherName(x509.ObjectIdentifier(OID_CMA_SAN), der.utf8_string(value))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, _sig_hash(issuer_key))  # type: ignore[arg-type]


@dataclass
class DeviceIdentity:
    """A certificate chain (root first) plus the leaf's private key."""

    certs: list[x509.Certificate]
    key: PrivateKey
    ca_keys: list[PrivateKey] = field(default_factory=list, repr=False)
    # spdm_chain() is asked for on every DIGESTS, CERTIFICATE, CHALLENGE and KEY_EXCHANGE;
    # DER-encoding and hashing the chain each time was a measurable share of a handshake.
    # Keyed by the certificates themselves, so replacing `certs` is still seen.
    _chains: dict[tuple[int, tuple[x509.Certificate, ...]], bytes] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def root(self) -> x509.Certificate:
        return self.certs[0]

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[-1]

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.certs)

    def spdm_chain(self, base_hash: int) -> bytes:
        key = (base_hash, tuple(self.certs))
        chain = self._chains.get(key)
        if chain is None:
            chain = spdm_cert_chain(
                [c.public_bytes(serialization.Encoding.DER) for c in self.certs], base_hash)
            self._chains.clear()  # one entry is all a device uses; don't grow
            self._chains[key] = chain
        return chain

    def asym_mask(self) -> int:
        return crypto.asym_capabilities_of_key(self.key)


#: The certificate chain a slot holds (DSP0274 "Certificate chain format"): Length u16
#: (of the whole structure), Reserved u16, RootHash (hash of the root certificate, the
#: negotiated hash's size), then the DER certificates, root first.
SpdmCertChain = Struct(
    "length" / Int16ul,
    "reserved" / Int16ul,
    "root_hash" / Bytes(this._params.hash_size),
    "certificates" / GreedyBytes,
)


def spdm_cert_chain(certs_der: Sequence[bytes], base_hash: int) -> bytes:
    """DSP0274 Table 'Certificate chain format': Length u16 || Reserved u16 || RootHash ||
    Certificates (DER, root first). Length covers the whole structure."""
    root_hash = crypto.digest(base_hash, certs_der[0])
    body = root_hash + b"".join(certs_der)
    total = 4 + len(body)
    if total > 0xFFFF:
        raise ValueError("certificate chain exceeds 65535 bytes")
    chain: bytes = SpdmCertChain.build(
        {"length": total, "reserved": 0, "root_hash": root_hash,
         "certificates": b"".join(certs_der)}, hash_size=len(root_hash))
    return chain


def split_spdm_cert_chain(chain: bytes, hash_size: int) -> tuple[bytes, list[bytes]]:
    if len(chain) < 4 + hash_size:
        raise ValueError("certificate chain too short")
    parsed = SpdmCertChain.parse(chain, hash_size=hash_size)
    if parsed.length != len(chain):
        raise ValueError("certificate chain Length mismatch")
    return bytes(parsed.root_hash), der.split_der_sequence(bytes(parsed.certificates))


def generate_identity(
    params: IdentityParams | None = None, *, now: datetime.datetime | None = None
) -> DeviceIdentity:
    params = params or IdentityParams()
    now = now or datetime.datetime.now(datetime.UTC)
    nb = now - datetime.timedelta(days=1)
    na = now + datetime.timedelta(days=params.validity_days)
    root_key = generate_key(params.key_type)
    int_key = generate_key(params.key_type)
    leaf_key = generate_key(params.key_type)
    root_cn = f"{params.common_name} root CA"
    int_cn = f"{params.common_name} intermediate CA"
    root = _ca_cert(root_cn, root_key, root_cn, root_key, nb, na, 1)
    inter = _ca_cert(int_cn, int_key, root_cn, root_key, nb, na, 0)
    leaf = build_leaf(params, leaf_key, inter, int_key, nb, na)
    return DeviceIdentity([root, inter, leaf], leaf_key, [root_key, int_key])


# --- storage ------------------------------------------------------------------------------

_CERT_FILES = ("root.pem", "intermediate.pem", "leaf.pem")
_KEY_FILES = ("root.key", "intermediate.key", "leaf.key")


def _write_key(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """A PKCS #8 PEM private key file, created mode 0600."""
    _write_key(path, key)


def save_identity(identity: DeviceIdentity, directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "chain.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in identity.certs)
    )
    if len(identity.certs) == 3:
        for name, cert in zip(_CERT_FILES, identity.certs, strict=True):
            (directory / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, key in zip(_KEY_FILES, [*identity.ca_keys, identity.key][-3:], strict=False):
        _write_key(directory / name, key)
    _write_key(directory / "leaf.key", identity.key)


def load_private_key(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, None)
    except ValueError:
        key = serialization.load_der_private_key(data, None)
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey
        | mldsa.MLDSA44PrivateKey
        | mldsa.MLDSA65PrivateKey
        | mldsa.MLDSA87PrivateKey,
    ):
        raise ValueError("unsupported private key type")
    return key


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """PEM bundle, a single DER certificate, or concatenated DER certificates."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(d) for d in der.split_der_sequence(data)]


def import_identity(chain: bytes | Path, key: bytes | Path) -> DeviceIdentity:
    """Import a user-supplied chain (root first or leaf first; reordered root-first) and the
    leaf private key, PEM or DER."""
    chain_data = chain.read_bytes() if isinstance(chain, Path) else chain
    key_data = key.read_bytes() if isinstance(key, Path) else key
    certs = load_certificates(chain_data)
    if not certs:
        raise ValueError("no certificates")
    if len(certs) > 1 and certs[0].issuer == certs[0].subject:
        pass  # root first already
    elif certs[-1].issuer == certs[-1].subject:
        certs.reverse()
    priv = load_private_key(key_data)
    leaf_pub = certs[-1].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf_pub:
        raise ValueError("private key does not match the leaf certificate")
    return DeviceIdentity(certs, priv)


def load_identity(directory: Path) -> DeviceIdentity:
    certs = load_certificates((directory / "chain.pem").read_bytes())
    key = load_private_key((directory / "leaf.key").read_bytes())
    ca_keys = [
        load_private_key((directory / n).read_bytes())
        for n in _KEY_FILES[:2]
        if (directory / n).exists()
    ]
    return DeviceIdentity(certs, key, ca_keys)


@dataclass
class CertSlots:
    """Up to eight provisioned certificate slots (DSP0274 GET_DIGESTS / GET_CERTIFICATE)."""

    slots: dict[int, DeviceIdentity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.slots:
            if not 0 <= s < MAX_SLOTS:
                raise ValueError("slot must be 0..7")

    @property
    def mask(self) -> int:
        m = 0
        for s in self.slots:
            m |= 1 << s
        return m

    def get(self, slot: int) -> DeviceIdentity | None:
        return self.slots.get(slot)
