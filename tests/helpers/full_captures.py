"""Decrypted captures (pcapng, `--pcap-decrypted`) of real `vdev tsm` commands against a
device on the `full` profile over the spdm-emu socket, written once per test session for
the Wireshark dissector test and the `vdev trace show` test:

  connect      KEY_EXCHANGE with slot 1 on a multi-key connection, handshake in the clear,
               HEARTBEAT, KEY_UPDATE, key pair information, MEL, signed endpoint info,
               END_SESSION
  psk          PSK_EXCHANGE / PSK_FINISH with the profile's PSK, HEARTBEAT, KEY_UPDATE
  csr          GET_CSR for key pair 2 (GenericCert)
  set_cert     SET_CERTIFICATE of a chain for that CSR into slot 5
  erase        SET_CERTIFICATE Erase of slot 5

and beside them `csr_pem` (the CSR the device returned) and `chain_pem` (the chain
installed, root first).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spdm.identity import generate_identity
from spdm.provisioning import issue_from_csr
from tests.helpers.cli import vdev
from tests.helpers.spdm_emu_server import start_server

# The `full` profile's PSK (vdev/profiles/full.toml): a public test key.
FULL_PSK_HINT = "vdev-full-test-psk"
FULL_PSK = "hex:" + bytes(range(32)).hex()


@pytest.fixture(scope="session")
def full_profile_captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vdev.profiles import load_profile
    from vdev.spdm_emu.frame import TransportType

    work = tmp_path_factory.mktemp("full-captures")
    emu, shutdown = start_server(work / "identity", TransportType.PCI_DOE,
                                 load_profile("full"))
    caps = {name: work / f"{name}.pcapng"
            for name in ("connect", "psk", "csr", "set_cert", "erase")}
    try:
        anchor = work / "root.pem"
        anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
        psk = work / "psk"
        psk.write_text(f"{FULL_PSK_HINT}={FULL_PSK}\n")
        psk.chmod(0o600)
        common = ("--spdm-emu", f"127.0.0.1:{emu.port}", "--trust-anchor", anchor)

        def run(*argv: str | Path) -> None:
            out = vdev(*argv)
            assert out.returncode == 0, out.stdout + out.stderr

        run("tsm", "connect", *common, "--multi-key", "--slot", "1", "--handshake-in-clear",
            "--heartbeat", "1", "--key-update", "--device-info",
            "--pcap-decrypted", caps["connect"])
        run("tsm", "connect", *common, "--psk-file", psk, "--psk-hint", FULL_PSK_HINT,
            "--heartbeat", "1", "--key-update", "--pcap-decrypted", caps["psk"])
        key_pair = ("--multi-key", "--key-pair", "2", "--cert-model", "generic-cert")
        csr_file = work / "device.csr"
        run("tsm", "provision", "csr", *common, *key_pair, "--subject", "CN=slot 5",
            "--out", csr_file, "--pcap-decrypted", caps["csr"])
        ca = generate_identity()
        csr = x509.load_pem_x509_csr(csr_file.read_bytes())
        leaf = issue_from_csr(csr.public_bytes(serialization.Encoding.DER), ca.certs[1],
                              ca.ca_keys[1])
        chain = work / "chain.pem"
        chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in (ca.root, ca.certs[1], leaf)))
        run("tsm", "provision", "set-certificate", *common, *key_pair, "--slot-to-set", "5",
            "--chain", chain, "--pcap-decrypted", caps["set_cert"])
        run("tsm", "provision", "erase", *common, *key_pair, "--slot-to-set", "5",
            "--pcap-decrypted", caps["erase"])
    finally:
        shutdown()
    return {**caps, "csr_pem": csr_file, "chain_pem": chain}
