"""Negotiated connection parameters and the DSP0274 GET_CAPABILITIES /
NEGOTIATE_ALGORITHMS validation rules shared by both roles."""

from __future__ import annotations

from dataclasses import dataclass, field

from spdm.algorithms import NegotiatedAlgorithms
from spdm.codes import MIN_DATA_TRANSFER_SIZE_12, PSK_CAP_MASK, ReqCap, RspCap


@dataclass
class ConnectionInfo:
    version: int = 0
    req_caps: int = 0
    rsp_caps: int = 0
    req_ct_exponent: int = 0
    rsp_ct_exponent: int = 0
    req_data_transfer_size: int = 0
    req_max_msg_size: int = 0
    rsp_data_transfer_size: int = 0
    rsp_max_msg_size: int = 0
    algorithms: NegotiatedAlgorithms = field(default_factory=NegotiatedAlgorithms)
    # DSP0274 1.3 "Multiple asymmetric key negotiation": the responder uses several key
    # pairs on this connection (MULTI_KEY_CAP 01b, or 10b and the requester set
    # ResponderMultiKeyConn, bit 4 of NEGOTIATE_ALGORITHMS OtherParamsSupport).
    multi_key_conn_rsp: bool = False

    def both(self, req_flag: int, rsp_flag: int) -> bool:
        return bool(self.req_caps & req_flag) and bool(self.rsp_caps & rsp_flag)

    @property
    def handshake_in_clear(self) -> bool:
        return self.both(ReqCap.HANDSHAKE_IN_THE_CLEAR, RspCap.HANDSHAKE_IN_THE_CLEAR)

    @property
    def chunking(self) -> bool:
        return self.version >= 0x12 and self.both(ReqCap.CHUNK, RspCap.CHUNK)

    @property
    def mac_only(self) -> bool:
        """Session type: encrypt+MAC when both set ENCRYPT_CAP, else MAC-only (DSP0277)."""
        return not self.both(ReqCap.ENCRYPT, RspCap.ENCRYPT)

    @property
    def multi_key(self) -> bool:
        """MULTI_KEY_CONN_RSP: DIGESTS carries key information, the slots of every key
        pair can be used, and TH includes the DIGESTS response (DSP0274 1.3)."""
        return self.version >= 0x13 and self.multi_key_conn_rsp

    def resolve_multi_key(self, requested: bool) -> bool:
        """MULTI_KEY_CONN_RSP from the responder's MULTI_KEY_CAP and the requester's
        ResponderMultiKeyConn bit; both ends compute it the same way."""
        mk = self.rsp_caps & (RspCap.MULTI_KEY_ONLY | RspCap.MULTI_KEY_NEG)
        self.multi_key_conn_rsp = self.version >= 0x13 and (
            mk == RspCap.MULTI_KEY_ONLY or (mk == RspCap.MULTI_KEY_NEG and requested))
        return self.multi_key_conn_rsp

    @property
    def opaque_fmt1(self) -> bool:
        return self.version >= 0x12 and bool(self.algorithms.other_params & 0x2)


def check_requester_caps(version: int, flags: int, dts: int | None, max_size: int | None,
                         param1: int = 0) -> str:
    """Return a reason string when GET_CAPABILITIES is inconsistent, '' when fine.

    DSP0274 1.3 Table 13 "Flag fields definitions for the Requester", the paragraph after
    Table 14 ("if a Responder detects an illegal capability flag combination reported by
    the Requester, it shall issue ERROR InvalidRequest"; its example is ENCRYPT_CAP set
    with KEY_EX_CAP and PSK_CAP clear), and GET_CAPABILITIES Table 11 (DataTransferSize,
    MaxSPDMmsgSize, Param1).  Rules tied to one version apply to that version only
    (libspdm_rsp_capabilities.c draws the same lines).
    """
    key_ex = flags & ReqCap.KEY_EX
    psk = flags & PSK_CAP_MASK
    cert_or_key = flags & (ReqCap.CERT | ReqCap.PUB_KEY_ID)
    if psk == PSK_CAP_MASK or psk == (2 << 10):
        return "PSK_CAP 10b/11b is reserved for a Requester"
    if (key_ex or psk) and not flags & (ReqCap.ENCRYPT | ReqCap.MAC):
        return "KEY_EX/PSK without ENCRYPT or MAC"
    if not (key_ex or psk) and flags & (
        ReqCap.ENCRYPT | ReqCap.MAC | ReqCap.HANDSHAKE_IN_THE_CLEAR | ReqCap.HBEAT | ReqCap.KEY_UPD
    ):
        return "session capabilities without KEY_EX or PSK"
    if flags & ReqCap.HANDSHAKE_IN_THE_CLEAR and not key_ex:
        return "HANDSHAKE_IN_THE_CLEAR without KEY_EX"
    if flags & ReqCap.CERT and flags & ReqCap.PUB_KEY_ID:
        return "CERT and PUB_KEY_ID both set"
    if flags & (ReqCap.CHAL | ReqCap.MUT_AUTH) and not cert_or_key:
        return "CHAL/MUT_AUTH without CERT or PUB_KEY_ID"
    if version == 0x11 and flags & ReqCap.MUT_AUTH and not flags & ReqCap.ENCAP:
        # SPDM 1.1 mutual authentication runs over the encapsulated flow only.
        return "MUT_AUTH without ENCAP (SPDM 1.1)"
    if version >= 0x13:
        if flags & ReqCap.EP_INFO_NO_SIG and flags & ReqCap.EP_INFO_SIG:
            return "EP_INFO_CAP 11b is reserved"
        multi_key = flags & (ReqCap.MULTI_KEY_ONLY | ReqCap.MULTI_KEY_NEG)
        if multi_key == ReqCap.MULTI_KEY_ONLY | ReqCap.MULTI_KEY_NEG:
            return "MULTI_KEY_CAP 11b is reserved"
        if multi_key and flags & ReqCap.PUB_KEY_ID:
            return "MULTI_KEY_CAP with PUB_KEY_ID"
        if flags & ReqCap.EVENT and not (key_ex or psk):
            return "EVENT_CAP without KEY_EX or PSK (events travel in sessions)"
        if param1 & 0x01 and not flags & ReqCap.CHUNK:
            return "Param1 bit 0 (Supported Algorithms) without CHUNK_CAP"
    if version >= 0x12 and dts is not None and max_size is not None:
        if dts < MIN_DATA_TRANSFER_SIZE_12:
            return "DataTransferSize below MinDataTransferSize"
        if dts > max_size:
            return "DataTransferSize larger than MaxSPDMmsgSize"
        if not flags & ReqCap.CHUNK and dts != max_size:
            return "DataTransferSize != MaxSPDMmsgSize without CHUNK_CAP"
    return ""
