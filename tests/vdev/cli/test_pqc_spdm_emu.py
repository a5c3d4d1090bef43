"""SPDM 1.4 over the spdm-emu socket: `vdev tsm connect --spdm-emu` (this repo's
requester, in the TSM model) against a `vdev spdm-emu`-style server around a TeeDevice
(this repo's responder), for every suite: P-256, P-384 and ML-DSA-44/65/87 identities
with ML-KEM-768 and ML-KEM-1024 sessions, and ML-DSA identities with ECDHE sessions.
Each connect runs to RUN and back; the evidence names what was negotiated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.spdm_emu_server import start_server
from vdev.cli import build_parser
from vdev.cli.tsm_connect import cmd_connect
from vdev.profiles import DeviceProfile
from vdev.spdm_emu.frame import TransportType

IDENTITIES = {"P-256": ("ecdsa-p256", "ECDSA_P256"), "P-384": ("ecdsa-p384", "ECDSA_P384"),
              "ML-DSA-44": ("mldsa-44", "ML_DSA_44"), "ML-DSA-65": ("mldsa-65", "ML_DSA_65"),
              "ML-DSA-87": ("mldsa-87", "ML_DSA_87")}
MATRIX = [(i, k) for i in IDENTITIES for k in ("ML_KEM_768", "ML_KEM_1024")]
MATRIX += [("ML-DSA-87", "SECP384R1"), ("ML-DSA-44", "SECP256R1")]


def _profile(identity: str, exchange: str) -> DeviceProfile:
    key_type, asym = IDENTITIES[identity]
    pqc = key_type.startswith("mldsa")
    kem = exchange.startswith("ML_KEM")
    return DeviceProfile(
        spdm_versions="1.2,1.3,1.4", identity_key_type=key_type,
        spdm_asym="" if pqc else asym, spdm_pqc_asym=asym if pqc else "",
        spdm_kem=exchange if kem else "", spdm_dhe="" if kem else exchange,
        spdm_pqc_first=kem)


@pytest.mark.parametrize(("identity", "exchange"), MATRIX,
                         ids=[f"{i}-{k}" for i, k in MATRIX])
def test_suite_over_the_socket(identity: str, exchange: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    emu, shutdown = start_server(tmp_path / "identity", TransportType.PCI_DOE,
                                 _profile(identity, exchange))
    try:
        anchor = tmp_path / "root.pem"
        anchor.write_bytes(emu.device.identity.root.public_bytes(serialization.Encoding.PEM))
        argv = ["tsm", "connect", "--spdm-emu", f"127.0.0.1:{emu.port}",
                "--trust-anchor", str(anchor), "--start", "--json"]
        for b in emu.device.live_bars():
            argv += ["--expect-bar", f"{b.index}:{b.base:#x}:{b.size:#x}"]
        rc = cmd_connect(build_parser().parse_args(argv))
        out, err = capsys.readouterr()
        assert rc == 0, err
    finally:
        shutdown()
    e = json.loads(out)
    algs = e["spdm"]["algorithms"]
    assert e["spdm"]["version"] == "1.4"
    assert algs["asym"] == IDENTITIES[identity][1]
    assert algs["key_exchange"] == exchange
    # Exactly one family of each pair (DSP0274 1.4 §10.4).
    assert bool(algs["pqc_asym"]) != bool(algs["base_asym"])
    assert bool(algs["kem"]) != bool(algs["dhe"])
    tdi = next(iter(e["tdis"].values()))
    assert [h["state"] for h in tdi["history"]] == [
        "CONFIG_UNLOCKED", "CONFIG_LOCKED", "RUN", "CONFIG_UNLOCKED"]
    assert e["spdm"]["session_state"] == "ended"
