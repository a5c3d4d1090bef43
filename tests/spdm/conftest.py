"""Shared fixtures: keys and identities are expensive (RSA), so make them once per session."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from spdm.identity import DeviceIdentity
from tests.helpers.spdm_harness import identity_for


@pytest.fixture(scope="session")
def rsa3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 3072)


@pytest.fixture(scope="session")
def p384_identity() -> DeviceIdentity:
    return identity_for("ecdsa-p384")


@pytest.fixture(scope="session")
def p256_identity() -> DeviceIdentity:
    return identity_for("ecdsa-p256")
