"""Responder handlers for provisioning and device information: GET_KEY_PAIR_INFO,
GET_CSR, SET_CERTIFICATE (DSP0274 1.2/1.3), GET_MEASUREMENT_EXTENSION_LOG and
GET_ENDPOINT_INFO (1.3).  They are the Responder's methods in all but placement
(`Responder.__init__` registers them); the rules they judge by are spelt out at each
check, with the source where the DSP0274 text was not available to us (libspdm's
responder, `library/spdm_responder_lib/libspdm_rsp_*.c`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from spdm import crypto
from spdm.codes import (
    MAX_SLOTS,
    MEL_SPEC_DMTF,
    NONCE_SIZE,
    V12,
    V13,
    CertModel,
    Req,
    RspCap,
)
from spdm.errors import (
    InvalidRequest,
    OperationFailed,
    RequesterInfoError,
    UnexpectedRequest,
    Unspecified,
    UnsupportedRequest,
)
from spdm.identity import split_spdm_cert_chain
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
from spdm.provisioning import (
    KeyPair,
    assoc_slot_mask,
    build_csr,
    key_pair_asym,
    parse_requester_info,
    public_key_info,
    spki,
)

if TYPE_CHECKING:
    from spdm.responder import Responder
    from spdm.session import Session

CTX_ENDPOINT_INFO = b"responder-endpoint_info signing"
MEL_HEADER_SIZE = 12  # MEASUREMENT_EXTENSION_LOG before the MEL portion


def _need_version(rsp: Responder, req: Req, minimum: int) -> None:
    """A request the negotiated version does not define is not supported."""
    if rsp.conn.version < minimum:
        raise UnsupportedRequest(req)


def _key_pair(rsp: Responder, key_pair_id: int) -> KeyPair:
    pairs = rsp.key_pairs()
    if not 1 <= key_pair_id <= len(pairs):
        raise InvalidRequest(f"KeyPairID {key_pair_id} not in 1..{len(pairs)}")
    return pairs[key_pair_id - 1]


# ---- GET_KEY_PAIR_INFO (1.3) ---------------------------------------------------------------


def get_key_pair_info(rsp: Responder, request: bytes, hdr: Any,
                      session: Session | None) -> bytes:
    _need_version(rsp, Req.GET_KEY_PAIR_INFO, V13)
    rsp._require_cap(Req.GET_KEY_PAIR_INFO, RspCap.GET_KEY_PAIR_INFO)
    msg = rsp._decode(GetKeyPairInfo, request)
    pairs = rsp.key_pairs()
    kp = _key_pair(rsp, msg.key_pair_id)
    asym = key_pair_asym(kp.key)
    return encode(KeyPairInfo, {
        "version": rsp.conn.version, "total_key_pairs": len(pairs),
        "key_pair_id": kp.key_pair_id, "capabilities": kp.capabilities,
        "key_usage_capabilities": kp.usage_capabilities,
        "current_key_usage": kp.current_usage,
        "asym_algo_capabilities": asym, "current_asym_algo": asym,
        "assoc_cert_slot_mask": assoc_slot_mask(rsp.config.slots, kp),
        "public_key_info": public_key_info(kp.key),
    })


# ---- GET_CSR (1.2) --------------------------------------------------------------------------


def get_csr(rsp: Responder, request: bytes, hdr: Any, session: Session | None) -> bytes:
    _need_version(rsp, Req.GET_CSR, V12)
    rsp._require_cap(Req.GET_CSR, RspCap.CSR)
    msg = rsp._decode(GetCsr, request)
    if msg.opaque and not rsp.conn.algorithms.other_params & 0x0F:
        # No OpaqueDataFmt negotiated: there is no format to read OpaqueData in.
        raise InvalidRequest("OpaqueData without a negotiated opaque data format")
    rsp._check_opaque(bytes(msg.opaque))
    multi_key = rsp.conn.multi_key
    key_pair_id = 1
    if rsp.conn.version >= V13:
        attrs = msg.param2
        model = attrs & 0x07
        tracking_tag = (attrs >> 3) & 0x07
        if tracking_tag:
            # CSRTrackingTag belongs to the CERT_INSTALL_RESET flow, which this responder
            # does not have: the CSR is always returned at once.
            raise InvalidRequest("CSRTrackingTag without CERT_INSTALL_RESET_CAP")
        if multi_key:
            key_pair_id = msg.param1
            if not CertModel.DEVICE_CERT <= model <= CertModel.GENERIC_CERT:
                raise InvalidRequest("RequestAttributes CertModel must be 1..3")
        elif msg.param1 or model:
            raise InvalidRequest("KeyPairID and CertModel are 0 outside multi-key")
    kp = _key_pair(rsp, key_pair_id)
    try:
        subject = parse_requester_info(bytes(msg.requester_info))
    except RequesterInfoError as exc:
        raise InvalidRequest(str(exc)) from exc
    if subject is None:
        subject = _default_subject(rsp, kp)
    try:
        csr = build_csr(kp.key, subject)
    except (TypeError, ValueError) as exc:
        raise Unspecified(f"cannot issue a CSR for key pair {kp.key_pair_id}: {exc}") from exc
    return encode(Csr, {"version": rsp.conn.version, "csr": csr})


def _default_subject(rsp: Responder, kp: KeyPair) -> x509.Name:
    wanted = spki(kp.key)
    for slot in sorted(rsp.config.slots.slots):
        ident = rsp.config.slots.slots[slot]
        if spki(ident.leaf.public_key()) == wanted:
            return ident.leaf.subject
    return x509.Name([])


# ---- SET_CERTIFICATE (1.2) -------------------------------------------------------------------


def set_certificate(rsp: Responder, request: bytes, hdr: Any,
                    session: Session | None) -> bytes:
    _need_version(rsp, Req.SET_CERTIFICATE, V12)
    rsp._require_cap(Req.SET_CERTIFICATE, RspCap.SET_CERT)
    store = rsp.config.certificate_store
    assert store is not None  # SET_CERT_CAP is only sent with a store
    msg = rsp._decode(SetCertificate, request)
    v = rsp.conn.version
    slot = msg.param1 & 0x0F
    if slot >= MAX_SLOTS:
        raise InvalidRequest(f"SlotID {slot}")
    if session is None and slot != 0 and not rsp.config.set_certificate_outside_session:
        # Slots other than 0 are written inside a secure session unless the device is in
        # a trusted environment (libspdm libspdm_rsp_set_certificate.c: UnexpectedRequest).
        raise UnexpectedRequest("SET_CERTIFICATE of a slot other than 0 outside a session")
    model = int(CertModel.DEVICE_CERT)
    erase = False
    key_pair_id = 1
    if v >= V13:
        model = (msg.param1 >> 4) & 0x07
        erase = bool(msg.param1 & 0x80)
        if rsp.conn.multi_key:
            key_pair_id = msg.param2
            _key_pair(rsp, key_pair_id)
            if not erase and not CertModel.DEVICE_CERT <= model <= CertModel.GENERIC_CERT:
                raise InvalidRequest("SetCertModel must be 1..3")
        else:
            if msg.param2 or model:
                raise InvalidRequest("KeyPairID and SetCertModel are 0 outside multi-key")
            model = int(CertModel.DEVICE_CERT)
    if erase:
        if msg.cert_chain or (msg.param1 >> 4) & 0x07:
            raise InvalidRequest("Erase with a CertChain or a SetCertModel")
        try:
            store.erase(slot)
        except OSError as exc:
            raise OperationFailed(f"cannot erase slot {slot}: {exc}") from exc
        rsp.config.slots.slots.pop(slot, None)
        rsp.slot_models.pop(slot, None)
        return encode(SetCertificateRsp, {"version": v, "param1": slot})
    if slot == 0 and model == CertModel.GENERIC_CERT:
        raise InvalidRequest("slot 0 cannot hold a GenericCert")
    kp = _key_pair(rsp, key_pair_id)
    certs = _parse_chain(rsp, bytes(msg.cert_chain))
    if spki(certs[-1].public_key()) != spki(kp.key):
        raise InvalidRequest(f"the leaf certificate is not for key pair {kp.key_pair_id}")
    try:
        ident = store.install(slot, certs, kp, model)
    except OSError as exc:
        if v >= V13:
            raise OperationFailed(f"cannot store slot {slot}: {exc}") from exc
        raise Unspecified(f"cannot store slot {slot}: {exc}") from exc
    rsp.config.slots.slots[slot] = ident
    rsp.slot_models[slot] = model
    return encode(SetCertificateRsp, {"version": v, "param1": slot})


def _parse_chain(rsp: Responder, chain: bytes) -> list[x509.Certificate]:
    """The SPDM certificate chain of SET_CERTIFICATE: Length covers the whole structure,
    RootHash is the root certificate's digest, the certificates follow root first and each
    is signed by the one before it."""
    h = rsp.conn.algorithms.hash_size
    if len(chain) < 4 + h:
        raise InvalidRequest("CertChain shorter than its header")
    length = int.from_bytes(chain[:2], "little")
    if length != len(chain):
        raise InvalidRequest(f"CertChain Length {length} but {len(chain)} bytes follow")
    root_hash, ders = split_spdm_cert_chain(chain, h)
    try:
        certs = [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as exc:
        raise InvalidRequest(f"CertChain: {exc}") from exc
    if not certs:
        raise InvalidRequest("CertChain holds no certificate")
    root_der = certs[0].public_bytes(serialization.Encoding.DER)
    if crypto.digest(rsp.conn.algorithms.base_hash, root_der) != root_hash:
        raise InvalidRequest("RootHash is not the hash of the first certificate")
    for issuer, cert in zip(certs, certs[1:], strict=False):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise Unspecified(f"certificate chain does not verify: {exc}") from exc
    return certs


# ---- GET_MEASUREMENT_EXTENSION_LOG (1.3) ------------------------------------------------------


def get_mel(rsp: Responder, request: bytes, hdr: Any, session: Session | None) -> bytes:
    _need_version(rsp, Req.GET_MEASUREMENT_EXTENSION_LOG, V13)
    rsp._require_cap(Req.GET_MEASUREMENT_EXTENSION_LOG, RspCap.MEL)
    if rsp.conn.algorithms.mel_spec != MEL_SPEC_DMTF:
        raise UnexpectedRequest("no MEL specification negotiated")
    msg = rsp._decode(GetMel, request)
    mel = rsp.config.mel() if rsp.config.mel is not None else b""
    if msg.offset >= len(mel) or not msg.length:
        raise InvalidRequest(f"Offset {msg.offset} / Length {msg.length} outside the "
                             f"{len(mel)}-byte MEL")
    portion = min(msg.length, len(mel) - msg.offset)
    dts = rsp.conn.req_data_transfer_size
    if dts and not rsp.conn.chunking:
        portion = min(portion, dts - MEL_HEADER_SIZE)
    return encode(MeasurementExtensionLog, {
        "version": rsp.conn.version, "remainder_length": len(mel) - msg.offset - portion,
        "mel": mel[msg.offset: msg.offset + portion]})


# ---- GET_ENDPOINT_INFO (1.3) -------------------------------------------------------------------


def get_endpoint_info(rsp: Responder, request: bytes, hdr: Any,
                      session: Session | None) -> bytes:
    _need_version(rsp, Req.GET_ENDPOINT_INFO, V13)
    rsp._require_cap(Req.GET_ENDPOINT_INFO, RspCap.EP_INFO_NO_SIG | RspCap.EP_INFO_SIG)
    msg = rsp._decode(GetEndpointInfo, request)
    request = msg.raw
    if msg.param1 != EP_INFO_SUBCODE_DEVICE_CLASS_IDENTIFIER:
        raise InvalidRequest(f"SubCode {msg.param1}")
    signed = bool(msg.request_attributes & EP_INFO_ATTR_SIGNATURE)
    slot = 0
    if signed:
        if not rsp.conn.rsp_caps & RspCap.EP_INFO_SIG:
            # libspdm_rsp_endpoint_info.c: a signature from a 01b responder is unsupported.
            raise UnsupportedRequest(Req.GET_ENDPOINT_INFO)
        slot = msg.param2 & 0x0F
        rsp.slot_for(slot, usage=0x0008)
    ep_info = rsp.config.endpoint_info or b""
    a = rsp.conn.algorithms
    fields = {"version": rsp.conn.version, "param2": slot,
              "nonce": rsp.config.random(NONCE_SIZE) if signed else None,
              "ep_info": ep_info, "signature": b""}
    if not signed:
        return encode(EndpointInfo, fields)
    # The signature covers VCA, the request and the response up to the signature
    # (libspdm_rsp_endpoint_info.c, message E); encode with a placeholder to cut it off.
    unsigned = encode(EndpointInfo, {**fields, "signature": bytes(a.sig_size)},
                      sig_size=a.sig_size)[:-a.sig_size]
    il = bytes(rsp.transcript.vca) + request + unsigned
    return unsigned + rsp._sign(slot, CTX_ENDPOINT_INFO, il)
