"""Routes PCI-SIG vendor-defined payloads to IDE_KM and TDISP (PCIe 6.2 §6.31.4).

The SPDM responder calls, for every VENDOR_DEFINED_REQUEST whose StandardID is 0x0003
(PCI-SIG) and VendorID 0x0001:

    response_payload = dispatcher.handle(payload, session_id)

`payload` starts at the ProtocolID byte; so does the return value, which the SPDM
layer wraps into a VENDOR_DEFINED_RESPONSE.  `session_id` is None outside a secured
session.  `VdmRefused` means "no protocol response": answer with SPDM ERROR
`exc.spdm_error_code`.  When a session ends, call `dispatcher.session_ended(id)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdisp.errors import RefusalKind, VdmRefused
from tdisp.idekm_responder import IdeKmResponder
from tdisp.tdisp_responder import TdispResponder
from tdisp.vendor_defined import PCISIG_VENDOR_ID, STANDARD_ID_PCISIG, ProtocolId


@dataclass
class PciSigVdmDispatcher:
    idekm: IdeKmResponder | None = None
    tdisp: TdispResponder | None = None

    standard_id: int = STANDARD_ID_PCISIG
    vendor_id: int = PCISIG_VENDOR_ID

    def accepts(self, standard_id: int, vendor_id: bytes | int) -> bool:
        vid = int.from_bytes(vendor_id, "little") if isinstance(vendor_id, bytes) else vendor_id
        return standard_id == self.standard_id and vid == self.vendor_id

    def handle(self, payload: bytes, session_id: int | None) -> bytes:
        if not payload:
            raise VdmRefused(RefusalKind.MALFORMED, "empty PCI-SIG VDM payload")
        protocol = payload[0]
        if protocol == ProtocolId.IDE_KM and self.idekm is not None:
            return self.idekm.handle(payload, session_id)
        if protocol == ProtocolId.TDISP and self.tdisp is not None:
            return self.tdisp.handle(payload, session_id)
        raise VdmRefused(RefusalKind.UNKNOWN_PROTOCOL, f"PCI-SIG protocol 0x{protocol:02x}")

    def session_ended(self, session_id: int) -> None:
        # TDISP first: its ERROR transition is caused by the session, not by the
        # IDE keys being stopped a moment later.
        if self.tdisp is not None:
            self.tdisp.session_ended(session_id)
        if self.idekm is not None:
            self.idekm.session_ended(session_id)
