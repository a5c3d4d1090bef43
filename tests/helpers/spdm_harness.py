"""In-process wiring of Requester and Responder, as a DOE adapter would do it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spdm.hooks import RequesterHooks, ResponderHooks
from spdm.identity import CertSlots, DeviceIdentity, IdentityParams, generate_identity
from spdm.measurements import default_measurements
from spdm.requester import Operation, Outgoing, Requester, RequesterConfig
from spdm.responder import Responder, ResponderConfig


@dataclass
class Link:
    requester: Requester
    responder: Responder
    log: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    tamper: Callable[[Outgoing], Outgoing] | None = None

    def transport(self, out: Outgoing) -> bytes:
        if self.tamper is not None:
            out = self.tamper(out)
        kind, reply = self.responder.handle_doe(out.doe_type, out.data)
        self.log.append((out.doe_type, out.data, reply))
        return reply

    def run(self, op: Operation) -> Any:
        return self.requester.run(op, self.transport)

    def connect(self, *, slot: int = 0) -> None:
        self.run(self.requester.init_connection())
        self.run(self.requester.get_digests())
        self.run(self.requester.get_certificate(slot))

    def session(self, **kw: Any) -> int:
        sid: int = self.run(self.requester.key_exchange(**kw))
        return sid


def make_link(
    identity: DeviceIdentity,
    *,
    rsp: dict[str, Any] | None = None,
    req: dict[str, Any] | None = None,
    rsp_hooks: ResponderHooks | None = None,
    req_hooks: RequesterHooks | None = None,
) -> Link:
    rargs: dict[str, Any] = {
        "slots": CertSlots({0: identity}),
        "measurements": lambda: default_measurements(),
        "psks": {b"hint": b"p" * 32},
        "heartbeat_period": 60,
    }
    rargs.update(rsp or {})
    rcfg = ResponderConfig(**rargs)
    qargs: dict[str, Any] = {"trust_anchors": [identity.root], "psk": {b"hint": b"p" * 32}}
    qargs.update(req or {})
    qcfg = RequesterConfig(**qargs)
    return Link(Requester(qcfg, req_hooks), Responder(rcfg, rsp_hooks))


_IDENTITIES: dict[str, DeviceIdentity] = {}


def identity_for(key_type: str, **kw: object) -> DeviceIdentity:
    key = key_type + repr(sorted(kw.items()))
    if key not in _IDENTITIES:
        _IDENTITIES[key] = generate_identity(IdentityParams(key_type=key_type, **kw))  # type: ignore[arg-type]
    return _IDENTITIES[key]


def make_link_13(identity: DeviceIdentity, *, rsp: dict[str, Any] | None = None,
                 **kw: Any) -> Link:
    """A link whose responder stops at SPDM 1.3: for tests that hand-build 1.3 messages
    (the 1.4 layouts of FINISH, CHUNK_* and NEGOTIATE_ALGORITHMS differ)."""
    return make_link(identity, rsp={"versions": (0x10, 0x11, 0x12, 0x13), **(rsp or {})},
                     **kw)
