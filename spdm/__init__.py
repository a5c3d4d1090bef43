"""Sans-IO SPDM 1.0–1.4 engines (DMTF DSP0274) with DSP0277 secured messages for PCI DOE;
1.4 with the post-quantum algorithms ML-DSA-44/65/87 (identities) and ML-KEM-768/1024
(key exchange), see docs/protocols.md §12.

Modules, one concept each:

    codes            request/response/error codes, capability flags, constants
    messages         construct declarations for every message (parse and build)
    algorithms       algorithm bit values, sizes, selection rules
    crypto           signatures (ECDSA, RSA, EdDSA, ML-DSA), DHE, ML-KEM, AEAD, HKDF,
                     the 1.2+ signing prefix
    transcript       VCA, B/C (M1/M2), L1/L2, session TH bookkeeping
    key_schedule     DSP0274 key schedule (extract / derive_secret steps)
    secured_message  DSP0277 record protection (key, IV, sequence-number nonce rule)
    session          one secure session (keys per direction, transcript, state)
    state            connection and session state transition tables
    negotiation      negotiated connection parameters and capability checks
    opaque           secured-message version negotiation in opaque data
    measurements     DMTF measurement blocks, summary hashes, provider type
    identity         certificate chains and keys (generation, storage, import, slots)
    cert_verify      certificate chain validation (either side), the default clock
    responder        Responder: handle(request) / handle_secured(record) / handle_doe();
                     ResponderConfig (settings), AlgorithmPriorities
    requester        Requester: operations driven by Operation.feed(); RequesterConfig,
                     AlgorithmOffer
    hooks            ResponderHooks / RequesterHooks: observers and fault seams, not settings
    errors           SpdmError and its subclasses; the ERROR code is a class attribute

Quick start (in process):

    from spdm.identity import CertSlots, generate_identity
    from spdm.measurements import default_measurements
    from spdm.responder import Responder, ResponderConfig
    from spdm.requester import Requester, RequesterConfig

    ident = generate_identity()      # in memory; vdev keeps one on disk (vdev identity)
    rsp = Responder(ResponderConfig(slots=CertSlots({0: ident}),
                                    measurements=default_measurements))
    req = Requester(RequesterConfig(trust_anchors=[ident.root]))
    transport = lambda out: rsp.handle_doe(out.doe_type, out.data)[1]
    req.run(req.init_connection(), transport)
    req.run(req.get_digests(), transport)
    req.run(req.get_certificate(0), transport)
    blocks = req.run(req.get_measurements(0xFF, signed=True), transport)
    sid = req.run(req.key_exchange(0), transport)

DOE transport adapter (PCIe DOE, vendor 0x0001):

    type 1 (SPDM):          reply = responder.handle(payload)             -> type-1 object
    type 2 (secured SPDM):  kind, reply = responder.handle_doe(2, payload)
                            kind is 2 normally; 1 when the record could not be attributed
                            to a session or authenticated (plaintext ERROR, as libspdm does).
                            responder.handle_secured(payload) returns just the bytes.
    Payloads may carry DOE DWORD padding; replies are unpadded (pad them to a DWORD).
    Requester side: send op.request.data as a type-`op.request.doe_type` object after waiting
    op.request.delay_us, then op.feed(reply payload).

VENDOR_DEFINED (IDE_KM, TDISP):

    responder.register_vendor_handler(0x0003, b"\\x01\\x00", handler, protocol_id=0)
    handler(payload_starting_with_ProtocolID, VendorRequestContext) -> response payload;
    raise a RequestRefused subclass (spdm.errors) to answer with an SPDM ERROR of its code.
"""
