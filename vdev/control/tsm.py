"""Control commands of the TSM mailbox server (`vdev tsm serve --control PATH`).

`status` = the mailbox device's state (STATUS register, operation in flight, counters,
vfio-user client) plus the TSM model's latest evidence, which `EvidenceKeeper` keeps
from the model adapter's after-operation callback.  Evidence is what the model
already publishes (`tsm`); as a second line of defence, fields named like
secrets are dropped before anything leaves.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tsm.mailbox_protocol import Op, TargetFunction
from vdev.control.core import Command, ControlCore, expect_args
from vdev.tsm_mailbox.device import TsmMailboxDevice

# Never sent, whatever the model puts into its evidence.
SECRET_FIELDS = frozenset({"key", "keys", "ifv", "nonce", "secret", "secrets", "psk",
                           "private_key", "dhe_secret"})


def scrub(value: Any) -> Any:
    """A JSON-safe copy of `value` without fields named like secrets."""
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items()
                if str(k).lower() not in SECRET_FIELDS}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class EvidenceKeeper:
    """Remembers the evidence of the last finished TSM operation."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.operations = 0

    def note(self, op: Op, target: TargetFunction | str, evidence: dict[str, Any]) -> None:
        self.operations += 1
        self.last = {
            "operation": op.name,
            "target": str(target),
            "at": time.time(),
            "evidence": scrub(json.loads(json.dumps(evidence, default=str))),
        }


class TsmControl:
    def __init__(self, device: TsmMailboxDevice, evidence: EvidenceKeeper | None,
                 backend_kind: str) -> None:
        self.device = device
        self.evidence_keeper = evidence
        self.backend_kind = backend_kind

    def core(self) -> ControlCore:
        return ControlCore({
            "status": Command(self.status, "mailbox state and the TSM's latest evidence"),
            "mailbox": Command(self.mailbox, "the mailbox device's registers and counters"),
            "evidence": Command(self.evidence, "evidence of the last finished TSM operation"),
            "reset": Command(self.reset, "function-level reset of the mailbox device"),
        }, role="tsm")

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        return {"backend": self.backend_kind, "mailbox": self.mailbox({}),
                "evidence": self.evidence({})}

    def mailbox(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        d = self.device
        op = getattr(d, "_op", None)
        target = getattr(d, "_target", None)
        return {
            "status": d.status.name,
            "operation": getattr(op, "name", None),
            "target": None if target is None else str(target),
            "completions": d.completions,
            "errors": d.errors,
            "reason": d.reason or None,
            "transport": {"kind": "vfio-user",
                          "client_connected": getattr(d, "_irq", None) is not None},
        }

    def evidence(self, args: dict[str, Any]) -> dict[str, Any] | None:
        expect_args(args, set())
        keeper = self.evidence_keeper
        if keeper is None:
            return None  # scripted backend: no model, no evidence
        return {"operations": keeper.operations, "last": keeper.last}

    def reset(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        self.device.function_level_reset()
        return {"reset": "function-level", "mailbox": self.mailbox({})}


def tsm_control(device: TsmMailboxDevice, evidence: EvidenceKeeper | None,
                backend_kind: str) -> ControlCore:
    return TsmControl(device, evidence, backend_kind).core()
