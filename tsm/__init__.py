"""The platform TSM model (sans-IO): authenticates a device over SPDM, programs the IDE
stream at both ends over IDE_KM, drives TDIs through TDISP, and produces evidence.

Modules, one concept each:

    mailbox_protocol  the boundary shared with the mailbox device: Op, TargetFunction,
                  LockBar, DoeRequest, Done, TsmBackend
    operations    TsmOperation (next_request / feed / fail / result)
    model         TsmModel, TsmConfig: connect, lock, report, start, stop, disconnect,
                  heartbeat, key_update, status
    errors        TsmError and its subclasses; errno_of, describe (lookups by class)
    device_ref    DeviceRef (DSM segment/bus/devfn, TDI INTERFACE_IDs), ExpectedBar
    reference_values  ReferenceValues: measurement reference values (TOML/JSON)
    root_port     RootPortIde: the root port's end of the IDE stream
    report_check  interface report vs. the host's BARs
    evidence      evidence document schema and builders
    mailbox_backend   OperationBackend, mailbox_backend(): the model behind the mailbox
"""

from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.errors import TsmError, errno_of
from tsm.mailbox_backend import OperationBackend, load_trust_anchors, mailbox_backend
from tsm.mailbox_protocol import DoeRequest, Done, Op, TargetFunction, TsmBackend
from tsm.model import TsmConfig, TsmModel
from tsm.operations import TsmOperation
from tsm.reference_values import PolicyError, ReferenceValues
from tsm.root_port import RootPortIde, RpSlot, mirror_of

__all__ = [
    "DeviceRef",
    "DoeRequest",
    "Done",
    "ExpectedBar",
    "Op",
    "OperationBackend",
    "PolicyError",
    "ReferenceValues",
    "RootPortIde",
    "RpSlot",
    "TargetFunction",
    "TsmBackend",
    "TsmConfig",
    "TsmError",
    "TsmModel",
    "TsmOperation",
    "load_trust_anchors",
    "errno_of",
    "mailbox_backend",
    "mirror_of",
]
