"""DOE: random config-space traffic into the DOE capability, and random DOE objects.

Invariants: no access raises; the mailbox is never BUSY without a response gate;
ABORT always brings it back to idle (no ERROR, no BUSY, no DOR); a correct
discovery and a correct SPDM GET_VERSION then work.  Whole DOE objects (the
spdm-emu PCI_DOE path, `TeeDevice.doe_object`) come back as bytes or None.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import examples
from tests.helpers.fakes import FakeDma, FakeIrqSink
from vdev.doe.data_object import DoeProtocolId, build_object
from vdev.doe.mailbox import (
    CTRL_ABORT,
    CTRL_GO,
    CTRL_INT_EN,
    DOE_CTRL,
    DOE_READ,
    DOE_STATUS,
    DOE_WRITE,
    STATUS_BUSY,
    STATUS_DATA_OBJECT_READY,
    STATUS_ERROR,
)
from vdev.doe.requester import DoeRequester
from vdev.endpoint.function import TeeIoEndpoint
from vdev.endpoint.tee_device import TeeDevice

DOE_CAP = 0x100
DISCOVERED = [(1, 0), (1, 1), (1, 2)]
GET_VERSION = bytes([0x10, 0x84, 0, 0])

_value = st.one_of(st.sampled_from([0, CTRL_GO, CTRL_ABORT, CTRL_INT_EN, CTRL_GO | CTRL_INT_EN,
                                    CTRL_GO | CTRL_ABORT, 0xFFFF_FFFF, 0x0000_0001,
                                    0x0001_0001, 0x0002_0001, 2, 3, 0x4_0000]),
                   st.integers(0, 0xFFFF_FFFF))


@st.composite
def _access(draw: st.DrawFn) -> tuple[str, int, int, int]:
    """("w"|"r", offset, size, value) in and around the DOE capability."""
    kind = draw(st.sampled_from(["w", "w", "w", "r", "obj"]))
    rel = draw(st.one_of(st.sampled_from([DOE_CTRL, DOE_STATUS, DOE_WRITE, DOE_READ]),
                         st.integers(-4, 0x1C)))
    size = draw(st.sampled_from([4, 4, 4, 1, 2]))
    if size < 4 and draw(st.booleans()):
        rel += draw(st.integers(1, 3))
    rel = max(rel, -DOE_CAP)
    return kind, DOE_CAP + rel, size, draw(_value)


@st.composite
def _object(draw: st.DrawFn) -> list[int]:
    """The DWs of a DOE object: a well-formed one (maybe mutated) or junk."""
    vid_type = draw(st.sampled_from([(1, 0), (1, 1), (1, 2), (1, 3), (0x8086, 1), (0xFFFF, 0xFF)]))
    payload = draw(st.binary(max_size=64))
    if vid_type == (1, 1) and draw(st.booleans()):
        payload = GET_VERSION + payload[:8]
    raw = bytearray(build_object(DoeProtocolId(*vid_type), payload))
    if draw(st.booleans()):
        raw[4:8] = struct.pack("<I", draw(st.one_of(st.integers(0, 40), _value)))
    if draw(st.booleans()) and len(raw) > 8:
        raw = raw[: 4 * draw(st.integers(0, len(raw) // 4))]
    return list(struct.unpack(f"<{len(raw) // 4}I", bytes(raw)))


def _access_once(ep: TeeIoEndpoint, i: int, op: tuple[str, int, int, int],
                 objects: list[list[int]]) -> int:
    """One drawn access: a config read ("r"), a config write ("w") or an object
    written and GO set ("obj"); other kinds only read DOE Status.  Returns DOE
    Status afterwards, checked never to show ERROR with Data Object Ready."""
    cfg = ep.config
    kind, off, size, value = op
    if kind == "r":
        assert len(cfg.read(off, size)) == size
    elif kind == "w":
        cfg.write(off, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
    elif kind == "obj" and objects:
        for dw in objects[i % len(objects)]:
            cfg.write_int(DOE_CAP + DOE_WRITE, 4, dw)
        cfg.write_int(DOE_CAP + DOE_CTRL, 4, CTRL_GO)
    status = cfg.read_int(DOE_CAP + DOE_STATUS, 4)
    assert not (status & STATUS_ERROR and status & STATUS_DATA_OBJECT_READY)
    return status


def _apply(ep: TeeIoEndpoint, ops: list[tuple[str, int, int, int]],
           objects: list[list[int]]) -> None:
    for i, op in enumerate(ops):
        status = _access_once(ep, i, op, objects)
        assert not status & STATUS_BUSY  # no response gate: never BUSY


def _recovers(ep: TeeIoEndpoint) -> DoeRequester:
    cfg = ep.config
    doe = DoeRequester(lambda o: cfg.read_int(o, 4), lambda o, v: cfg.write_int(o, 4, v), DOE_CAP)
    doe.abort()
    status = doe.rd(DOE_STATUS)
    assert not status & (STATUS_BUSY | STATUS_ERROR | STATUS_DATA_OBJECT_READY)
    assert doe.discover() == DISCOVERED
    return doe


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> TeeDevice:
    dev = TeeDevice(state_dir=Path(tmp_path_factory.mktemp("fuzz-doe")))
    dev.attach(FakeIrqSink(), FakeDma())
    return dev


@examples(150)
@given(st.lists(_access(), max_size=40), st.lists(_object(), max_size=3))
def test_doe_register_traffic_on_the_endpoint(ops: list[tuple[str, int, int, int]],
                                              objects: list[list[int]]) -> None:
    ep = TeeIoEndpoint()
    ep.attach(FakeIrqSink(), FakeDma())
    _apply(ep, ops, objects)
    _recovers(ep)


@examples(100)
@given(st.lists(_access(), max_size=30), st.lists(_object(), max_size=3))
def test_doe_register_traffic_on_the_tee_device(device: TeeDevice,
                                                ops: list[tuple[str, int, int, int]],
                                                objects: list[list[int]]) -> None:
    _apply(device, ops, objects)
    doe = _recovers(device)
    reply = doe.exchange_bytes(1, GET_VERSION)
    assert reply[:2] == bytes([0x10, 0x04])  # VERSION


@examples(150)
@given(st.one_of(st.binary(max_size=80), _object().map(
    lambda dws: struct.pack(f"<{len(dws)}I", *dws))))
def test_whole_doe_objects(device: TeeDevice, obj: bytes) -> None:
    reply = device.doe_object(obj)
    assert reply is None or (isinstance(reply, bytes) and len(reply) >= 8)
    ok = device.doe_object(build_object(DoeProtocolId(1, 1), GET_VERSION))
    assert ok is not None and ok[8:10] == bytes([0x10, 0x04])


@examples(120)
@given(st.lists(st.one_of(_access(), st.tuples(st.just("fire"), st.integers(0, 7),
                                                st.just(0), st.just(0))), max_size=40),
       st.lists(_object(), max_size=3), st.integers(1, 6))
def test_doe_traffic_with_delayed_responses(ops: list[tuple[str, int, int, int]],
                                            objects: list[list[int]], delays: int) -> None:
    """The BUSY path: responses held back (fault injection) and released at random
    moments, including after an ABORT made them stale.  BUSY and DOR are never set
    together, ABORT still recovers, and discovery then works (it is never delayed)."""
    pending: list[Callable[[], None]] = []
    ep = TeeIoEndpoint(defer_later=lambda _delay, fn: pending.append(fn))
    ep.attach(FakeIrqSink(), FakeDma())
    ep.delay_doe_responses(0.5, delays)
    for i, op in enumerate(ops):
        if op[0] == "fire" and pending:
            pending.pop(op[1] % len(pending))()
        status = _access_once(ep, i, op, objects)
        assert not (status & STATUS_BUSY and status & STATUS_DATA_OBJECT_READY)
    _recovers(ep)
    for fn in pending:  # late completions of aborted exchanges are ignored
        fn()
    _recovers(ep)
