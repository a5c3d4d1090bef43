"""Sans-IO requester flows for the TSM model: generators that yield VDM request payloads
and receive the response payloads via `send()`; their return value is the result.

    flow = ide_key_setup(stream_id=1)
    request = next(flow)
    try:
        while True:
            request = flow.send(transport(request))   # transport: SPDM session + DOE
    except StopIteration as done:
        result = done.value

`ide_key_setup`: QUERY, then KEY_PROG and K_SET_GO for the six slots of the stream
(PCIe 6.2 §6.33.3) with fresh random keys; returns the keys so the TSM can program the
root port's matching slots (device RX = root port TX).  `tdisp_connect`: GET_VERSION,
GET_CAPABILITIES, LOCK, the whole report in portions, START, state check (§11.3).
Errors surface as the requester exceptions (`TdispErrorResponse`, `IdeKmStatusError`, ...).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

from tdisp.codes import TdiState
from tdisp.device_interface import InterfaceId
from tdisp.errors import UnexpectedResponse
from tdisp.idekm_messages import KeySlot, QueryResp
from tdisp.interface_report import InterfaceReport
from tdisp.messages import TdispCapabilities
from tdisp.requesters import IdeKmRequester, TdispRequester, stream_slots

T = TypeVar("T")


@dataclass
class IdeKeySetup:
    query: QueryResp
    stream_id: int
    key_set: int
    keys: dict[KeySlot, bytes] = field(repr=False)  # natural AES order; never printed


def ide_key_setup(
    stream_id: int,
    key_set: int = 0,
    port_index: int = 0,
    key_source: Callable[[KeySlot], bytes] = lambda _slot: secrets.token_bytes(32),
) -> Generator[bytes, bytes, IdeKeySetup]:
    km = IdeKmRequester
    query = km.parse_query_resp((yield km.query(port_index)), port_index)
    keys: dict[KeySlot, bytes] = {}
    slots = stream_slots(stream_id, key_set, port_index)
    for slot in slots:
        keys[slot] = key_source(slot)
        km.parse_kp_ack((yield km.key_prog(slot, keys[slot])), slot)
    for slot in slots:
        km.parse_gostop_ack((yield km.k_set_go(slot)), slot)
    return IdeKeySetup(query, stream_id, key_set, keys)


@dataclass
class TdispConnection:
    interface_id: InterfaceId
    capabilities: TdispCapabilities
    report: InterfaceReport
    report_portions: int
    state: TdiState


def tdisp_connect(
    interface_id: InterfaceId,
    default_stream_id: int,
    lock_flags: int | None = None,
    mmio_reporting_offset: int = 0,
    report_chunk: int = 0x400,
    start: bool = True,
) -> Generator[bytes, bytes, TdispConnection]:
    """VERSION, CAPABILITIES, LOCK (flags default: all the device supports), REPORT, START."""
    req = TdispRequester(interface_id)
    req.parse_version((yield req.get_version()))
    caps = req.parse_capabilities((yield req.get_capabilities()))
    flags = caps.lock_interface_flags_supported if lock_flags is None else lock_flags
    nonce = req.parse_lock((yield req.lock(flags, default_stream_id, mmio_reporting_offset)))
    reader = req.report_reader(report_chunk)
    while (r := reader.next_request()) is not None:
        reader.feed((yield r))
    report = reader.report()
    if start:
        req.parse_start((yield req.start(nonce)))
    state = req.parse_state((yield req.get_state()))
    expected = TdiState.RUN if start else TdiState.CONFIG_LOCKED
    if state != expected:
        raise UnexpectedResponse(f"TDI in {state.name} after connect, expected {expected.name}")
    return TdispConnection(interface_id, caps, report, reader.portions, state)


def drive(flow: Generator[bytes, bytes, T], transport: Callable[[bytes], bytes]) -> T:
    """Run a flow to completion over a synchronous transport (tests, simple tools)."""
    try:
        request = next(flow)
        while True:
            request = flow.send(transport(request))
    except StopIteration as done:
        result: T = done.value
        return result
