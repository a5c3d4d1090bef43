"""A device (IDE target + IDE_KM + TDISP behind the dispatcher) and a TSM-side driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from tdisp.codes import InterfaceInfo, LockFlags
from tdisp.device_interface import DeviceInterface, InterfaceId, MmioBar
from tdisp.dispatcher import PciSigVdmDispatcher
from tdisp.ide_target import InMemoryIdeTarget
from tdisp.idekm_responder import IdeKmResponder
from tdisp.policy import TdispPolicy
from tdisp.requesters import IdeKmRequester, TdispRequester, stream_slots
from tdisp.responder import TdispResponder

TDI_ID = InterfaceId.of(bus=1, device=0, function=0)
STREAM = 1
SESSION = 0xFFFE_FFFE
OTHER_SESSION = 0xFFFD_FFFD
FLAGS = int(LockFlags.NO_FW_UPDATE | LockFlags.LOCK_MSIX)
MMIO_OFFSET = 0x1_0000_0000_0000


def bars() -> list[MmioBar]:
    return [
        # BAR0: 64 KiB, MSI-X table in page 8, PBA in page 9
        MmioBar(0, 0xFE00_0000, 0x1_0000, msix_table=(0x8000, 0x100), msix_pba=(0x9000, 8)),
        MmioBar(2, 0xFD00_0000, 0x2000, updatable=True),
    ]


def interface() -> DeviceInterface:
    return DeviceInterface(
        TDI_ID,
        bars=bars,
        interface_info=InterfaceInfo.DMA_WITHOUT_PASID,
        msix_message_control=0x8003,
        device_specific_info=b"vdev-tdi-0",
    )


@dataclass
class Rig:
    target: InMemoryIdeTarget
    idekm: IdeKmResponder
    tdisp: TdispResponder
    vdm: PciSigVdmDispatcher
    req: TdispRequester = field(default_factory=lambda: TdispRequester(TDI_ID))

    def send(self, payload: bytes, session: int | None = SESSION) -> bytes:
        return self.vdm.handle(payload, session)

    def program_keys(self, session: int = SESSION, stream: int = STREAM, go: bool = True) -> None:
        km = IdeKmRequester
        for slot in stream_slots(stream):
            km.parse_kp_ack(self.send(km.key_prog(slot, bytes(range(32))), session), slot)
        if go:
            for slot in stream_slots(stream):
                km.parse_gostop_ack(self.send(km.k_set_go(slot), session), slot)

    def lock(self, session: int = SESSION, flags: int = FLAGS) -> bytes:
        return self.req.parse_lock(self.send(self.req.lock(flags, STREAM, MMIO_OFFSET), session))

    def start(self, nonce: bytes, session: int = SESSION) -> None:
        self.req.parse_start(self.send(self.req.start(nonce), session))

    def state(self) -> int:
        return self.req.parse_state(self.send(self.req.get_state()))

    def to_run(self) -> bytes:
        self.program_keys()
        nonce = self.lock()
        self.start(nonce)
        return nonce


def make_rig(policy: TdispPolicy | None = None, **kw: object) -> Rig:
    target = InMemoryIdeTarget(streams={0: {0, STREAM}})
    idekm = IdeKmResponder(target)
    tdisp = TdispResponder([interface()], policy=policy, ide=idekm, **kw)  # type: ignore[arg-type]
    return Rig(target, idekm, tdisp, PciSigVdmDispatcher(idekm, tdisp))
