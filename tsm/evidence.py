"""Evidence document pieces: plain JSON-serialisable dicts, never key material.

Schema of the document `TsmModel.evidence()` returns (all keys always present; values
null/empty until the step that fills them ran):

    schema            "vdev-tsm-evidence/1"
    device            {"dsm": "SSSS:BB:DD.F", "segment", "bus", "devfn"}
    state             "idle" | "connected"
    last_error        null | reason text of the last failed operation
    spdm              {"version": "1.2", "algorithms": {base_asym, base_hash, meas_hash,
                       dhe, aead, key_schedule, meas_spec, other_params: names},
                       "responder_capabilities": [flag names], "authentication":
                       "challenge" | "signed-measurements" | ...,
                       "session_id": "0x...." (most recent) | null, "session_state":
                       "established" | "ended" | "lost" | "abandoned" | null,
                       "heartbeat_period": int | null}
    certificates      [{"slot", "subject", "issuer", "serial", "not_before", "not_after",
                        "sha256", "sha384", "is_ca"}], root first
    measurements      [{"index", "type", "raw", "value"}]   (value hex, as reported)
    device_info       null | {"multi_key": bool, "key_pairs": [{"key_pair_id",
                       "capabilities", "key_usage": [names], "asym_algo": [names],
                       "assoc_cert_slots": [slots], "public_key_info": hex}],
                       "mel": {"entries": [{"mel_index", "meas_index", "type",
                       "value"}]}, "endpoint_info": {"identifiers": [{"svh_id",
                       "vendor_id", "sub_ids"}], "signed": bool}}  (what was read)
    policy            {"file": path | null, "verdicts": [{"index", "verdict", ...}]}
    ide               {"stream_id", "key_set", "port_index", "query": {...},
                       "device": {"slots": [{"direction","sub_stream","key_set","state"}]},
                       (slot state: "programmed" | "active" | "stopped" | "lost")
                       "root_port": {"stream_id","state","slots":[...],"history":[...]}}
    tdis              {"SSSS:BB:DD.F": {"interface_id": "0x...", "state": name,
                        "lock_flags": [names], "history": [{"t", "state", "reason"}],
                        "report": decoded report | null, "report_check": text | null}}
    log               [{"t", "phase", "event"}]    (step log of all operations)
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spdm.codes import KeyPairAsym, KeyUsage, RspCap
from spdm.identity import split_spdm_cert_chain
from spdm.measurements import RAW_BIT_STREAM_FLAG, MeasurementType, ParsedBlock
from tdisp.codes import PAGE_SIZE, InterfaceInfo, LockFlags, MmioAttr
from tdisp.interface_report import InterfaceReport

SCHEMA = "vdev-tsm-evidence/1"


def spdm_version(v: int) -> str | None:
    return f"{v >> 4}.{v & 0xF}" if v else None


def flag_names(cls: type[enum.IntFlag], value: int) -> list[str]:
    names = [str(f.name) for f in cls if f.value and value & f.value == f.value]
    rest = value & ~sum(int(f.value) for f in cls)
    if rest:
        names.append(f"0x{rest:x}")
    return names


def algorithms(a: Any) -> dict[str, Any]:
    names = a.names()
    # `asym` / `key_exchange` name whichever family signed and exchanged keys (SPDM 1.4:
    # ML-DSA / ML-KEM or the classical BaseAsym / DHE); the per-field names follow.
    return {
        **{k: names[k] for k in ("asym", "key_exchange", "base_asym", "pqc_asym", "base_hash",
                                 "meas_hash", "dhe", "kem", "aead", "key_schedule")},
        "meas_spec": a.meas_spec,
        "other_params": a.other_params,
    }


def capabilities(flags: int) -> list[str]:
    return flag_names(RspCap, flags)


def _utc(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).isoformat()


def certificates(chains: dict[int, bytes], hash_size: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for slot, chain in sorted(chains.items()):
        _root_hash, ders = split_spdm_cert_chain(chain, hash_size)
        for der in ders:
            cert = x509.load_der_x509_certificate(der)
            bc: Any = None
            with contextlib.suppress(x509.ExtensionNotFound):
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            out.append(
                {
                    "slot": slot,
                    "subject": cert.subject.rfc4514_string(),
                    "issuer": cert.issuer.rfc4514_string(),
                    "serial": f"{cert.serial_number:x}",
                    "not_before": _utc(cert.not_valid_before_utc),
                    "not_after": _utc(cert.not_valid_after_utc),
                    "sha256": hashlib.sha256(der).hexdigest(),
                    "sha384": hashlib.sha384(der).hexdigest(),
                    "is_ca": bool(bc is not None and bc.ca),
                }
            )
    return out


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def measurements(blocks: Iterable[ParsedBlock]) -> list[dict[str, Any]]:
    out = []
    for b in sorted(blocks, key=lambda b: b.index):
        vtype = b.value_type & ~RAW_BIT_STREAM_FLAG
        try:
            tname = MeasurementType(vtype).name
        except ValueError:
            tname = f"0x{vtype:02x}"
        out.append({"index": b.index, "type": tname, "raw": b.is_raw, "value": b.value.hex()})
    return out


def _type_name(vtype: int) -> str:
    try:
        return MeasurementType(vtype & ~RAW_BIT_STREAM_FLAG).name
    except ValueError:
        return f"0x{vtype:02x}"


def key_pair(info: Any) -> dict[str, Any]:
    """A KEY_PAIR_INFO (spdm.req_provisioning.KeyPairInfoResult)."""
    return {
        "key_pair_id": info.key_pair_id,
        "capabilities": info.capabilities,
        "key_usage": flag_names(KeyUsage, info.current_key_usage),
        "key_usage_capabilities": flag_names(KeyUsage, info.key_usage_capabilities),
        "asym_algo": flag_names(KeyPairAsym, info.current_asym_algo),
        "assoc_cert_slots": [s for s in range(8) if info.assoc_cert_slot_mask & (1 << s)],
        "public_key_info": info.public_key_info.hex(),
    }


def mel(data: bytes) -> dict[str, Any]:
    """A DMTF measurement extension log (spdm.mel)."""
    from spdm.mel import parse_mel

    try:
        entries = parse_mel(data)
    except ValueError as exc:
        return {"error": str(exc), "raw": data.hex()}
    return {"entries": [{"mel_index": e.mel_index, "meas_index": e.meas_index,
                         "type": _type_name(e.value_type), "value": e.value.hex()}
                        for e in entries]}


def endpoint_info(data: bytes) -> dict[str, Any]:
    """A DeviceClassIdentifier EPInfo (spdm.mel)."""
    from spdm.mel import parse_device_class_identifier

    try:
        ids = parse_device_class_identifier(data)
    except ValueError as exc:
        return {"error": str(exc), "raw": data.hex()}
    return {"identifiers": [{"svh_id": i.svh_id, "vendor_id": i.vendor_id.hex(),
                             "sub_ids": [x.hex() for x in i.sub_ids]} for i in ids]}


def report(r: InterfaceReport) -> dict[str, Any]:
    """The decoded DEVICE_INTERFACE_REPORT (PCIe 6.2 §11.3.11) with attribute names."""
    return {
        "interface_info": r.interface_info,
        "interface_info_flags": flag_names(InterfaceInfo, r.interface_info),
        "msix_message_control": r.msix_message_control,
        "lnr_control": r.lnr_control,
        "tph_control": r.tph_control,
        "mmio_ranges": [
            {
                "range_id": m.range_id,
                "first_page": f"0x{m.first_page:016x}",
                "number_of_pages": m.number_of_pages,
                "size": m.number_of_pages * PAGE_SIZE,
                "attributes": flag_names(MmioAttr, m.range_attributes) or ["TEE"],
            }
            for m in r.mmio_ranges
        ],
        "device_specific_info": r.device_specific_info.hex(),
    }


def lock_flags(flags: int) -> list[str]:
    return flag_names(LockFlags, flags)
