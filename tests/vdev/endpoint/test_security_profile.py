"""The profile's SPDM / TDISP knobs reach the composed device."""

from __future__ import annotations

from pathlib import Path

import pytest

from spdm.codes import V12, V13, RspCap
from spdm.errors import PeerError
from spdm.requester import Requester, RequesterConfig
from tdisp.codes import TdiState
from tdisp.device_interface import InterfaceId
from tdisp.errors import TdispErrorResponse
from tdisp.requesters import IdeKmRequester, TdispRequester
from tests.helpers.secure_host import tdi_state
from tests.vdev.endpoint.test_enforcement import locked
from tests.vdev.endpoint.test_secure_mailbox import make_host
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import DeviceProfile, ProfileError


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("spdm_versions", "1.2,1.5"),
        ("spdm_versions", ""),
        ("identity_key_type", "dsa-1024"),
        ("tdisp_policy", "lenient"),
        ("firmware_digest", "abc"),
        ("firmware_digest", "00" * 20),
        ("spdm_data_transfer_size", 41),
        ("spdm_data_transfer_size", 8192),
        ("bus", 256),
        ("devfn", -1),
        ("flr_ends_spdm_sessions", 1),
        ("firmware_version", 3),
    ],
)
def test_bad_security_knobs_are_rejected(key: str, value: object) -> None:
    with pytest.raises(ProfileError) as err:
        DeviceProfile.from_mapping({key: value})
    assert err.value.key == key


def test_security_knobs_from_toml(state_dir: Path) -> None:
    profile = DeviceProfile.from_toml_string(
        'spdm_versions = "1.3"\ntdisp_policy = "spdm-emu"\nbus = 0x3a\ndevfn = 0x10\n'
        'spdm_data_transfer_size = 1024\nfirmware_version = "fw 2.0"\n'
    )
    device = TeeDevice(profile, state_dir=state_dir)
    assert tuple(device.responder.config.versions) == (V13,)
    assert device.responder.config.data_transfer_size == 1024
    assert device.tdisp.policy.name == "spdm-emu"
    assert device.interface.interface_id == InterfaceId.of(0x3A, 2, 0)


def test_versions_offered_are_the_profile_ones(state_dir: Path) -> None:
    host = make_host(state_dir, spdm_versions="1.2")
    host.run(host.requester.init_connection())
    assert host.requester.version == V12
    old = make_host(state_dir)
    old.requester = Requester(RequesterConfig(versions=(0x10, 0x11),
                                              trust_anchors=[old.trust_anchor]))
    with pytest.raises(PeerError):
        old.run(old.requester.init_connection())


def test_requester_id_reaches_idekm_and_tdisp(state_dir: Path) -> None:
    host = make_host(state_dir, bus=0x3A, devfn=0x10)
    host.authenticate()
    host.open_session()
    query = IdeKmRequester.parse_query_resp(host.vdm(IdeKmRequester.query(0)))
    assert (query.bus, query.dev_func) == (0x3A, 0x10)
    ours = TdispRequester(InterfaceId.of(0x3A, 2, 0))
    assert ours.parse_version(host.vdm(ours.get_version()))
    other = TdispRequester(InterfaceId.of(1, 0, 0))
    with pytest.raises(TdispErrorResponse, match="INVALID_INTERFACE"):
        other.parse_version(host.vdm(other.get_version()))


@pytest.mark.parametrize(("policy", "byte0"), [
    ("default", 0xFE),  # PCIe 6.x Table 11-9: bit n = request code 80h + n
    ("spdm-emu", 0x7F),  # spdm-emu's sample device: bit n = 81h + n
])
def test_profile_tdisp_policy_sets_req_msgs_supported(state_dir: Path, policy: str,
                                                      byte0: int) -> None:
    host = make_host(state_dir, tdisp_policy=policy)
    host.authenticate()
    host.open_session()
    req = TdispRequester(host.interface_id())
    caps = req.parse_capabilities(host.vdm(req.get_capabilities()))
    assert caps.req_msgs_supported == bytes([byte0]) + bytes(15)


def test_get_version_ending_the_lock_session_is_an_error(state_dir: Path) -> None:
    host = locked(state_dir)
    host.tdisp_connect()
    assert tdi_state(host.device) == TdiState.RUN
    host.run(host.requester.get_version())  # resets the connection: all sessions end
    assert tdi_state(host.device) == TdiState.ERROR


def test_listed_capability_without_its_provisioning_is_refused(state_dir: Path) -> None:
    """A profile that names PSK_WITH_CONTEXT (or HBEAT) gets it only with a PSK (or a
    period): never advertised without the means to exercise it."""
    listed = "CERT,CHAL,MEAS_SIG,ENCRYPT,MAC,KEY_EX,PSK_WITH_CONTEXT,HBEAT"
    with pytest.raises(ProfileError) as exc:
        TeeDevice(DeviceProfile(spdm_capabilities=listed, spdm_heartbeat_period=0),
                  state_dir=state_dir)
    assert "PSK_WITH_CONTEXT: no pre-shared key is provisioned" in str(exc.value)
    assert "HBEAT: the heartbeat period is 0" in str(exc.value)
    ok = TeeDevice(DeviceProfile(spdm_capabilities=listed),
                   state_dir=state_dir, psks={b"h": b"k" * 32})
    assert ok.responder.capabilities & (RspCap.PSK_WITH_CONTEXT | RspCap.HBEAT) == (
        RspCap.PSK_WITH_CONTEXT | RspCap.HBEAT)


def test_default_capabilities_follow_the_provisioning(state_dir: Path) -> None:
    plain = TeeDevice(DeviceProfile(), state_dir=state_dir)
    assert not plain.responder.capabilities & (RspCap.PSK | RspCap.PSK_WITH_CONTEXT)
    assert plain.responder.capabilities & RspCap.HBEAT  # the default period is 60 s
    quiet = TeeDevice(DeviceProfile(spdm_heartbeat_period=0), state_dir=state_dir)
    assert not quiet.responder.capabilities & RspCap.HBEAT
    keyed = TeeDevice(DeviceProfile(spdm_psks="a=hex:" + "11" * 32), state_dir=state_dir)
    assert keyed.responder.capabilities & RspCap.PSK_WITH_CONTEXT
    with pytest.raises(ProfileError, match="also in the PSK file"):
        TeeDevice(DeviceProfile(spdm_psks="a=hex:" + "11" * 32), state_dir=state_dir,
                  psks={b"a": b"k" * 32})
