"""`vdev tsm connect` over a real socket: the vdev spdm-emu server around a TeeDevice
(the composed device side), with the real SpdmEmuClient (no stand-in)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.spdm_emu_server import EmuHandle, start_server
from vdev.cli import build_parser
from vdev.cli.tsm_connect import cmd_connect


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[EmuHandle]:
    from vdev.spdm_emu.frame import TransportType

    handle, shutdown = start_server(tmp_path / "identity", TransportType.PCI_DOE)
    try:
        yield handle
    finally:
        shutdown()


def test_connect_to_run_over_the_socket(emu: EmuHandle, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    bars = [f"{b.index}:{b.base:#x}:{b.size:#x}" for b in emu.device.live_bars()]
    argv = ["tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}",
            "--trust-anchor", str(anchor), "--start", "--json"]
    for b in bars:
        argv += ["--expect-bar", b]
    rc = cmd_connect(build_parser().parse_args(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    e = json.loads(out)
    tdi = next(iter(e["tdis"].values()))
    # --start without --stop: the TSM still stops the TDI before its disconnect.
    assert [h["state"] for h in tdi["history"]] == [
        "CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "CONFIG_UNLOCKED"]
    assert tdi["report_check"].startswith("matches")
    assert e["spdm"]["session_state"] == "ended"
    assert {s["state"] for s in e["ide"]["device"]["slots"]} == {"stopped"}
