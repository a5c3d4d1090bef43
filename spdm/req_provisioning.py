"""Requester flows for provisioning and device information: GET_KEY_PAIR_INFO, GET_CSR,
SET_CERTIFICATE, GET_MEASUREMENT_EXTENSION_LOG and GET_ENDPOINT_INFO (the Requester's
methods of the same names run these generators)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spdm.codes import NONCE_SIZE, Rsp
from spdm.errors import PeerError
from spdm.identity import spdm_cert_chain
from spdm.messages import (
    EP_INFO_ATTR_SIGNATURE,
    EP_INFO_SUBCODE_DEVICE_CLASS_IDENTIFIER,
    Csr,
    EndpointInfo,
    GetCsr,
    GetEndpointInfo,
    GetKeyPairInfo,
    GetMel,
    KeyPairInfo,
    MeasurementExtensionLog,
    SetCertificate,
    SetCertificateRsp,
    encode,
)
from spdm.rsp_provisioning import CTX_ENDPOINT_INFO, MEL_HEADER_SIZE

if TYPE_CHECKING:
    from spdm.requester import Gen, Requester


@dataclass(frozen=True)
class KeyPairInfoResult:
    """KEY_PAIR_INFO as received (DSP0274 1.3)."""

    total_key_pairs: int
    key_pair_id: int
    capabilities: int
    key_usage_capabilities: int
    current_key_usage: int
    asym_algo_capabilities: int
    current_asym_algo: int
    assoc_cert_slot_mask: int
    public_key_info: bytes


def get_key_pair_info(req: Requester, key_pair_id: int, session_id: int | None) -> Gen:
    sess = req._session(session_id)
    msg = encode(GetKeyPairInfo, {"version": req.conn.version, "key_pair_id": key_pair_id})
    resp = yield from req._exchange(msg, sess, expect=Rsp.KEY_PAIR_INFO)
    info = req._decode(KeyPairInfo, resp)
    if info.key_pair_id != key_pair_id or not 1 <= key_pair_id <= info.total_key_pairs:
        raise PeerError("KEY_PAIR_INFO for another key pair")
    return KeyPairInfoResult(
        info.total_key_pairs, info.key_pair_id, info.capabilities,
        info.key_usage_capabilities, info.current_key_usage, info.asym_algo_capabilities,
        info.current_asym_algo, info.assoc_cert_slot_mask, bytes(info.public_key_info))


def get_csr(req: Requester, requester_info: bytes, opaque: bytes, key_pair_id: int,
            cert_model: int, session_id: int | None) -> Gen:
    """The DER CSR the responder issues (RequesterInfo: a DER CertificationRequestInfo
    whose subject the CSR is to carry, or empty)."""
    sess = req._session(session_id)
    v = req.conn.version
    msg = encode(GetCsr, {"version": v, "param1": key_pair_id if v >= 0x13 else 0,
                          "param2": cert_model & 0x07 if v >= 0x13 else 0,
                          "requester_info": requester_info, "opaque": opaque})
    resp = yield from req._exchange(msg, sess, expect=Rsp.CSR)
    return bytes(req._decode(Csr, resp).csr)


def set_certificate(req: Requester, slot: int, certs_der: Sequence[bytes], key_pair_id: int,
                    cert_model: int, erase: bool, session_id: int | None) -> Gen:
    """Write (or, 1.3, erase) certificate slot `slot`; `certs_der` root first."""
    sess = req._session(session_id)
    v = req.conn.version
    param1 = slot & 0x0F
    if v >= 0x13:
        param1 |= (0x80 if erase else (cert_model & 0x07) << 4)
    chain = b"" if erase else spdm_cert_chain(list(certs_der), req.conn.algorithms.base_hash)
    msg = encode(SetCertificate, {"version": v, "param1": param1,
                                  "param2": key_pair_id if v >= 0x13 else 0,
                                  "cert_chain": chain})
    resp = yield from req._exchange(msg, sess, expect=Rsp.SET_CERTIFICATE_RSP)
    if req._decode(SetCertificateRsp, resp).param1 & 0x0F != slot:
        raise PeerError("SET_CERTIFICATE_RSP for another slot")
    req.digests.pop(slot, None)
    req.cert_chains.pop(slot, None)
    req.leaf_keys.pop(slot, None)
    return slot


def get_mel(req: Requester, session_id: int | None, portion: int | None) -> Gen:
    """The whole measurement extension log, in portions of at most `portion` bytes (by
    default what fits our DataTransferSize)."""
    sess = req._session(session_id)
    if portion is None:
        dts = req.conn.req_data_transfer_size or 4096
        portion = dts - MEL_HEADER_SIZE
    mel = bytearray()
    while True:
        msg = encode(GetMel, {"version": req.conn.version, "offset": len(mel),
                              "length": portion})
        resp = yield from req._exchange(msg, sess, expect=Rsp.MEASUREMENT_EXTENSION_LOG)
        part = req._decode(MeasurementExtensionLog, resp)
        if not part.portion_length or part.portion_length > portion:
            raise PeerError("MEASUREMENT_EXTENSION_LOG PortionLength invalid")
        mel += part.mel
        if not part.remainder_length:
            return bytes(mel)
        if len(mel) + part.remainder_length > 0xFFFF_FFFF:
            raise PeerError("MEL too long")


def get_endpoint_info(req: Requester, signed: bool, slot: int,
                      session_id: int | None) -> Gen:
    """EPInfo (SubCode 1, DeviceClassIdentifier); with `signed`, its signature is checked
    with slot `slot`'s certificate, which must have been retrieved."""
    sess = req._session(session_id)
    v = req.conn.version
    nonce = req.config.random(NONCE_SIZE) if signed else None
    msg = encode(GetEndpointInfo, {
        "version": v, "param1": EP_INFO_SUBCODE_DEVICE_CLASS_IDENTIFIER,
        "param2": slot if signed else 0,
        "request_attributes": EP_INFO_ATTR_SIGNATURE if signed else 0, "nonce": nonce})
    resp = yield from req._exchange(msg, sess, expect=Rsp.ENDPOINT_INFO)
    sig_size = req.conn.algorithms.sig_size if signed else 0
    info = req._decode(EndpointInfo, resp, sig_size=sig_size)
    if signed:
        if info.param2 & 0x0F != slot:
            raise PeerError("ENDPOINT_INFO signed with another slot")
        raw = bytes(info.raw)
        unsigned = raw[: len(raw) - sig_size]
        il = bytes(req.transcript.vca) + msg + unsigned
        req._verify_sig(slot, CTX_ENDPOINT_INFO, il, bytes(info.signature))
    return bytes(info.ep_info)

