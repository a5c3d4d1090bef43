"""The summary's IDE checks on the patched QEMU (make run QEMU_IDE=1), from a
guest's records, QEMU's stderr and the TSM's evidence."""

from __future__ import annotations

import struct
from typing import Any

from vdev.vm.checks import ConnectExpected, ide_checks
from vdev.vm.qemu import MARK, VmResult

EP = "0000:01:00.0"
VIOLATION = ("12345@1700000000.000001:pcie_ide_violation rp1 stream 0 partner-not-enabled: "
             "enabled Stream ID 1 before its partner 01:00.0 enabled it")


def config(stream_id: int | None) -> str:
    """A config space with an IDE capability at 0x100 and one Selective IDE
    Stream; enabled and Secure with `stream_id`, or idle (None)."""
    raw = bytearray(4096)
    struct.pack_into("<I", raw, 0x100, 0x30 | 1 << 16)
    struct.pack_into("<I", raw, 0x104, 0x2)  # one Selective IDE Stream
    if stream_id is not None:
        struct.pack_into("<II", raw, 0x110, stream_id << 24 | 1, 0x2)
    else:
        struct.pack_into("<I", raw, 0x110, 0xFF << 24)
    return raw.hex()


def guest_run(*, rp_after: int | None = None, stderr: tuple[str, ...] = (),
              console: tuple[str, ...] = ()) -> VmResult:
    records = {
        "ide_stream": f"{EP} pci_ide stream0.0.0",
        "ide_links_connected": "stream0.0.0",
        "ide_avail_before": "256", "ide_avail_connected": "255", "ide_avail_after": "256",
        "ide_links_after": "",
        "ep_config_connected": config(1), "rp_config_connected": config(1),
        "ep_config_after": config(None), "rp_config_after": config(rp_after),
    }
    lines = [f"{MARK}{k} {v}\n" for k, v in records.items()] + list(console)
    return VmResult(accel="tcg", returncode=0, timed_out=False, seconds=1.0, console=lines,
                    argv=[], stderr=list(stderr))


def checks(res: VmResult, evidence: dict[str, Any] | None = None) -> dict[str, tuple[bool, str]]:
    exp = ConnectExpected(ep=EP, mb="0000:02:00.0", id_value=0, root_port_ide=True)
    return {c.name: (c.ok, c.detail) for c in ide_checks(res, exp, evidence or {})}


def test_a_clean_stream_passes_every_check() -> None:
    got = checks(guest_run())
    assert all(ok for ok, _ in got.values()), got
    assert "256 -> 255 -> 256" in got["IDE stream registered"][1]
    assert got["IDE stream SECURE"][1] == "Stream ID 1: endpoint SECURE (2), root port SECURE (2)"


def test_a_violation_on_qemus_stderr_fails_the_root_port_checker() -> None:
    ok, detail = checks(guest_run(stderr=(VIOLATION,)))["IDE rules (root port checker)"]
    assert not ok
    assert detail.startswith("rp1 stream 0 partner-not-enabled: enabled Stream ID 1")


def test_the_evidence_names_violations_the_trace_did_not_show() -> None:
    evidence = {"ide": {"root_port": {"platform": {"violations": [
        {"rule": "key-refresh-while-enabled", "message": "K_SET_GO while enabled"}]}}}}
    ok, detail = checks(guest_run(), evidence)["IDE rules (root port checker)"]
    assert not ok and detail == "key-refresh-while-enabled: K_SET_GO while enabled"
    # The same violation in both places is reported once.
    evidence["ide"]["root_port"]["platform"]["violations"][0]["message"] = (
        "enabled Stream ID 1 before its partner 01:00.0 enabled it")
    _, detail = checks(guest_run(stderr=(VIOLATION,)), evidence)["IDE rules (root port checker)"]
    assert detail.count("before its partner") == 1


def test_a_root_port_still_enabled_after_disconnect_is_not_torn_down() -> None:
    ok, detail = checks(guest_run(rp_after=1))["IDE torn down"]
    assert not ok and "root port SECURE (2)" in detail
