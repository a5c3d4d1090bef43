"""The vfio-user changes of make qemu's series (qemu/README.md, 0007 to 0009) under
the 7.3 guest's own DOE driver: with the vCPU thread reading its own replies and
config writes posted (x-post-config-writes), or the mailbox's data moved in bulk
(x-doe-batch), a 4 KiB DOE object still arrives byte for byte, and the accesses
really went out the way the property says."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bench.doe_throughput import CERTIFICATE_HEADER_SIZE, DOE_HEADER_SIZE, PROFILE, _get_certificate
from bench.guest_doe import OBJECT, _vca_requests
from vdev.doe.mailbox import DOE_READ
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci import doe_batch
from vdev.pci.device_api import FIRST_DEVICE_REGION, RegionIndex
from vdev.profiles import load_profile, resolve_profile
from vdev.vfio_user.wire import NO_REPLY
from vdev.vm.demo import BDF, RunOptions, connect_session
from vdev.vm.env import VmEnv
from vdev.vm.qemu import VfioUserAttach
from vdev.vm.session import (
    GuestRun,
    device_server,
    root_anchor,
    script,
    tsm_mailbox_server,
)

# The server's debug line per REGION_READ or REGION_WRITE: the command, its header
# flags, and the payload's offset (u64), region (u32) and count (u32), little-endian.
ACCESS = re.compile(r"<- (REGION_READ|REGION_WRITE) id \d+ flags (0x[0-9a-f]+) size \d+ "
                    r"fds \d+ ([0-9a-f]{16})([0-9a-f]{8})([0-9a-f]{8})")
# The default profile's DOE capability is at 0x100 (PCIe r6.2 §7.9.24).
DOE_CAP = 0x100
DOE_READ_DATA = DOE_CAP + DOE_READ
VDEVTEST_DOE_MAX = 1536  # vdevtest's response buffer; doe.c reads and drops the rest
BUILD_TIMEOUT = 3600  # a cold build of the patched QEMU
DOE_BATCH_REGION = FIRST_DEVICE_REGION  # the endpoint's only device-specific region


@dataclass(frozen=True)
class Access:
    """One REGION_READ / REGION_WRITE the server logged."""

    cmd: str
    flags: int
    offset: int
    region: int
    count: int


def _u(hexle: str) -> int:
    return int.from_bytes(bytes.fromhex(hexle), "little")


def doe_exchange_in_guest(env: VmEnv, workdir: Path, attach: VfioUserAttach) -> list[Access]:
    """A 4 KiB GET_CERTIFICATE response through the guest's DOE driver, the device
    attached as `attach` says (its socket filled in); asserts the object is what an
    in-process device of the same identity answers, and returns the region accesses
    the server logged."""
    profile = workdir / "doe.toml"
    profile.write_text(PROFILE)
    state = workdir / "identity"
    vca, version = _vca_requests(profile, state)
    cert = _get_certificate(version, 0, OBJECT - DOE_HEADER_SIZE - CERTIFICATE_HEADER_SIZE)
    reference = TeeDevice(load_profile(str(profile)), state_dir=state)
    for request in vca:
        reference.spdm_message(1, request)
    expected = reference.spdm_message(1, cert)[1]
    assert len(expected) + DOE_HEADER_SIZE == OBJECT

    dev = device_server(workdir, "doe", ["--profile", str(profile), "--state-dir", str(state),
                                         "--log-level", "debug"]).start(timeout=120)
    try:
        res = GuestRun(
            env=env, workdir=workdir, modules=["vdevtest"], timeout=300,
            devices=[replace(attach, socket=dev.socket)],
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
    log = dev.log_text()
    assert "Traceback" not in log
    return [Access(cmd, int(flags, 16), _u(offset), _u(region), _u(count))
            for cmd, flags, offset, region, count in ACCESS.findall(log)]


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_posted_config_writes_carry_a_doe_object_byte_for_byte(
        patched_env: VmEnv, workdir: Path) -> None:
    accesses = doe_exchange_in_guest(patched_env, workdir,
                                     VfioUserAttach(Path(), post_config_writes=True))
    acks = [a.flags for a in accesses if a.cmd == "REGION_WRITE"
            and a.region == RegionIndex.CONFIG and a.offset == DOE_READ_DATA]
    # doe.c acknowledges every dword it reads from the Read Data Mailbox with a write
    # (PCIe r6.2 §6.30.2): at least one per dword of the 4 KiB object, all posted.
    assert len(acks) >= OBJECT // 4
    assert all(flags & NO_REPLY for flags in acks)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_doe_batch_carries_a_doe_object_byte_for_byte(
        patched_env: VmEnv, workdir: Path) -> None:
    """x-doe-batch (qemu/README.md, 0009): the guest's DOE driver still makes its
    thousands of config accesses, but the mailbox's data reaches the server through
    the DOE batch region in a handful of messages, and the object is the same."""
    accesses = doe_exchange_in_guest(patched_env, workdir,
                                     VfioUserAttach(Path(), doe_batch=True))
    mailbox = [a for a in accesses
               if a.region == RegionIndex.CONFIG and a.offset == DOE_READ_DATA]
    batch = [a for a in accesses if a.region == DOE_BATCH_REGION]
    # The 4 KiB response left the device in one READ_DATA read of the whole object,
    # and no Read Data Mailbox access of the guest went to the server one by one.
    read_data = (DOE_CAP << doe_batch.WINDOW_SHIFT) + doe_batch.READ_DATA
    assert Access("REGION_READ", 0, read_data, DOE_BATCH_REGION, OBJECT) in batch
    assert not mailbox
    # Every access the server saw for the exchanges: far fewer than a DW each.
    assert len(batch) + len([a for a in accesses if a.region == RegionIndex.CONFIG]) < 600


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_make_run_doe_batch_pqc_reaches_run(patched_env: VmEnv, workdir: Path) -> None:
    """`make run DOE_BATCH=1 PROFILE=pqc`: the SPDM 1.4 ML-DSA-87 / ML-KEM-1024 connect
    to RUN with every check holding, its certificate chain and large messages carried
    through the DOE batch region."""
    checks, result = connect_session(patched_env, workdir, str(resolve_profile("pqc")),
                                     options=RunOptions(doe_batch=True))
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert result is not None, failed
    assert not failed, "\n".join(failed)
    by_name = {c.name: c.detail for c in checks}
    assert "ML_DSA_87" in by_name["SPDM negotiated"] and "ML_KEM_1024" in by_name["SPDM negotiated"]
    assert "RUN" in by_name["START -> RUN"]
    device_argv = next(a for a in result.argv if '"x-doe-batch":true' in a)
    assert '"driver":"vfio-user-pci"' in device_argv


def test_doe_batch_on_a_device_without_doe_is_refused_at_start(
        patched_env: VmEnv, workdir: Path) -> None:
    """The TSM mailbox device has no DOE capability: QEMU refuses x-doe-batch on it
    with one line instead of running without what was asked."""
    identity = workdir / "identity"
    dev = device_server(workdir, "device", ["--state-dir", str(identity)]).start(timeout=120)
    try:
        anchor = root_anchor(identity, workdir / "root.pem")
        tsm = tsm_mailbox_server(workdir, ["--trust-anchor", str(anchor)]).start()
        try:
            res = GuestRun(env=patched_env, workdir=workdir, modules=[], timeout=120,
                           devices=[VfioUserAttach(tsm.socket, doe_batch=True)]).boot()
        finally:
            tsm.stop()
    finally:
        dev.stop()
    assert not res.completed and res.returncode != 0
    assert any("x-doe-batch: the device has no DOE capability" in line
               for line in res.stderr), res.stderr
