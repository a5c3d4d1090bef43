"""Which errno a failed TSM connect reports, per kind of device misbehaviour
(tsm.errors.errno_of): what a kernel relay such as vtsm hands to user space
from `echo tsm0 > tsm/connect`.  Responses are broken on the way back from real
device engines, the way vdev.faults breaks them on the wire."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from spdm.codes import ErrorCode, Req
from tests.helpers.tsm_rig import Device, make_device, make_tsm, ok
from tsm.mailbox_protocol import Done

Mutate = Callable[[int, bytes, bytes], bytes]  # (doe_type, request, reply) -> reply


def flip(at: int) -> Callable[[bytes], bytes]:
    def f(reply: bytes) -> bytes:
        i = at if at >= 0 else len(reply) + at
        return reply[:i] + bytes([reply[i] ^ 0xFF]) + reply[i + 1:]
    return f


def on(code: Req, change: Callable[[bytes], bytes]) -> Mutate:
    """Break the (first) response to the plaintext request `code`."""
    done: list[int] = []

    def mutate(doe_type: int, request: bytes, reply: bytes) -> bytes:
        if doe_type == 1 and request[1] == code and not done:
            done.append(1)
            return change(reply)
        return reply
    return mutate


def on_secured(nth: int, change: Callable[[bytes], bytes]) -> Mutate:
    seen: list[int] = []

    def mutate(doe_type: int, request: bytes, reply: bytes) -> bytes:
        if doe_type == 2:
            seen.append(1)
            if len(seen) == nth:
                return change(reply)
        return reply
    return mutate


def error(code: ErrorCode) -> Callable[[bytes], bytes]:
    return lambda reply: bytes([reply[0], 0x7F, code, 0])


def connect(dev: Device, mutate: Mutate, **kw: Any) -> Done:
    tsm = make_tsm(**kw)
    op = tsm.connect()
    while not op.done:
        req = op.next_request
        assert req is not None
        op.feed(mutate(req.doe_type, req.payload,
                       dev.doe_exchange(req.doe_type, req.payload)))
    assert op.result is not None and not op.result.ok
    ok(tsm.connect(), dev)  # the model and the device are usable again
    return op.result


SHA384 = 48  # KEY_EXCHANGE_RSP ends with ResponderVerifyData (hash size)

CASES = [
    # authentication: the device does not prove its identity
    ("measurements signature", {}, on(Req.GET_MEASUREMENTS, flip(-1)),
     -errno.EACCES, "at GET_MEASUREMENTS: SPDM protocol error: signature verification failed"),
    ("challenge signature", {"authentication": "challenge"}, on(Req.CHALLENGE, flip(-1)),
     -errno.EACCES, "at CHALLENGE: SPDM protocol error: signature verification failed"),
    ("key exchange signature", {}, on(Req.KEY_EXCHANGE, flip(-SHA384 - 1)),
     -errno.EACCES, "at KEY_EXCHANGE/FINISH: SPDM protocol error: signature verification"),
    ("key exchange verify data", {}, on(Req.KEY_EXCHANGE, flip(-1)),
     -errno.EACCES, "at KEY_EXCHANGE/FINISH: SPDM protocol error: ResponderVerifyData"),
    # secured record that does not open (AEAD tag): FINISH_RSP
    ("finish record MAC", {}, on_secured(1, flip(-1)),
     -errno.EBADMSG, "cannot authenticate response record"),
    # protocol violations
    ("truncated DIGESTS", {}, on(Req.GET_DIGESTS, lambda r: r[:6]),
     -errno.EPROTO, "at GET_DIGESTS: SPDM protocol error: malformed response"),
    ("wrong response code", {}, on(Req.GET_DIGESTS, flip(1)),
     -errno.EPROTO, "at GET_DIGESTS: SPDM protocol error: expected response 0x01"),
    ("wrong SPDMVersion", {}, on(Req.GET_CERTIFICATE, lambda r: bytes([0x10]) + r[1:]),
     -errno.EPROTO, "SPDMVersion differs from the negotiated version"),
    # the device refuses: SPDM ERROR
    ("ERROR to KEY_EXCHANGE", {}, on(Req.KEY_EXCHANGE, error(ErrorCode.UNSPECIFIED)),
     -errno.EIO, "at KEY_EXCHANGE/FINISH: device answered SPDM ERROR: responder returned "
     "ERROR UNSPECIFIED"),
]


@pytest.mark.parametrize("kw, mutate, expected, reason",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_connect_failure_errno(kw: dict[str, Any], mutate: Mutate, expected: int,
                               reason: str) -> None:
    done = connect(make_device(), mutate, **kw)
    assert reason in done.reason, done.reason
    assert done.errno == expected, (errno.errorcode[-done.errno], done.reason)


def test_busy_after_the_retries_is_ebusy() -> None:
    def always_busy(doe_type: int, request: bytes, reply: bytes) -> bytes:
        if doe_type == 1 and request[1] == Req.GET_DIGESTS and busy:
            return error(ErrorCode.BUSY)(reply)
        return reply

    busy = [1]
    dev = make_device()
    tsm = make_tsm()
    op = tsm.connect()
    while not op.done:
        req = op.next_request
        assert req is not None
        op.feed(always_busy(req.doe_type, req.payload,
                            dev.doe_exchange(req.doe_type, req.payload)))
    assert op.result is not None and not op.result.ok
    assert "ERROR BUSY" in op.result.reason and op.result.errno == -errno.EBUSY
    busy.clear()
    ok(tsm.connect(), dev)


def test_transport_errno_and_trust_refusal_unchanged() -> None:
    dev = make_device()
    tsm = make_tsm()
    op = tsm.connect()
    op.fail(-errno.ETIMEDOUT)
    assert op.result is not None and op.result.errno == -errno.ETIMEDOUT
    op = tsm.connect()
    op.fail("DOE mailbox gone")
    assert op.result is not None and op.result.errno == -errno.EIO
    ok(tsm.connect(), dev)
