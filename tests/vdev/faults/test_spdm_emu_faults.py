"""Faults on the spdm-emu socket path (`vdev spdm-emu`, PCI_DOE and MCTP): the same
rules as on the DOE mailbox, driven by `vdev tsm connect --spdm-emu` over a real TCP
socket."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.spdm_emu_server import EmuHandle, start_server
from vdev.cli import build_parser
from vdev.cli.tsm_connect import cmd_connect
from vdev.faults import FaultPlan, install
from vdev.spdm_emu.frame import TransportType


@pytest.fixture(params=[TransportType.PCI_DOE, TransportType.MCTP], ids=["doe", "mctp"])
def emu(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmuHandle]:
    handle, shutdown = start_server(tmp_path / "identity", request.param)
    try:
        yield handle
    finally:
        shutdown()


def connect(emu: EmuHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str],
            *extra: str) -> tuple[int, str, str]:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    argv = ["tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}",
            "--trust-anchor", str(anchor), "--json", *extra]
    if emu.transport == TransportType.MCTP:
        argv += ["--transport", "mctp"]
    rc = cmd_connect(build_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_wrong_nonce_over_the_socket(emu: EmuHandle, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    events: list[str] = []
    emu.device.fault_observers.append(events.append)
    install(emu.device, FaultPlan.from_specs(["wrong_nonce"]))
    rc, out, err = connect(emu, tmp_path, capsys, "--start")
    assert rc != 0
    assert "INVALID_NONCE" in out + err
    assert len(events) == 1 and events[0].startswith("wrong_nonce LOCK_INTERFACE_RESPONSE #1")


def test_delay_and_drop_over_the_socket(emu: EmuHandle, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    events: list[str] = []
    emu.device.fault_observers.append(events.append)
    install(emu.device, FaultPlan.from_specs(["delay:GET_DIGESTS:delay_ms=300"]))
    t0 = time.monotonic()
    rc, out, err = connect(emu, tmp_path, capsys)
    assert rc == 0, err
    assert time.monotonic() - t0 >= 0.3  # the reply really waited
    assert events == ["delay DIGESTS #1 (300 ms)"]
    assert json.loads(out)["spdm"]["session_state"] == "ended"

    install(emu.device, FaultPlan.from_specs(["drop:KEY_EXCHANGE"]))
    rc, out, err = connect(emu, tmp_path, capsys)
    assert rc != 0
    assert events[-1] == "drop KEY_EXCHANGE_RSP #1 (no response on the socket)"
