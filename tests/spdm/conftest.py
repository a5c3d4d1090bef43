"""Shared fixtures: keys and identities are expensive (RSA), so make them once per session."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from spdm.identity import DeviceIdentity, IdentityParams, generate_identity


@pytest.fixture(scope="session")
def rsa3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 3072)


_IDENTITIES: dict[str, DeviceIdentity] = {}


def identity_for(key_type: str, **kw: object) -> DeviceIdentity:
    key = key_type + repr(sorted(kw.items()))
    if key not in _IDENTITIES:
        _IDENTITIES[key] = generate_identity(IdentityParams(key_type=key_type, **kw))  # type: ignore[arg-type]
    return _IDENTITIES[key]


@pytest.fixture(scope="session")
def p384_identity() -> DeviceIdentity:
    return identity_for("ecdsa-p384")


@pytest.fixture(scope="session")
def p256_identity() -> DeviceIdentity:
    return identity_for("ecdsa-p256")
