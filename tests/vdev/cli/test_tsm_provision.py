"""`vdev tsm provision` over a real socket against the `full` profile: CSR, installing a
chain signed by our own CA into a slot, erasing it, and reading the device information;
`vdev tsm connect --multi-key --device-info` on the same device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spdm.identity import generate_identity
from spdm.provisioning import issue_from_csr
from tests.helpers.spdm_emu_server import EmuHandle, start_server
from vdev.cli import build_parser
from vdev.cli.tsm_connect import cmd_connect
from vdev.profiles import load_profile


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[EmuHandle]:
    from vdev.spdm_emu.frame import TransportType

    handle, shutdown = start_server(tmp_path / "identity", TransportType.PCI_DOE,
                                    load_profile("full"))
    try:
        yield handle
    finally:
        shutdown()


def args(emu: EmuHandle, tmp_path: Path, *extra: str) -> list[str]:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
    return ["--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor", str(anchor), *extra]


def provision(*argv: str) -> int:
    ns = build_parser().parse_args(["tsm", "provision", *argv])
    rc: int = ns.func(ns)
    return rc


def test_csr_install_and_erase(emu: EmuHandle, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    csr_file = tmp_path / "device.csr"
    assert provision("csr", *args(emu, tmp_path, "--subject", "CN=owner cert,O=lab",
                                  "--out", str(csr_file))) == 0
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert csr.subject == x509.Name.from_rfc4514_string("CN=owner cert,O=lab")
    assert csr.public_key() == emu.device.identity.key.public_key()

    ca = generate_identity()
    leaf = issue_from_csr(csr.public_bytes(serialization.Encoding.DER), ca.certs[1],
                          ca.ca_keys[1])
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                               for c in (ca.root, ca.certs[1], leaf)))
    capsys.readouterr()
    assert provision("set-certificate", *args(emu, tmp_path, "--slot-to-set", "5",
                                              "--chain", str(chain))) == 0
    assert "slots provisioned: [0, 5]" in capsys.readouterr().out
    assert emu.device.responder.config.slots.slots[5].leaf == leaf
    assert provision("erase", *args(emu, tmp_path, "--slot-to-set", "5")) == 0
    assert "slots provisioned: [0]" in capsys.readouterr().out


def test_info_and_multi_key_connect(emu: EmuHandle, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert provision("info", *args(emu, tmp_path, "--multi-key")) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["multi_key"] is True
    assert [k["assoc_cert_slots"] for k in info["key_pairs"]] == [[0], [1], [2], [3]]
    assert [e["type"] for e in info["mel"]["entries"]] == [
        "IMMUTABLE_ROM", "MUTABLE_FIRMWARE", "FIRMWARE_CONFIG"]
    assert info["endpoint_info"]["signed"] is True
    assert info["endpoint_info"]["identifiers"][0]["vendor_id"] == "ed1d"

    argv = ["tsm", "connect", *args(emu, tmp_path, "--multi-key", "--slot", "2",
                                    "--device-info", "--heartbeat", "1", "--key-update",
                                    "--handshake-in-clear", "--start", "--json")]
    rc = cmd_connect(build_parser().parse_args(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    e = json.loads(out)
    assert e["certificates"][0]["slot"] == 2
    assert e["device_info"]["key_pairs"][2]["assoc_cert_slots"] == [2]
    assert "in the clear handshake" in err or "in the clear handshake" in out
