"""SPDM, IDE_KM and TDISP through the spdm-emu TCP server with our blocking client."""

from __future__ import annotations

from spdm.requester import Requester, RequesterConfig
from spdm.secured_message import MCTP_TRANSPORT
from tdisp.codes import TdiState
from tests.helpers.secure_host import BAR0_ADDRESS, ConfigPort, SecureHost, tdi_state
from tests.helpers.spdm_emu_server import EmuHandle
from vdev.spdm_emu.frame import QEMU_MAX_PAYLOAD


def test_full_flow_over_pci_doe(emu: EmuHandle) -> None:
    device = emu.device
    with emu.client() as client:
        client.hello()
        # Config space is touched on the device model directly (the socket carries only
        # DOE objects), the way the host kernel would program it.
        host = SecureHost(device, ConfigPort.of_device(device), client.spdm_transport,
                          device.identity.root)
        conn = host.full_flow()
        assert conn.state == TdiState.RUN
        assert min(r.first_page for r in conn.report.mmio_ranges) == BAR0_ADDRESS
        host.end_session()
        assert tdi_state(device) == TdiState.ERROR
        client.continue_()
    # Every reply of the standard flow fits QEMU's spdm-socket buffer.
    assert 0 < emu.server.largest_reply <= QEMU_MAX_PAYLOAD


def test_session_over_mctp(emu_mctp: EmuHandle) -> None:
    device = emu_mctp.device
    with emu_mctp.client() as client:
        client.hello()
        sent: list[bytes] = []
        message = client.message

        def spy(payload: bytes) -> bytes:
            sent.append(payload)
            return message(payload)

        client.message = spy  # type: ignore[method-assign]
        req = Requester(RequesterConfig(trust_anchors=[device.identity.root],
                                        transport=MCTP_TRANSPORT))

        def run(op: object) -> object:
            return req.run(op, client.spdm_transport)  # type: ignore[arg-type]

        run(req.init_connection())
        run(req.get_digests())
        run(req.get_certificate(0))
        run(req.get_measurements(signed=True))
        sid = run(req.key_exchange())
        assert isinstance(sid, int)
        run(req.heartbeat(sid))
        run(req.key_update(sid))
        run(req.end_session(sid))
        assert not device.responder.sessions
    # DSP0276 record header on MCTP: SessionID u32, SeqNum u16, Length u16 (LE).
    records = [m for m in sent if m[0] == 0x06]
    assert records
    first = records[0][1:]
    assert int.from_bytes(first[:4], "little") == sid
    assert first[4:6] == b"\x00\x00"  # FINISH, first record under the handshake keys
    assert all(int.from_bytes(r[7:9], "little") == len(r) - 9 for r in records)
    assert emu_mctp.server.largest_reply <= QEMU_MAX_PAYLOAD


def test_plain_spdm_over_none(emu_none: EmuHandle) -> None:
    device = emu_none.device
    with emu_none.client() as client:
        client.hello()
        req = Requester(RequesterConfig(trust_anchors=[device.identity.root]))
        req.run(req.init_connection(), client.spdm_transport)
        req.run(req.get_digests(), client.spdm_transport)
        req.run(req.get_certificate(0), client.spdm_transport)
        req.run(req.challenge(0), client.spdm_transport)
