"""spdm.capabilities: a flag is only sent when the provisioning backs it."""

from __future__ import annotations

from spdm.capabilities import MECHANISMS, NEVER, Provisioning, exercisable, missing
from spdm.codes import RspCap

CERT_DEVICE = Provisioning(slots=1, key_pairs=1, measurements=True, heartbeat_period=60)


def test_nothing_provisioned_backs_only_the_transfer_mechanisms() -> None:
    assert exercisable(Provisioning()) == MECHANISMS


def test_a_certificate_device_backs_the_certificate_flags_but_not_psk() -> None:
    flags = exercisable(CERT_DEVICE)
    for flag in (RspCap.CERT, RspCap.CHAL, RspCap.MEAS_SIG, RspCap.MEAS_FRESH, RspCap.KEY_EX,
                 RspCap.ENCRYPT, RspCap.MAC, RspCap.KEY_UPD, RspCap.HBEAT,
                 RspCap.HANDSHAKE_IN_THE_CLEAR):
        assert flags & flag, flag
    assert not flags & (RspCap.PSK | RspCap.PSK_WITH_CONTEXT)
    assert missing(CERT_DEVICE, RspCap.PSK_WITH_CONTEXT) == {
        "PSK_WITH_CONTEXT": "no pre-shared key is provisioned"}


def test_a_psk_only_device_opens_sessions_without_a_slot() -> None:
    p = Provisioning(psks=1, heartbeat_period=10)
    flags = exercisable(p)
    assert flags & RspCap.PSK_WITH_CONTEXT and flags & RspCap.ENCRYPT and flags & RspCap.HBEAT
    assert not flags & (RspCap.CERT | RspCap.KEY_EX | RspCap.HANDSHAKE_IN_THE_CLEAR)


def test_heartbeat_needs_a_period() -> None:
    p = Provisioning(slots=1, key_pairs=1, heartbeat_period=0)
    assert not exercisable(p) & RspCap.HBEAT
    assert missing(p, RspCap.HBEAT) == {"HBEAT": "the heartbeat period is 0"}


def test_unimplemented_flags_are_never_exercisable_and_say_so() -> None:
    everything = Provisioning(slots=8, key_pairs=8, measurements=True, psks=2,
                              heartbeat_period=1, mutual_auth=True, certificate_store=True,
                              endpoint_info=True, mel=True)
    assert not exercisable(everything) & NEVER
    assert set(missing(everything, NEVER).values()) == {"not implemented by this responder"}
