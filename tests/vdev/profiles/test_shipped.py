"""Shipped device profiles load; sections and the new SPDM keys are validated and
named in errors; the authentication-only profile really has no sessions."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from spdm.algorithms import Aead, BaseAsym, BaseHash, Dhe, MeasHash
from spdm.codes import MEAS_SUMMARY_ALL, RspCap
from spdm.requester import Outgoing, Requester, RequesterConfig
from spdm.responder import DEFAULT_RSP_CAPS
from vdev.doe.data_object import DOE_TYPE_CMA_SPDM
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import (
    DEFAULT_SPDM_CAPABILITIES,
    DeviceProfile,
    load_profile,
    resolve_profile,
    shipped_profiles,
)

SHIPPED = ("default", "auth-only-spdm12", "spdm-emu-defaults", "full")


@pytest.fixture(scope="module")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("profile-identity")


def test_shipped_profiles_listed_and_load() -> None:
    assert set(SHIPPED) <= set(shipped_profiles())
    for name in SHIPPED:
        assert isinstance(load_profile(name), DeviceProfile)
        assert load_profile(f"{name}.toml") == load_profile(name)


def test_default_file_is_the_builtin_default() -> None:
    assert dataclasses.replace(load_profile("default"), description="") == DeviceProfile()


def test_default_capabilities_match_the_responder() -> None:
    assert DEFAULT_SPDM_CAPABILITIES == DEFAULT_RSP_CAPS
    assert DeviceProfile().spdm_capability_flags == int(DEFAULT_RSP_CAPS)


def test_path_wins_over_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text("device_id = 0x1234\n")
    assert load_profile("default").device_id == 0x1234
    with pytest.raises(FileNotFoundError, match="auth-only-spdm12"):
        resolve_profile("no-such-profile")


def test_flat_keys_still_work() -> None:
    p = DeviceProfile.from_toml_string('vendor_id = 0x1234\nspdm_versions = "1.2"\n')
    assert (p.vendor_id, p.spdm_version_list) == (0x1234, (0x12,))


def test_sections_equal_flat_keys() -> None:
    flat = DeviceProfile.from_toml_string('device_id = 7\nspdm_dhe = "SECP256R1"\n')
    grouped = DeviceProfile.from_toml_string(
        '[pci]\ndevice_id = 7\n[spdm]\nspdm_dhe = "SECP256R1"\n')
    assert flat == grouped


def test_capability_names_accept_cap_suffix() -> None:
    p = DeviceProfile.from_toml_string('spdm_capabilities = "CERT_CAP,CHAL_CAP,MEAS_SIG"\n')
    assert p.spdm_capability_flags == RspCap.CERT | RspCap.CHAL | RspCap.MEAS_SIG


def test_spdm_emu_defaults_priorities() -> None:
    p = load_profile("spdm-emu-defaults")
    assert p.algorithm_priority("spdm_asym") == (BaseAsym.ECDSA_P384,)
    assert p.algorithm_priority("spdm_hash") == (BaseHash.SHA_384,)
    assert p.algorithm_priority("spdm_meas_hash") == (MeasHash.SHA_512,)
    assert p.algorithm_priority("spdm_dhe") == (Dhe.SECP384R1,)
    assert p.algorithm_priority("spdm_aead") == (Aead.AES_256_GCM,)


def _requester(device: TeeDevice) -> tuple[Requester, object]:
    req = Requester(RequesterConfig(trust_anchors=[device.identity.root]))

    def transport(out: Outgoing) -> bytes:
        return device.spdm_message(out.doe_type, out.data)[1]

    return req, transport


def test_spdm_emu_defaults_negotiate_as_spdm_emu(state_root: Path) -> None:
    device = TeeDevice(load_profile("spdm-emu-defaults"), state_dir=state_root / "emu")
    req, transport = _requester(device)
    req.run(req.init_connection(), transport)
    a = device.responder.algorithms
    assert (a.base_asym, a.base_hash, a.meas_hash, a.dhe, a.aead) == (
        BaseAsym.ECDSA_P384, BaseHash.SHA_384, MeasHash.SHA_512, Dhe.SECP384R1,
        Aead.AES_256_GCM)
    req.run(req.get_digests(), transport)
    req.run(req.get_certificate(0), transport)
    assert req.run(req.key_exchange(), transport)  # sessions work with these choices


def test_auth_only_answers_challenge_and_measurements_but_not_key_exchange(
    state_root: Path,
) -> None:
    profile = load_profile("auth-only-spdm12")
    assert not profile.tee_io
    device = TeeDevice(profile, state_dir=state_root / "auth-only")
    req, transport = _requester(device)
    req.run(req.init_connection(), transport)
    assert req.conn.version == 0x12
    assert not req.conn.rsp_caps & (RspCap.KEY_EX | RspCap.PSK | RspCap.PSK_WITH_CONTEXT)
    req.run(req.get_digests(), transport)
    req.run(req.get_certificate(0), transport)
    req.run(req.challenge(0, MEAS_SUMMARY_ALL), transport)
    req.run(req.get_measurements(signed=True), transport)
    assert req.last_signed_measurements
    # KEY_EXCHANGE (SPDM 1.2, slot 0, ReqSessionID 0xFFFE, ECDHE P-384 exchange data):
    # ERROR(UnsupportedRequest 0x07) with the request code 0xE4 as ErrorData.
    key_exchange = (bytes([0x12, 0xE4, 0x00, 0x00]) + b"\xfe\xff" + b"\x00\x00"
                    + bytes(32) + bytes(96) + b"\x00\x00")
    _type, reply = device.spdm_message(DOE_TYPE_CMA_SPDM, key_exchange)
    assert reply == bytes([0x12, 0x7F, 0x07, 0xE4])
    # The connection survives: measurements still answer afterwards.
    req.run(req.get_measurements(signed=True), transport)


def test_bad_profile_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[spdm]\nspdm_capabilities = "CERT,KEY_EX"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "vdev.cli", "serve", "--socket", str(tmp_path / "s"),
         "--profile", str(bad), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "spdm_capabilities" in proc.stderr and "ENCRYPT or MAC" in proc.stderr
