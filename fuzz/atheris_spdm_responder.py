"""Coverage-guided fuzzing of the SPDM responder (see fuzz/README.md).

The responder is connected (VCA, digests, certificate) and holds one session; each
input's first byte picks the DOE data object type (1: SPDM, 2: secured SPDM) and,
for type 2, whether the rest is sealed with the session keys (so the fuzzer reaches
the in-session handlers) or sent as a raw record.  Findings: any exception out of
`handle_doe`, a reply that is not SPDM, and a responder that no longer serves a
correct connection afterwards (checked every 256 inputs).
"""

from __future__ import annotations

import logging
import sys

import atheris

with atheris.instrument_imports():
    from spdm.identity import CertSlots, IdentityParams, generate_identity
    from spdm.measurements import default_measurements
    from spdm.requester import Requester, RequesterConfig
    from spdm.responder import Responder, ResponderConfig

logging.disable(logging.CRITICAL)
IDENTITY = generate_identity(IdentityParams(key_type="ecdsa-p256"))


class Rig:
    def __init__(self) -> None:
        self.responder = Responder(ResponderConfig(
            slots=CertSlots({0: IDENTITY}), measurements=lambda: default_measurements()))
        self.connect()

    def transport(self, out):  # type: ignore[no-untyped-def]
        return self.responder.handle_doe(out.doe_type, out.data)[1]

    def connect(self) -> None:
        self.requester = Requester(RequesterConfig(trust_anchors=[IDENTITY.root]))
        r = self.requester
        r.run(r.init_connection(), self.transport)  # operations encode when created
        r.run(r.get_digests(), self.transport)
        r.run(r.get_certificate(0), self.transport)
        self.sid = r.run(r.key_exchange(), self.transport)


RIG = Rig()
COUNT = 0


def test_one_input(data: bytes) -> None:
    global COUNT
    if not data:
        return
    COUNT += 1
    sess = RIG.requester.sessions.get(RIG.sid)
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        kind, reply = RIG.responder.handle_doe(1, body)
        assert kind == 1 and len(reply) >= 4 and reply[0] in (0x10, 0x11, 0x12, 0x13)
    elif mode == 1 and sess is not None and sess.req_prot is not None:
        kind, reply = RIG.responder.handle_doe(2, sess.seal(body, from_requester=True))
        assert kind in (1, 2)
    else:
        kind, reply = RIG.responder.handle_doe(2, body)
        assert kind in (1, 2)
    if COUNT % 256 == 0 or RIG.sid not in RIG.responder.sessions:
        RIG.connect()  # raises if the responder no longer serves a correct flow


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
