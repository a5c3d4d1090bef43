"""Wiring a `Tracer` to the adapters, from outside: the engines only get callbacks.

Device side (`vdev serve`, `vdev spdm-emu`), `attach_device(tracer, device)`:
  - the DOE mailbox: the SPDM and secured-SPDM handlers are re-registered with wrappers
    that trace the request object before the device handles it and the response object
    after (so decrypted messages and state changes land between them); discovery is
    traced from the mailbox's exchange observers.  The mailbox answers with the request's
    object type (see vdev.endpoint.tee_device), so the response object is built with it.
  - `TracedDevice` for the spdm-emu server: the same around `doe_object` (PCI_DOE) and
    `spdm_message` (MCTP / NONE, no DOE objects).
  - the responder's `message_observer` (and `secret_sink` with --log-secrets), the
    session observers (chained to the device's own), the TDI state machine and the IDE
    stream observers.
TSM side: `TracedClient` (`vdev tsm connect`) and `TracedBackend` (`vdev tsm serve`)
trace the DOE objects the TSM sends and receives; the requester's hooks come from
`Tracer.spdm_hooks()`, given to the TsmModel beside its config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tsm.mailbox_protocol import Action, DoeRequest, LockBar, Op, TargetFunction, TsmBackend
from vdev.doe.data_object import (
    DISCOVERY,
    DOE_TYPE_CMA_SPDM,
    DOE_TYPE_SECURED_CMA_SPDM,
    PCI_SIG_VENDOR_ID,
    DoeProtocolId,
    build_object,
)
from vdev.trace.tracer import REQ, RSP, Tracer, doe_object_of, secured_reply_type


def attach_device(tracer: Tracer, device: Any) -> None:
    """Trace a `vdev.endpoint.tee_device.TeeDevice` (duck-typed: the trace layer does not need
    the device's imports)."""

    def mailbox_handler(doe_type: int) -> Any:
        protocol = DoeProtocolId(PCI_SIG_VENDOR_ID, doe_type)

        def handle(payload: bytes) -> bytes:
            tracer.doe(REQ, build_object(protocol, payload))
            _kind, reply = device.spdm_message(doe_type, payload)
            tracer.doe(RSP, build_object(protocol, reply))
            return bytes(reply)

        return handle

    for doe_type in (DOE_TYPE_CMA_SPDM, DOE_TYPE_SECURED_CMA_SPDM):
        device.register_doe_protocol(PCI_SIG_VENDOR_ID, doe_type, mailbox_handler(doe_type))

    def discovery(protocol: DoeProtocolId, payload: bytes, reply: bytes) -> None:
        if protocol == DISCOVERY:
            tracer.doe(REQ, build_object(protocol, payload))
            tracer.doe(RSP, build_object(protocol, reply))

    device.doe.observers.append(discovery)
    # Injected faults (vdev.faults), whenever an injector is installed.
    device.fault_observers.append(tracer.fault)

    hooks = device.responder.hooks
    traced = tracer.spdm_hooks()
    hooks.message_observer = traced.message_observer
    if traced.secret_sink is not None:
        hooks.secret_sink = traced.secret_sink
    established, ended = hooks.on_session_established, hooks.on_session_end

    def on_established(sid: int) -> None:
        tracer.state(f"SPDM session {sid:#010x} ESTABLISHED", msg="SESSION", session=sid)
        if established is not None:
            established(sid)

    def on_end(sid: int) -> None:
        tracer.state(f"SPDM session {sid:#010x} ENDED", msg="SESSION", session=sid)
        if ended is not None:
            ended(sid)

    hooks.on_session_established, hooks.on_session_end = on_established, on_end

    tdi_name = str(device.interface.interface_id)

    def tdi(entry: Any) -> None:
        reason = f" ({entry.reason})" if entry.reason else ""
        tracer.state(f"TDI {tdi_name} {entry.old.name} --{entry.event.name}--> "
                     f"{entry.new.name}{reason}", msg="TDI", error=entry.new.name == "ERROR")

    device.tdi.machine.observers.append(tdi)

    def ide(stream: Any, old: Any, new: Any) -> None:
        tracer.state(f"IDE stream {stream.stream_id} (selective {stream.index}) "
                     f"{getattr(old, 'name', old)} -> {getattr(new, 'name', new)}", msg="IDE")

    device.ide.observers.append(ide)

    def ide_rule(v: Any) -> None:
        tracer.state(f"IDE rule violation {v.rule}: {v.message}", msg="IDE", error=True)

    device.ide_rules.observers.append(ide_rule)


class TracedDevice:
    """What `vdev spdm-emu` serves when tracing: the device, its exchanges traced."""

    def __init__(self, device: Any, tracer: Tracer) -> None:
        self.device = device
        self.tracer = tracer

    def doe_object(self, obj: bytes) -> bytes | None:
        self.tracer.doe(REQ, obj)
        reply: bytes | None = self.device.doe_object(obj)
        if reply is None:
            self.tracer.state(f"DOE object of {len(obj)} bytes discarded (§6.30.1)",
                              msg="DOE_DISCARD", error=True, proto="doe")
        else:
            self.tracer.doe(RSP, reply)
        return reply

    def spdm_message(self, doe_type: int, payload: bytes) -> tuple[int, bytes]:
        self.tracer.message(REQ, doe_type, payload)
        kind, reply = self.device.spdm_message(doe_type, payload)
        self.tracer.message(RSP, kind, reply)
        return kind, reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)


class TracedClient:
    """`vdev tsm connect`: a DOE client (doe_exchange) with its exchanges traced.  `doe`
    False for transports without DOE objects (spdm-emu MCTP)."""

    def __init__(self, client: Any, tracer: Tracer, *, doe: bool = True) -> None:
        self.client = client
        self.tracer = tracer
        self.is_doe = doe

    def doe_exchange(self, data_object_type: int, payload: bytes) -> bytes:
        t = self.tracer
        if self.is_doe:
            t.doe(REQ, doe_object_of(data_object_type, payload))
        else:
            t.message(REQ, data_object_type, payload)
        reply: bytes = self.client.doe_exchange(data_object_type, payload)
        kind = secured_reply_type(data_object_type, payload, reply)
        if self.is_doe:
            t.doe(RSP, doe_object_of(kind, reply))
        else:
            t.message(RSP, kind, reply)
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class TracedBackend:
    """`vdev tsm serve`: the TSM backend with the DOE objects it relays traced (the guest
    kernel carries them; the DOE header is the one its doe.c builds)."""

    def __init__(self, backend: TsmBackend, tracer: Tracer) -> None:
        self.backend = backend
        self.tracer = tracer
        self._op = ""
        self._request: tuple[int, bytes] | None = None

    def start(self, op: Op, target: TargetFunction, *, mmio: Sequence[LockBar] = ()) -> Action:
        self._op = op.name
        self.tracer.state(f"TSM {self._op} {target}", msg="TSM_OP", proto="tsm")
        return self._after(self.backend.start(op, target, mmio=mmio))

    def doe_response(self, payload: bytes) -> Action:
        if self._request is not None:
            kind = secured_reply_type(*self._request, payload)
            self.tracer.doe(RSP, doe_object_of(kind, payload))
        return self._after(self.backend.doe_response(payload))

    def transport_error(self, error: int) -> Action:
        self.tracer.state(f"DOE transport error {error}", msg="DOE_ERROR", error=True,
                          proto="doe")
        return self._after(self.backend.transport_error(error))

    def abort(self) -> None:
        self.tracer.state(f"TSM {self._op} aborted", msg="TSM_OP", proto="tsm")
        self.backend.abort()

    def _after(self, action: Action) -> Action:
        if isinstance(action, DoeRequest):
            self._request = (action.doe_type, action.payload)
            self.tracer.doe(REQ, doe_object_of(*self._request))
        else:
            self._request = None
            status = action.errno
            self.tracer.state(f"TSM {self._op} done: {'ok' if status == 0 else status} "
                              f"{action.reason}".rstrip(), msg="TSM_DONE",
                              error=status != 0, proto="tsm")
        return action
