"""SPDM full handshake per algorithm suite: in-process and over the spdm-emu socket.

One handshake = VCA, DIGESTS, CERTIFICATE (with chain validation), CHALLENGE,
signed MEASUREMENTS, KEY_EXCHANGE + FINISH, HEARTBEAT, KEY_UPDATE and
END_SESSION, requester and responder both ours.  The crypto share is the
time spent inside spdm.crypto's primitives, timed around each outermost
call on separate rounds, certificate path validation included.  The rest
is protocol overhead: parsing, building, transcripts, state.

Suites: the two classical ones (SPDM 1.3-style ECDSA + ECDHE) and SPDM 1.4's
post-quantum matrix, P-256/P-384/ML-DSA-44/65/87 identities x ML-KEM-768/1024
(docs/benchmarks.md §6).  `message_sizes` counts what one handshake puts on the
wire with 4096-byte DataTransferSizes: the messages, and the exchanges chunking adds.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from spdm.algorithms import Aead, BaseAsym, BaseHash, Dhe, Kem, PqcAsym
from spdm.identity import CertSlots, DeviceIdentity, IdentityParams, generate_identity
from spdm.measurements import default_measurements
from spdm.requester import AlgorithmOffer, Outgoing, Requester, RequesterConfig
from spdm.responder import Responder, ResponderConfig
from vdev.profiles import DeviceProfile
from vdev.vm.env import REPO

SETS: dict[str, dict[str, Any]] = {
    "P-384/SHA-384/AES-256-GCM": {
        "key_type": "ecdsa-p384", "base_asym": BaseAsym.ECDSA_P384,
        "base_hash": BaseHash.SHA_384, "dhe": Dhe.SECP384R1, "aead": Aead.AES_256_GCM,
    },
    "P-256/SHA-256/AES-128-GCM": {
        "key_type": "ecdsa-p256", "base_asym": BaseAsym.ECDSA_P256,
        "base_hash": BaseHash.SHA_256, "dhe": Dhe.SECP256R1, "aead": Aead.AES_128_GCM,
    },
}
_IDENTITIES = {
    "P-256": ("ecdsa-p256", BaseAsym.ECDSA_P256, 0),
    "P-384": ("ecdsa-p384", BaseAsym.ECDSA_P384, 0),
    "ML-DSA-44": ("mldsa-44", 0, PqcAsym.ML_DSA_44),
    "ML-DSA-65": ("mldsa-65", 0, PqcAsym.ML_DSA_65),
    "ML-DSA-87": ("mldsa-87", 0, PqcAsym.ML_DSA_87),
}
for _name, (_key, _base, _pqc) in _IDENTITIES.items():
    for _kem, _kem_name in ((Kem.ML_KEM_768, "ML-KEM-768"), (Kem.ML_KEM_1024, "ML-KEM-1024")):
        SETS[f"{_name}/{_kem_name}/SHA-384/AES-256-GCM"] = {
            "key_type": _key, "base_asym": _base, "pqc_asym": _pqc, "kem": _kem, "dhe": 0,
            "base_hash": BaseHash.SHA_384, "aead": Aead.AES_256_GCM,
        }


def _requester(alg: dict[str, Any], anchors: list[x509.Certificate]) -> Requester:
    """A requester offering exactly the suite (one algorithm per field)."""
    return Requester(RequesterConfig(trust_anchors=anchors, algorithms=AlgorithmOffer(
        base_asym=int(alg["base_asym"]), base_hash=int(alg["base_hash"]),
        dhe=int(alg["dhe"]), aead=int(alg["aead"]), pqc_asym=int(alg.get("pqc_asym", 0)),
        kem=int(alg.get("kem", 0)),
    )))


HEARTBEAT_PERIOD_S = DeviceProfile().spdm_heartbeat_period


def _responder(identity: DeviceIdentity) -> Responder:
    """The device side of `handshake`.  HEARTBEAT is part of it, so HBEAT_CAP is
    advertised with the device profile's default period (0 would mean no heartbeat,
    and HEARTBEAT would be refused as unsupported)."""
    return Responder(ResponderConfig(slots=CertSlots({0: identity}),
                                     measurements=default_measurements,
                                     heartbeat_period=HEARTBEAT_PERIOD_S))


def handshake(req: Requester, transport: Any) -> None:
    req.run(req.init_connection(), transport)
    req.run(req.get_digests(), transport)
    req.run(req.get_certificate(0), transport)
    req.run(req.challenge(0), transport)
    req.run(req.get_measurements(0xFF, signed=True), transport)
    sid = req.run(req.key_exchange(), transport)
    req.run(req.heartbeat(sid), transport)
    req.run(req.key_update(sid), transport)
    req.run(req.end_session(sid), transport)


def _in_process_round(alg: dict[str, Any], identity: DeviceIdentity) -> None:
    rsp = _responder(identity)
    req = _requester(alg, [identity.root])

    def transport(out: Outgoing) -> bytes:
        return rsp.handle_doe(out.doe_type, out.data)[1]

    handshake(req, transport)


_PRIMITIVES = ("digest", "meas_digest", "hmac", "hkdf_extract", "hkdf_expand", "sign",
               "verify", "aead_encrypt", "aead_decrypt", "hmac_compare")
_DHE_METHODS = ("__init__", "exchange_data", "shared_secret")
_EXTRA_PRIMITIVES = ("kem_encapsulate",)


def _crypto_fraction(run: Any, rounds: int) -> float:
    """Share of wall time spent inside spdm.crypto's primitives (hashes, HMAC,
    HKDF, signatures, AEAD, DHE) and in certificate path validation (X.509
    signature checks), timed directly around each outermost call."""
    from spdm import crypto
    from spdm import requester as requester_module

    spent = [0.0]
    depth = [0]

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
                depth[0] -= 1
        return wrapper

    saved = {name: getattr(crypto, name) for name in _PRIMITIVES + _EXTRA_PRIMITIVES}
    saved_dhe = {name: getattr(crypto.DheKey, name) for name in _DHE_METHODS}
    saved_kem = {name: getattr(crypto.KemKey, name) for name in _DHE_METHODS}
    saved_chain = getattr(requester_module, "verify_chain")  # noqa: B009 - patched below
    try:
        setattr(requester_module, "verify_chain", timed(saved_chain))  # noqa: B010
        for name, fn in saved.items():
            setattr(crypto, name, timed(fn))
        for name, fn in saved_dhe.items():
            setattr(crypto.DheKey, name, timed(fn))
        for name, fn in saved_kem.items():
            setattr(crypto.KemKey, name, timed(fn))
        t0 = time.perf_counter()
        for _ in range(rounds):
            run()
        total = time.perf_counter() - t0
    finally:
        setattr(requester_module, "verify_chain", saved_chain)  # noqa: B010
        for name, fn in saved.items():
            setattr(crypto, name, fn)
        for name, fn in saved_dhe.items():
            setattr(crypto.DheKey, name, fn)
        for name, fn in saved_kem.items():
            setattr(crypto.KemKey, name, fn)
    return spent[0] / total if total else 0.0


def _summary(samples: list[float], fraction: float) -> dict[str, Any]:
    s = sorted(samples)
    p50 = s[len(s) // 2] * 1000
    return {
        "rounds": len(s), "p50_ms": round(p50, 2), "min_ms": round(s[0] * 1000, 2),
        "mean_ms": round(statistics.fmean(s) * 1000, 2),
        "crypto_fraction": round(fraction, 3),
        "crypto_ms": round(p50 * fraction, 2), "protocol_ms": round(p50 * (1 - fraction), 2),
    }


def message_sizes() -> dict[str, Any]:
    """Per suite, what one handshake puts on the wire at DataTransferSize 4096 both ways:
    the largest messages, the certificate chain, and how many exchanges and bytes the
    whole handshake takes (chunking included)."""
    out: dict[str, Any] = {}
    for name, alg in SETS.items():
        identity = generate_identity(IdentityParams(key_type=alg["key_type"]))
        rsp = _responder(identity)
        req = _requester(alg, [identity.root])
        wire: list[tuple[bytes, bytes]] = []

        def transport(out_: Outgoing, rsp: Responder = rsp,
                      wire: list[tuple[bytes, bytes]] = wire) -> bytes:
            reply = rsp.handle_doe(out_.doe_type, out_.data)[1]
            wire.append((out_.data, reply))
            return reply

        handshake(req, transport)
        a = req.algorithms
        out[name] = {
            "cert_chain_bytes": len(req.cert_chains[0]),
            "signature_bytes": a.sig_size,
            "key_exchange_bytes": a.req_exchange_size,
            "key_exchange_rsp_exchange_data_bytes": a.rsp_exchange_size,
            "largest_response_bytes": max(len(r) for _, r in wire),
            "exchanges": len(wire),
            "chunk_exchanges": sum(1 for q, _ in wire if q[1] in (0x85, 0x86)),
            "bytes_on_the_wire": sum(len(q) + len(r) for q, r in wire),
        }
    return out


def bench_in_process(rounds: int = 30) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, alg in SETS.items():
        identity = generate_identity(IdentityParams(key_type=alg["key_type"]))

        def one(alg: dict[str, Any] = alg, identity: DeviceIdentity = identity) -> None:
            _in_process_round(alg, identity)

        one()  # warm-up: caches, first-use imports
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            one()
            samples.append(time.perf_counter() - t0)
        out[name] = _summary(samples, _crypto_fraction(one, 5))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_socket(workdir: Path, rounds: int = 10) -> dict[str, Any]:
    """The same handshake against `vdev spdm-emu` in its own process."""
    from vdev.spdm_emu.client import SpdmEmuClient

    out: dict[str, Any] = {}
    for name, alg in SETS.items():
        state = workdir / f"spdm-emu-{alg['key_type']}"
        profile = workdir / f"{alg['key_type']}.toml"
        profile.write_text(f'identity_key_type = "{alg["key_type"]}"\n'
                           'spdm_versions = "1.2,1.3,1.4"\n')
        port = _free_port()
        log = (workdir / f"spdm-emu-{alg['key_type']}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "vdev.cli", "spdm-emu", "--port", str(port),
             "--state-dir", str(state), "--profile", str(profile)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            client = None
            while client is None and time.monotonic() < deadline:
                try:
                    client = SpdmEmuClient("127.0.0.1", port)
                except OSError:
                    time.sleep(0.1)
            if client is None:
                raise RuntimeError(f"vdev spdm-emu did not listen on {port}")
            # The server made its identity before listening (vdev.endpoint.identity_store).
            chain = next(state.glob("*/slot0/chain.pem"))
            anchors = [x509.load_pem_x509_certificates(chain.read_bytes())[0]]
            client.hello()
            samples = []
            for _ in range(rounds + 1):
                req = _requester(alg, anchors)
                t0 = time.perf_counter()
                handshake(req, client.spdm_transport)
                samples.append(time.perf_counter() - t0)
            client.shutdown()
            out[name] = _summary(samples[1:], 0.0)
            del out[name]["crypto_fraction"], out[name]["crypto_ms"], out[name]["protocol_ms"]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
    return out
