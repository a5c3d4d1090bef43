"""Device-side engines for the TSM tests: an SPDM responder with a generated identity and
the PCI-SIG dispatcher (IDE_KM over an InMemoryIdeTarget, TDISP with one TDI), joined by
a small DOE loop, as the device composition does it."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spdm.hooks import RequesterHooks
from spdm.identity import CertSlots, DeviceIdentity, IdentityParams, generate_identity
from spdm.measurements import default_measurements
from spdm.responder import Responder, ResponderConfig
from spdm.secured_message import DOE_TRANSPORT, TransportParams
from tdisp.codes import InterfaceInfo
from tdisp.device_interface import DeviceInterface, InterfaceId, MmioBar
from tdisp.dispatcher import PciSigVdmDispatcher
from tdisp.ide_target import InMemoryIdeTarget
from tdisp.idekm_responder import IdeKmPolicy, IdeKmResponder
from tdisp.responder import TdispResponder
from tdisp.vendor_defined import PCISIG_VENDOR_ID_BYTES, STANDARD_ID_PCISIG
from tsm import DeviceRef, ExpectedBar, TsmConfig, TsmModel, TsmOperation
from tsm.mailbox_protocol import Done

DEVICE = DeviceRef(0, 1, 0)
TDI_ID = InterfaceId.of(bus=1, device=0, function=0)
STREAM = 1


def bars() -> list[MmioBar]:
    return [
        MmioBar(0, 0xFE00_0000, 0x1_0000, msix_table=(0x8000, 0x100), msix_pba=(0x9000, 8)),
        MmioBar(2, 0xFD00_0000, 0x2000, updatable=True),
    ]


EXPECTED = [ExpectedBar(b.index, b.base, b.size) for b in bars()]

_IDS: dict[str, DeviceIdentity] = {}


def identity(name: str = "device") -> DeviceIdentity:
    if name not in _IDS:
        _IDS[name] = generate_identity(IdentityParams(common_name=f"vdev-{name}"))
    return _IDS[name]


class Clock:
    """Injected clock: real start (certificates are valid now), then 1 ms per reading."""

    def __init__(self) -> None:
        self._t = itertools.count()
        self._base = time.time()

    def __call__(self) -> float:
        return self._base + next(self._t) / 1000


@dataclass
class Device:
    responder: Responder
    target: InMemoryIdeTarget
    idekm: IdeKmResponder
    tdisp: TdispResponder
    vdm: PciSigVdmDispatcher
    sessions: set[int] = field(default_factory=set)
    exchanges: int = 0
    # fault hook: called with the exchange number, may raise or mutate the device
    before: Callable[[Device, int], None] | None = None

    def doe_exchange(self, doe_type: int, payload: bytes) -> bytes:
        self.exchanges += 1
        if self.before is not None:
            self.before(self, self.exchanges)
        _kind, reply = self.responder.handle_doe(doe_type, payload)
        self.sync_sessions()
        return reply

    def sync_sessions(self) -> None:
        """Sessions that disappeared (END_SESSION, GET_VERSION, reset) end for IDE_KM and
        TDISP too (§11.4.5) — the device composition's job, done here by diffing."""
        now = set(self.responder.sessions)
        for sid in sorted(self.sessions - now):
            self.vdm.session_ended(sid)
        self.sessions = now

    @property
    def tdi_state(self) -> str:
        return self.tdisp.tdi(TDI_ID).state.name


def make_device(
    ident: DeviceIdentity | None = None, *, idekm_policy: IdeKmPolicy | None = None,
    measurements: Callable[[], Any] | None = None,
    random: Callable[[int], bytes] = os.urandom, transport: TransportParams = DOE_TRANSPORT,
    **config: Any,
) -> Device:
    """`config`: further ResponderConfig fields (capabilities, psks, ...)."""
    ident = ident or identity()
    rsp = Responder(ResponderConfig(**{
        "slots": CertSlots({0: ident}),
        "measurements": measurements or (lambda: default_measurements()),
        "random": random, "transport": transport, "heartbeat_period": 30, **config,
    }))
    # IDE Capability (Selective IDE + IDE_KM, one selective stream), IDE Control, then the
    # selective stream block: SEL_CAP (no address blocks), SEL_CTL with Stream ID 1 in
    # bits 31:24, SEL_STS, RID association 1/2 — as QUERY_RESP reports them.
    registers = (0x0000_0042, 0, 0, STREAM << 24, 0, 0, 0)
    target = InMemoryIdeTarget(streams={0: {0, STREAM}}, registers=registers)
    idekm = IdeKmResponder(target, policy=idekm_policy or IdeKmPolicy())
    tdi = DeviceInterface(TDI_ID, bars=bars, interface_info=InterfaceInfo.DMA_WITHOUT_PASID,
                          msix_message_control=0x8003, device_specific_info=b"vdev-tdi-0")
    tdisp = TdispResponder([tdi], ide=idekm, random_bytes=random)
    vdm = PciSigVdmDispatcher(idekm, tdisp)
    rsp.register_vendor_handler(STANDARD_ID_PCISIG, PCISIG_VENDOR_ID_BYTES,
                                vdm.spdm_handler())
    return Device(rsp, target, idekm, tdisp, vdm)


def make_tsm(ident: DeviceIdentity | None = None, spdm_hooks: RequesterHooks | None = None,
             **kw: Any) -> TsmModel:
    ident = ident or identity()
    kw.setdefault("clock", Clock())
    return TsmModel(DEVICE, TsmConfig(trust_anchors=[ident.root], **kw), spdm_hooks)


def drive(op: TsmOperation, device: Device) -> Done:
    while not op.done:
        req = op.next_request
        assert req is not None
        op.feed(device.doe_exchange(req.doe_type, req.payload))
    assert op.result is not None
    return op.result


def ok(op: TsmOperation, device: Device) -> Done:
    done = drive(op, device)
    assert done.ok, done.reason
    return done
