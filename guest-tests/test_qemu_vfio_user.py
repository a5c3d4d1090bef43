"""The vfio-user changes of make qemu's series (qemu/README.md, 0007 and 0008) under
the 7.3 guest's own DOE driver: with the vCPU thread reading its own replies and
config writes posted (x-post-config-writes), a 4 KiB DOE object still arrives
byte for byte, and the writes really went out without a reply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.doe_throughput import CERTIFICATE_HEADER_SIZE, DOE_HEADER_SIZE, PROFILE, _get_certificate
from bench.guest_doe import OBJECT, _vca_requests
from vdev.doe.mailbox import DOE_READ
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.device_api import RegionIndex
from vdev.profiles import load_profile
from vdev.vfio_user.wire import NO_REPLY
from vdev.vm.demo import BDF
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach
from vdev.vm.session import GuestRun, device_server, script

# The server's debug line per request: the command, its header flags, and the
# REGION_WRITE payload's offset (u64) and region (u32), little-endian.
REQUEST = re.compile(r"<- REGION_WRITE id \d+ flags (0x[0-9a-f]+) size \d+ fds \d+ "
                     r"([0-9a-f]{16})([0-9a-f]{8})")
# The default profile's DOE capability is at 0x100 (PCIe r6.2 §7.9.24).
DOE_READ_DATA = 0x100 + DOE_READ
VDEVTEST_DOE_MAX = 1536  # vdevtest's response buffer; doe.c reads and drops the rest
BUILD_TIMEOUT = 3600  # a cold build of the patched QEMU


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_posted_config_writes_carry_a_doe_object_byte_for_byte(
        patched_env: VmEnv, workdir: Path) -> None:
    profile = workdir / "doe.toml"
    profile.write_text(PROFILE)
    state = workdir / "identity"
    vca, version = _vca_requests(profile, state)
    cert = _get_certificate(version, 0, OBJECT - DOE_HEADER_SIZE - CERTIFICATE_HEADER_SIZE)
    # What the device answers, from an in-process device of the same identity.
    reference = TeeDevice(load_profile(str(profile)), state_dir=state)
    for request in vca:
        reference.spdm_message(1, request)
    expected = reference.spdm_message(1, cert)[1]
    assert len(expected) + DOE_HEADER_SIZE == OBJECT

    dev = device_server(workdir, "doe", ["--profile", str(profile), "--state-dir", str(state),
                                         "--log-level", "debug"]).start(timeout=120)
    try:
        res = GuestRun(
            env=patched_env, workdir=workdir, modules=["vdevtest"], timeout=300,
            devices=[VfioUserAttach(dev.socket, post_config_writes=True)],
            scripts={"50-doe-posted.sh": script(
                "doe-posted.sh", EP=BDF, VCA=f'"{" ".join(r.hex() for r in vca)}"',
                CERT=cert.hex())},
        ).boot()
    finally:
        dev.stop()
    assert res.completed, res.console[-20:]
    assert res.value("doe_vca_failed") is None
    assert res.value("doe_rc") == str(VDEVTEST_DOE_MAX)
    assert res.value("doe_rsp") == expected[:VDEVTEST_DOE_MAX].hex()

    config_writes = [(int(flags, 16), int.from_bytes(bytes.fromhex(offset), "little"))
                     for flags, offset, region in REQUEST.findall(dev.log_text())
                     if int.from_bytes(bytes.fromhex(region), "little") == RegionIndex.CONFIG]
    acks = [flags for flags, offset in config_writes if offset == DOE_READ_DATA]
    # doe.c acknowledges every dword it reads from the Read Data Mailbox with a write
    # (PCIe r6.2 §6.30.2): at least one per dword of the 4 KiB object, all posted.
    assert len(acks) >= OBJECT // 4
    assert all(flags & NO_REPLY for flags in acks)
    assert "Traceback" not in dev.log_text()
