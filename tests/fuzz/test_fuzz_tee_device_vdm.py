"""IDE_KM and TDISP through the whole device: mutated VENDOR_DEFINED payloads inside a
real SPDM session on a TeeDevice (DOE mailbox -> secured SPDM -> PCI-SIG VDM
dispatcher -> IDE_KM / TDISP, with the device's enforcement and live BAR view).

Invariants: the requester gets an SPDM ERROR, a TDISP message, or an IDE_KM ACK (or
nothing it cannot parse as one of those); the device never raises; afterwards a
fresh TSM connect reaches RUN.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spdm.errors import ErrorResponse
from tdisp.idekm_messages import parse_idekm
from tdisp.messages import decode_vdm
from tests.fuzz.budget import examples
from tests.fuzz.mutations import damaged
from tests.helpers.secure_host import ConfigPort, SecureHost
from tests.helpers.vfio_host import full_flow
from vdev.doe.requester import DoeRequester
from vdev.endpoint.tee_device import TeeDevice


def _damaged(msg: bytes) -> st.SearchStrategy[bytes]:
    return damaged(msg, header=16)


DOE_CAP = 0x100


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> TeeDevice:
    return TeeDevice(state_dir=Path(tmp_path_factory.mktemp("fuzz-vdm")))


def _host(device: TeeDevice) -> tuple[SecureHost, DoeRequester]:
    cfg = ConfigPort.of_device(device)
    doe = DoeRequester(lambda o: cfg.read(o, 4), lambda o, v: cfg.write(o, 4, v), DOE_CAP)
    return SecureHost(device, cfg, lambda out: doe.exchange_bytes(out.doe_type, out.data),
                      device.identity.root), doe


def _recorded(device: TeeDevice) -> list[bytes]:
    host, doe = _host(device)
    sent: list[bytes] = []
    vdm = host.vdm

    def record(payload: bytes) -> bytes:
        sent.append(payload)
        return vdm(payload)

    host.vdm = record  # type: ignore[method-assign]
    full_flow(host, doe)
    host.end_session()
    return sent




@pytest.fixture(scope="module")
def flow(device: TeeDevice) -> list[bytes]:
    return _recorded(device)


@examples(40)
@given(st.data())
def test_mutated_vdm_in_a_session(device: TeeDevice, flow: list[bytes],
                                  data: st.DataObject) -> None:
    host, doe = _host(device)
    doe.abort()
    host.authenticate()
    host.open_session()
    which = data.draw(st.integers(0, len(flow) - 1), label="which")
    mutated = data.draw(_damaged(flow[which]), label="mutated")
    for req in flow[:which]:
        with contextlib.suppress(ErrorResponse):  # e.g. START with a recorded (stale) nonce
            host.vdm(req)
    try:
        resp = host.vdm(mutated)
    except ErrorResponse:
        resp = None  # SPDM ERROR (e.g. an IDE_KM object the dispatcher refuses)
    if resp is not None and mutated[:1] == b"\x01" and resp[:1] == b"\x01":
        decode_vdm(resp)
    elif resp is not None and mutated[:1] == b"\x00" and resp[:1] == b"\x00":
        parse_idekm(resp)
    host.end_session()
    host2, doe2 = _host(device)
    full_flow(host2, doe2)
    host2.end_session()
