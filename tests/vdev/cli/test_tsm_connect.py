"""`vdev tsm connect`, run against the in-process device through a stand-in for the
spdm-emu socket client (same `doe_exchange(type, payload)` method)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from spdm.crypto import meas_digest
from spdm.measurements import default_measurements
from tests.helpers.tsm_rig import Device, identity, make_device
from vdev.cli import build_parser
from vdev.cli.tsm_connect import cmd_connect


class StandInClient:
    def __init__(self, device: Device, fail_at: int | None = None) -> None:
        self.device = device
        self.fail_at = fail_at
        self.closed = False

    def doe_exchange(self, data_object_type: int, payload: bytes) -> bytes:
        if self.fail_at is not None and self.device.exchanges + 1 >= self.fail_at:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self.device.doe_exchange(data_object_type, payload)

    def continue_(self) -> None:
        self.closed = True


@pytest.fixture
def anchor(tmp_path: Path) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(identity().root.public_bytes(serialization.Encoding.PEM))
    return path


def _args(*extra: str) -> list[str]:
    return ["tsm", "connect", "--spdm-emu", "127.0.0.1:2323", *extra]


def test_connect_lock_start_stop_json(anchor: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "ref.json"
    m = default_measurements()
    policy.write_text(json.dumps({
        "version": "vdev 0.1.0",
        "measurements": {"2": meas_digest(0x4, m[1].value).hex()},
    }))
    dev = make_device()
    client = StandInClient(dev)
    args = build_parser().parse_args(_args(
        "--trust-anchor", str(anchor), "--policy", str(policy), "--start", "--stop",
        "--expect-bar", "0:0xfe000000:0x10000", "--expect-bar", "2:0xfd000000:0x2000",
        "--json"))
    rc = cmd_connect(args, client_factory=lambda host, port: client)
    out, err = capsys.readouterr()
    assert rc == 0, err
    e = json.loads(out)
    assert e["state"] == "idle" and e["spdm"]["session_state"] == "ended"
    assert [h["state"] for h in e["tdis"]["01:00.0"]["history"]] == [
        "CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "CONFIG_UNLOCKED"]
    assert e["policy"]["file"] == str(policy)
    assert "- connect" in err and "[ide_km] K_SET_GO" in err and "vdev tsm: ok" in err
    assert client.closed
    for key, _ifv in dev.target.keys.values():  # none left, but check the log anyway
        assert key.hex() not in out + err


def test_readable_output_and_untrusted_root(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(identity("other").root.public_bytes(serialization.Encoding.PEM))
    dev = make_device()
    args = build_parser().parse_args(_args("--trust-anchor", str(other), "--lock"))
    rc = cmd_connect(args, client_factory=lambda host, port: StandInClient(dev))
    out, _err = capsys.readouterr()
    assert rc == 1
    assert "FAILED: connect failed at GET_CERTIFICATE: certificate chain not trusted" in out
    assert "Evidence" in out and "last error:" in out


def test_readable_report_and_transport_failure(anchor: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dev = make_device()
    args = build_parser().parse_args(_args("--trust-anchor", str(anchor), "--lock"))
    assert cmd_connect(args, client_factory=lambda h, p: StandInClient(dev)) == 0
    out, _ = capsys.readouterr()
    assert "MMIO range(s):" in out and "MSIX_TABLE" in out
    assert "report check: not checked: no expected MMIO ranges supplied" in out
    # Flags and ranges read as a person writes them, not as Python reprs.
    assert "lock flags supported NO_FW_UPDATE|SYSTEM_CACHE_LINE_SIZE|LOCK_MSIX" in out
    assert "CONFIG_LOCKED (flags NO_FW_UPDATE|LOCK_MSIX, default stream" in out
    assert "  2. range ID 0: " in out and "[MSIX_TABLE]" in out
    assert "['" not in out and "']" not in out, out
    dev = make_device()
    rc = cmd_connect(args, client_factory=lambda h, p: StandInClient(dev, fail_at=12))
    out, _ = capsys.readouterr()
    assert rc == 1
    assert "transport failure: errno -104 (-ECONNRESET)" in out


def test_bad_arguments(anchor: Path) -> None:
    args = build_parser().parse_args(_args("--trust-anchor", str(anchor), "--device", "zz"))
    with pytest.raises(SystemExit, match="bad PCI address"):
        cmd_connect(args, client_factory=lambda h, p: StandInClient(make_device()))
    args = build_parser().parse_args(["tsm", "connect", "--spdm-emu", "nohostport",
                                      "--trust-anchor", str(anchor)])
    with pytest.raises(SystemExit, match="HOST:PORT"):
        cmd_connect(args)
