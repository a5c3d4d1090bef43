"""GET_VERSION, GET_CAPABILITIES and NEGOTIATE_ALGORITHMS on every shipped profile, in
every DSP0274 1.0-1.3 version the profile offers: the success responses' fixed fields
and the ERROR to each malformed or misplaced request, from DSP0274's tables."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vdev.conformance import wire as w
from vdev.profiles import load_profile, shipped_profiles

CASES = list(w.judged_cases())
IDS = w.case_ids(CASES)


def conn(state_root: Path, profile: str, version: int) -> w.Conn:
    return w.Conn(w.profile_device(profile, state_root), version)


# ---- VERSION (DSP0274 1.3 Table 9 / §10.3) ---------------------------------------------

@pytest.mark.parametrize("profile", shipped_profiles())
def test_version_response(state_root: Path, profile: str) -> None:
    c = w.Conn(w.profile_device(profile, state_root), w.V10)
    resp = c.send(w.get_version())
    # SPDMVersion 0x10, VERSION 0x04, Param1/Param2 Reserved, Reserved u8,
    # VersionNumberEntryCount u8, then one u16 per entry: Major 15:12, Minor 11:8,
    # UpdateVersionNumber 7:4, Alpha 3:0.
    assert resp[:5] == bytes([0x10, 0x04, 0, 0, 0])
    count = resp[5]
    assert len(resp) == 6 + 2 * count
    entries = struct.unpack_from(f"<{count}H", resp, 6)
    offered = {(e >> 12) << 4 | (e >> 8 & 0xF) for e in entries}
    assert offered == set(load_profile(profile).spdm_version_list)


# ---- CAPABILITIES (DSP0274 1.3 Table 12 and Table 14) --------------------------------

# Combinations of Responder flags DSP0274 forbids: (rule, first version, violated(flags)).
# 1.3 Table 14 and its 1.1/1.2 editions; "reserved" values of two-bit fields included.
FLAG_RULES: list[tuple[str, int, Callable[[int], bool]]] = [
    ("MEAS_CAP 11b is reserved", w.V10, lambda f: f & w.MEAS_MASK == w.MEAS_MASK),
    ("PSK_CAP 11b is reserved", w.V11, lambda f: f & w.PSK_MASK == w.PSK_MASK),
    ("ENCRYPT_CAP or MAC_CAP need KEY_EX_CAP or PSK_CAP", w.V11,
     lambda f: bool(f & (w.ENCRYPT | w.MAC)) and not f & (w.KEY_EX | w.PSK_MASK)),
    ("KEY_EX_CAP or PSK_CAP need ENCRYPT_CAP or MAC_CAP", w.V11,
     lambda f: bool(f & (w.KEY_EX | w.PSK_MASK)) and not f & (w.ENCRYPT | w.MAC)),
    ("CHAL_CAP needs CERT_CAP or PUB_KEY_ID_CAP", w.V10,
     lambda f: bool(f & w.CHAL) and not f & (w.CERT | w.PUB_KEY_ID)),
    ("KEY_EX_CAP needs CERT_CAP or PUB_KEY_ID_CAP (KEY_EXCHANGE_RSP is signed)", w.V11,
     lambda f: bool(f & w.KEY_EX) and not f & (w.CERT | w.PUB_KEY_ID)),
    ("CERT_CAP and PUB_KEY_ID_CAP are exclusive", w.V11,
     lambda f: f & (w.CERT | w.PUB_KEY_ID) == w.CERT | w.PUB_KEY_ID),
    ("HBEAT_CAP needs a session capability", w.V11,
     lambda f: bool(f & w.HBEAT) and not f & (w.KEY_EX | w.PSK_MASK)),
    ("KEY_UPD_CAP needs a session capability", w.V11,
     lambda f: bool(f & w.KEY_UPD) and not f & (w.KEY_EX | w.PSK_MASK)),
    ("HANDSHAKE_IN_THE_CLEAR_CAP needs KEY_EX_CAP", w.V11,
     lambda f: bool(f & w.HANDSHAKE_IN_THE_CLEAR) and not f & w.KEY_EX),
    ("SET_CERT_CAP, CSR_CAP and ALIAS_CERT_CAP need CERT_CAP", w.V12,
     lambda f: bool(f & (w.SET_CERT | w.CSR | w.ALIAS_CERT)) and not f & w.CERT),
    ("CERT_INSTALL_RESET_CAP needs CSR_CAP or SET_CERT_CAP", w.V12,
     lambda f: bool(f & w.CERT_INSTALL_RESET) and not f & (w.CSR | w.SET_CERT)),
    ("EP_INFO_CAP 11b is reserved", w.V13, lambda f: f & w.EP_INFO_MASK == w.EP_INFO_MASK),
    ("EP_INFO_CAP 10b (signed) needs CERT_CAP or PUB_KEY_ID_CAP", w.V13,
     lambda f: f & w.EP_INFO_MASK == w.EP_INFO_SIG and not f & (w.CERT | w.PUB_KEY_ID)),
    ("MULTI_KEY_CAP 11b is reserved", w.V13,
     lambda f: f & w.MULTI_KEY_MASK == w.MULTI_KEY_MASK),
    ("MULTI_KEY_CAP needs GET_KEY_PAIR_INFO_CAP", w.V13,
     lambda f: bool(f & w.MULTI_KEY_MASK) and not f & w.GET_KEY_PAIR_INFO_CAP),
    ("SET_KEY_PAIR_RESET_CAP needs SET_KEY_PAIR_INFO_CAP", w.V13,
     lambda f: bool(f & w.SET_KEY_PAIR_RESET) and not f & w.SET_KEY_PAIR_INFO_CAP),
]


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_capabilities_response(state_root: Path, profile: str, version: int) -> None:
    c = conn(state_root, profile, version)
    caps = c.capabilities_step()  # Table 12 layout and Reserved fields checked there
    assert caps.version == version
    assert caps.flags & ~w.DEFINED_FLAGS[version] == 0, (
        f"flags {caps.flags:#x} set bits {version:#x} reserves")
    broken = [rule for rule, since, bad in FLAG_RULES if version >= since and bad(caps.flags)]
    assert broken == []
    if version >= w.V12:
        # Table 12: DataTransferSize >= MinDataTransferSize (42); MaxSPDMmsgSize >=
        # DataTransferSize, and equal to it without CHUNK_CAP.
        assert caps.dts >= 42
        assert caps.max_size >= caps.dts
        if not caps.flags & w.CHUNK:
            assert caps.max_size == caps.dts


# ---- ALGORITHMS (DSP0274 1.3 Table 16, Tables 17-20) ---------------------------------

@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_algorithms_response(state_root: Path, profile: str, version: int) -> None:
    c = conn(state_root, profile, version)
    a = c.vca()
    f = c.flags
    assert a.version == version
    offered_asym = w.OFFER_ASYM_12 if version >= w.V12 else w.OFFER_ASYM_10
    offered_hash = w.OFFER_HASH_12 if version >= w.V12 else w.OFFER_HASH_10
    # BaseHashSel: exactly one of the offered.
    assert w.one_bit(a.base_hash) and a.base_hash & ~offered_hash == 0
    # BaseAsymSel: one of the offered, and exactly one when anything is signed
    # (CHAL_CAP, MEAS_CAP 10b, KEY_EX_CAP; EP_INFO_CAP 10b from 1.3).
    assert a.base_asym & ~offered_asym == 0 and (a.base_asym == 0 or w.one_bit(a.base_asym))
    signs = f & (w.CHAL | w.KEY_EX) or f & w.MEAS_MASK == w.MEAS_SIG or (
        version >= w.V13 and f & w.EP_INFO_MASK == w.EP_INFO_SIG)
    if signs:
        assert w.one_bit(a.base_asym), (
            f"flags {f:#x} promise signatures but BaseAsymSel is {a.base_asym:#x}")
    # MeasurementSpecificationSel / MeasurementHashAlgo: DMTF and one algorithm when
    # MEAS_CAP is set, both 0 otherwise.
    if f & w.MEAS_MASK:
        assert a.meas_spec == w.DMTF
        assert w.one_bit(a.meas_hash) and max(w.bits(a.meas_hash)) <= 7
    else:
        assert (a.meas_spec, a.meas_hash) == (0, 0)
    # No extended algorithms were offered, so none is selected.
    assert (a.ext_asym_count, a.ext_hash_count) == (0, 0)
    if version == w.V10:
        assert a.param1 == 0 and a.structs == []
        return
    # RespAlgStructs: one per ReqAlgStruct, same AlgType order, AlgCount 0x20, at most
    # one bit of what was offered.
    assert [t for t, _, _ in a.structs] == [w.ALG_DHE, w.ALG_AEAD, w.ALG_REQ_ASYM,
                                           w.ALG_KEY_SCHEDULE]
    offer = {w.ALG_DHE: w.OFFER_DHE, w.ALG_AEAD: w.OFFER_AEAD,
             w.ALG_REQ_ASYM: w.OFFER_REQ_ASYM, w.ALG_KEY_SCHEDULE: w.OFFER_KEY_SCHEDULE}
    for t, count, sel in a.structs:
        assert count == 0x20
        assert sel & ~offer[t] == 0 and (sel == 0 or w.one_bit(sel))
    # A session capability on both sides needs an AEAD and the SPDM key schedule; KEY_EX
    # on both sides a DHE group.
    if f & (w.KEY_EX | w.PSK_MASK):
        assert w.one_bit(a.selected(w.ALG_AEAD))
        assert a.selected(w.ALG_KEY_SCHEDULE) == w.OFFER_KEY_SCHEDULE
    if f & w.KEY_EX:
        assert w.one_bit(a.selected(w.ALG_DHE))
    if version >= w.V12:
        # OtherParamsSelection: the opaque data format among those offered (format 1).
        assert a.other & w.OPAQUE_FMT_MASK == w.OPAQUE_FMT1
    if version >= w.V13:
        assert a.mel_spec == (w.DMTF if f & w.MEL else 0)
    else:
        assert a.mel_spec == 0


# ---- ERRORs during VCA ------------------------------------------------------------------

def _unsupported_version(profile: str) -> int:
    """A DSP0274 version the profile does not offer (0x15 when it offers 1.0-1.4)."""
    offered = load_profile(profile).spdm_version_list
    return next(v for v in (w.V10, w.V11, w.V12, w.V13, w.V14, 0x15) if v not in offered)


# (name, steps before, request(version), ErrorCode, ErrorData, which SPDMVersion).
# "1.0": no version selected yet (DSP0274 1.3 §10.3 GET_VERSION errors are 1.0);
# "negotiated": the version GET_CAPABILITIES selected (§10.4, and the ERROR clause
# §10.12: a response carries the version of the connection).
VCA_ERRORS: list[tuple[str, str, Callable[[int, str], bytes], int, int, str]] = [
    # §10.3: GET_VERSION is always sent with SPDMVersion 0x10.
    ("GET_VERSION with SPDMVersion 1.1", "none",
     lambda v, p: bytes([0x11, w.GET_VERSION, 0, 0]), w.VERSION_MISMATCH, 0, "1.0"),
    # §10.4: GET_CAPABILITIES is only legal after VERSION.
    ("GET_CAPABILITIES before GET_VERSION", "none",
     lambda v, p: w.get_capabilities(v), w.UNEXPECTED_REQUEST, 0, "1.0"),
    # §10.4: a version the Responder does not support is VersionMismatch in 1.0.
    ("GET_CAPABILITIES in a version the profile does not offer", "version",
     lambda v, p: w.get_capabilities(_unsupported_version(p)), w.VERSION_MISMATCH, 0, "1.0"),
    # §10.5: NEGOTIATE_ALGORITHMS only after CAPABILITIES.
    ("NEGOTIATE_ALGORITHMS before GET_CAPABILITIES", "version",
     lambda v, p: w.negotiate_algorithms(v), w.UNEXPECTED_REQUEST, 0, "1.0"),
    ("GET_CAPABILITIES twice", "capabilities",
     lambda v, p: w.get_capabilities(v), w.UNEXPECTED_REQUEST, 0, "negotiated"),
    ("NEGOTIATE_ALGORITHMS twice", "algorithms",
     lambda v, p: w.negotiate_algorithms(v), w.UNEXPECTED_REQUEST, 0, "negotiated"),
    ("NEGOTIATE_ALGORITHMS with SPDMVersion + 1", "capabilities",
     lambda v, p: w.negotiate_algorithms(v + 1), w.VERSION_MISMATCH, 0, "negotiated"),
    # Table 15: Length is the size of the whole request.
    ("NEGOTIATE_ALGORITHMS Length one too large", "capabilities",
     lambda v, p: w.negotiate_algorithms(v, length=len(w.negotiate_algorithms(v)) + 1),
     w.INVALID_REQUEST, 0, "negotiated"),
    ("NEGOTIATE_ALGORITHMS cut short", "capabilities",
     lambda v, p: w.negotiate_algorithms(v)[:20], w.INVALID_REQUEST, 0, "negotiated"),
    # Table 15: ExtAsymCount + ExtHashCount (+ external AlgStruct entries) <= 20.
    ("NEGOTIATE_ALGORITHMS with 21 extended asymmetric algorithms", "capabilities",
     lambda v, p: w.negotiate_algorithms(v, ext_asym=21), w.INVALID_REQUEST, 0,
     "negotiated"),
]
VCA_ERRORS_11: list[tuple[str, str, Callable[[int, str], bytes], int, int, str]] = [
    # Table 17: FixedAlgCount (AlgCount bits 7:4) is 2 for every AlgType.
    ("AlgStruct with FixedAlgCount 3", "capabilities",
     lambda v, p: w.negotiate_algorithms(
         v, structs=[w.alg_struct(w.ALG_DHE, w.OFFER_DHE, fixed=3)]),
     w.INVALID_REQUEST, 0, "negotiated"),
    ("AlgStruct of an AlgType given twice", "capabilities",
     lambda v, p: w.negotiate_algorithms(
         v, structs=[w.alg_struct(w.ALG_AEAD, w.OFFER_AEAD),
                     w.alg_struct(w.ALG_AEAD, w.OFFER_AEAD)]),
     w.INVALID_REQUEST, 0, "negotiated"),
]
VCA_ERRORS_12: list[tuple[str, str, Callable[[int, str], bytes], int, int, str]] = [
    # 1.2 Table 15: AlgStructs in ascending AlgType order.
    ("AlgStructs out of AlgType order", "capabilities",
     lambda v, p: w.negotiate_algorithms(
         v, structs=[w.alg_struct(w.ALG_AEAD, w.OFFER_AEAD),
                     w.alg_struct(w.ALG_DHE, w.OFFER_DHE)]),
     w.INVALID_REQUEST, 0, "negotiated"),
    # 1.2 Table 11: DataTransferSize >= MinDataTransferSize (42): refused in the version
    # the request selected.
    ("GET_CAPABILITIES DataTransferSize 41", "version",
     lambda v, p: w.get_capabilities(v, dts=41, max_size=41), w.INVALID_REQUEST, 0,
     "negotiated"),
    ("GET_CAPABILITIES MaxSPDMmsgSize below DataTransferSize", "version",
     lambda v, p: w.get_capabilities(v, dts=4096, max_size=1024), w.INVALID_REQUEST, 0,
     "negotiated"),
]


def _vca_cases() -> list[tuple[str, int, tuple[str, str, Callable[[int, str], bytes], int,
                                                 int, str]]]:
    out = []
    for profile, version in CASES:
        rows = list(VCA_ERRORS)
        if version >= w.V11:
            rows += VCA_ERRORS_11
        if version >= w.V12:
            rows += VCA_ERRORS_12
        out += [(profile, version, row) for row in rows]
    return out


VCA_CASES = _vca_cases()


@pytest.mark.parametrize(("profile", "version", "row"), VCA_CASES,
                         ids=[f"{i}-{r[0]}" for i, (_, _, r) in
                              zip(w.case_ids([(p, v) for p, v, _ in VCA_CASES]), VCA_CASES,
                                  strict=True)])
def test_vca_error(state_root: Path, profile: str, version: int,
                   row: tuple[str, str, Callable[[int, str], bytes], int, int, str]) -> None:
    _name, before, build, code, data, which = row
    c = conn(state_root, profile, version)
    if before == "version":
        c.version_step()
    elif before == "capabilities":
        c.capabilities_step()
    elif before == "algorithms":
        c.vca()
    err = w.parse_error(c.send(build(version, profile)))
    want_version = w.V10 if which == "1.0" else version
    assert (err.version, err.code, err.data, err.extended) == (want_version, code, data, b"")


@pytest.mark.parametrize(("profile", "version"), CASES, ids=IDS)
def test_unknown_request_code_is_unsupported(state_root: Path, profile: str,
                                             version: int) -> None:
    """§10.12 Table 58: UnsupportedRequest carries the request code as ErrorData."""
    c = conn(state_root, profile, version)
    c.vca()
    err = w.parse_error(c.send(bytes([version, 0x80, 0, 0])))
    assert (err.version, err.code, err.data) == (version, w.UNSUPPORTED_REQUEST, 0x80)
