"""Routes PCI-SIG vendor-defined payloads to IDE_KM and TDISP (PCIe 6.2 §6.31.4).

The SPDM responder calls, for every VENDOR_DEFINED_REQUEST whose StandardID is 0x0003
(PCI-SIG) and VendorID 0x0001:

    response_payload = dispatcher.handle(payload, session_id)

`payload` starts at the ProtocolID byte; so does the return value, which the SPDM
layer wraps into a VENDOR_DEFINED_RESPONSE.  `session_id` is None outside a secured
session.  `VdmRefused` means "no protocol response".  When a session ends, call
`dispatcher.session_ended(id)`.

As an SPDM responder's vendor handler, which turns `VdmRefused` into the SPDM error
its class names (tdisp.errors), so the SPDM layer answers with that ERROR:

    responder.register_vendor_handler(0x0003, b"\x01\x00", dispatcher.spdm_handler())

The dispatcher also routes IDE_KM's "stream went Insecure" events to TDISP
enforcement, so a K_SET_STOP of the active keys of a locked TDI's stream moves it to
ERROR (§11.4.5).
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import Int16ul

from spdm.responder import VendorHandler, VendorRequestContext
from tdisp.errors import MalformedVdm, UnknownProtocol, VdmRefused
from tdisp.idekm_responder import IdeKmResponder
from tdisp.responder import TdispResponder
from tdisp.vendor_defined import PCISIG_VENDOR_ID, STANDARD_ID_PCISIG, ProtocolId


@dataclass
class PciSigVdmDispatcher:
    idekm: IdeKmResponder | None = None
    tdisp: TdispResponder | None = None

    standard_id: int = STANDARD_ID_PCISIG
    vendor_id: int = PCISIG_VENDOR_ID

    def __post_init__(self) -> None:
        if self.idekm is not None and self.tdisp is not None:
            tdisp = self.tdisp
            self.idekm.stream_observers.append(
                lambda _port, stream, reason: tdisp.ide_stream_insecure(stream, reason)
            )

    def spdm_handler(self) -> VendorHandler:
        """`handle` as an SPDM vendor handler: a refusal becomes the SPDM error it names."""

        def handler(payload: bytes, ctx: VendorRequestContext) -> bytes:
            try:
                return self.handle(payload, ctx.session_id)
            except VdmRefused as exc:
                raise exc.spdm_refusal() from exc

        return handler

    def accepts(self, standard_id: int, vendor_id: bytes | int) -> bool:
        vid = Int16ul.parse(vendor_id) if isinstance(vendor_id, bytes) else vendor_id
        return standard_id == self.standard_id and vid == self.vendor_id

    def handle(self, payload: bytes, session_id: int | None) -> bytes:
        if not payload:
            raise MalformedVdm("empty PCI-SIG VDM payload")
        protocol = payload[0]
        if protocol == ProtocolId.IDE_KM and self.idekm is not None:
            return self.idekm.handle(payload, session_id)
        if protocol == ProtocolId.TDISP and self.tdisp is not None:
            return self.tdisp.handle(payload, session_id)
        raise UnknownProtocol(f"PCI-SIG protocol 0x{protocol:02x}")

    def session_ended(self, session_id: int) -> None:
        # TDISP first: its ERROR transition is caused by the session, not by the
        # IDE keys being stopped a moment later.
        if self.tdisp is not None:
            self.tdisp.session_ended(session_id)
        if self.idekm is not None:
            self.idekm.session_ended(session_id)
