"""IDE_KM and TDISP protocol engines (sans-IO).

Modules, one concept each:

    vendor_defined     PCI-SIG VENDOR_DEFINED framing (StandardID 3, VendorID 1, ProtocolID)
    idekm_messages     IDE_KM objects (PCIe 6.2 §6.33.3), key/IFV byte order
    ide_target         IdeRegisterTarget Protocol + InMemoryIdeTarget
    idekm_responder    IdeKmResponder (KP_ACK statuses, session ownership, key bookkeeping)
    codes              TDISP codes, states, flags
    messages           TDISP header and every request/response (§11.3)
    device_interface   InterfaceId, MmioBar, DeviceInterface (what the device model supplies)
    interface_report   DEVICE_INTERFACE_REPORT build/decode/render
    tdi_state          the TDI transition table and TdiStateMachine
    policy             TdispPolicy: profile-configurable divergences
    responder          TdispResponder, Tdi (enforcement hooks)
    dispatcher         PciSigVdmDispatcher: the SPDM layer's entry point
    requesters         IdeKmRequester, TdispRequester, ReportReader (TSM side)
    flows              sans-IO generator flows: ide_key_setup, tdisp_connect, drive
"""

from tdisp.codes import ErrorCode, LockFlags, TdiState
from tdisp.device_interface import DeviceInterface, InterfaceId, MmioBar
from tdisp.dispatcher import PciSigVdmDispatcher
from tdisp.errors import (
    IdeKmStatusError,
    IdeTdispError,
    MalformedMessage,
    RefusalKind,
    TdispErrorResponse,
    TdispProtocolError,
    UnexpectedResponse,
    VdmRefused,
)
from tdisp.flows import drive, ide_key_setup, tdisp_connect
from tdisp.ide_target import IdePortInfo, IdeRegisterTarget, InMemoryIdeTarget
from tdisp.idekm_responder import IdeKmPolicy, IdeKmResponder
from tdisp.interface_report import InterfaceReport
from tdisp.policy import ReqMsgsConvention, TdispPolicy
from tdisp.requesters import IdeKmRequester, ReportReader, TdispRequester, stream_slots
from tdisp.responder import Tdi, TdispResponder
from tdisp.tdi_state import DEFAULT_TABLE, TdiEvent, TdiStateMachine, transition_table

__all__ = [
    "DEFAULT_TABLE",
    "DeviceInterface",
    "ErrorCode",
    "IdeKmPolicy",
    "IdeKmRequester",
    "IdeKmResponder",
    "IdeKmStatusError",
    "IdeTdispError",
    "IdePortInfo",
    "IdeRegisterTarget",
    "InMemoryIdeTarget",
    "InterfaceId",
    "InterfaceReport",
    "LockFlags",
    "MalformedMessage",
    "MmioBar",
    "PciSigVdmDispatcher",
    "RefusalKind",
    "ReportReader",
    "ReqMsgsConvention",
    "TdiEvent",
    "TdiState",
    "TdiStateMachine",
    "Tdi",
    "TdispErrorResponse",
    "TdispPolicy",
    "TdispProtocolError",
    "TdispRequester",
    "TdispResponder",
    "UnexpectedResponse",
    "VdmRefused",
    "drive",
    "ide_key_setup",
    "stream_slots",
    "tdisp_connect",
    "transition_table",
]
