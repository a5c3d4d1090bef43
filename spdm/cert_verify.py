"""Requester-side validation of an SPDM certificate chain (DSP0274 1.2 GET_CERTIFICATE and
the 'Leaf certificate requirements').

Done by hand rather than with cryptography.x509.verification because that verifier applies
Web-PKI profile rules (SAN/EKU requirements) that SPDM device chains do not follow. Checks:
  * the SPDM chain header (Length, RootHash = Hash(first certificate));
  * the first certificate is a configured trust anchor, or is directly issued by one;
  * each certificate is directly issued by (name and signature) its predecessor;
  * validity period at the caller-supplied time;
  * CA certificates: BasicConstraints CA:TRUE, KeyUsage keyCertSign when present;
  * leaf: not a CA, KeyUsage present with digitalSignature, public key matching the
    negotiated BaseAsymAlgo, EKU (if present) not limited to requester authentication;
  * optionally: the leaf carries the SPDM OIDs (EKU responder-auth or the SPDM extension).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from spdm import crypto
from spdm.crypto import PublicKey
from spdm.errors import CertificateError
from spdm.identity import (
    OID_EKU_REQUESTER_AUTH,
    OID_EKU_RESPONDER_AUTH,
    OID_SPDM_EXTENSION,
    split_spdm_cert_chain,
)


@dataclass(frozen=True)
class CertPolicy:
    require_spdm_oids: bool = False
    check_validity: bool = True
    # Which EKU marks the expected role (responder when verifying a responder's chain).
    role_eku: str = OID_EKU_RESPONDER_AUTH
    other_role_eku: str = OID_EKU_REQUESTER_AUTH


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER)


def system_time() -> datetime.datetime:
    """The engines' default clock: the host's UTC wall clock (tests and seeded runs inject
    their own through the configs' `now`)."""
    return datetime.datetime.now(datetime.UTC)


def verify_chain(
    spdm_chain: bytes,
    trust_anchors: Sequence[x509.Certificate],
    base_hash: int,
    base_asym: int,
    *,
    now: datetime.datetime | None = None,
    policy: CertPolicy | None = None,
) -> PublicKey:
    """Validate and return the leaf public key; raises CertificateError."""
    policy = policy or CertPolicy()
    now = now or datetime.datetime.now(datetime.UTC)
    hash_size = len(crypto.digest(base_hash, b""))
    try:
        root_hash, ders = split_spdm_cert_chain(spdm_chain, hash_size)
        certs = [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as exc:
        raise CertificateError(f"malformed certificate chain: {exc}") from exc
    if not certs:
        raise CertificateError("empty certificate chain")
    if crypto.digest(base_hash, ders[0]) != root_hash:
        raise CertificateError("RootHash does not match the first certificate")

    first = certs[0]
    if not any(_same_cert(first, ta) or _issued_by(first, ta) for ta in trust_anchors):
        raise CertificateError("chain does not lead to a trusted root")
    for prev, cert in zip(certs, certs[1:], strict=False):
        if not _issued_by(cert, prev):
            raise CertificateError(f"{cert.subject.rfc4514_string()} not issued by predecessor")

    for i, cert in enumerate(certs):
        is_leaf = i == len(certs) - 1
        name = cert.subject.rfc4514_string()
        if policy.check_validity and not (
            cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        ):
            raise CertificateError(f"{name}: outside its validity period")
        bc = _ext(cert, x509.BasicConstraints)
        ku = _ext(cert, x509.KeyUsage)
        if not is_leaf:
            if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
                raise CertificateError(f"{name}: intermediate is not a CA")
            if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
                raise CertificateError(f"{name}: CA without keyCertSign")
        else:
            if isinstance(bc, x509.BasicConstraints) and bc.ca and len(certs) > 1:
                raise CertificateError(f"{name}: leaf is a CA")
            if not isinstance(ku, x509.KeyUsage) or not ku.digital_signature:
                raise CertificateError(f"{name}: leaf lacks KeyUsage digitalSignature")

    leaf = certs[-1]
    pub = leaf.public_key()
    if not crypto.key_matches_asym(pub, base_asym):  # type: ignore[arg-type]
        raise CertificateError("leaf key does not match the negotiated BaseAsymAlgo")

    eku = _ext(leaf, x509.ExtendedKeyUsage)
    eku_oids = {o.dotted_string for o in eku} if isinstance(eku, x509.ExtendedKeyUsage) else set()
    if policy.other_role_eku in eku_oids and policy.role_eku not in eku_oids:
        raise CertificateError("leaf EKU allows only the other SPDM role")
    if policy.require_spdm_oids:
        has_ext = any(e.oid.dotted_string == OID_SPDM_EXTENSION for e in leaf.extensions)
        if not has_ext and policy.role_eku not in eku_oids:
            raise CertificateError("leaf lacks the SPDM certificate OIDs")
    return pub  # type: ignore[return-value]
