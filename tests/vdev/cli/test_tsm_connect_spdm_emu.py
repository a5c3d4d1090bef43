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


def _anchor(emu: EmuHandle, tmp_path: Path) -> Path:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    return anchor


PSK_TEXT = "# the device's and the TSM's shared key\nlab-tsm=hex:" + "5a" * 32 + "\n"


def test_psk_session_heartbeat_and_key_update_over_the_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vdev.spdm_emu.frame import TransportType

    psk_file = tmp_path / "psk"
    psk_file.write_text(PSK_TEXT)
    psk_file.chmod(0o600)
    handle, shutdown = start_server(tmp_path / "identity", TransportType.PCI_DOE,
                                    psks={b"lab-tsm": b"\x5a" * 32})
    try:
        argv = ["tsm", "connect", "--spdm-emu", f"127.0.0.1:{handle.port}",
                "--trust-anchor", str(_anchor(handle, tmp_path)), "--psk-file",
                str(psk_file), "--psk-hint", "lab-tsm", "--heartbeat", "2", "--key-update",
                "--start", "--json"]
        rc = cmd_connect(build_parser().parse_args(argv))
    finally:
        shutdown()
    out, err = capsys.readouterr()
    assert rc == 0, err
    e = json.loads(out)
    assert e["spdm"]["authentication"] == "psk+measurements-in-session"
    assert e["spdm"]["heartbeat_period"] is None  # the session ended with the disconnect
    events = [x["event"] for x in e["log"]]
    assert sum(ev == "heartbeat: ok" for ev in events) == 2
    assert "key_update: ok" in events and "session keys updated and verified" in events
    assert any("PSK, hint 'lab-tsm'" in ev for ev in events)
    assert "5a" * 16 not in out + err  # the PSK is never printed
    assert next(iter(e["tdis"].values()))["state"] == "CONFIG_UNLOCKED"


def test_psk_hint_checked_before_connecting(tmp_path: Path) -> None:
    from tests.helpers.spdm_harness import identity_for

    anchor = tmp_path / "root.pem"
    anchor.write_bytes(identity_for("ecdsa-p384").root.public_bytes(serialization.Encoding.PEM))
    psk_file = tmp_path / "psk"
    psk_file.write_text(PSK_TEXT)
    argv = ["tsm", "connect", "--spdm-emu", "127.0.0.1:1", "--trust-anchor", str(anchor),
            "--psk-file", str(psk_file), "--psk-hint", "other"]
    with pytest.raises(SystemExit, match="--psk-hint 'other' is not in --psk-file .* "
                       "\\(it has 'lab-tsm'\\)"):
        cmd_connect(build_parser().parse_args(argv))
    bad = tmp_path / "bad"
    bad.write_text("lab-tsm=hex:zz\n")
    with pytest.raises(SystemExit, match="entry 1: the key after 'hex:' is not hex"):
        cmd_connect(build_parser().parse_args(argv[:-4] + ["--psk-file", str(bad)]))


def test_handshake_in_the_clear_over_the_socket(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from vdev.profiles import DeviceProfile
    from vdev.spdm_emu.frame import TransportType

    handle, shutdown = start_server(tmp_path / "identity", TransportType.PCI_DOE,
                                    DeviceProfile(spdm_capabilities="all"))
    try:
        argv = ["tsm", "connect", "--spdm-emu", f"127.0.0.1:{handle.port}",
                "--trust-anchor", str(_anchor(handle, tmp_path)), "--handshake-in-clear",
                "--lock", "--json"]
        rc = cmd_connect(build_parser().parse_args(argv))
    finally:
        shutdown()
    out, err = capsys.readouterr()
    assert rc == 0, err
    events = [x["event"] for x in json.loads(out)["log"]]
    assert any("(in the clear handshake)" in ev for ev in events)
