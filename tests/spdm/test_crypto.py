"""Algorithms, signing prefix, key schedule and DHE."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from spdm import crypto
from spdm.algorithms import (
    Aead,
    BaseAsym,
    BaseHash,
    Dhe,
    check_selected,
    select,
)
from spdm.key_schedule import KeySchedule, bin_concat


def test_signing_prefix_layout() -> None:
    ctx = crypto.CTX_KEY_EXCHANGE_RSP
    p = crypto.signing_prefix(0x12, ctx)
    assert len(p) == 100
    assert p[:64] == b"dmtf-spdm-v1.2.*" * 4
    assert p.endswith(ctx)
    assert p[64 : 100 - len(ctx)] == bytes(36 - len(ctx))
    assert crypto.signing_prefix(0x13, ctx)[:16] == b"dmtf-spdm-v1.3.*"


def test_bin_concat() -> None:
    assert bin_concat(0x12, 48, b"derived") == b"\x30\x00spdm1.2 derived"
    assert bin_concat(0x11, 12, b"iv", b"TH") == b"\x0c\x00spdm1.1 ivTH"


def test_ffdhe_primes_match_rfc7919() -> None:
    p = crypto.ffdhe_prime(2048)
    assert p.bit_length() == 2048
    assert hex(p).startswith("0xffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1")
    assert hex(p).endswith("886b423861285c97ffffffffffffffff")
    assert pow(2, p - 1, p) == 1


@pytest.mark.parametrize("dhe", [Dhe.SECP256R1, Dhe.SECP384R1, Dhe.SECP521R1, Dhe.FFDHE_2048])
def test_dhe_agreement(dhe: int) -> None:
    a, b = crypto.DheKey(dhe, os.urandom), crypto.DheKey(dhe, os.urandom)
    assert a.shared_secret(b.exchange_data()) == b.shared_secret(a.exchange_data())
    with pytest.raises(crypto.CryptoError):
        a.shared_secret(b.exchange_data()[:-1])


@pytest.mark.parametrize(
    ("asym", "key"),
    [
        (BaseAsym.ECDSA_P256, lambda: ec.generate_private_key(ec.SECP256R1())),
        (BaseAsym.ECDSA_P384, lambda: ec.generate_private_key(ec.SECP384R1())),
        (BaseAsym.ECDSA_P521, lambda: ec.generate_private_key(ec.SECP521R1())),
        (BaseAsym.EDDSA_25519, ed25519.Ed25519PrivateKey.generate),
    ],
)
def test_sign_verify(asym: int, key: object) -> None:
    priv = key()  # type: ignore[operator]
    sig = crypto.sign(asym, BaseHash.SHA_384, priv, b"msg")
    from spdm.algorithms import ASYM_SIG_SIZE

    assert len(sig) == ASYM_SIG_SIZE[asym]
    assert crypto.verify(asym, BaseHash.SHA_384, priv.public_key(), b"msg", sig)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not crypto.verify(asym, BaseHash.SHA_384, priv.public_key(), b"msg", bad)


def test_rsa_sign_verify(rsa3072: object) -> None:
    for asym in (BaseAsym.RSASSA_3072, BaseAsym.RSAPSS_3072):
        sig = crypto.sign(asym, BaseHash.SHA_256, rsa3072, b"m")  # type: ignore[arg-type]
        assert len(sig) == 384
        assert crypto.verify(asym, BaseHash.SHA_256, rsa3072.public_key(), b"m", sig)  # type: ignore[attr-defined]


@pytest.mark.parametrize("aead", [Aead.AES_128_GCM, Aead.AES_256_GCM, Aead.CHACHA20_POLY1305])
def test_aead(aead: int) -> None:
    from spdm.algorithms import AEAD_KEY_SIZE

    key = bytes(AEAD_KEY_SIZE[aead])
    ct = crypto.aead_encrypt(aead, key, bytes(12), b"pt", b"aad")
    assert crypto.aead_decrypt(aead, key, bytes(12), ct, b"aad") == b"pt"
    with pytest.raises(crypto.CryptoError):
        crypto.aead_decrypt(aead, key, bytes(12), ct, b"aaD")


def test_selection_rules() -> None:
    assert select(0x80 | 0x10, [0x10, 0x80]) == 0x10
    assert select(0x1, [0x10, 0x80]) == 0
    assert check_selected(0x80, 0x90)
    assert not check_selected(0x90, 0x90)  # two bits
    assert not check_selected(0x20, 0x90)  # not offered
    assert not check_selected(0, 0x90)
    assert check_selected(0, 0x90, allow_zero=True)


def test_key_schedule_consistency() -> None:
    ks = KeySchedule(0x12, BaseHash.SHA_384, Aead.AES_256_GCM)
    ks.set_handshake_secret(b"s" * 48)
    req, rsp = ks.handshake_keys(b"t" * 48)
    assert len(req.key) == 32 and len(req.iv) == 12 and req.key != rsp.key
    assert ks.finished_key(req.secret) != ks.finished_key(rsp.secret)
    dreq, drsp = ks.data_keys(b"u" * 48)
    assert dreq.secret != req.secret
    up = ks.updated(dreq)
    assert up.secret == ks.expand(dreq.secret, b"traffic upd", b"", 48)
    assert "redacted" in repr(up)
    # Version participates in every label.
    ks13 = KeySchedule(0x13, BaseHash.SHA_384, Aead.AES_256_GCM)
    ks13.set_handshake_secret(b"s" * 48)
    assert ks13.handshake_keys(b"t" * 48)[0].key != req.key


def test_psk_salt_by_version() -> None:
    import hmac as _h

    for version, salt in ((0x12, bytes(48)), (0x13, b"\xff" * 48)):
        ks = KeySchedule(version, BaseHash.SHA_384, Aead.AES_256_GCM)
        ks.set_handshake_secret(b"psk", psk=True)
        assert ks.handshake_secret == _h.new(salt, b"psk", "sha384").digest()
    ks = KeySchedule(0x13, BaseHash.SHA_384, Aead.AES_256_GCM)
    ks.set_handshake_secret(b"dhe")
    assert ks.handshake_secret == _h.new(bytes(48), b"dhe", "sha384").digest()


@pytest.mark.parametrize("dhe", [Dhe.SECP256R1, Dhe.SECP384R1, Dhe.SECP521R1])
def test_curve_orders(dhe: int) -> None:
    """(n-1)G = -G and n itself is no private key: n is the group order."""
    from cryptography.hazmat.primitives.asymmetric import ec

    curve = crypto._ECDHE[dhe][0]()
    n = crypto._EC_ORDER[dhe]
    g = ec.derive_private_key(1, curve).public_key().public_numbers()
    minus_g = ec.derive_private_key(n - 1, curve).public_key().public_numbers()
    assert (minus_g.x, minus_g.y) == (g.x, (-g.y) % _field_prime(curve))
    with pytest.raises(ValueError):
        ec.derive_private_key(n, curve)


def _field_prime(curve: object) -> int:
    return {"secp256r1": 2**256 - 2**224 + 2**192 + 2**96 - 1,
            "secp384r1": 2**384 - 2**128 - 2**96 + 2**32 - 1,
            "secp521r1": 2**521 - 1}[curve.name]  # type: ignore[attr-defined]


def test_dhe_key_comes_from_the_injected_random() -> None:
    draws = bytes(range(256))
    a = crypto.DheKey(Dhe.SECP384R1, lambda n: draws[:n])
    b = crypto.DheKey(Dhe.SECP384R1, lambda n: draws[:n])
    assert a.exchange_data() == b.exchange_data()
