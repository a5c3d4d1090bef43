"""Mutual authentication (basic flow: the responder already knows the requester's chain)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from spdm.codes import ReqCap, RspCap
from spdm.errors import ErrorResponse
from spdm.identity import DeviceIdentity
from spdm.requester import DEFAULT_REQ_CAPS
from spdm.responder import DEFAULT_RSP_CAPS
from tests.helpers.spdm_harness import identity_for, make_link


def _ders(ident: DeviceIdentity) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in ident.certs]


def _link(responder_id: DeviceIdentity, requester_id: DeviceIdentity, *, req_mut: bool):
    req_caps = DEFAULT_REQ_CAPS | (ReqCap.MUT_AUTH if req_mut else 0)
    return make_link(
        responder_id,
        rsp={"capabilities": int(DEFAULT_RSP_CAPS | RspCap.MUT_AUTH), "mut_auth": True,
             "requester_chain_der": _ders(requester_id)},
        req={"capabilities": int(req_caps), "identity": requester_id},
    )


@pytest.mark.parametrize("req_key", ["ecdsa-p256", "ecdsa-p384"])
def test_mutual_auth_session(p384_identity: DeviceIdentity, req_key: str) -> None:
    requester_id = identity_for(req_key, common_name="requester")
    link = _link(p384_identity, requester_id, req_mut=True)
    link.connect()
    sid = link.session()
    sess = link.responder.sessions[sid]
    assert sess.mut_auth == 1 and sess.transcript.req_cert_chain_hash
    # FINISH carried a signature (param1 bit 0).
    finish = link.requester.sessions[sid].transcript.f
    assert finish[1] == 0xE5 and finish[2] & 1
    link.run(link.requester.heartbeat(sid))


def test_not_requested_without_requester_cap(p384_identity: DeviceIdentity) -> None:
    link = _link(p384_identity, identity_for("ecdsa-p256"), req_mut=False)
    link.connect()
    sid = link.session()
    assert link.responder.sessions[sid].mut_auth == 0


def test_bad_finish_signature(p384_identity: DeviceIdentity) -> None:
    # The responder expects a different requester than the one that signs.
    link = _link(p384_identity, identity_for("ecdsa-p256"), req_mut=True)
    link.responder.config.requester_chain_der = _ders(identity_for("ecdsa-p256", revision=9))
    link.connect()
    with pytest.raises(ErrorResponse) as exc:
        link.session()
    assert exc.value.code == 0x06  # DecryptError


def _encap_link(responder_id: DeviceIdentity, requester_id: DeviceIdentity,
                anchors: list[object] | None = None):
    return make_link(
        responder_id,
        rsp={"capabilities": int(DEFAULT_RSP_CAPS | RspCap.MUT_AUTH | RspCap.ENCAP),
             "mut_auth": True,
             "requester_trust_anchors": anchors if anchors is not None else [requester_id.root]},
        req={"capabilities": int(DEFAULT_REQ_CAPS | ReqCap.MUT_AUTH | ReqCap.ENCAP),
             "identity": requester_id},
    )


@pytest.mark.parametrize("version", [0x12, 0x13])
def test_encapsulated_mutual_auth(p384_identity: DeviceIdentity, version: int) -> None:
    requester_id = identity_for("ecdsa-p384", role="requester", common_name="tsm")
    link = _encap_link(p384_identity, requester_id)
    link.requester.config.versions = (version,)
    link.connect()
    sid = link.session()
    sess = link.responder.sessions[sid]
    assert sess.mut_auth == 2 and sess.encap.done
    codes = [e[1] for e in link.log if e[0] == 2]
    assert len(codes) >= 4  # GET_ENCAPSULATED_REQUEST, 2+ DELIVERs, FINISH
    link.run(link.requester.heartbeat(sid))


def test_encapsulated_untrusted_requester(p384_identity: DeviceIdentity) -> None:
    requester_id = identity_for("ecdsa-p384", role="requester", common_name="tsm")
    link = _encap_link(p384_identity, requester_id, anchors=[p384_identity.root])
    link.connect()
    with pytest.raises(ErrorResponse) as exc:
        link.session()
    assert exc.value.code == 0x01


def test_encapsulated_out_of_order(p384_identity: DeviceIdentity) -> None:
    requester_id = identity_for("ecdsa-p384", role="requester", common_name="tsm")
    link = _encap_link(p384_identity, requester_id)
    link.connect()
    # Stop the requester right after KEY_EXCHANGE_RSP: drive the generator by hand.
    op = link.requester.key_exchange()
    assert op.request is not None
    op.feed(link.transport(op.request))  # KEY_EXCHANGE -> now GET_ENCAPSULATED_REQUEST pending
    sid = next(iter(link.responder.sessions))
    sess = link.requester.sessions[sid]
    sess.req_prot.seq = 0  # the pending GET_ENCAPSULATED_REQUEST was sealed but never sent
    v = link.requester.version
    # DSP0274 1.4 §10.15: OpaqueDataLength (here 0) follows the header from 1.4 on.
    fin = bytes([v, 0xE5, 1, 0]) + (bytes(2) if v >= 0x14 else b"") + bytes(96 + 48)
    kind, rec = link.responder.handle_doe(2, sess.seal(fin, from_requester=True))
    reply = sess.open(rec, from_requester=False)
    assert reply[1] == 0x7F and reply[2] == 0x04  # UnexpectedRequest before the flow ran
