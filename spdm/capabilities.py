"""Which CAPABILITIES flags a responder can back with what it was given.

DSP0274 1.3 Table 14: a flag says the Responder "shall support" the messages behind it,
so a flag may only be sent when those messages can succeed.  `exercisable(p)` is the set
of flags the provisioned material makes possible; the responder sends the flags it was
configured with *and* can exercise, and `missing(p, wanted)` says why a wanted flag
cannot be sent (a profile asking for PSK_CAP without a PSK is refused at start with
that reason, not quietly advertised).

The rules, flag by flag:

    CERT, CHAL              a certificate slot is provisioned (no raw public keys here)
    MEAS_NO_SIG, MEAS_FRESH measurements are provided (asked for on every request)
    MEAS_SIG                measurements and a slot to sign with
    KEY_EX                  a slot to sign KEY_EXCHANGE_RSP with
    PSK, PSK_WITH_CONTEXT   at least one pre-shared key
    ENCRYPT, MAC, KEY_UPD   a way to open a session (KEY_EX or PSK)
    HBEAT                   a session and a HeartbeatPeriod above 0
    HANDSHAKE_IN_THE_CLEAR  KEY_EX
    MUT_AUTH, ENCAP         mutual authentication configured (a requester chain or
                            trust anchors to verify one fetched with encapsulated requests)
    CHUNK                   nothing (a transfer mechanism)
    SET_CERT                a certificate store to write to
    CSR                     SET_CERT and keys a CSR can be issued for
    EP_INFO_NO_SIG          endpoint information is provided; EP_INFO_SIG also a slot
    MEL                     a measurement extension log is provided
    GET_KEY_PAIR_INFO       a key pair (SPDM 1.3 only: 1.4 changed KEY_PAIR_INFO)
    MULTI_KEY_NEG           more than one key pair (and GET_KEY_PAIR_INFO, DSP0274 1.3
                            Table 14); negotiated per connection, never MULTI_KEY_ONLY
    CACHE, ALIAS_CERT, CERT_INSTALL_RESET, EVENT, MULTI_KEY_ONLY, SET_KEY_PAIR_INFO,
    SET_KEY_PAIR_RESET, PUB_KEY_ID
                            never: this responder implements none of them
"""

from __future__ import annotations

from dataclasses import dataclass

from spdm.codes import RspCap, rsp_caps_for_version

#: Flags no provisioning makes possible here (the features are not implemented).
NEVER = (RspCap.CACHE | RspCap.ALIAS_CERT | RspCap.CERT_INSTALL_RESET | RspCap.EVENT
         | RspCap.MULTI_KEY_ONLY | RspCap.SET_KEY_PAIR_INFO | RspCap.SET_KEY_PAIR_RESET
         | RspCap.PUB_KEY_ID)

#: Flags that only describe a mechanism: nothing has to be provisioned for them.
MECHANISMS = RspCap.CHUNK | RspCap.LARGE_RESP


@dataclass(frozen=True)
class Provisioning:
    """What a responder was given, as far as the capability flags care."""

    slots: int = 0  # provisioned certificate slots
    key_pairs: int = 0  # distinct asymmetric key pairs behind them
    measurements: bool = False
    psks: int = 0
    heartbeat_period: int = 0
    mutual_auth: bool = False
    certificate_store: bool = False
    csr: bool = False  # a CSR can be issued for every key pair
    endpoint_info: bool = False
    mel: bool = False


def _rules(p: Provisioning) -> dict[RspCap, str | None]:
    """flag -> None when exercisable, else the reason it is not."""
    cert = p.slots > 0
    no_slot = None if cert else "no certificate slot is provisioned"
    session = None if cert or p.psks else "no session can be opened (no slot, no PSK)"
    no_meas = None if p.measurements else "no measurements are provided"
    return {
        RspCap.CERT: no_slot,
        RspCap.CHAL: no_slot,
        RspCap.MEAS_NO_SIG: no_meas,
        RspCap.MEAS_FRESH: no_meas,
        RspCap.MEAS_SIG: no_meas or no_slot,
        RspCap.KEY_EX: no_slot,
        RspCap.PSK: None if p.psks else "no pre-shared key is provisioned",
        RspCap.PSK_WITH_CONTEXT: None if p.psks else "no pre-shared key is provisioned",
        RspCap.ENCRYPT: session,
        RspCap.MAC: session,
        RspCap.KEY_UPD: session,
        RspCap.HBEAT: session or (None if p.heartbeat_period
                                  else "the heartbeat period is 0"),
        RspCap.HANDSHAKE_IN_THE_CLEAR: no_slot,
        RspCap.MUT_AUTH: None if p.mutual_auth else "mutual authentication is not configured",
        RspCap.ENCAP: None if p.mutual_auth else "mutual authentication is not configured",
        RspCap.SET_CERT: None if p.certificate_store else "no certificate store to write to",
        RspCap.CSR: (None if p.certificate_store and p.csr
                     else "no certificate store or no key to issue a CSR for"),
        RspCap.EP_INFO_NO_SIG: None if p.endpoint_info else "no endpoint information",
        RspCap.EP_INFO_SIG: (None if p.endpoint_info and cert
                             else "no endpoint information or no slot to sign it"),
        RspCap.MEL: (None if p.mel and p.measurements
                     else "no measurement extension log is provided"),
        RspCap.GET_KEY_PAIR_INFO: None if p.key_pairs else "no key pair is provisioned",
        RspCap.MULTI_KEY_NEG: (None if p.key_pairs > 1
                               else "fewer than two key pairs are provisioned"),
    }


def exercisable(p: Provisioning) -> int:
    """Every flag the provisioned material can back."""
    flags = int(MECHANISMS)
    for flag, reason in _rules(p).items():
        if reason is None:
            flags |= flag
    return flags


def missing(p: Provisioning, wanted: int) -> dict[str, str]:
    """The wanted flags that cannot be sent: flag name -> why."""
    out: dict[str, str] = {}
    rules = _rules(p)
    for flag in RspCap:
        if not wanted & flag or flag & MECHANISMS:
            continue
        if flag & NEVER:
            out[str(flag.name)] = "not implemented by this responder"
        elif rules.get(flag) is not None:
            out[str(flag.name)] = str(rules[flag])
    return out


#: Flags whose messages this responder speaks only in the 1.3 layout.
_V13_ONLY = RspCap.GET_KEY_PAIR_INFO | RspCap.MULTI_KEY_NEG

#: Flags that need a slot's key to be named in BaseAsymAlgo: certificates, signatures,
#: signed handshakes and what builds on them (mutual authentication, provisioning of
#: certificates and key pairs).
_SIGNING = (RspCap.CERT | RspCap.CHAL | RspCap.MEAS_SIG | RspCap.KEY_EX
            | RspCap.HANDSHAKE_IN_THE_CLEAR | RspCap.MUT_AUTH | RspCap.ENCAP
            | RspCap.EP_INFO_SIG | RspCap.SET_CERT | RspCap.CSR | RspCap.GET_KEY_PAIR_INFO
            | RspCap.MULTI_KEY_NEG)
_SESSION = RspCap.ENCRYPT | RspCap.MAC | RspCap.KEY_UPD | RspCap.HBEAT


def caps_for_version(caps: int, version: int, *, classical_key: bool = True) -> int:
    """The CAPABILITIES flags sent in `version`: those the version defines
    (`spdm.codes.rsp_caps_for_version`), without the ones whose messages we speak only
    in another version's layout (KEY_PAIR_INFO gained post-quantum fields in 1.4).

    `classical_key` False: no slot holds a key BaseAsymAlgo can name (ML-DSA only,
    which DSP0274 1.4 §10.4 added as PqcAsymAlgo).  Before 1.4 such a device can sign
    nothing, so it advertises none of the flags that promise a signature (DSP0274 1.3
    Table 16 wants one BaseAsymSel bit behind them): measurements and endpoint
    information stay, unsigned, and sessions only with a PSK."""
    out = rsp_caps_for_version(caps, version)
    if version >= 0x14:
        out &= ~_V13_ONLY
    elif not classical_key:
        if out & RspCap.MEAS_SIG:
            out |= RspCap.MEAS_NO_SIG
        if out & RspCap.EP_INFO_SIG:
            out |= RspCap.EP_INFO_NO_SIG
        out &= ~_SIGNING
        if not out & (RspCap.PSK | RspCap.PSK_WITH_CONTEXT):
            out &= ~_SESSION
    return out
