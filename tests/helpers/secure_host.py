"""Host side of the device tests: what a TSM plus the host kernel do to a TeeDevice.

`ConfigPort` is config space through any path (the model, vfio-user); `SecureHost` runs
the SPDM requester over a transport (DOE mailbox, vfio-user, spdm-emu) and the IDE_KM /
TDISP requester flows inside the session, touching config space the way Linux does
(pci_ide_stream_setup writes the Stream ID, the TSM programs keys, then the stream is
enabled; BAR0 and Memory Space Enable are programmed before LOCK).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from spdm.codes import MEAS_SUMMARY_ALL
from spdm.requester import Outgoing, Requester, RequesterConfig
from tdisp.codes import LockFlags, TdiState
from tdisp.device_interface import InterfaceId
from tdisp.flows import IdeKeySetup, TdispConnection, drive, ide_key_setup, tdisp_connect
from tdisp.vendor_defined import PCISIG_VENDOR_ID_BYTES, STANDARD_ID_PCISIG
from vdev.endpoint.tee_device import TeeDevice
from vdev.pci.header import BAR_BASE, CMD_MASTER, CMD_MEMORY, COMMAND
from vdev.pci.ide_cap import CTL_EN, SEL_CTL, SEL_RID_1, SEL_RID_2, SEL_STS, IdeStreamState

BAR0_ADDRESS = 0x1_2345_0000  # above 4 GiB, so both BAR dwords matter
STREAM_ID = 1
LOCK_FLAGS = int(LockFlags.NO_FW_UPDATE | LockFlags.LOCK_MSIX)


@dataclass
class ConfigPort:
    read: Callable[[int, int], int]
    write: Callable[[int, int, int], None]  # offset, size, value

    @classmethod
    def of_device(cls, device: TeeDevice) -> ConfigPort:
        config = device.config
        return cls(config.read_int, lambda off, size, v: config.write_int(off, size, v))


def tdi_state(device: TeeDevice) -> TdiState:
    """A call, so type checkers do not narrow the state across device operations."""
    return device.tdi.state


def sel_offset(device: TeeDevice, reg: int, index: int = 0) -> int:
    return device.ide.offset + device.ide.selective_block_offset(index) + reg


@dataclass
class SecureHost:
    device: TeeDevice  # only for register offsets and the trust anchor
    cfg: ConfigPort
    transport: Callable[[Outgoing], bytes]
    trust_anchor: x509.Certificate
    requester: Requester = field(init=False)
    session_id: int | None = None
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.requester = Requester(RequesterConfig(trust_anchors=[self.trust_anchor]))

    def run(self, op: Any) -> Any:
        return self.requester.run(op, self.transport)

    # ---- SPDM ---------------------------------------------------------------------

    def authenticate(self) -> None:
        """VCA, DIGESTS, CERTIFICATE (verified against the root), CHALLENGE, MEASUREMENTS."""
        r = self.requester
        self.run(r.init_connection())
        self.run(r.get_digests())
        self.run(r.get_certificate(0))
        self.run(r.challenge(0, MEAS_SUMMARY_ALL))
        self.run(r.get_measurements(signed=True))
        assert r.last_signed_measurements

    def open_session(self) -> int:
        sid: int = self.run(self.requester.key_exchange())
        self.session_id = sid
        return sid

    def vdm(self, payload: bytes) -> bytes:
        assert self.session_id is not None
        out: bytes = self.run(self.requester.vendor_defined(
            STANDARD_ID_PCISIG, PCISIG_VENDOR_ID_BYTES, payload,
            self.session_id))
        return out

    def end_session(self) -> None:
        assert self.session_id is not None
        self.run(self.requester.end_session(self.session_id))
        self.session_id = None

    # ---- config space like Linux --------------------------------------------------------

    def program_bar0(self, address: int = BAR0_ADDRESS) -> None:
        self.cfg.write(BAR_BASE, 4, address & 0xFFFF_FFFF)
        self.cfg.write(BAR_BASE + 4, 4, address >> 32)
        self.cfg.write(COMMAND, 2, self.cfg.read(COMMAND, 2) | CMD_MEMORY | CMD_MASTER)

    def setup_stream(self, stream_id: int = STREAM_ID, partner_rid: int = 0x0008) -> None:
        """pci_ide_stream_setup(): the partner's RID association (V set), then the ID."""
        self.cfg.write(sel_offset(self.device, SEL_RID_1), 4, partner_rid << 8)
        self.cfg.write(sel_offset(self.device, SEL_RID_2), 4, partner_rid << 8 | 1)
        self.cfg.write(sel_offset(self.device, SEL_CTL), 4, stream_id << 24)

    def enable_stream(self, stream_id: int = STREAM_ID) -> None:
        self.cfg.write(sel_offset(self.device, SEL_CTL), 4, (stream_id << 24) | CTL_EN)

    def stream_status(self) -> int:
        return self.cfg.read(sel_offset(self.device, SEL_STS), 4) & 0xF

    # ---- IDE_KM and TDISP ------------------------------------------------------------------

    def ide_keys(self, stream_id: int = STREAM_ID) -> IdeKeySetup:
        return drive(ide_key_setup(stream_id), self.vdm)

    def tdisp_connect(self, start: bool = True, stream_id: int = STREAM_ID,
                      flags: int = LOCK_FLAGS) -> TdispConnection:
        return drive(
            tdisp_connect(self.device.interface.interface_id, stream_id, flags, start=start),
            self.vdm,
        )

    def interface_id(self) -> InterfaceId:
        return self.device.interface.interface_id

    def secure_stream(self) -> IdeKeySetup:
        """What Linux and the TSM do between a session and LOCK: BAR0 and decode on,
        the stream set up, its keys programmed over IDE_KM, the stream enabled."""
        self.program_bar0()
        self.setup_stream()
        keys = self.ide_keys()
        self.enable_stream()
        return keys

    def to_run(self) -> TdispConnection:
        """Everything up to a TDI in RUN over a fresh session."""
        self.authenticate()
        self.open_session()
        self.secure_stream()
        return self.tdisp_connect()

    def full_flow(self) -> TdispConnection:
        """to_run() with a HEARTBEAT and a KEY_UPDATE in the session, the IDE stream
        checked Secure before the TDI is locked."""
        self.authenticate()
        sid = self.open_session()
        self.run(self.requester.heartbeat(sid))
        self.run(self.requester.key_update(sid))
        self.secure_stream()
        assert self.stream_status() == IdeStreamState.SECURE
        return self.tdisp_connect()
