"""The factory `vdev tsm serve` (vdev/cli/tsm_serve.py) builds its backend from.

    start = mailbox_backend(trust_anchor_path, policy_path_or_None)
    op = start(mailbox_op, target)    # -> TsmOperation (next_request / feed / fail)
    op = start(LOCK, target, mmio=bars)   # LOCK with the guest's memory BARs

`mailbox_op` is the mailbox's OP value (1 CONNECT, 2 DISCONNECT, 3 LOCK, 4 START,
5 STOP, 6 REPORT, 7 STATUS) and `target` anything with `segment`, `bus`, `devfn`
(the TARGET register).  Structural typing only, so the protocol engine does not import
the device side.  One `TsmModel` per DSM: a TDI target (function N of a device) is
served by the model of function 0 of that device, the DSM whose DOE mailbox carries
SPDM for all its functions (PCIe 6.2 §11.2).  REPORT returns the report bytes.

`mmio` (mailbox protocol 1.1, vdev/tsm_mailbox/protocol.py): the TDI's memory BARs as
the guest sees them, records with `index` (BAR number = MMIO Range ID), `base` and
`size`, given with LOCK.  They become the lock's expected MMIO ranges
(`TsmModel.lock(expected_mmio=...)`): the REPORT that follows is checked against them
(a mismatch fails with -EACCES, ReportMismatch) and START is refused until a report
was accepted.  A LOCK without `mmio` (a 1.0 guest) leaves the report unchecked, like
`vdev tsm connect` without `--expect-bar`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509

from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.model import TsmConfig, TsmModel
from tsm.operations import TsmOperation
from tsm.policy import ReferenceValues

CONNECT, DISCONNECT, LOCK, START, STOP, REPORT, STATUS = range(1, 8)


class Target(Protocol):
    @property
    def segment(self) -> int: ...

    @property
    def bus(self) -> int: ...

    @property
    def devfn(self) -> int: ...


class GuestBar(Protocol):
    """One of LOCK's BAR records (vdev.tsm_mailbox.protocol.LockBar)."""

    @property
    def index(self) -> int: ...

    @property
    def base(self) -> int: ...

    @property
    def size(self) -> int: ...


def load_trust_anchors(path: str | Path) -> list[x509.Certificate]:
    """Root certificate(s): PEM (one or more) or a single DER certificate."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def mailbox_backend(
    trust_anchor: Path, policy: Path | None, **config: object
) -> Callable[..., TsmOperation]:
    anchors = load_trust_anchors(trust_anchor)
    refs = ReferenceValues.load(policy) if policy is not None else None
    models: dict[tuple[int, int, int], TsmModel] = {}

    def model_for(target: Target) -> TsmModel:
        key = (target.segment, target.bus, target.devfn & ~7)
        if key not in models:
            cfg = TsmConfig(trust_anchors=anchors, reference_values=refs,
                            policy_file=str(policy) if policy else None,
                            **config)  # type: ignore[arg-type]
            models[key] = TsmModel(DeviceRef(*key), cfg)
        return models[key]

    def start(op: int, target: Target, mmio: Sequence[GuestBar] = ()) -> TsmOperation:
        tsm = model_for(target)
        fn = target.devfn & 7
        code = int(op)
        if mmio and code != LOCK:
            raise ValueError(f"mailbox op {code} takes no BARs")
        if code == CONNECT:
            return tsm.connect()
        if code == DISCONNECT:
            return tsm.disconnect()
        if code == LOCK:
            expected = [ExpectedBar(b.index, b.base, b.size) for b in mmio] if mmio else None
            return tsm.lock(fn, expected_mmio=expected)
        if code == START:
            return tsm.start(fn)
        if code == STOP:
            return tsm.stop(fn)
        if code == REPORT:
            return tsm.report(fn, raw=True)
        if code == STATUS:
            # Before connect there is nothing to ask the device: the TSM's view only.
            return tsm.status(fn) if tsm.state == "connected" else tsm.status()
        raise ValueError(f"mailbox op {code} is not a TSM operation")

    return start
