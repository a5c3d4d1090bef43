"""The flow DMTF spdm-emu's requester (spdm_requester_emu) runs by default, with its default
parameters, against the shipped profile `spdm-emu-defaults` over the spdm-emu socket
(PCI_DOE), driven by our requester.

spdm-emu's defaults (spdm_emu/spdm_emu_common/spdm_emu.c and its usage text; the flow in
spdm_requester_emu.c, spdm_requester_measurement.c, spdm_requester_session.c):

  - DOE discovery, then GET_VERSION / GET_CAPABILITIES / NEGOTIATE_ALGORITHMS with the
    requester flags CERT, CHAL, ENCRYPT, MAC, MUT_AUTH, KEY_EX, PSK, ENCAP, HBEAT,
    KEY_UPD, HANDSHAKE_IN_CLEAR (and CHUNK), base hash SHA-384 | SHA-256, base asym ECDSA
    P-384 | P-256, DHE secp384r1 | secp256r1 | ffdhe3072 | ffdhe2048, AEAD AES-256-GCM |
    ChaCha20-Poly1305, requester asym RSAPSS/RSASSA 3072/2048;
  - connection: GET_DIGESTS, GET_CERTIFICATE of slot 0, CHALLENGE (slot 0, measurement
    summary hash of all measurements), GET_MEASUREMENTS one by one (the count, then index
    after index, a signature on the last);
  - a KEY_EXCHANGE session (measurement summary ALL, session policy 1) and a PSK_EXCHANGE
    session with libspdm's sample PSK ("TestPskHint\\0" / "TestPskData\\0"), each with
    HEARTBEAT, KEY_UPDATE of all keys (then VerifyNewKey), GET_MEASUREMENTS inside the
    session and END_SESSION with the negotiated-state clearing bit (no --save_state);
  - SHUTDOWN.

Mutual authentication is not exercised: the device does not ask for it (the profile does
not provision a requester trust anchor), so our requester carries no identity and offers
no requester algorithm; spdm-emu would offer its RSA keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spdm import algorithms as alg
from spdm.codes import KEY_UPDATE_UPDATE_ALL_KEYS, MEAS_SUMMARY_ALL, ReqCap, Rsp
from spdm.errors import PeerError
from spdm.hooks import RequesterHooks
from spdm.requester import AlgorithmOffer, Outgoing, Requester, RequesterConfig
from tests.helpers.spdm_emu_server import EmuHandle, start_server
from vdev.spdm_emu.client import SpdmEmuClient

SPDM_EMU_REQ_CAPS = (ReqCap.CERT | ReqCap.CHAL | ReqCap.ENCRYPT | ReqCap.MAC
                     | ReqCap.MUT_AUTH | ReqCap.KEY_EX | ReqCap.PSK | ReqCap.ENCAP
                     | ReqCap.HBEAT | ReqCap.KEY_UPD | ReqCap.HANDSHAKE_IN_THE_CLEAR
                     | ReqCap.CHUNK)
SPDM_EMU_ALGORITHMS = AlgorithmOffer(
    base_asym=alg.BaseAsym.ECDSA_P384 | alg.BaseAsym.ECDSA_P256,
    base_hash=alg.BaseHash.SHA_384 | alg.BaseHash.SHA_256,
    dhe=alg.Dhe.SECP384R1 | alg.Dhe.SECP256R1 | alg.Dhe.FFDHE_3072 | alg.Dhe.FFDHE_2048,
    aead=alg.Aead.AES_256_GCM | alg.Aead.CHACHA20_POLY1305,
    req_base_asym=(alg.BaseAsym.RSAPSS_3072 | alg.BaseAsym.RSAPSS_2048
                   | alg.BaseAsym.RSASSA_3072 | alg.BaseAsym.RSASSA_2048),
    pqc_asym=0, kem=0, req_pqc_asym=0,
)
# libspdm's sample PSK (os_stub/spdm_device_secret_lib_sample): C strings, NUL included.
PSK_HINT, PSK = b"TestPskHint\0", b"TestPskData\0"
SESSION_POLICY_TERMINATION_RUNTIME_UPDATE = 0x01


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spdm-emu-defaults")


@pytest.fixture
def emu(state_dir: Path) -> Iterator[EmuHandle]:
    """A server per test: the flow ends with SHUTDOWN, which stops it."""
    from vdev.profiles import load_profile
    from vdev.spdm_emu.frame import TransportType

    handle, shutdown = start_server(state_dir, TransportType.PCI_DOE,
                                    load_profile("spdm-emu-defaults"))
    try:
        yield handle
    finally:
        shutdown()


class Flow:
    def __init__(self, client: SpdmEmuClient, cfg: RequesterConfig) -> None:
        self.client = client
        self.seen: list[tuple[str, int, bytes]] = []
        self.req = Requester(cfg, RequesterHooks(
            message_observer=lambda d, sid, msg: self.seen.append((d, sid, msg))))

    def transport(self, out: Outgoing) -> bytes:
        return self.client.spdm_transport(out)

    def run(self, op: Any) -> Any:
        return self.req.run(op, self.transport)

    def measurements_one_by_one(self, session_id: int | None = None) -> list[int]:
        """The count, then index 1, 2, ... until that many blocks came back (an index
        without a block is skipped, as spdm-emu does); the last request signed."""
        count = self.run(self.req.get_measurements(0, signed=False, session_id=session_id))
        assert count > 0
        got: list[int] = []
        for index in range(1, 0xFF):
            if len(got) == count:
                break
            last = len(got) == count - 1
            try:
                blocks = self.run(self.req.get_measurements(index, signed=last,
                                                            session_id=session_id))
            except PeerError:
                continue
            got += [b.index for b in blocks]
        assert len(got) == count
        return got

    def session(self, session_id: int) -> None:
        self.run(self.req.heartbeat(session_id))
        self.run(self.req.key_update(session_id, KEY_UPDATE_UPDATE_ALL_KEYS))
        self.measurements_one_by_one(session_id)
        self.run(self.req.end_session(session_id, clear_negotiated_state=True))
        assert session_id not in self.req.sessions


@pytest.mark.parametrize("version", [None, 0x11, 0x12, 0x13],
                         ids=["highest", "1.1", "1.2", "1.3"])
def test_spdm_emu_default_flow_completes(emu: EmuHandle, version: int | None) -> None:
    device = emu.device
    cfg = RequesterConfig(capabilities=int(SPDM_EMU_REQ_CAPS), algorithms=SPDM_EMU_ALGORITHMS,
                          trust_anchors=[device.identity.root], psk={PSK_HINT: PSK})
    if version is not None:
        cfg.versions = (version,)
    with emu.client() as client:
        client.hello()
        assert (0x0001, 1) in client.discover()  # PCI-SIG CMA/SPDM over DOE
        flow = Flow(client, cfg)
        req = flow.req
        flow.run(req.init_connection())
        a = device.responder.algorithms
        assert (a.base_asym, a.base_hash, a.dhe, a.aead) == (
            alg.BaseAsym.ECDSA_P384, alg.BaseHash.SHA_384, alg.Dhe.SECP384R1,
            alg.Aead.AES_256_GCM)
        flow.run(req.get_digests())
        flow.run(req.get_certificate(0))
        flow.run(req.challenge(0, MEAS_SUMMARY_ALL))
        indices = flow.measurements_one_by_one()
        assert indices == sorted(indices)
        sid = flow.run(req.key_exchange(0, MEAS_SUMMARY_ALL,
                                        SESSION_POLICY_TERMINATION_RUNTIME_UPDATE))
        flow.session(sid)
        sid = flow.run(req.psk_exchange(PSK_HINT, MEAS_SUMMARY_ALL))
        flow.session(sid)
        client.shutdown()
    emu.thread.join(5)
    assert not emu.thread.is_alive(), "SHUTDOWN stops the server"
    assert not device.responder.sessions
    assert req.conn.version == (version or max(device.profile.spdm_version_list))
    # Inside each session, what came back (the requester's view of the plaintext).
    codes: dict[int, list[int]] = {}
    for direction, session_id, msg in flow.seen:
        if direction == "response":
            codes.setdefault(session_id, []).append(msg[1])
    kx, psk = codes.values()
    assert kx[0] == Rsp.FINISH_RSP and psk[0] == Rsp.PSK_FINISH_RSP  # PSK with context
    for got in (kx, psk):
        assert got[1:4] == [Rsp.HEARTBEAT_ACK, Rsp.KEY_UPDATE_ACK, Rsp.KEY_UPDATE_ACK]
        assert set(got[4:-1]) == {Rsp.MEASUREMENTS} and got[-1] == Rsp.END_SESSION_ACK
