"""The platform TSM model (sans-IO): authenticates a device over SPDM, programs the IDE
stream at both ends over IDE_KM, drives TDIs through TDISP, and produces evidence.

Modules, one concept each:

    operations    DoeRequest, Done, TsmOperation (next_request / feed / fail / result)
    model         TsmModel, TsmConfig: connect, lock, report, start, stop, disconnect,
                  heartbeat, key_update, status
    device_ref    DeviceRef (DSM segment/bus/devfn, TDI INTERFACE_IDs), ExpectedBar
    policy        ReferenceValues: measurement reference values (TOML/JSON)
    root_port     RootPortIde: the root port's end of the IDE stream
    report_check  interface report vs. the host's BARs
    evidence      evidence document schema and builders
    mailbox       mailbox_backend(): the factory `vdev tsm serve` drives the model with
"""

from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.mailbox import load_trust_anchors, mailbox_backend
from tsm.model import TsmConfig, TsmModel
from tsm.operations import DoeRequest, Done, TsmOperation
from tsm.policy import PolicyError, ReferenceValues
from tsm.root_port import RootPortIde, RpSlot, mirror_of

__all__ = [
    "DeviceRef",
    "DoeRequest",
    "Done",
    "ExpectedBar",
    "PolicyError",
    "ReferenceValues",
    "RootPortIde",
    "RpSlot",
    "TsmConfig",
    "TsmModel",
    "TsmOperation",
    "load_trust_anchors",
    "mailbox_backend",
    "mirror_of",
]
