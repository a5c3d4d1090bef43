"""`make run PROFILE=pqc` as a test: the 7.3 guest's PCI/TSM core and DOE driver carry an
SPDM 1.4 connect with an ML-DSA-87 identity and an ML-KEM-1024 session to RUN and back.
Every message above the TSM's 4096-byte DataTransferSize (the 22.8 KB chain's portions,
the signed measurements, KEY_EXCHANGE_RSP) crosses the guest's DOE mailbox in CHUNK_GET
exchanges; the evidence names the algorithms and the traces decode the 1.4 messages."""

from __future__ import annotations

import json
from pathlib import Path

from vdev.profiles import resolve_profile
from vdev.vm.demo import connect_session
from vdev.vm.env import VmEnv


def test_pqc_connect_to_run_and_back(vm_env: VmEnv, workdir: Path) -> None:
    checks, result = connect_session(vm_env, workdir, str(resolve_profile("pqc")), trace=True)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert result is not None, failed
    assert not failed, "\n".join(failed)
    evidence = json.loads((workdir / "evidence.json").read_text())
    spdm = evidence["spdm"]
    assert spdm["version"] == "1.4"
    algs = spdm["algorithms"]
    assert (algs["asym"], algs["key_exchange"], algs["base_hash"], algs["aead"]) == (
        "ML_DSA_87", "ML_KEM_1024", "SHA_384", "AES_256_GCM")
    assert algs["base_asym"] is None and algs["dhe"] is None
    assert spdm["session_state"] == "ended"
    hist = [h["state"] for h in evidence["tdis"]["01:00.0"]["history"]]
    assert "RUN" in hist and hist[-1] == "CONFIG_UNLOCKED"
    # The device's trace: what the guest carried, decoded.
    trace = (workdir / "device.trace").read_text()
    assert "ALGORITHMS asym=ML_DSA_87 hash=SHA_384" in trace and "kem=ML_KEM_1024" in trace
    assert "CHUNK_GET handle=" in trace
    assert "last: KEY_EXCHANGE_RSP" in trace and "sig=ML_DSA_87" in trace
    assert "last: MEASUREMENTS" in trace
    device_log = (workdir / "device-server.log").read_text()
    assert "established (ML_DSA_87/SHA_384/ML_KEM_1024/AES_256_GCM)" in device_log
