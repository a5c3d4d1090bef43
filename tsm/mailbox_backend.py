"""The TSM model behind the mailbox device: the backend `vdev tsm serve` drives.

    backend = mailbox_backend(trust_anchor_path, policy_path_or_None)
    action = backend.start(Op.CONNECT, target)          # -> DoeRequest | Done
    action = backend.start(Op.LOCK, target, mmio=bars)  # LOCK with the guest's memory BARs

`OperationBackend` implements `tsm.mailbox_protocol.TsmBackend` over the model's
operations (`TsmOperation`: next_request / feed / fail / result); the requests and the
result it hands the device are the operation's own `DoeRequest` and `Done`.

One `TsmModel` per DSM: a TDI target (function N of a device) is served by the model of
function 0 of that device, the DSM whose DOE mailbox carries SPDM for all its functions
(PCIe 6.2 §11.2).  REPORT returns the report bytes.

`mmio` (mailbox protocol 1.1): the TDI's memory BARs as the guest sees them, given with
LOCK.  They become the lock's expected MMIO ranges (`TsmModel.lock(expected_mmio=...)`):
the report is checked against them (a mismatch fails with -EACCES, ReportMismatch),
by a REPORT or by START, which reads it when nobody did since LOCK.  A LOCK without `mmio`
(a 1.0 guest) leaves the report unchecked, like `vdev tsm connect` without `--expect-bar`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from spdm.hooks import RequesterHooks
from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.mailbox_protocol import Action, Done, LockBar, Op, TargetFunction
from tsm.model import TsmConfig, TsmModel
from tsm.operations import TsmOperation
from tsm.reference_values import ReferenceValues

StartOperation = Callable[[Op, TargetFunction, Sequence[LockBar]], TsmOperation]
OnDone = Callable[[Op, TargetFunction, Done], None]


def load_trust_anchors(path: str | Path) -> list[x509.Certificate]:
    """Root certificate(s): PEM (one or more) or a single DER certificate."""
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


class OperationBackend:
    """A `TsmBackend` over a function that starts model operations.  `on_done` sees
    every finished operation (the evidence file, the control socket's copy)."""

    def __init__(self, start_operation: StartOperation, on_done: OnDone | None = None) -> None:
        self._start_operation = start_operation
        self._on_done = on_done
        self._op: TsmOperation | None = None
        self._current: tuple[Op, TargetFunction] | None = None

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        self._op = self._start_operation(op, target, tuple(mmio))
        self._current = (op, target)
        return self._action()

    def doe_response(self, payload: bytes) -> Action:
        if self._op is None:
            raise RuntimeError("DOE response with no operation in flight")
        self._op.feed(payload)
        return self._action()

    def transport_error(self, error: int) -> Action:
        if self._op is None:
            raise RuntimeError("transport error with no operation in flight")
        self._op.fail(error)
        return self._action()

    def abort(self) -> None:
        op, self._op = self._op, None
        if op is not None and not op.done:
            op.fail("aborted by the mailbox (guest abort, reset or disconnect)")

    def _action(self) -> Action:
        op = self._op
        assert op is not None
        if not op.done:
            if op.next_request is None:
                raise RuntimeError("model operation neither done nor requesting")
            return op.next_request
        self._op = None
        done = op.result
        if done is None:
            raise RuntimeError("model operation done without a result")
        if self._on_done is not None and self._current is not None:
            self._on_done(*self._current, done)
        return done


def model_operations(
    config: TsmConfig, spdm_hooks: RequesterHooks | None = None
) -> StartOperation:
    """Start TSM model operations for mailbox ops, one model per DSM."""
    models: dict[tuple[int, int, int], TsmModel] = {}

    def model_for(target: TargetFunction) -> TsmModel:
        key = (target.segment, target.bus, target.devfn & ~7)
        if key not in models:
            models[key] = TsmModel(DeviceRef(*key), config, spdm_hooks)
        return models[key]

    def start(op: Op, target: TargetFunction, mmio: Sequence[LockBar]) -> TsmOperation:
        tsm = model_for(target)
        fn = target.devfn & 7
        if mmio and op != Op.LOCK:
            raise ValueError(f"mailbox op {int(op)} takes no BARs")
        if op == Op.CONNECT:
            return tsm.connect()
        if op == Op.DISCONNECT:
            return tsm.disconnect()
        if op == Op.LOCK:
            expected = [ExpectedBar(b.index, b.base, b.size) for b in mmio] if mmio else None
            return tsm.lock(fn, expected_mmio=expected)
        if op == Op.START:
            return tsm.start(fn)
        if op == Op.STOP:
            return tsm.stop(fn)
        if op == Op.REPORT:
            return tsm.report(fn, raw=True)
        if op == Op.STATUS:
            # Before connect there is nothing to ask the device: the TSM's view only.
            return tsm.status(fn) if tsm.state == "connected" else tsm.status()
        raise ValueError(f"mailbox op {int(op)} is not a TSM operation")

    return start


def mailbox_backend(
    trust_anchor: Path, policy: Path | None, config: TsmConfig | None = None,
    on_done: OnDone | None = None, spdm_hooks: RequesterHooks | None = None,
) -> OperationBackend:
    """The TSM model, trusting the root(s) in `trust_anchor` and checking measurements
    against the reference values in `policy`; `config` gives the other settings,
    `spdm_hooks` the SPDM requester's observers (tracing)."""
    base = config or TsmConfig(trust_anchors=())
    cfg = replace(base, trust_anchors=load_trust_anchors(trust_anchor),
                  reference_values=ReferenceValues.load(policy) if policy else None,
                  policy_file=str(policy) if policy else None)
    return OperationBackend(model_operations(cfg, spdm_hooks), on_done)
