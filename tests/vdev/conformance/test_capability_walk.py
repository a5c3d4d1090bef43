"""Every CAPABILITIES flag a shipped profile's device sends is exercised: for each
profile, each version it offers and each flag set in the device's CAPABILITIES, the
feature the flag promises (DSP0274 1.3 Table 14: a Responder setting it "shall
support" the messages behind it) is driven to success by our requester.  A flag with
no exercise below fails the walk, so a profile cannot start advertising something
nobody has shown to work; and conversely a profile without the provisioning a flag
needs does not send it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from spdm.codes import KEY_UPDATE_UPDATE_ALL_KEYS, KEY_UPDATE_UPDATE_KEY, ReqCap, RspCap
from spdm.identity import DeviceIdentity, generate_identity
from spdm.provisioning import issue_from_csr, requester_info
from spdm.requester import DEFAULT_REQ_CAPS, Operation, Requester
from tests.vdev.conformance import wire as w
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import load_profile, shipped_profiles

CASES = [(p, v) for p in shipped_profiles() for v in load_profile(p).spdm_version_list]
IDS = w.case_ids(CASES)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Walk:
    """One device and our requester at one version, for one flag's exercise."""

    conn: w.Conn
    clock: Clock
    ca: DeviceIdentity

    @property
    def req(self) -> Requester:
        assert self.conn.req is not None
        return self.conn.req

    def run(self, op: Operation) -> Any:
        return self.conn.run(op)

    def authenticated(self) -> None:
        self.run(self.req.get_digests())
        self.run(self.req.get_certificate(0))

    def session(self) -> int:
        if self.conn.flags & w.KEY_EX:
            self.authenticated()
            return int(self.run(self.req.key_exchange()))
        hint = next(iter(self.conn.profile.spdm_psk_table))
        return int(self.run(self.req.psk_exchange(hint)))


def _cert(walk: Walk) -> None:
    walk.run(walk.req.init_connection())
    slots = walk.run(walk.req.get_digests())
    for slot in slots:  # every provisioned slot's chain verifies to its trust anchor
        walk.run(walk.req.get_certificate(slot))
        assert walk.req.cert_chains[slot]


def _chal(walk: Walk) -> None:
    walk.authenticated()
    walk.run(walk.req.challenge(0))  # the requester checks CHALLENGE_AUTH's signature


def _meas_no_sig(walk: Walk) -> None:
    assert walk.run(walk.req.get_measurements(signed=False))


def _meas_sig(walk: Walk) -> None:
    walk.authenticated()
    assert walk.run(walk.req.get_measurements(signed=True))
    assert walk.req.last_signed_measurements


def _meas_fresh(walk: Walk) -> None:
    """MEAS_FRESH: measurements are computed when asked, so a change to the device's
    configuration shows in the next MEASUREMENTS without a reset."""
    before = {b.index: b.value for b in walk.run(walk.req.get_measurements(signed=False))}
    config = walk.conn.device.config
    config.write_int(0x04, 2, config.read_int(0x04, 2) ^ 0x0002)  # Command: Memory Space
    after = {b.index: b.value for b in walk.run(walk.req.get_measurements(signed=False))}
    assert before.keys() == after.keys() and before != after


def _session_kind(walk: Walk) -> None:
    """ENCRYPT / MAC / KEY_EX: a session opens and carries a request."""
    sid = walk.session()
    walk.run(walk.req.get_measurements(signed=False, session_id=sid)) if (
        walk.conn.flags & w.MEAS_MASK) else walk.run(walk.req.heartbeat(sid))


def _psk(walk: Walk) -> None:
    for hint in walk.conn.profile.spdm_psk_table:
        sid = walk.run(walk.req.psk_exchange(hint))
        walk.run(walk.req.end_session(sid))


def _hbeat(walk: Walk) -> None:
    """HEARTBEAT is answered, and a session silent for twice the HeartbeatPeriod the
    device advertised is ended (injected clock; DSP0274 1.3 §10.18)."""
    sid = walk.session()
    walk.run(walk.req.heartbeat(sid))
    period = walk.conn.profile.spdm_heartbeat_period
    assert period > 0
    rsp = walk.conn.device.responder
    walk.clock.now += 2 * period - 1
    assert rsp.expire_idle_sessions() == []
    walk.run(walk.req.heartbeat(sid))  # activity restarts the timer
    walk.clock.now += 2 * period + 1
    assert rsp.expire_idle_sessions() == [sid]
    assert sid not in rsp.sessions


def _key_upd(walk: Walk) -> None:
    sid = walk.session()
    for op in (KEY_UPDATE_UPDATE_KEY, KEY_UPDATE_UPDATE_ALL_KEYS):
        walk.run(walk.req.key_update(sid, op))
        walk.run(walk.req.heartbeat(sid)) if walk.conn.flags & w.HBEAT else None
    walk.run(walk.req.end_session(sid))


def _in_the_clear(walk: Walk) -> None:
    # The requester sets HANDSHAKE_IN_THE_CLEAR_CAP too: FINISH then travels as plain
    # SPDM (DOE type 1) and the session still works.
    c = walk.conn
    c.requester(capabilities=int(DEFAULT_REQ_CAPS | ReqCap.HANDSHAKE_IN_THE_CLEAR))
    walk.run(walk.req.init_connection())
    walk.authenticated()
    sid = walk.run(walk.req.key_exchange())
    assert any(t == 1 and d[1] == w.FINISH for t, d, _ in c.log)
    walk.run(walk.req.heartbeat(sid)) if c.flags & w.HBEAT else None


def _chunk(walk: Walk) -> None:
    # A requester with the smallest DataTransferSize (42) gets the certificate chain
    # (or, without CERT_CAP, the measurement record) through CHUNK_GET.
    c = walk.conn
    c.requester(data_transfer_size=42)
    walk.run(walk.req.init_connection())
    if c.flags & w.CERT:
        walk.authenticated()
    else:
        walk.run(walk.req.get_measurements(signed=False))
    assert any(t == 1 and d[1] == w.CHUNK_GET for t, d, _ in c.log)


def _csr(walk: Walk) -> None:
    walk.authenticated()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capability walk")])
    csr = x509.load_der_x509_csr(walk.run(walk.req.get_csr(requester_info(subject))))
    assert csr.is_signature_valid and csr.subject == subject
    assert csr.public_key() == walk.conn.device.identity.key.public_key()


def _set_cert(walk: Walk) -> None:
    """SET_CERT: a chain issued from the device's CSR goes into slot 0, and DIGESTS /
    CERTIFICATE show it at once (a separate state directory: it persists)."""
    walk.authenticated()
    csr_der = walk.run(walk.req.get_csr())
    leaf = issue_from_csr(csr_der, walk.ca.certs[1], walk.ca.ca_keys[1])
    der = serialization.Encoding.DER
    chain = [walk.ca.root.public_bytes(der), walk.ca.certs[1].public_bytes(der),
             leaf.public_bytes(der)]
    assert walk.run(walk.req.set_certificate(0, chain)) == 0
    walk.req.config.trust_anchors = [walk.ca.root]
    walk.run(walk.req.get_digests())
    walk.run(walk.req.get_certificate(0))


def _ep_info(signed: bool) -> Callable[[Walk], None]:
    def run(walk: Walk) -> None:
        if signed:
            walk.authenticated()
        assert walk.run(walk.req.get_endpoint_info(signed=signed))
    return run


def _mel(walk: Walk) -> None:
    assert walk.run(walk.req.get_mel())


def _key_pair_info(walk: Walk) -> None:
    first = walk.run(walk.req.get_key_pair_info(1))
    for kp in range(1, first.total_key_pairs + 1):
        assert walk.run(walk.req.get_key_pair_info(kp)).key_pair_id == kp


def _multi_key(walk: Walk) -> None:
    # The requester asks for a multi-key connection: every slot's own key then signs.
    c = walk.conn
    c.requester(multi_key=True)
    walk.run(walk.req.init_connection())
    slots = walk.run(walk.req.get_digests())
    assert len(slots) > 1
    for slot in slots:
        walk.run(walk.req.get_certificate(slot))
        walk.run(walk.req.challenge(slot)) if c.flags & w.CHAL else None


#: flag -> its exercise.  MUT_AUTH, ENCAP, ALIAS_CERT, EVENT, ... have none: no shipped
#: profile may advertise them until one is written here.
EXERCISE: dict[int, Callable[[Walk], None]] = {
    RspCap.CERT: _cert,
    RspCap.CHAL: _chal,
    RspCap.MEAS_NO_SIG: _meas_no_sig,
    RspCap.MEAS_SIG: _meas_sig,
    RspCap.MEAS_FRESH: _meas_fresh,
    RspCap.ENCRYPT: _session_kind,
    RspCap.MAC: _session_kind,
    RspCap.KEY_EX: _session_kind,
    RspCap.PSK: _psk,
    RspCap.PSK_WITH_CONTEXT: _psk,
    RspCap.HBEAT: _hbeat,
    RspCap.KEY_UPD: _key_upd,
    RspCap.HANDSHAKE_IN_THE_CLEAR: _in_the_clear,
    RspCap.CHUNK: _chunk,
    RspCap.CSR: _csr,
    RspCap.SET_CERT: _set_cert,
    RspCap.EP_INFO_NO_SIG: _ep_info(False),
    RspCap.EP_INFO_SIG: _ep_info(True),
    RspCap.MEL: _mel,
    RspCap.GET_KEY_PAIR_INFO: _key_pair_info,
    RspCap.MULTI_KEY_NEG: _multi_key,
}


@pytest.fixture(scope="module")
def ca() -> DeviceIdentity:
    """The owner's CA that signs a certificate for SET_CERTIFICATE."""
    return generate_identity()


def advertised(state_root: Path, profile: str, version: int) -> int:
    c = w.Conn(w.profile_device(profile, state_root), version)
    c.run(c.requester().init_connection())
    return w.parse_capabilities(next(r for t, d, r in c.log if d[1] == w.GET_CAPABILITIES)).flags


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_every_advertised_flag_is_exercised(state_root: Path, ca: DeviceIdentity,
                                            profile: str, version: int) -> None:
    flags = advertised(state_root, profile, version)
    unexercised = [RspCap(f).name for f in RspCap if flags & f and f not in EXERCISE]
    assert unexercised == [], "advertised with no exercise in this walk"
    for flag in RspCap:
        if not flags & flag:
            continue
        clock = Clock()
        writes = flag in (RspCap.SET_CERT,)
        root = state_root / "walk-writable" / f"{profile}-{version:x}" if writes else state_root
        device = TeeDevice(load_profile(profile), state_dir=root / profile, clock=clock)
        c = w.Conn(device, version)
        c.run(c.requester().init_connection())
        c.caps = w.parse_capabilities(next(r for t, d, r in c.log if d[1] == w.GET_CAPABILITIES))
        assert c.flags == flags
        EXERCISE[flag](Walk(c, clock, ca))


# A profile without what a flag needs does not send the flag (DSP0274 1.3 Table 14;
# docs/protocols.md §3.4).  (profile key changes, flags that must disappear)
UNPROVISIONED: list[tuple[str, dict[str, object], int]] = [
    ("no PSK", {"spdm_psks": ""}, RspCap.PSK | RspCap.PSK_WITH_CONTEXT),
    ("heartbeat period 0", {"spdm_heartbeat_period": 0}, RspCap.HBEAT),
    ("identity not writable", {"identity_writable": False}, RspCap.SET_CERT | RspCap.CSR),
    ("no measurement log", {"measurement_log": False}, RspCap.MEL),
    ("no endpoint info", {"endpoint_info": False},
     RspCap.EP_INFO_NO_SIG | RspCap.EP_INFO_SIG),
    ("one slot", {"identity_slots": 1, "identity_writable": False}, RspCap.MULTI_KEY_NEG),
]


@pytest.mark.parametrize("profile", shipped_profiles())
@pytest.mark.parametrize(("name", "change", "gone"), UNPROVISIONED,
                         ids=[u[0] for u in UNPROVISIONED])
def test_flag_needs_its_provisioning(tmp_path: Path, profile: str, name: str,
                                     change: dict[str, object], gone: int) -> None:
    base = load_profile(profile)
    if base.spdm_capabilities_listed:
        pytest.skip("a profile that lists its flags is refused instead (test_shipped)")
    stripped = dataclasses.replace(base, **change)  # type: ignore[arg-type]
    device = TeeDevice(stripped, state_dir=tmp_path)
    assert device.responder.capabilities & gone == 0
