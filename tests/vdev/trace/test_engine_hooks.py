"""The engines' `message_observer` hooks: pure callbacks seeing every secured message in
plaintext, the same bytes on both sides."""

from __future__ import annotations

from spdm.hooks import RequesterHooks
from tests.helpers.tsm_rig import make_device, make_tsm, ok


def test_both_engines_observe_the_same_plaintexts() -> None:
    device = make_device()
    rsp_seen: list[tuple[str, int, bytes]] = []
    req_seen: list[tuple[str, int, bytes]] = []
    device.responder.hooks.message_observer = lambda d, s, m: rsp_seen.append((d, s, m))
    tsm = make_tsm(spdm_hooks=RequesterHooks(
        message_observer=lambda d, s, m: req_seen.append((d, s, m))))
    ok(tsm.connect(), device)
    ok(tsm.lock(0), device)
    ok(tsm.disconnect(), device)
    assert rsp_seen and req_seen
    # The requester sees its request before sealing and the response after opening; the
    # responder the request after opening and the response before sealing: same order.
    assert [(d, s, bytes(m)) for d, s, m in req_seen] == [
        (d, s, bytes(m)) for d, s, m in rsp_seen]
    sid = rsp_seen[0][1]
    assert {s for _, s, _ in rsp_seen} == {sid}
    directions = [d for d, _, _ in rsp_seen]
    assert directions[:2] == ["request", "response"]
    assert directions.count("request") == directions.count("response")
    codes = [m[1] for d, _, m in rsp_seen if d == "request"]
    assert codes[0] == 0xE5  # FINISH is the first secured request
    assert 0xFE in codes and codes[-1] == 0xEC  # VENDOR_DEFINED (IDE_KM/TDISP), END_SESSION


def test_key_update_is_observed() -> None:
    device = make_device()
    seen: list[tuple[str, bytes]] = []
    tsm = make_tsm(spdm_hooks=RequesterHooks(
        message_observer=lambda d, s, m: seen.append((d, bytes(m)))))
    ok(tsm.connect(), device)
    seen.clear()
    ok(tsm.key_update(), device)
    assert [(d, m[1]) for d, m in seen][:2] == [("request", 0xE9), ("response", 0x69)]
