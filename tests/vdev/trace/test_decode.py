"""Decoder summaries of single messages, and a tracer that survives anything."""

from __future__ import annotations

import io
import random

from tdisp.codes import LockFlags
from tdisp.device_interface import InterfaceId
from tdisp.idekm_messages import KeyProg, KeySlot
from tdisp.messages import LockInterfaceRequest, TdispError
from tdisp.vendor_defined import wrap_spdm_request, wrap_spdm_response
from vdev.trace.decode import Decoder
from vdev.trace.tracer import REQ, RSP, Tracer

TDI = InterfaceId.of(bus=1, device=0, function=0)


def test_key_prog_never_shows_the_key() -> None:
    key = bytes(range(32))
    msg = KeyProg(KeySlot.of(1, 0, True, 0, 0), key).build()
    s = Decoder().spdm(wrap_spdm_request(0x13, msg), session=0xFF000001)
    assert s.protocol == "idekm" and s.message == "KEY_PROG"
    assert s.text == "IDE_KM KEY_PROG stream=1 K0 TX PR"
    assert key.hex() not in s.text


def test_tdisp_lock_and_error() -> None:
    lock = LockInterfaceRequest(TDI, flags=LockFlags.NO_FW_UPDATE | LockFlags.LOCK_MSIX,
                                default_stream_id=1).encode_vdm()
    s = Decoder().spdm(wrap_spdm_request(0x13, lock))
    assert s.text.startswith("TDISP LOCK_INTERFACE_REQUEST tdi=01:00.0 "
                             "flags=NO_FW_UPDATE|LOCK_MSIX stream=1")
    err = Decoder().spdm(wrap_spdm_response(0x13, TdispError(TDI, error_code=1).encode_vdm()))
    assert err.error and err.message == "TDISP_ERROR"


def test_spdm_error_flow_control_is_not_an_error() -> None:
    d = Decoder()
    assert d.spdm(bytes([0x13, 0x7F, 0x42, 0x00, 0x84, 0x01, 0x01, 0x01])).error is False
    assert d.spdm(bytes([0x13, 0x7F, 0x06, 0x00])).error is True  # DecryptError


def test_transport_without_doe_objects() -> None:
    out = io.StringIO()
    t = Tracer("device", out=out)
    t.message(REQ, 1, bytes.fromhex("10840000"))
    t.message(RSP, 2, bytes.fromhex("010000ff") + bytes(20))
    lines = out.getvalue().splitlines()
    assert "-> spdm  - GET_VERSION" in lines[0]
    assert "<- spdm  sess=0xff000001 SECURED_SPDM 24 bytes (encrypted record)" in lines[1]


def test_tracer_never_raises_on_garbage() -> None:
    rng = random.Random(7)
    out = io.StringIO()
    t = Tracer("device", out=out, infer_state=True)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 80))
        if rng.random() < 0.5 and len(data) >= 2:
            data = bytes([0x13, rng.choice([0x04, 0x61, 0x63, 0x64, 0x7E, 0xFE, 0x7F, 0x02])])
            data += rng.randbytes(rng.randrange(0, 60))
        t.doe(REQ, data)
        t.secured(RSP, 1, data)
        t.message(REQ, rng.choice([1, 2]), data)
    assert out.getvalue() and "TRACE_ERROR" not in out.getvalue()


def test_a_failing_decoder_costs_one_event_not_the_exchange() -> None:
    out = io.StringIO()
    t = Tracer("device", out=out)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("decoder bug")

    t.decoder.spdm = broken  # type: ignore[assignment, method-assign]
    t.secured("request", 1, b"\x13\xe5\x00\x00")  # must not raise into the engine
    assert "TRACE_ERROR secured: RuntimeError" in out.getvalue()
