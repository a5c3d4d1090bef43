"""Identity persistence and measurements of the live configuration."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spdm.identity import OID_CMA_SAN
from tests.helpers.secure_host import SecureHost
from tests.vdev.endpoint.test_secure_mailbox import mailbox_host
from vdev.endpoint.measurements import (
    INDEX_FIRMWARE,
    INDEX_HARDWARE_CONFIG,
    INDEX_VERSION,
    configuration_image,
)
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import DeviceProfile


def leaf_der(device: TeeDevice) -> bytes:
    return device.identity.leaf.public_bytes(serialization.Encoding.DER)


def test_identity_is_generated_once_and_reused(tmp_path: Path) -> None:
    first = TeeDevice(state_dir=tmp_path)
    second = TeeDevice(state_dir=tmp_path)
    assert leaf_der(first) == leaf_der(second)
    keys = list(tmp_path.rglob("*.key"))
    assert keys and all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys)


def test_default_identity_is_per_vendor_device_and_key_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    profile = DeviceProfile(vendor_id=0x1AB4, device_id=0x0042)
    device = TeeDevice(profile)
    where = tmp_path / ".local/state/vdev/identity/1ab4-0042-ecdsa-p384/slot0"
    assert device.identity_dir == where
    assert (where / "leaf.key").exists()


def test_leaf_carries_the_profile_cma_san(state_dir: Path) -> None:
    device = TeeDevice(DeviceProfile(revision=0x07), state_dir=state_dir / "rev7")
    san = device.identity.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    names = [n for n in san.value if isinstance(n, x509.OtherName)]
    assert names[0].type_id.dotted_string == OID_CMA_SAN
    assert b"Vendor=1ded:Device=7e10:CC=120000:REV=07" in names[0].value


def measurements(host: SecureHost) -> dict[int, bytes]:
    host.run(host.requester.get_measurements(signed=True))
    return {i: b.value for i, b in host.requester.measurements.items()}


def test_configuration_measurement_follows_the_configuration(state_dir: Path) -> None:
    device = TeeDevice(state_dir=state_dir)
    host = mailbox_host(device)
    host.authenticate()
    before = measurements(host)
    assert before[INDEX_FIRMWARE] == device.profile.firmware_digest_bytes
    assert before[INDEX_VERSION] == b"vdev 0.1.0"
    image = configuration_image(device.config)
    host.program_bar0()
    assert configuration_image(device.config) != image
    after = measurements(host)
    assert after[INDEX_HARDWARE_CONFIG] != before[INDEX_HARDWARE_CONFIG]
    assert after[INDEX_FIRMWARE] == before[INDEX_FIRMWARE]
    # Reading measurements (DOE traffic) is not a configuration change.
    assert measurements(host)[INDEX_HARDWARE_CONFIG] == after[INDEX_HARDWARE_CONFIG]


def test_profile_firmware_digest_is_measured(state_dir: Path) -> None:
    digest = bytes(range(48))
    device = TeeDevice(DeviceProfile(firmware_digest=digest.hex()), state_dir=state_dir)
    host = mailbox_host(device)
    host.authenticate()
    assert measurements(host)[INDEX_FIRMWARE] == digest


def test_the_profile_measurement_never_holds_a_psk() -> None:
    from vdev.endpoint.measurements import profile_image
    from vdev.profiles import load_profile

    image = profile_image(load_profile("spdm-emu-defaults"))
    assert b"TestPskData" not in image and b"TestPskData".hex().encode() not in image
    assert b"TestPskHint\0".hex().encode() in image  # the hint stands in for it
