-- vdev-doe.lua: a Wireshark dissector for the DOE captures vdev writes.
--
--   wireshark -X lua_script:contrib/wireshark/vdev-doe.lua out/run/device.pcap
--   tshark -X lua_script:contrib/wireshark/vdev-doe.lua -r tsm.pcap -Y tdisp
--
-- Layers: PCI DOE data objects (PCIe 6.x §6.30.1) -> SPDM messages (DSP0274) -> in an
-- SPDM VENDOR_DEFINED message with the PCI-SIG vendor ID, IDE_KM (PCIe 6.x §6.33.3)
-- and TDISP (PCIe 6.x §11.3).  A secured-SPDM object (DOE type 2, DSP0277) shows its
-- session ID and length; its message is decoded when the capture was written with
-- `--pcap-decrypted` (pcapng, each decrypted record marked by a packet comment),
-- otherwise it stays an encrypted record with its MAC.
--
-- The capture's link type 292 is libspdm's "PCI DOE" (the one DMTF's spdm_dump reads),
-- which tcpdump.org has assigned to ZBOSS NCP; Wireshark 4.x therefore opens these
-- files as ZBOSS NCP.  This script takes over that encapsulation and hands a frame
-- that is not a DOE object (a real ZBOSS NCP capture) back to Wireshark's own
-- dissector.  Written for Wireshark 4.0 (Lua 5.2) and later; field names: doe.*,
-- spdm.*, spdm_secured.*, idekm.*, tdisp.*.

local band = (bit and bit.band) or bit32.band
local rshift = (bit and bit.rshift) or bit32.rshift

local DECRYPTED_COMMENT = "vdev: secured record decrypted"
local PCI_SIG = 0x0001
local MAC_SIZE = 16

-- ---- names ---------------------------------------------------------------------------

local doe_types = { [0] = "DISCOVERY", [1] = "SPDM", [2] = "SECURED_SPDM" }

-- DSP0274 1.3 Table 4 (request codes) and Table 5 (response codes).
local spdm_codes = {
    [0x01] = "DIGESTS", [0x02] = "CERTIFICATE", [0x03] = "CHALLENGE_AUTH",
    [0x04] = "VERSION", [0x05] = "CHUNK_SEND_ACK", [0x06] = "CHUNK_RESPONSE",
    [0x07] = "ENDPOINT_INFO",
    [0x60] = "MEASUREMENTS", [0x61] = "CAPABILITIES", [0x62] = "SUPPORTED_EVENT_TYPES",
    [0x63] = "ALGORITHMS",
    [0x64] = "KEY_EXCHANGE_RSP", [0x65] = "FINISH_RSP", [0x66] = "PSK_EXCHANGE_RSP",
    [0x67] = "PSK_FINISH_RSP", [0x68] = "HEARTBEAT_ACK", [0x69] = "KEY_UPDATE_ACK",
    [0x6A] = "ENCAPSULATED_REQUEST", [0x6B] = "ENCAPSULATED_RESPONSE_ACK",
    [0x6C] = "END_SESSION_ACK", [0x6D] = "CSR", [0x6E] = "SET_CERTIFICATE_RSP",
    [0x6F] = "MEASUREMENT_EXTENSION_LOG", [0x70] = "SUBSCRIBE_EVENT_TYPES_ACK",
    [0x71] = "EVENT_ACK", [0x7C] = "KEY_PAIR_INFO", [0x7D] = "SET_KEY_PAIR_INFO_ACK",
    [0x7E] = "VENDOR_DEFINED_RESPONSE", [0x7F] = "ERROR",
    [0x81] = "GET_DIGESTS", [0x82] = "GET_CERTIFICATE", [0x83] = "CHALLENGE",
    [0x84] = "GET_VERSION", [0x85] = "CHUNK_SEND", [0x86] = "CHUNK_GET",
    [0x87] = "GET_ENDPOINT_INFO", [0xE0] = "GET_MEASUREMENTS", [0xE1] = "GET_CAPABILITIES",
    [0xE2] = "GET_SUPPORTED_EVENT_TYPES", [0xE3] = "NEGOTIATE_ALGORITHMS",
    [0xE4] = "KEY_EXCHANGE", [0xE5] = "FINISH", [0xE6] = "PSK_EXCHANGE",
    [0xE7] = "PSK_FINISH", [0xE8] = "HEARTBEAT", [0xE9] = "KEY_UPDATE",
    [0xEA] = "GET_ENCAPSULATED_REQUEST", [0xEB] = "DELIVER_ENCAPSULATED_RESPONSE",
    [0xEC] = "END_SESSION", [0xED] = "GET_CSR", [0xEE] = "SET_CERTIFICATE",
    [0xEF] = "GET_MEASUREMENT_EXTENSION_LOG", [0xF0] = "SUBSCRIBE_EVENT_TYPES",
    [0xF1] = "SEND_EVENT", [0xFC] = "GET_KEY_PAIR_INFO", [0xFD] = "SET_KEY_PAIR_INFO",
    [0xFE] = "VENDOR_DEFINED_REQUEST", [0xFF] = "RESPOND_IF_READY",
}

-- KEY_UPDATE / KEY_UPDATE_ACK Param1 (DSP0274 KEY_UPDATE 'KeyOperation').
local key_update_ops = { [1] = "UpdateKey", [2] = "UpdateAllKeys", [3] = "VerifyNewKey" }
-- SET_KEY_PAIR_INFO Param1 (DSP0274 1.3 SET_KEY_PAIR_INFO 'Operation').
local key_pair_ops = { [0] = "Change", [1] = "Erase", [2] = "Generate" }
-- CertModel (DSP0274 1.3 'Certificate info'): DIGESTS, CERTIFICATE, GET_CSR, SET_CERTIFICATE.
local cert_models = { [0] = "None", [1] = "DeviceCert", [2] = "AliasCert", [3] = "GenericCert" }
-- GET_ENDPOINT_INFO Param1 (DSP0274 1.3 'SubCode').
local ep_info_subcodes = { [1] = "DeviceClassIdentifier" }
-- KEY_PAIR_INFO Capabilities, KeyUsageCapabilities / CurrentKeyUsage, AsymAlgoCapabilities /
-- CurrentAsymAlgo (DSP0274 1.3 GET_KEY_PAIR_INFO clause).
local key_pair_caps = {
    [0x1] = "GenKey", [0x2] = "Erasable", [0x4] = "CertAssoc", [0x8] = "KeyUsage",
    [0x10] = "AsymAlgo", [0x20] = "Shareable",
}
local key_usages = {
    [0x1] = "KeyEx", [0x2] = "Challenge", [0x4] = "Measurement", [0x8] = "EndpointInfo",
    [0x4000] = "StandardsKey", [0x8000] = "VendorKey",
}
local key_pair_asym = {
    [0x1] = "RSA2048", [0x2] = "RSA3072", [0x4] = "RSA4096", [0x8] = "ECC256",
    [0x10] = "ECC384", [0x20] = "ECC521", [0x40] = "SM2", [0x80] = "Ed25519",
    [0x100] = "Ed448",
}

local spdm_errors = {
    [0x01] = "InvalidRequest", [0x03] = "Busy", [0x04] = "UnexpectedRequest",
    [0x05] = "Unspecified", [0x06] = "DecryptError", [0x07] = "UnsupportedRequest",
    [0x08] = "RequestInFlight", [0x09] = "InvalidResponseCode",
    [0x0A] = "SessionLimitExceeded", [0x0B] = "SessionRequired", [0x0C] = "ResetRequired",
    [0x0D] = "ResponseTooLarge", [0x0E] = "RequestTooLarge", [0x0F] = "LargeResponse",
    [0x10] = "MessageLost", [0x11] = "InvalidPolicy", [0x41] = "VersionMismatch",
    [0x42] = "ResponseNotReady", [0x43] = "RequestResynch", [0x44] = "OperationFailed",
    [0x45] = "NoPendingRequests", [0xFF] = "VendorDefined",
}

local base_asym = {
    [0x1] = "RSASSA_2048", [0x2] = "RSAPSS_2048", [0x4] = "RSASSA_3072",
    [0x8] = "RSAPSS_3072", [0x10] = "ECDSA_P256", [0x20] = "RSASSA_4096",
    [0x40] = "RSAPSS_4096", [0x80] = "ECDSA_P384", [0x100] = "ECDSA_P521",
    [0x200] = "SM2_P256", [0x400] = "EDDSA_25519", [0x800] = "EDDSA_448",
}
local base_hash = {
    [0x1] = "SHA_256", [0x2] = "SHA_384", [0x4] = "SHA_512", [0x8] = "SHA3_256",
    [0x10] = "SHA3_384", [0x20] = "SHA3_512", [0x40] = "SM3_256",
}

-- SPDM 1.4 (DSP0274 1.4 §10.4): PqcAsymAlgo / PqcAsymSel and the KEMAlg AlgStruct.
local pqc_asym = {
    [0x1] = "ML_DSA_44", [0x2] = "ML_DSA_65", [0x4] = "ML_DSA_87",
    [0x8] = "SLH_DSA_SHA2_128S", [0x10] = "SLH_DSA_SHAKE_128S", [0x20] = "SLH_DSA_SHA2_128F",
    [0x40] = "SLH_DSA_SHAKE_128F", [0x80] = "SLH_DSA_SHA2_192S", [0x100] = "SLH_DSA_SHAKE_192S",
    [0x200] = "SLH_DSA_SHA2_192F", [0x400] = "SLH_DSA_SHAKE_192F",
    [0x800] = "SLH_DSA_SHA2_256S", [0x1000] = "SLH_DSA_SHAKE_256S",
    [0x2000] = "SLH_DSA_SHA2_256F", [0x4000] = "SLH_DSA_SHAKE_256F",
}
local kem_alg = { [0x1] = "ML_KEM_512", [0x2] = "ML_KEM_768", [0x4] = "ML_KEM_1024" }
local dhe_group = {
    [0x1] = "FFDHE_2048", [0x2] = "FFDHE_3072", [0x4] = "FFDHE_4096", [0x8] = "SECP256R1",
    [0x10] = "SECP384R1", [0x20] = "SECP521R1", [0x40] = "SM2_P256",
}

local pcisig_protocols = { [0] = "IDE_KM", [1] = "TDISP" }

local idekm_objects = {
    [0] = "QUERY", [1] = "QUERY_RESP", [2] = "KEY_PROG", [3] = "KP_ACK",
    [4] = "K_SET_GO", [5] = "K_SET_STOP", [6] = "K_GOSTOP_ACK",
}
local kp_ack_status = {
    [0] = "SUCCESS", [1] = "INCORRECT_LENGTH", [2] = "UNSUPPORTED_PORT_INDEX",
    [3] = "UNSUPPORTED_VALUE", [4] = "UNSPECIFIED_FAILURE",
}
local sub_streams = { [0] = "PR", [1] = "NPR", [2] = "CPL" }

local tdisp_messages = {
    [0x81] = "GET_TDISP_VERSION", [0x82] = "GET_TDISP_CAPABILITIES",
    [0x83] = "LOCK_INTERFACE_REQUEST", [0x84] = "GET_DEVICE_INTERFACE_REPORT",
    [0x85] = "GET_DEVICE_INTERFACE_STATE", [0x86] = "START_INTERFACE_REQUEST",
    [0x87] = "STOP_INTERFACE_REQUEST", [0x88] = "BIND_P2P_STREAM_REQUEST",
    [0x89] = "UNBIND_P2P_STREAM_REQUEST", [0x8A] = "SET_MMIO_ATTRIBUTE_REQUEST",
    [0x8B] = "VDM_REQUEST",
    [0x01] = "TDISP_VERSION", [0x02] = "TDISP_CAPABILITIES",
    [0x03] = "LOCK_INTERFACE_RESPONSE", [0x04] = "DEVICE_INTERFACE_REPORT",
    [0x05] = "DEVICE_INTERFACE_STATE", [0x06] = "START_INTERFACE_RESPONSE",
    [0x07] = "STOP_INTERFACE_RESPONSE", [0x08] = "BIND_P2P_STREAM_RESPONSE",
    [0x09] = "UNBIND_P2P_STREAM_RESPONSE", [0x0A] = "SET_MMIO_ATTRIBUTE_RESPONSE",
    [0x0B] = "VDM_RESPONSE", [0x7F] = "TDISP_ERROR",
}
local tdi_states = { [0] = "CONFIG_UNLOCKED", [1] = "CONFIG_LOCKED", [2] = "RUN", [3] = "ERROR" }
local tdisp_errors = {
    [0x0001] = "INVALID_REQUEST", [0x0003] = "BUSY", [0x0004] = "INVALID_INTERFACE_STATE",
    [0x0005] = "UNSPECIFIED", [0x0007] = "UNSUPPORTED_REQUEST", [0x0041] = "VERSION_MISMATCH",
    [0x00FF] = "VENDOR_SPECIFIC_ERROR", [0x0101] = "INVALID_INTERFACE",
    [0x0102] = "INVALID_NONCE", [0x0103] = "INSUFFICIENT_ENTROPY",
    [0x0104] = "INVALID_DEVICE_CONFIGURATION",
}

local function version_text(v)
    return string.format("%d.%d", rshift(v, 4), band(v, 0xF))
end

local function flag_names(names, value)
    local out = {}
    local bits = {}
    for b in pairs(names) do bits[#bits + 1] = b end
    table.sort(bits)
    for _, b in ipairs(bits) do
        if band(value, b) ~= 0 then out[#out + 1] = names[b] end
    end
    return #out > 0 and table.concat(out, "|") or string.format("0x%x", value)
end

-- ---- protocols and fields --------------------------------------------------------------

local p_doe = Proto("doe", "PCI Data Object Exchange")
local p_spdm = Proto("spdm", "SPDM")
local p_sec = Proto("spdm_secured", "SPDM secured message (DSP0277)")
local p_idekm = Proto("idekm", "IDE Key Management")
local p_tdisp = Proto("tdisp", "TDISP")

local f = {
    doe_vendor = ProtoField.uint16("doe.vendor_id", "Vendor ID", base.HEX),
    doe_type = ProtoField.uint8("doe.type", "Data Object Type", base.DEC, doe_types),
    doe_length = ProtoField.uint32("doe.length", "Length (DW)", base.DEC, nil, 0x3FFFF),
    doe_index = ProtoField.uint8("doe.discovery.index", "Index"),
    doe_version = ProtoField.uint8("doe.discovery.version", "Version"),
    doe_next = ProtoField.uint8("doe.discovery.next_index", "Next Index"),
    doe_proto_vendor = ProtoField.uint16("doe.discovery.vendor_id", "Protocol Vendor ID",
                                         base.HEX),
    doe_proto_type = ProtoField.uint8("doe.discovery.type", "Protocol", base.DEC, doe_types),

    version = ProtoField.string("spdm.version", "SPDMVersion"),
    code = ProtoField.uint8("spdm.code", "RequestResponseCode", base.HEX, spdm_codes),
    name = ProtoField.string("spdm.message", "Message"),
    param1 = ProtoField.uint8("spdm.param1", "Param1", base.HEX),
    param2 = ProtoField.uint8("spdm.param2", "Param2", base.HEX),
    version_entry = ProtoField.string("spdm.version_entry", "VersionNumberEntry"),
    ct_exponent = ProtoField.uint8("spdm.ct_exponent", "CTExponent"),
    cap_flags = ProtoField.uint32("spdm.capabilities", "Flags", base.HEX),
    asym_sel = ProtoField.string("spdm.base_asym_sel", "BaseAsymSel"),
    hash_sel = ProtoField.string("spdm.base_hash_sel", "BaseHashSel"),
    pqc_asym_sel = ProtoField.string("spdm.pqc_asym_sel", "PqcAsymSel"),
    dhe_sel = ProtoField.string("spdm.dhe_sel", "DHE"),
    kem_sel = ProtoField.string("spdm.kem_sel", "KEMAlg"),
    chunk_handle = ProtoField.uint8("spdm.chunk.handle", "Handle"),
    chunk_seq = ProtoField.uint32("spdm.chunk.seq_no", "ChunkSeqNo"),
    chunk_size = ProtoField.uint32("spdm.chunk.size", "ChunkSize"),
    chunk_large = ProtoField.uint32("spdm.chunk.large_message_size", "LargeMessageSize"),
    chunk_last = ProtoField.bool("spdm.chunk.last", "LastChunk"),
    slot = ProtoField.uint8("spdm.slot_id", "SlotID"),
    -- 16 bits in GET_CERTIFICATE / CERTIFICATE, 32 in the MEL messages.
    offset = ProtoField.uint32("spdm.offset", "Offset", base.HEX),
    length = ProtoField.uint32("spdm.length", "Length", base.HEX),
    portion = ProtoField.uint32("spdm.portion_length", "PortionLength", base.HEX),
    remainder = ProtoField.uint32("spdm.remainder_length", "RemainderLength", base.HEX),
    meas_summary = ProtoField.uint8("spdm.meas_summary_type", "MeasurementSummaryHashType",
                                    base.HEX),
    heartbeat = ProtoField.uint8("spdm.heartbeat_period", "HeartbeatPeriod (s)"),
    key_update_op = ProtoField.uint8("spdm.key_update.operation", "KeyOperation", base.DEC,
                                     key_update_ops),
    key_update_tag = ProtoField.uint8("spdm.key_update.tag", "Tag", base.HEX),
    end_session_clear = ProtoField.bool("spdm.end_session.clear_negotiated_state",
                                        "NegotiatedStateClearingIndicator"),
    psk_hint_length = ProtoField.uint16("spdm.psk.hint_length", "PSKHint length (P)"),
    context_length = ProtoField.uint16("spdm.context_length", "Context length"),
    opaque_length = ProtoField.uint16("spdm.opaque_length", "OpaqueDataLength"),
    key_pair_id = ProtoField.uint8("spdm.key_pair_id", "KeyPairID"),
    total_key_pairs = ProtoField.uint8("spdm.key_pair.total", "TotalKeyPairs"),
    kp_caps = ProtoField.string("spdm.key_pair.capabilities", "Capabilities"),
    kp_usage_caps = ProtoField.string("spdm.key_pair.key_usage_capabilities",
                                      "KeyUsageCapabilities"),
    kp_usage = ProtoField.string("spdm.key_pair.current_key_usage", "CurrentKeyUsage"),
    kp_asym_caps = ProtoField.string("spdm.key_pair.asym_algo_capabilities",
                                     "AsymAlgoCapabilities"),
    kp_asym = ProtoField.string("spdm.key_pair.current_asym_algo", "CurrentAsymAlgo"),
    kp_pubkey_len = ProtoField.uint16("spdm.key_pair.public_key_info_length",
                                      "PublicKeyInfoLen"),
    kp_slots = ProtoField.uint8("spdm.key_pair.assoc_cert_slot_mask", "AssocCertSlotMask",
                                base.HEX),
    kp_op = ProtoField.uint8("spdm.key_pair.operation", "Operation", base.DEC, key_pair_ops),
    cert_model = ProtoField.uint8("spdm.cert_model", "CertModel", base.DEC, cert_models),
    csr_tag = ProtoField.uint8("spdm.csr.tracking_tag", "CSRTrackingTag"),
    csr_overwrite = ProtoField.bool("spdm.csr.overwrite", "Overwrite"),
    csr_info_length = ProtoField.uint16("spdm.csr.requester_info_length",
                                        "RequesterInfoLength"),
    csr_length = ProtoField.uint16("spdm.csr.length", "CSRLength"),
    cert_erase = ProtoField.bool("spdm.set_certificate.erase", "Erase"),
    cert_chain_length = ProtoField.uint16("spdm.cert_chain_length", "CertChain Length"),
    ep_subcode = ProtoField.uint8("spdm.endpoint_info.sub_code", "SubCode", base.HEX,
                                  ep_info_subcodes),
    ep_signed = ProtoField.bool("spdm.endpoint_info.signature_requested",
                                "SignatureRequested"),
    ep_length = ProtoField.uint32("spdm.endpoint_info.length", "EPInfoLength"),
    blocks = ProtoField.uint8("spdm.measurement_blocks", "NumberOfBlocks"),
    req_session = ProtoField.uint16("spdm.req_session_id", "ReqSessionID", base.HEX),
    rsp_session = ProtoField.uint16("spdm.rsp_session_id", "RspSessionID", base.HEX),
    session = ProtoField.uint32("spdm.session_id", "Session ID", base.HEX),
    error = ProtoField.uint8("spdm.error", "ErrorCode", base.HEX, spdm_errors),
    error_data = ProtoField.uint8("spdm.error_data", "ErrorData", base.HEX),
    standard_id = ProtoField.uint16("spdm.vendor.standard_id", "StandardID", base.HEX),
    vendor_id = ProtoField.uint16("spdm.vendor.vendor_id", "VendorID", base.HEX),
    vendor_length = ProtoField.uint16("spdm.vendor.payload_length", "Length"),
    protocol_id = ProtoField.uint8("spdm.vendor.protocol_id", "ProtocolID", base.DEC,
                                   pcisig_protocols),

    sec_session = ProtoField.uint32("spdm_secured.session_id", "SessionID", base.HEX),
    sec_length = ProtoField.uint16("spdm_secured.length", "Length"),
    sec_decrypted = ProtoField.bool("spdm_secured.decrypted", "Decrypted"),
    sec_app_length = ProtoField.uint16("spdm_secured.app_data_length",
                                       "ApplicationDataLength"),
    sec_data = ProtoField.bytes("spdm_secured.encrypted", "Encrypted data"),
    sec_mac = ProtoField.bytes("spdm_secured.mac", "MAC"),

    ide_object = ProtoField.uint8("idekm.object_id", "Object ID", base.HEX, idekm_objects),
    ide_name = ProtoField.string("idekm.object", "Object"),
    ide_port = ProtoField.uint8("idekm.port_index", "PortIndex"),
    ide_stream = ProtoField.uint8("idekm.stream_id", "Stream ID"),
    ide_kss = ProtoField.uint8("idekm.key_sub_stream", "KeySet/Direction/SubStream",
                               base.HEX),
    ide_key_set = ProtoField.uint8("idekm.key_set", "Key Set", base.DEC, nil, 0x01),
    ide_direction = ProtoField.uint8("idekm.direction", "Direction", base.DEC,
                                     { [0] = "RX", [1] = "TX" }, 0x02),
    ide_sub_stream = ProtoField.uint8("idekm.sub_stream", "Sub-stream", base.DEC,
                                      sub_streams, 0xF0),
    ide_status = ProtoField.uint8("idekm.status", "Status", base.DEC, kp_ack_status),
    ide_dev_func = ProtoField.uint8("idekm.dev_func", "Dev/Func", base.HEX),
    ide_bus = ProtoField.uint8("idekm.bus", "Bus", base.HEX),
    ide_segment = ProtoField.uint8("idekm.segment", "Segment"),
    ide_max_port = ProtoField.uint8("idekm.max_port_index", "MaxPortIndex"),
    ide_key = ProtoField.bytes("idekm.key", "Key"),
    ide_ifv = ProtoField.bytes("idekm.ifv", "IFV"),

    tdisp_version = ProtoField.string("tdisp.version", "TDISPVersion"),
    tdisp_type = ProtoField.uint8("tdisp.message_type", "MessageType", base.HEX,
                                  tdisp_messages),
    tdisp_name = ProtoField.string("tdisp.message", "Message"),
    tdisp_function = ProtoField.uint32("tdisp.function_id", "INTERFACE_ID Function ID",
                                       base.HEX),
    tdisp_bdf = ProtoField.string("tdisp.tdi", "TDI (Requester ID)"),
    tdisp_state = ProtoField.uint8("tdisp.tdi_state", "TDI_STATE", base.DEC, tdi_states),
    tdisp_flags = ProtoField.uint16("tdisp.lock_flags", "FLAGS", base.HEX),
    tdisp_stream = ProtoField.uint8("tdisp.default_stream_id", "DEFAULT_STREAM_ID"),
    tdisp_mmio_offset = ProtoField.uint64("tdisp.mmio_reporting_offset",
                                          "MMIO_REPORTING_OFFSET", base.HEX),
    tdisp_nonce = ProtoField.bytes("tdisp.nonce", "START_INTERFACE_NONCE"),
    tdisp_offset = ProtoField.uint16("tdisp.offset", "OFFSET", base.HEX),
    tdisp_length = ProtoField.uint16("tdisp.length", "LENGTH", base.HEX),
    tdisp_portion = ProtoField.uint16("tdisp.portion_length", "PORTION_LENGTH", base.HEX),
    tdisp_remainder = ProtoField.uint16("tdisp.remainder_length", "REMAINDER_LENGTH",
                                        base.HEX),
    tdisp_versions = ProtoField.string("tdisp.versions", "VERSION"),
    tdisp_error = ProtoField.uint32("tdisp.error_code", "ERROR_CODE", base.HEX, tdisp_errors),
    tdisp_error_data = ProtoField.uint32("tdisp.error_data", "ERROR_DATA", base.HEX),
}

p_doe.fields = { f.doe_vendor, f.doe_type, f.doe_length, f.doe_index, f.doe_version,
                 f.doe_next, f.doe_proto_vendor, f.doe_proto_type }
p_spdm.fields = { f.version, f.code, f.name, f.param1, f.param2, f.version_entry,
                  f.pqc_asym_sel, f.dhe_sel, f.kem_sel, f.chunk_handle, f.chunk_seq,
                  f.chunk_size, f.chunk_large, f.chunk_last,
                  f.ct_exponent, f.cap_flags, f.asym_sel, f.hash_sel, f.slot, f.offset,
                  f.length, f.portion, f.remainder, f.blocks, f.req_session, f.rsp_session,
                  f.session, f.error, f.error_data, f.standard_id, f.vendor_id,
                  f.vendor_length, f.protocol_id, f.meas_summary, f.heartbeat,
                  f.key_update_op, f.key_update_tag, f.end_session_clear,
                  f.psk_hint_length, f.context_length, f.opaque_length, f.key_pair_id,
                  f.total_key_pairs, f.kp_caps, f.kp_usage_caps, f.kp_usage, f.kp_asym_caps,
                  f.kp_asym, f.kp_pubkey_len, f.kp_slots, f.kp_op, f.cert_model, f.csr_tag,
                  f.csr_overwrite, f.csr_info_length, f.csr_length, f.cert_erase,
                  f.cert_chain_length, f.ep_subcode, f.ep_signed, f.ep_length }
p_sec.fields = { f.sec_session, f.sec_length, f.sec_decrypted, f.sec_app_length, f.sec_data,
                 f.sec_mac }
p_idekm.fields = { f.ide_object, f.ide_name, f.ide_port, f.ide_stream, f.ide_kss,
                   f.ide_key_set, f.ide_direction, f.ide_sub_stream, f.ide_status,
                   f.ide_dev_func, f.ide_bus, f.ide_segment, f.ide_max_port, f.ide_key,
                   f.ide_ifv }
p_tdisp.fields = { f.tdisp_version, f.tdisp_type, f.tdisp_name, f.tdisp_function,
                   f.tdisp_bdf, f.tdisp_state, f.tdisp_flags, f.tdisp_stream,
                   f.tdisp_mmio_offset, f.tdisp_nonce, f.tdisp_offset, f.tdisp_length,
                   f.tdisp_portion, f.tdisp_remainder, f.tdisp_versions, f.tdisp_error,
                   f.tdisp_error_data }

local frame_comment = Field.new("frame.comment")

-- Session IDs are made of two halves (KEY_EXCHANGE's ReqSessionID, KEY_EXCHANGE_RSP's
-- RspSessionID): the pending half is kept across frames, the result per frame, so a
-- second pass (Wireshark re-dissects on every click) shows the same thing.
local pending_req_session = nil
local session_of_frame = {}
-- The session whose handshake is under way, for FINISH / FINISH_RSP sent in the clear
-- (HANDSHAKE_IN_THE_CLEAR_CAP): no record names it.
local handshake_session = nil
-- ENDPOINT_INFO carries a Nonce only when its request asked for a signature.
local pending_ep_signed = false
local ep_signed_of_frame = {}
-- CHUNK_SEND / CHUNK_RESPONSE reassembly (first pass): the chunks so far per
-- (code, handle), and for the frame carrying the last chunk the whole large message.
local chunks = {}
local large_of_frame = {}

function p_doe.init()
    pending_req_session = nil
    session_of_frame = {}
    handshake_session = nil
    pending_ep_signed = false
    ep_signed_of_frame = {}
    chunks = {}
    large_of_frame = {}
end

-- ---- TDISP -------------------------------------------------------------------------------

local function dissect_tdisp(buf, pinfo, tree, prefix)
    local t = tree:add(p_tdisp, buf())
    if buf:len() < 16 then
        t:add_expert_info(PI_MALFORMED, PI_ERROR, "TDISP header needs 16 bytes")
        return
    end
    local mtype = buf(1, 1):uint()
    local name = tdisp_messages[mtype] or string.format("0x%02x", mtype)
    local fid = buf(4, 4):le_uint()
    local rid = band(fid, 0xFFFF)
    local bdf = string.format("%02x:%02x.%d", rshift(rid, 8), rshift(band(rid, 0xFF), 3),
                              band(rid, 7))
    t:add(f.tdisp_version, buf(0, 1), version_text(buf(0, 1):uint()))
    t:add(f.tdisp_type, buf(1, 1))
    t:add(f.tdisp_name, buf(1, 1), name)
    t:add_le(f.tdisp_function, buf(4, 4))
    t:add(f.tdisp_bdf, buf(4, 2), bdf)
    local info = "TDISP " .. name .. " tdi=" .. bdf
    local body = buf:len() > 16 and buf(16) or nil
    if mtype == 0x83 and body and body:len() >= 20 then
        t:add_le(f.tdisp_flags, body(0, 2))
        t:add(f.tdisp_stream, body(2, 1))
        t:add_le(f.tdisp_mmio_offset, body(4, 8))
        info = info .. " stream=" .. body(2, 1):uint()
    elseif (mtype == 0x03 or mtype == 0x86) and body and body:len() >= 32 then
        t:add(f.tdisp_nonce, body(0, 32))
    elseif mtype == 0x84 and body and body:len() >= 4 then
        t:add_le(f.tdisp_offset, body(0, 2))
        t:add_le(f.tdisp_length, body(2, 2))
    elseif mtype == 0x04 and body and body:len() >= 4 then
        t:add_le(f.tdisp_portion, body(0, 2))
        t:add_le(f.tdisp_remainder, body(2, 2))
    elseif mtype == 0x05 and body and body:len() >= 1 then
        local state = body(0, 1):uint()
        t:add(f.tdisp_state, body(0, 1))
        info = info .. " state=" .. (tdi_states[state] or tostring(state))
    elseif mtype == 0x01 and body and body:len() >= 1 then
        local n = body(0, 1):uint()
        local versions = {}
        for i = 1, math.min(n, body:len() - 1) do
            versions[#versions + 1] = version_text(body(i, 1):uint())
        end
        t:add(f.tdisp_versions, body(), table.concat(versions, ","))
        info = info .. " versions=" .. table.concat(versions, ",")
    elseif mtype == 0x7F and body and body:len() >= 8 then
        local code = body(0, 4):le_uint()
        t:add_le(f.tdisp_error, body(0, 4))
        t:add_le(f.tdisp_error_data, body(4, 4))
        info = info .. " " .. (tdisp_errors[code] or string.format("0x%x", code))
        t:add_expert_info(PI_RESPONSE_CODE, PI_WARN, "TDISP_ERROR")
    end
    t:append_text(": " .. name)
    pinfo.cols.protocol:set("TDISP")
    pinfo.cols.info:set(prefix .. info)
end

-- ---- IDE_KM ------------------------------------------------------------------------------

local function add_slot(t, buf)
    -- From the Object ID: Reserved(2) Stream ID(1) Reserved or Status(1)
    -- KeySet/Direction/SubStream(1) PortIndex(1)
    t:add(f.ide_stream, buf(3, 1))
    local kss = t:add(f.ide_kss, buf(5, 1))
    kss:add(f.ide_key_set, buf(5, 1))
    kss:add(f.ide_direction, buf(5, 1))
    kss:add(f.ide_sub_stream, buf(5, 1))
    t:add(f.ide_port, buf(6, 1))
    local v = buf(5, 1):uint()
    return string.format(" stream=%d K%d %s %s", buf(3, 1):uint(), band(v, 1),
                         band(v, 2) ~= 0 and "TX" or "RX",
                         sub_streams[rshift(v, 4)] or tostring(rshift(v, 4)))
end

local function dissect_idekm(buf, pinfo, tree, prefix)
    local t = tree:add(p_idekm, buf())
    if buf:len() < 2 then return end
    local obj = buf(1, 1):uint()
    local name = idekm_objects[obj] or string.format("0x%02x", obj)
    t:add(f.ide_object, buf(1, 1))
    t:add(f.ide_name, buf(1, 1), name)
    local info = "IDE_KM " .. name
    local rest = buf(1)  -- from the object ID on, as the PCIe tables count it
    if (obj == 0 or obj == 1) and rest:len() >= 3 then
        t:add(f.ide_port, rest(2, 1))
        info = info .. " port=" .. rest(2, 1):uint()
        if obj == 1 and rest:len() >= 7 then
            t:add(f.ide_dev_func, rest(3, 1))
            t:add(f.ide_bus, rest(4, 1))
            t:add(f.ide_segment, rest(5, 1))
            t:add(f.ide_max_port, rest(6, 1))
        end
    elseif obj >= 2 and rest:len() >= 7 then
        info = info .. add_slot(t, rest)
        if obj == 3 then
            local status = rest(4, 1):uint()
            t:add(f.ide_status, rest(4, 1))
            info = info .. " status=" .. (kp_ack_status[status] or tostring(status))
            if status ~= 0 then
                t:add_expert_info(PI_RESPONSE_CODE, PI_WARN, "KP_ACK failure")
            end
        elseif obj == 2 and rest:len() >= 7 + 32 + 8 then
            -- As on the wire: each DW of the key and IFV byte-swapped (§6.33.3).
            t:add(f.ide_key, rest(7, 32))
            t:add(f.ide_ifv, rest(39, 8))
        end
    end
    t:append_text(": " .. name)
    pinfo.cols.protocol:set("IDE_KM")
    pinfo.cols.info:set(prefix .. info)
end

-- ---- SPDM --------------------------------------------------------------------------------

local function dissect_vendor(buf, pinfo, t, prefix, name)
    -- StandardID u16, Len u8, VendorID[Len], PayloadLength u16, payload (DSP0274 §10.17)
    if buf:len() < 7 then return name end
    t:add_le(f.standard_id, buf(4, 2))
    local vlen = buf(6, 1):uint()
    if vlen ~= 2 or buf:len() < 11 then return name end
    t:add_le(f.vendor_id, buf(7, 2))
    t:add_le(f.vendor_length, buf(9, 2))
    if buf(4, 2):le_uint() ~= 3 or buf(7, 2):le_uint() ~= PCI_SIG or buf:len() < 12 then
        return name .. " (not PCI-SIG)"
    end
    local payload = buf(11, math.min(buf(9, 2):le_uint(), buf:len() - 11))
    t:add(f.protocol_id, payload(0, 1))
    local protocol = payload(0, 1):uint()
    if protocol == 0 then
        dissect_idekm(payload:tvb(), pinfo, t, prefix)
        return nil
    elseif protocol == 1 and payload:len() > 1 then
        dissect_tdisp(payload(1):tvb(), pinfo, t, prefix)
        return nil
    end
    return name .. " PCI-SIG protocol " .. protocol
end

local function dissect_spdm(buf, pinfo, tree, prefix, session)
    local t = tree:add(p_spdm, buf())
    if buf:len() < 4 then
        t:add_expert_info(PI_MALFORMED, PI_ERROR, "SPDM header needs 4 bytes")
        return
    end
    local code = buf(1, 1):uint()
    local name = spdm_codes[code] or string.format("0x%02x", code)
    t:add(f.version, buf(0, 1), version_text(buf(0, 1):uint()))
    t:add(f.code, buf(1, 1))
    t:add(f.name, buf(1, 1), name)
    t:add(f.param1, buf(2, 1))
    t:add(f.param2, buf(3, 1))
    if session then t:add(f.session, session):set_generated() end
    local info = name
    local len = buf:len()
    if code == 0x04 and len >= 6 then  -- VERSION
        local entries = {}
        for i = 0, buf(5, 1):uint() - 1 do
            if 6 + 2 * i + 2 > len then break end
            local v = version_text(rshift(buf(6 + 2 * i, 2):le_uint(), 8))
            t:add(f.version_entry, buf(6 + 2 * i, 2), v)
            entries[#entries + 1] = v
        end
        info = info .. " " .. table.concat(entries, " ")
    elseif (code == 0x61 or code == 0xE1) and len >= 12 then  -- (GET_)CAPABILITIES
        t:add(f.ct_exponent, buf(5, 1))
        t:add_le(f.cap_flags, buf(8, 4))
    elseif code == 0x63 and len >= 20 then  -- ALGORITHMS
        local asym = flag_names(base_asym, buf(12, 4):le_uint())
        local hash = flag_names(base_hash, buf(16, 4):le_uint())
        t:add(f.asym_sel, buf(12, 4), asym)
        t:add(f.hash_sel, buf(16, 4), hash)
        local v14 = buf(0, 1):uint() >= 0x14
        if v14 and len >= 24 and buf(20, 4):le_uint() ~= 0 then  -- PqcAsymSel (1.4)
            asym = flag_names(pqc_asym, buf(20, 4):le_uint())
            t:add(f.pqc_asym_sel, buf(20, 4), asym)
        end
        info = info .. " asym=" .. asym .. " hash=" .. hash
        if len >= 36 then  -- AlgStructs after the extended algorithms
            local at = 36 + 4 * (buf(32, 1):uint() + buf(33, 1):uint())
            for _ = 1, buf(2, 1):uint() do
                if at + 4 > len then break end
                local atype, sel = buf(at, 1):uint(), buf(at + 2, 2):le_uint()
                if atype == 2 and sel ~= 0 then
                    t:add(f.dhe_sel, buf(at + 2, 2), flag_names(dhe_group, sel))
                    info = info .. " dhe=" .. flag_names(dhe_group, sel)
                elseif atype == 7 and sel ~= 0 and v14 then
                    t:add(f.kem_sel, buf(at + 2, 2), flag_names(kem_alg, sel))
                    info = info .. " kem=" .. flag_names(kem_alg, sel)
                end
                at = at + 4 + 4 * band(buf(at + 1, 1):uint(), 0xF)
            end
        end
    elseif (code == 0x85 or code == 0x06) and len >= 12 then  -- CHUNK_SEND / CHUNK_RESPONSE
        -- DSP0274 1.4: ChunkSeqNo u32; before, u16 then reserved u16.  Same offsets after.
        local v14 = buf(0, 1):uint() >= 0x14
        local seq = v14 and buf(4, 4):le_uint() or buf(4, 2):le_uint()
        local handle, size = buf(3, 1):uint(), buf(8, 4):le_uint()
        local last = band(buf(2, 1):uint(), 1) ~= 0
        t:add(f.chunk_handle, buf(3, 1))
        t:add(f.chunk_seq, v14 and buf(4, 4) or buf(4, 2), seq)
        t:add_le(f.chunk_size, buf(8, 4))
        t:add(f.chunk_last, buf(2, 1), last)
        local start = 12
        local key = code * 256 + handle
        if seq == 0 and len >= 16 then
            t:add_le(f.chunk_large, buf(12, 4))
            start = 16
            if not pinfo.visited then chunks[key] = ByteArray.new() end
        end
        info = string.format("%s handle=%d seq=%d size=%d%s", info, handle, seq, size,
                             last and " last" or "")
        if not pinfo.visited and chunks[key] and start + size <= len then
            chunks[key]:append(buf(start, size):bytes())
            if last then
                large_of_frame[pinfo.number] = chunks[key]
                chunks[key] = nil
            end
        end
        local whole = large_of_frame[pinfo.number]
        if whole then
            -- The large message the chunks carried, dissected as one SPDM message.
            dissect_spdm(whole:tvb("Reassembled SPDM message"), pinfo, tree,
                         prefix .. info .. ": ", session)
            return
        end
    elseif (code == 0x86 or code == 0x05) and len >= 6 then  -- CHUNK_GET / CHUNK_SEND_ACK
        local v14 = buf(0, 1):uint() >= 0x14
        t:add(f.chunk_handle, buf(3, 1))
        t:add(f.chunk_seq, v14 and buf(4, 4) or buf(4, 2),
              v14 and len >= 8 and buf(4, 4):le_uint() or buf(4, 2):le_uint())
        info = string.format("%s handle=%d", info, buf(3, 1):uint())
        local hdr = (code == 0x05 and v14) and 8 or 6
        if code == 0x05 and len >= hdr + 4 then  -- the response to the large request
            dissect_spdm(buf(hdr):tvb(), pinfo, tree, prefix .. info .. ": ", session)
            return
        end
    elseif code == 0x82 and len >= 8 then  -- GET_CERTIFICATE
        t:add(f.slot, buf(2, 1), band(buf(2, 1):uint(), 0xF))
        t:add_le(f.offset, buf(4, 2))
        t:add_le(f.length, buf(6, 2))
    elseif code == 0x02 and len >= 8 then  -- CERTIFICATE
        t:add(f.slot, buf(2, 1), band(buf(2, 1):uint(), 0xF))
        t:add_le(f.portion, buf(4, 2))
        t:add_le(f.remainder, buf(6, 2))
    elseif code == 0x60 and len >= 5 then  -- MEASUREMENTS
        t:add(f.blocks, buf(4, 1))
        info = info .. " blocks=" .. buf(4, 1):uint()
    elseif (code == 0xE4 or code == 0xE6) and len >= 6 then  -- KEY_EXCHANGE, PSK_EXCHANGE
        t:add(f.meas_summary, buf(2, 1))
        t:add_le(f.req_session, buf(4, 2))
        if code == 0xE4 then
            t:add(f.slot, buf(3, 1))
            info = info .. " slot=" .. buf(3, 1):uint()
        elseif len >= 12 then  -- P, R, OpaqueDataLength (DSP0274 1.3 Table 74)
            t:add_le(f.psk_hint_length, buf(6, 2))
            t:add_le(f.context_length, buf(8, 2))
            t:add_le(f.opaque_length, buf(10, 2))
            info = string.format("%s hint=%dB context=%dB", info, buf(6, 2):le_uint(),
                                 buf(8, 2):le_uint())
        end
        if not pinfo.visited then pending_req_session = buf(4, 2):le_uint() end
    elseif (code == 0x64 or code == 0x66) and len >= 6 then  -- KEY_EXCHANGE_RSP, PSK_..._RSP
        t:add(f.heartbeat, buf(2, 1))
        t:add_le(f.rsp_session, buf(4, 2))
        if code == 0x66 and len >= 12 then  -- Q, OpaqueDataLength (Table 75)
            t:add_le(f.context_length, buf(8, 2))
            t:add_le(f.opaque_length, buf(10, 2))
        end
        if not pinfo.visited and pending_req_session then
            session_of_frame[pinfo.number] = buf(4, 2):le_uint() * 65536 + pending_req_session
            handshake_session = session_of_frame[pinfo.number]
            pending_req_session = nil
        end
        local sid = session_of_frame[pinfo.number]
        if sid then
            t:add(f.session, sid):set_generated()
            info = info .. string.format(" session=0x%08x", sid)
        end
        if buf(2, 1):uint() ~= 0 then
            info = info .. " heartbeat=" .. buf(2, 1):uint() .. "s"
        end
    elseif (code == 0xE5 or code == 0x65) and not session then  -- FINISH(_RSP) in the clear
        if not pinfo.visited then
            session_of_frame[pinfo.number] = handshake_session
            if code == 0x65 then handshake_session = nil end
        end
        local sid = session_of_frame[pinfo.number]
        if sid then
            t:add(f.session, sid):set_generated()
            info = info .. string.format(" session=0x%08x (in the clear)", sid)
        end
    elseif code == 0xE9 or code == 0x69 then  -- KEY_UPDATE, KEY_UPDATE_ACK
        local op = buf(2, 1):uint()
        t:add(f.key_update_op, buf(2, 1))
        t:add(f.key_update_tag, buf(3, 1))
        info = string.format("%s %s tag=0x%02x", info, key_update_ops[op] or tostring(op),
                             buf(3, 1):uint())
    elseif code == 0xEC then  -- END_SESSION: Param1 bit 0, Negotiated State Clearing
        local clear = band(buf(2, 1):uint(), 1) ~= 0
        t:add(f.end_session_clear, buf(2, 1), clear)
        if clear then info = info .. " clear-negotiated-state" end
    elseif code == 0xED and len >= 8 then  -- GET_CSR
        if buf(0, 1):uint() >= 0x13 then  -- Param1 KeyPairID, Param2 RequestAttributes
            local attr = buf(3, 1):uint()
            t:add(f.key_pair_id, buf(2, 1))
            t:add(f.cert_model, buf(3, 1), band(attr, 7))
            t:add(f.csr_tag, buf(3, 1), band(rshift(attr, 3), 7))
            t:add(f.csr_overwrite, buf(3, 1), band(attr, 0x80) ~= 0)
            info = string.format("%s key_pair=%d model=%s", info, buf(2, 1):uint(),
                                 cert_models[band(attr, 7)] or tostring(band(attr, 7)))
        end
        t:add_le(f.csr_info_length, buf(4, 2))
        t:add_le(f.opaque_length, buf(6, 2))
    elseif code == 0x6D and len >= 6 then  -- CSR
        t:add_le(f.csr_length, buf(4, 2))
        info = info .. " " .. buf(4, 2):le_uint() .. " bytes"
    elseif code == 0xEE or code == 0x6E then  -- SET_CERTIFICATE(_RSP): Param1 bits 3:0 SlotID
        local p1 = buf(2, 1):uint()
        t:add(f.slot, buf(2, 1), band(p1, 0xF))
        info = info .. " slot=" .. band(p1, 0xF)
        if code == 0xEE and buf(0, 1):uint() >= 0x13 then  -- 6:4 CertModel, 7 Erase; KeyPairID
            t:add(f.cert_model, buf(2, 1), band(rshift(p1, 4), 7))
            t:add(f.cert_erase, buf(2, 1), band(p1, 0x80) ~= 0)
            t:add(f.key_pair_id, buf(3, 1))
            if band(p1, 0x80) ~= 0 then info = info .. " erase" end
        end
        if code == 0xEE and len >= 6 then
            t:add_le(f.cert_chain_length, buf(4, 2))
        end
    elseif code == 0xFC and len >= 5 then  -- GET_KEY_PAIR_INFO
        t:add(f.key_pair_id, buf(4, 1))
        info = info .. " key_pair=" .. buf(4, 1):uint()
    elseif code == 0x7C and len >= 23 then  -- KEY_PAIR_INFO
        t:add(f.total_key_pairs, buf(4, 1))
        t:add(f.key_pair_id, buf(5, 1))
        t:add(f.kp_caps, buf(6, 2), flag_names(key_pair_caps, buf(6, 2):le_uint()))
        t:add(f.kp_usage_caps, buf(8, 2), flag_names(key_usages, buf(8, 2):le_uint()))
        t:add(f.kp_usage, buf(10, 2), flag_names(key_usages, buf(10, 2):le_uint()))
        t:add(f.kp_asym_caps, buf(12, 4), flag_names(key_pair_asym, buf(12, 4):le_uint()))
        t:add(f.kp_asym, buf(16, 4), flag_names(key_pair_asym, buf(16, 4):le_uint()))
        t:add_le(f.kp_pubkey_len, buf(20, 2))
        t:add(f.kp_slots, buf(22, 1))
        info = string.format("%s key_pair=%d/%d usage=%s slots=0x%02x", info,
                             buf(5, 1):uint(), buf(4, 1):uint(),
                             flag_names(key_usages, buf(10, 2):le_uint()), buf(22, 1):uint())
    elseif code == 0xFD and len >= 5 then  -- SET_KEY_PAIR_INFO
        t:add(f.kp_op, buf(2, 1))
        t:add(f.key_pair_id, buf(4, 1))
        if len >= 13 then  -- Reserved, DesiredKeyUsage, DesiredAsymAlgo, DesiredAssocCertSlotMask
            t:add(f.kp_usage, buf(6, 2), flag_names(key_usages, buf(6, 2):le_uint()))
            t:add(f.kp_asym, buf(8, 4), flag_names(key_pair_asym, buf(8, 4):le_uint()))
            t:add(f.kp_slots, buf(12, 1))
        end
        info = string.format("%s %s key_pair=%d",
                             info, key_pair_ops[buf(2, 1):uint()] or tostring(buf(2, 1):uint()),
                             buf(4, 1):uint())
    elseif code == 0xEF and len >= 12 then  -- GET_MEASUREMENT_EXTENSION_LOG
        t:add_le(f.offset, buf(4, 4))
        t:add_le(f.length, buf(8, 4))
        info = string.format("%s offset=%d length=%d", info, buf(4, 4):le_uint(),
                             buf(8, 4):le_uint())
    elseif code == 0x6F and len >= 12 then  -- MEASUREMENT_EXTENSION_LOG
        t:add_le(f.portion, buf(4, 4))
        t:add_le(f.remainder, buf(8, 4))
        info = string.format("%s portion=%d remainder=%d", info, buf(4, 4):le_uint(),
                             buf(8, 4):le_uint())
    elseif code == 0x87 and len >= 5 then  -- GET_ENDPOINT_INFO
        local signed = band(buf(4, 1):uint(), 1) ~= 0
        t:add(f.ep_subcode, buf(2, 1))
        t:add(f.slot, buf(3, 1), band(buf(3, 1):uint(), 0xF))
        t:add(f.ep_signed, buf(4, 1), signed)
        if not pinfo.visited then pending_ep_signed = signed end
        info = info .. " " .. (ep_info_subcodes[buf(2, 1):uint()] or "?")
        if signed then info = info .. " signed slot=" .. band(buf(3, 1):uint(), 0xF) end
    elseif code == 0x07 and len >= 8 then  -- ENDPOINT_INFO: Nonce only when signed
        if not pinfo.visited then
            ep_signed_of_frame[pinfo.number] = pending_ep_signed
            pending_ep_signed = false
        end
        local at = ep_signed_of_frame[pinfo.number] and 40 or 8
        t:add(f.slot, buf(3, 1), band(buf(3, 1):uint(), 0xF))
        if len >= at + 4 then
            t:add_le(f.ep_length, buf(at, 4))
            info = info .. " " .. buf(at, 4):le_uint() .. " bytes"
        end
        if ep_signed_of_frame[pinfo.number] then info = info .. " signed" end
    elseif code == 0x7F then  -- ERROR
        t:add(f.error, buf(2, 1))
        t:add(f.error_data, buf(3, 1))
        info = info .. " " .. (spdm_errors[buf(2, 1):uint()] or "?")
        t:add_expert_info(PI_RESPONSE_CODE, PI_WARN, "SPDM ERROR")
    elseif code == 0xFE or code == 0x7E then
        local shown = dissect_vendor(buf, pinfo, t, prefix, name)
        if not shown then  -- IDE_KM or TDISP has set the columns
            t:append_text(": " .. name)
            return
        end
        info = shown
    end
    t:append_text(": " .. name)
    pinfo.cols.protocol:set("SPDM")
    pinfo.cols.info:set(prefix .. info)
end

-- ---- secured messages ---------------------------------------------------------------------

local function is_decrypted()
    for _, c in ipairs({ frame_comment() }) do
        if tostring(c.value):find(DECRYPTED_COMMENT, 1, true) then return true end
    end
    return false
end

local function dissect_secured(buf, pinfo, tree)
    local t = tree:add(p_sec, buf())
    if buf:len() < 6 then
        t:add_expert_info(PI_MALFORMED, PI_ERROR, "secured message header needs 6 bytes")
        return
    end
    local sid = buf(0, 4):le_uint()
    t:add_le(f.sec_session, buf(0, 4))
    t:add_le(f.sec_length, buf(4, 2))
    local length = math.min(buf(4, 2):le_uint(), buf:len() - 6)
    local prefix = string.format("[secured 0x%08x] ", sid)
    if is_decrypted() and length >= 2 then
        t:add(f.sec_decrypted, true):set_generated()
        t:add_le(f.sec_app_length, buf(6, 2))
        local app = math.min(buf(6, 2):le_uint(), length - 2)
        t:append_text(string.format(", session 0x%08x, decrypted", sid))
        dissect_spdm(buf(8, app):tvb(), pinfo, tree, prefix, sid)
        return
    end
    t:add(f.sec_decrypted, false):set_generated()
    if length > MAC_SIZE then
        t:add(f.sec_data, buf(6, length - MAC_SIZE))
        t:add(f.sec_mac, buf(6 + length - MAC_SIZE, MAC_SIZE))
    end
    t:append_text(string.format(", session 0x%08x, encrypted", sid))
    pinfo.cols.protocol:set("SPDM")
    pinfo.cols.info:set(string.format("%sencrypted record, %d bytes", prefix, length))
end

-- ---- DOE ---------------------------------------------------------------------------------

local function looks_like_doe(buf)
    -- DW0: Vendor ID, type, reserved; DW1: length in DW (0 = 2^18), the whole object.
    if buf:len() < 8 or buf:len() % 4 ~= 0 then return false end
    local dw = band(buf(4, 4):le_uint(), 0x3FFFF)
    if dw == 0 then dw = 0x40000 end
    return dw * 4 == buf:len() and buf(3, 1):uint() == 0
end

local zboss = DissectorTable.get("wtap_encap"):get_dissector(wtap_encaps.ZBNCP)

function p_doe.dissector(buf, pinfo, tree)
    if not looks_like_doe(buf) then
        if zboss then return zboss:call(buf, pinfo, tree) end
        return 0
    end
    pinfo.cols.protocol:set("DOE")
    local t = tree:add(p_doe, buf(0, 8))
    local vendor = buf(0, 2):le_uint()
    local dtype = buf(2, 1):uint()
    t:add_le(f.doe_vendor, buf(0, 2))
    t:add(f.doe_type, buf(2, 1))
    t:add_le(f.doe_length, buf(4, 4))
    local payload = buf:len() > 8 and buf(8):tvb() or nil
    local name = vendor == PCI_SIG and doe_types[dtype] or string.format("%04x:%02x", vendor,
                                                                        dtype)
    t:append_text(": " .. name)
    pinfo.cols.info:set("DOE " .. name)
    if vendor ~= PCI_SIG or not payload then return buf:len() end
    if dtype == 1 then
        dissect_spdm(payload, pinfo, tree, "", nil)
    elseif dtype == 2 then
        dissect_secured(payload, pinfo, tree)
    elseif dtype == 0 and payload:len() >= 4 then
        -- A request carries (index, version); a response (vendor ID, type, next index).
        local d = t:add(p_doe, payload(), "Discovery")
        if payload(2, 2):le_uint() == 0 and payload(0, 2):le_uint() ~= PCI_SIG then
            d:add(f.doe_index, payload(0, 1))
            d:add(f.doe_version, payload(1, 1))
            pinfo.cols.info:set("DOE DISCOVERY index=" .. payload(0, 1):uint())
        else
            d:add_le(f.doe_proto_vendor, payload(0, 2))
            d:add(f.doe_proto_type, payload(2, 1))
            d:add(f.doe_next, payload(3, 1))
            pinfo.cols.info:set(string.format("DOE DISCOVERY_RSP %04x:%02x next=%d",
                                              payload(0, 2):le_uint(), payload(2, 1):uint(),
                                              payload(3, 1):uint()))
        end
    end
    return buf:len()
end

DissectorTable.get("wtap_encap"):add(wtap_encaps.ZBNCP, p_doe)
