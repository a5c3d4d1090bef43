"""The shipped post-quantum profiles: what each negotiates with a requester that offers
everything (the TSM's default), that an ML-DSA identity needs SPDM 1.4, and that
algorithms `cryptography` cannot compute are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from spdm.algorithms import Aead, BaseAsym, BaseHash, Kem, PqcAsym
from spdm.requester import AlgorithmOffer, Outgoing, Requester, RequesterConfig
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import load_profile, shipped_profiles

# profile -> (identity key type, PqcAsymSel, BaseAsymSel, KEMAlg, hash)
EXPECTED = {
    "pqc": ("mldsa-87", PqcAsym.ML_DSA_87, 0, Kem.ML_KEM_1024, BaseHash.SHA_384),
    "pqc-mldsa65": ("mldsa-65", PqcAsym.ML_DSA_65, 0, Kem.ML_KEM_768, BaseHash.SHA_384),
    "pqc-mldsa44": ("mldsa-44", PqcAsym.ML_DSA_44, 0, Kem.ML_KEM_768, BaseHash.SHA_256),
    "pqc-kem": ("ecdsa-p384", 0, BaseAsym.ECDSA_P384, Kem.ML_KEM_1024, BaseHash.SHA_384),
}


@pytest.fixture(scope="module")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pqc-identity")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pqc_profile_negotiates_its_suite(name: str, state_root: Path) -> None:
    assert name in shipped_profiles()
    key_type, pqc, base, kem, hash_alg = EXPECTED[name]
    profile = load_profile(name)
    assert profile.identity_key_type == key_type
    device = TeeDevice(profile, state_dir=state_root / name)
    req = Requester(RequesterConfig(trust_anchors=[device.identity.root]))

    def transport(out: Outgoing) -> bytes:
        return device.spdm_message(out.doe_type, out.data)[1]

    req.run(req.init_connection(), transport)
    a = req.algorithms
    assert req.version == 0x14
    assert (a.pqc_asym, a.base_asym, a.kem, a.dhe, a.base_hash, a.aead) == (
        pqc, base, kem, 0, hash_alg, Aead.AES_256_GCM)
    req.run(req.get_digests(), transport)
    req.run(req.get_certificate(0), transport)
    req.run(req.get_measurements(signed=True), transport)
    assert req.run(req.key_exchange(), transport)
    # The identity landed in its own directory: <vendor>-<device>-<key type>/slot0.
    assert (state_root / name / f"1ded-7e10-{key_type}" / "slot0" / "leaf.key").exists()


def test_classical_requester_cannot_use_the_pqc_device(state_root: Path) -> None:
    """An ML-DSA-only device has nothing to sign with for a requester that offers no
    PqcAsymAlgo: the requester refuses ALGORITHMS rather than continuing unauthenticated."""
    device = TeeDevice(load_profile("pqc"), state_dir=state_root / "pqc")
    req = Requester(RequesterConfig(trust_anchors=[device.identity.root],
                                    algorithms=AlgorithmOffer(pqc_asym=0, kem=0)))
    with pytest.raises(Exception, match="no signature algorithm"):
        req.run(req.init_connection(),
                lambda out: device.spdm_message(out.doe_type, out.data)[1])
