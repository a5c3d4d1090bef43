"""Device profile defaults, TOML loading, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdev.profiles import DeviceProfile, ProfileError


def test_defaults() -> None:
    p = DeviceProfile()
    assert (p.vendor_id, p.device_id) == (0x1DED, 0x7E10)
    assert p.bar0_size == 0x10000
    assert p.interrupt_pin == 0
    assert p.ide_selective_streams == 1 and p.ide_address_associations == 1
    assert p.doe_max_object_dw == 1 << 18


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("vendor_id = 0x1234\nmsix_vectors = 16\nide_selective_streams = 2\n")
    p = DeviceProfile.from_toml(path)
    assert (p.vendor_id, p.msix_vectors, p.ide_selective_streams) == (0x1234, 16, 2)


@pytest.mark.parametrize(
    "text,key,reason",
    [
        ("vendor = 1", "vendor", "unknown key"),
        ("vendor_id = 0xFFFF", "vendor_id", "not in"),
        ("vendor_id = '0x1234'", "vendor_id", "expected int"),
        ("tee_io = 1", "tee_io", "expected bool"),
        ("msix_vectors = true", "msix_vectors", "expected int"),
        ("bar0_size = 0x3000", "bar0_size", "power of two"),
        ("bar0_size = 0x4000\nmsix_vectors = 2048", "bar0_size", "too small"),
        ("interrupt_pin = 5", "interrupt_pin", "not in"),
        ("doe_interrupt_vector = 8", "doe_interrupt_vector", "not in"),
        ("ide_selective_streams = 0", "ide_selective_streams", "not in"),
        ("doe_max_object_dw = 2", "doe_max_object_dw", "not in"),
        # sections, capabilities and algorithms
        ("colour = 1\n", "colour", "unknown key"),
        ("[spdm]\nvendor_id = 1\n", "spdm.vendor_id", "belongs in [pci]"),
        ("[spdm]\nwat = 1\n", "spdm.wat", "unknown key"),
        ("[gpu]\nx = 1\n", "gpu", "unknown section"),
        ("device_id = 1\n[pci]\ndevice_id = 2\n", "pci.device_id", "given twice"),
        ('spdm_capabilities = "CERT,TELEPORT"\n', "spdm_capabilities", "'TELEPORT'"),
        ('spdm_capabilities = "CERT,CHAL,ENCRYPT"\n', "spdm_capabilities", "need KEY_EX or PSK"),
        ('spdm_capabilities = "CERT,KEY_EX"\n', "spdm_capabilities", "need ENCRYPT or MAC"),
        ('spdm_capabilities = "CHAL"\n', "spdm_capabilities", "need CERT"),
        ('spdm_capabilities = "CERT,MEAS_FRESH"\n', "spdm_capabilities", "MEAS_FRESH"),
        ('spdm_capabilities = "CERT,MEAS_SIG,MEAS_NO_SIG"\n', "spdm_capabilities", "exclusive"),
        ('spdm_dhe = "X25519"\n', "spdm_dhe", "'X25519' is not one of"),
        ('spdm_hash = "SHA_384,SHA_384"\n', "spdm_hash", "twice"),
        ('spdm_asym = "ECDSA_P256"\n', "spdm_asym", "identity key's algorithm"),
        ("spdm_capabilities = 3\n", "spdm_capabilities", "expected str"),
        ("msix_vectors = 0\n", "msix_vectors", "not in"),
        ("vendor_id = {a = 1}\n", "vendor_id", "expected int"),
        ("vendor_id = \n", "<string>", "Invalid value"),
        # SPDM 1.4 and post-quantum keys
        ('identity_key_type = "mldsa-65"\n', "spdm_versions", "lacks 1.4"),
        ('spdm_versions = "1.4"\nidentity_key_type = "mldsa-65"\nspdm_pqc_asym = "ML_DSA_87"\n',
         "spdm_pqc_asym", "identity key's algorithm"),
        ('spdm_kem = "ML_KEM_512"\n', "spdm_kem", "not implemented"),
        ('spdm_pqc_asym = "SLH_DSA_SHA2_128S"\n', "spdm_pqc_asym", "not implemented"),
        ('spdm_kem = "X25519MLKEM768"\n', "spdm_kem", "is not one of"),
        ('spdm_versions = "1.5"\n', "spdm_versions", "1.4"),
        ('spdm_pqc_first = "yes"\n', "spdm_pqc_first", "expected bool"),
    ],
)
def test_bad_profiles_name_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ProfileError) as info:
        DeviceProfile.from_toml_string(text)
    assert info.value.key == key
    assert reason in info.value.reason
    assert repr(key) in str(info.value)


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("vendor_id = = 1")
    with pytest.raises(ProfileError):
        DeviceProfile.from_toml(path)
