"""Device profile: the knobs that shape the emulated endpoint.

Every field has a documented default, so `DeviceProfile()` is a working
device.  A profile file is TOML with the same flat keys as the dataclass
fields, e.g.::

    vendor_id = 0x1DED        # TOML accepts hex integers
    device_id = 0x7E10
    msix_vectors = 16
    ide_selective_streams = 2

Unknown keys and bad values are rejected with `ProfileError`, whose message
names the key and the reason.

Security knobs (SPDM / TDISP, used by `vdev.endpoint.tee_device`):

  spdm_versions           "1.2,1.3"     SPDM versions offered in VERSION; TEE-IO needs
                                        >= 1.2 (tee-io-validator spdm_test.md), allowed
                                        1.0..1.4 (1.4: post-quantum algorithms)
  identity_key_type       "ecdsa-p384"  key type of the generated identity chain
                                        (spdm.identity.KEY_TYPES; mldsa-44/65/87 need 1.4)
  tdisp_policy            "default"     tdisp.policy.TdispPolicy.profile name: default,
                                        tee-io-validator, spdm-emu, spdm-rs
  firmware_version        "vdev 0.1.0"  measured as the VERSION block (raw string)
  firmware_digest         ""            hex digest measured as the firmware block;
                                        "" = SHA-384 of firmware_version
  spdm_data_transfer_size 4096          responder DataTransferSize, 42..4096: a DOE
                                        reply (8-byte header, 24-byte secured-record
                                        overhead, DW padding) must fit QEMU's 0x1200-byte
                                        spdm-socket buffer, and so must an MCTP one
                                        (2-byte sequence number, up to 32 random bytes)
  bus, devfn, segment     1, 0x00, 0    the function's Requester ID: TDISP INTERFACE_ID
                                        and IDE_KM QUERY_RESP.  vfio-user never tells a
                                        device its bus number (a real function learns it
                                        from Type 0 config writes), so it is configured;
                                        1/0 is where qemu-configs place the device
  flr_ends_spdm_sessions  false         FLR of the function also ends SPDM sessions
                                        (see vdev.endpoint.tdi_enforcement for why the default
                                        keeps them)
  spdm_capabilities       "default"     responder CAPABILITIES flags: "default" (the
                                        TEE-IO set, spdm.responder.DEFAULT_RSP_CAPS, as far
                                        as what is provisioned backs it), "all" (every flag
                                        the provisioned material backs) or a comma-separated
                                        list of spdm.codes.RspCap names (CERT,CHAL,...),
                                        checked against DSP0274's responder flag rules and,
                                        when the device is built, against what is
                                        provisioned (spdm.capabilities)
  spdm_heartbeat_period   60            HeartbeatPeriod in seconds (0..255) sent in
                                        KEY_EXCHANGE_RSP/PSK_EXCHANGE_RSP when the requester
                                        also sets HBEAT_CAP; a session silent for twice that
                                        is ended.  0: no HBEAT_CAP
  spdm_psks               ""            pre-shared keys, "HINT=KEY,..." (spdm.psk; text
                                        or hex:...); PSK_CAP only with one.  Prefer
                                        --psk-file for real keys
  identity_slots          1             certificate slots 0..N-1 generated, each with a
                                        key of its own under slot 0's intermediate (one
                                        trust anchor); SPDM 1.3 multi-key connections see
                                        them all, others only slot 0's key
  identity_writable       false         SET_CERTIFICATE may write the slots (kept in the
                                        state directory) and GET_CSR issues CSRs
  measurement_record      "standard"    "extended" adds immutable ROM, SVN, hash-extend
                                        (MEL), manifest and device-mode blocks
  measurement_log         false         the measurement extension log
                                        (GET_MEASUREMENT_EXTENSION_LOG); needs the
                                        extended record
  firmware_svn            1             the secure version number block (extended record)
  endpoint_info           false         GET_ENDPOINT_INFO DeviceClassIdentifier from the
                                        PCI IDs
  spdm_asym, spdm_hash,   ""            algorithm priority lists, strongest first, as
  spdm_meas_hash,                       comma-separated spdm.algorithms names (BaseAsym,
  spdm_dhe, spdm_aead                   BaseHash, MeasHash, Dhe, Aead); "" = everything
                                        we implement in our default order.  spdm_asym
                                        must include the identity key's algorithm
  spdm_pqc_asym, spdm_kem ""            SPDM 1.4 priority lists: PqcAsym names
                                        (ML_DSA_87,ML_DSA_65,ML_DSA_44) and Kem names
                                        (ML_KEM_1024,ML_KEM_768); "" = both we implement
  spdm_pqc_first          false         when the requester offers both families, select
                                        ML-KEM over DHE (and ML-DSA over BaseAsym)
  description             ""            free text; shown by `vdev ctl status`

Sections: a file may group keys under ``[pci]``, ``[doe]``, ``[ide]``, ``[spdm]``,
``[identity]``, ``[tdisp]``, ``[measurements]`` or ``[reset]`` (see `SECTIONS`);
a key inside a section keeps its flat name, so ``[spdm] spdm_versions = "1.2"``
equals the top-level ``spdm_versions = "1.2"``.  Sections only group: a key in
the wrong section, an unknown section or a key given twice is an error.  The
full schema with every key is in ``vdev/profiles/README.md``; shipped profiles
are ``vdev/profiles/*.toml``, loadable by name (`resolve_profile`).

IDs: 0x1DED / 0x7E10 are *emulator placeholders*.  PCI-SIG has no range
reserved for experiments; these values were picked to be recognisably ours
and were not checked against the PCI-SIG member list (no network here), so
anyone shipping this outside a test bed must override them with IDs they
own.  They are not 0xFFFF (no device) or 0x0000, which Linux treats as
absent, and not a well-known vendor such as Red Hat's 0x1B36 that QEMU uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pure modules (enums, rules, text parsing): loading a profile imports no crypto stack.
from spdm import psk
from spdm.algorithms import (
    SUPPORTED_KEM,
    SUPPORTED_PQC_ASYM,
    Aead,
    BaseAsym,
    BaseHash,
    Dhe,
    Kem,
    MeasHash,
    PqcAsym,
)
from spdm.capabilities import NEVER
from spdm.codes import RspCap
from spdm.errors import PskFormatError

PLACEHOLDER_VENDOR_ID = 0x1DED
PLACEHOLDER_DEVICE_ID = 0x7E10

MIN_BAR0_SIZE = 0x4000
SPDM_VERSION_NAMES = {"1.0": 0x10, "1.1": 0x11, "1.2": 0x12, "1.3": 0x13, "1.4": 0x14}
TDISP_POLICY_NAMES = ("default", "tee-io-validator", "spdm-emu", "spdm-rs")
# Same list as spdm.identity.KEY_TYPES; repeated so profiles load without the crypto stack.
IDENTITY_KEY_TYPES = ("ecdsa-p384", "ecdsa-p256", "ecdsa-p521", "rsa-2048", "rsa-3072",
                      "rsa-4096", "ed25519", "ed448", "mldsa-44", "mldsa-65", "mldsa-87")
MIN_DATA_TRANSFER_SIZE = 42  # DSP0274 1.2 MinDataTransferSize
MAX_DATA_TRANSFER_SIZE = 4096
MSIX_TABLE_OFFSET = 0x1000  # BAR0 layout, see vdev.endpoint.registers
PROFILES_DIR = Path(__file__).parent

# Which keys a section may hold (sections only group; key names stay flat).
#: measurement_record values (vdev.endpoint.measurements).
MEASUREMENT_RECORDS = ("standard", "extended")

SECTIONS: dict[str, tuple[str, ...]] = {
    "pci": ("vendor_id", "device_id", "subsystem_vendor_id", "subsystem_id", "class_code",
            "revision", "interrupt_pin", "bar0_size", "msix_vectors", "tee_io", "bus",
            "devfn", "segment"),
    "doe": ("doe_max_object_dw", "doe_interrupt_vector"),
    "ide": ("ide_selective_streams", "ide_address_associations", "ide_link_streams"),
    "spdm": ("spdm_versions", "spdm_data_transfer_size", "spdm_capabilities",
             "spdm_heartbeat_period", "spdm_psks", "spdm_asym",
             "spdm_hash", "spdm_meas_hash", "spdm_dhe", "spdm_aead", "spdm_pqc_asym",
             "spdm_kem", "spdm_pqc_first"),
    "identity": ("identity_key_type", "identity_slots", "identity_writable"),
    "tdisp": ("tdisp_policy",),
    "measurements": ("firmware_version", "firmware_digest", "measurement_record",
                     "measurement_log", "firmware_svn", "endpoint_info"),
    "reset": ("flr_ends_spdm_sessions",),
}

# The responder's CAPABILITIES when the profile says "default"; the same value as
# spdm.responder.DEFAULT_RSP_CAPS (repeated: importing the responder pulls in crypto).
DEFAULT_SPDM_CAPABILITIES = (
    RspCap.CERT | RspCap.CHAL | RspCap.MEAS_SIG | RspCap.MEAS_FRESH | RspCap.ENCRYPT
    | RspCap.MAC | RspCap.KEY_EX | RspCap.PSK_WITH_CONTEXT | RspCap.HBEAT | RspCap.KEY_UPD
    | RspCap.CHUNK
)
# "all": every flag, one value of each 2-bit field (PSK_CAP 10b, MEAS_CAP 10b, EP_INFO_CAP
# 10b, MULTI_KEY_CAP 10b), minus what this responder never implements; the device then
# keeps what its provisioning backs (spdm.capabilities).
ALL_SPDM_CAPABILITIES = int(
    (sum(RspCap) & ~(RspCap.PSK | RspCap.MEAS_NO_SIG | RspCap.EP_INFO_NO_SIG
                     | RspCap.MULTI_KEY_ONLY)) & ~NEVER)
# Flags that only make sense with a session (DSP0274 1.2 'Responder flag fields').
_SESSION_CAPS = (RspCap.ENCRYPT | RspCap.MAC | RspCap.HBEAT | RspCap.KEY_UPD
                 | RspCap.HANDSHAKE_IN_THE_CLEAR)
_ALG_KEYS: dict[str, type[Any]] = {
    "spdm_asym": BaseAsym, "spdm_hash": BaseHash, "spdm_meas_hash": MeasHash,
    "spdm_dhe": Dhe, "spdm_aead": Aead, "spdm_pqc_asym": PqcAsym, "spdm_kem": Kem,
}
# Post-quantum names DSP0274 1.4 defines that `cryptography` cannot compute (ML-KEM-512,
# SLH-DSA): a profile naming them is refused rather than advertising what we cannot do.
_IMPLEMENTED: dict[str, tuple[int, ...]] = {
    "spdm_pqc_asym": SUPPORTED_PQC_ASYM, "spdm_kem": SUPPORTED_KEM,
}
# The BaseAsym values a key of each identity_key_type can sign with.
_KEY_TYPE_ASYM: dict[str, tuple[str, ...]] = {
    "ecdsa-p384": ("ECDSA_P384",), "ecdsa-p256": ("ECDSA_P256",),
    "ecdsa-p521": ("ECDSA_P521",),
    "rsa-2048": ("RSASSA_2048", "RSAPSS_2048"), "rsa-3072": ("RSASSA_3072", "RSAPSS_3072"),
    "rsa-4096": ("RSASSA_4096", "RSAPSS_4096"),
    "ed25519": ("EDDSA_25519",), "ed448": ("EDDSA_448",),
}
# ML-DSA identities sign with a PqcAsym algorithm (SPDM 1.4).
_KEY_TYPE_PQC: dict[str, str] = {
    "mldsa-44": "ML_DSA_44", "mldsa-65": "ML_DSA_65", "mldsa-87": "ML_DSA_87",
}


class ProfileError(ValueError):
    """A profile key is unknown or its value is invalid."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"profile key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _msix_layout_end(vectors: int) -> int:
    table_end = MSIX_TABLE_OFFSET + 16 * vectors
    pba_offset = (table_end + 0xFFF) & ~0xFFF
    return pba_offset + ((vectors + 63) // 64) * 8


@dataclass(frozen=True)
class DeviceProfile:
    vendor_id: int = PLACEHOLDER_VENDOR_ID
    """PCI Vendor ID (placeholder, see module docstring)."""
    device_id: int = PLACEHOLDER_DEVICE_ID
    """PCI Device ID (placeholder)."""
    subsystem_vendor_id: int = PLACEHOLDER_VENDOR_ID
    subsystem_id: int = 0x0001
    class_code: int = 0x120000
    """24-bit class code; 0x120000 = Processing accelerator (PCI Code and ID Assignment §1.19)."""
    revision: int = 0x01
    interrupt_pin: int = 0
    """0 = no INTx (QEMU then never sets up INTx); 1..4 = INTA#..INTD#."""
    bar0_size: int = 0x10000
    """BAR0 (64-bit MMIO) size in bytes: power of two, >= 16 KiB and big enough for MSI-X."""
    msix_vectors: int = 8
    """MSI-X table size, 1..2048."""
    doe_max_object_dw: int = 1 << 18
    """Largest DOE object in DW (header included), 3..2^18; Linux uses up to 2^18."""
    doe_interrupt_vector: int = 0
    """MSI-X vector the DOE capability reports as its Interrupt Message Number."""
    ide_selective_streams: int = 1
    ide_address_associations: int = 1
    ide_link_streams: int = 0
    tee_io: bool = True
    """DEVCAP bit 30 TEE-IO Supported."""
    spdm_versions: str = "1.2,1.3"
    identity_key_type: str = "ecdsa-p384"
    tdisp_policy: str = "default"
    firmware_version: str = "vdev 0.1.0"
    firmware_digest: str = ""
    spdm_data_transfer_size: int = 4096
    bus: int = 0x01
    devfn: int = 0x00
    segment: int = 0x00
    flr_ends_spdm_sessions: bool = False
    spdm_capabilities: str = "default"
    spdm_heartbeat_period: int = 60
    spdm_psks: str = ""
    spdm_asym: str = ""
    spdm_hash: str = ""
    spdm_meas_hash: str = ""
    spdm_dhe: str = ""
    spdm_aead: str = ""
    spdm_pqc_asym: str = ""
    spdm_kem: str = ""
    spdm_pqc_first: bool = False
    identity_slots: int = 1
    identity_writable: bool = False
    measurement_record: str = "standard"
    measurement_log: bool = False
    firmware_svn: int = 1
    endpoint_info: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected: type = {"bool": bool, "str": str}.get(str(f.type), int)
            if type(value) is not expected:
                raise ProfileError(f.name, f"expected {expected.__name__}, got {value!r}")
        self._check_range("vendor_id", 0x0001, 0xFFFE)
        self._check_range("device_id", 0x0000, 0xFFFF)
        self._check_range("subsystem_vendor_id", 0x0000, 0xFFFF)
        self._check_range("subsystem_id", 0x0000, 0xFFFF)
        self._check_range("class_code", 0, 0xFFFFFF)
        self._check_range("revision", 0, 0xFF)
        self._check_range("interrupt_pin", 0, 4)
        self._check_range("msix_vectors", 1, 2048)
        self._check_range("doe_max_object_dw", 3, 1 << 18)
        self._check_range("doe_interrupt_vector", 0, self.msix_vectors - 1)
        self._check_range("ide_selective_streams", 1, 256)
        self._check_range("ide_address_associations", 0, 15)
        self._check_range("ide_link_streams", 0, 8)
        self._check_range("spdm_data_transfer_size", MIN_DATA_TRANSFER_SIZE,
                          MAX_DATA_TRANSFER_SIZE)
        self._check_range("spdm_heartbeat_period", 0, 255)
        self._check_range("identity_slots", 1, 8)
        self._check_range("firmware_svn", 0, (1 << 64) - 1)
        if self.measurement_record not in MEASUREMENT_RECORDS:
            raise ProfileError("measurement_record", f"{self.measurement_record!r} not one "
                               f"of {', '.join(MEASUREMENT_RECORDS)}")
        if self.measurement_log and self.measurement_record != "extended":
            raise ProfileError("measurement_log", "the log extends a hash-extend "
                               "measurement, which only measurement_record = \"extended\" "
                               "has")
        self._check_range("bus", 0, 0xFF)
        self._check_range("devfn", 0, 0xFF)
        self._check_range("segment", 0, 0xFF)
        self._check_security_strings()
        size = self.bar0_size
        if size & (size - 1) or size < MIN_BAR0_SIZE:
            raise ProfileError(
                "bar0_size", f"{size:#x} is not a power of two >= {MIN_BAR0_SIZE:#x}"
            )
        if size > 1 << 32:
            raise ProfileError("bar0_size", f"{size:#x} larger than 4 GiB is not supported")
        if _msix_layout_end(self.msix_vectors) > size:
            raise ProfileError(
                "bar0_size", f"{size:#x} too small for {self.msix_vectors} MSI-X vectors"
            )

    def _check_security_strings(self) -> None:
        names = [v.strip() for v in self.spdm_versions.split(",")]
        bad = [v for v in names if v not in SPDM_VERSION_NAMES]
        if bad or not names:
            raise ProfileError(
                "spdm_versions", f"{self.spdm_versions!r}: expected a comma-separated subset "
                f"of {', '.join(SPDM_VERSION_NAMES)}")
        if self.identity_key_type not in IDENTITY_KEY_TYPES:
            raise ProfileError(
                "identity_key_type",
                f"{self.identity_key_type!r} not one of {', '.join(IDENTITY_KEY_TYPES)}")
        if self.tdisp_policy not in TDISP_POLICY_NAMES:
            raise ProfileError(
                "tdisp_policy",
                f"{self.tdisp_policy!r} not one of {', '.join(TDISP_POLICY_NAMES)}")
        if self.firmware_digest:
            try:
                digest = bytes.fromhex(self.firmware_digest)
            except ValueError:
                raise ProfileError("firmware_digest", "not a hex string") from None
            if len(digest) not in (32, 48, 64):
                raise ProfileError("firmware_digest",
                                   f"{len(digest)} bytes; expected a SHA-256/384/512 digest")
        caps = self.spdm_capability_flags  # raises on unknown names
        self._check_capabilities(caps)
        _ = self.spdm_psk_table  # raises on a malformed entry
        for key in _ALG_KEYS:
            self.algorithm_priority(key)  # raises on unknown names
        pqc = _KEY_TYPE_PQC.get(self.identity_key_type)
        if pqc is not None:
            # DSP0274 1.4 §10.4: PqcAsymAlgo exists from 1.4 on; without it the device
            # could offer no algorithm its key signs with.
            if "1.4" not in [v.strip() for v in self.spdm_versions.split(",")]:
                raise ProfileError(
                    "spdm_versions", f"{self.spdm_versions!r} lacks 1.4, which an "
                    f"identity_key_type {self.identity_key_type!r} (ML-DSA) needs")
            names = [n.strip() for n in self.spdm_pqc_asym.split(",") if n.strip()]
            if names and pqc not in names:
                raise ProfileError(
                    "spdm_pqc_asym", f"{self.spdm_pqc_asym!r} does not include the identity "
                    f"key's algorithm ({pqc} for identity_key_type "
                    f"{self.identity_key_type!r})")
            return
        asym = self.spdm_asym and [n.strip() for n in self.spdm_asym.split(",")]
        if asym and not set(asym) & set(_KEY_TYPE_ASYM[self.identity_key_type]):
            raise ProfileError(
                "spdm_asym", f"{self.spdm_asym!r} does not include the identity key's "
                f"algorithm ({' or '.join(_KEY_TYPE_ASYM[self.identity_key_type])} for "
                f"identity_key_type {self.identity_key_type!r})")

    @staticmethod
    def _check_capabilities(caps: int) -> None:
        def need(cond: bool, reason: str) -> None:
            if not cond:
                raise ProfileError("spdm_capabilities", reason)

        session = bool(caps & (RspCap.KEY_EX | RspCap.PSK | RspCap.PSK_WITH_CONTEXT))
        need(not caps & RspCap.PSK or not caps & RspCap.PSK_WITH_CONTEXT,
             "PSK and PSK_WITH_CONTEXT are exclusive (PSK_CAP is one 2-bit field)")
        need(not session or bool(caps & (RspCap.ENCRYPT | RspCap.MAC)),
             "KEY_EX/PSK need ENCRYPT or MAC")
        need(session or not caps & _SESSION_CAPS,
             "ENCRYPT, MAC, HBEAT, KEY_UPD and HANDSHAKE_IN_THE_CLEAR need KEY_EX or PSK")
        need(not caps & RspCap.HANDSHAKE_IN_THE_CLEAR or bool(caps & RspCap.KEY_EX),
             "HANDSHAKE_IN_THE_CLEAR needs KEY_EX")
        need(not caps & (RspCap.CHAL | RspCap.KEY_EX) or bool(caps & RspCap.CERT),
             "CHAL and KEY_EX need CERT (this responder has no PUB_KEY_ID mode)")
        need((caps & (RspCap.MEAS_NO_SIG | RspCap.MEAS_SIG)) != (RspCap.MEAS_NO_SIG
                                                                  | RspCap.MEAS_SIG),
             "MEAS_NO_SIG and MEAS_SIG are exclusive (MEAS_CAP is one 2-bit field)")
        need(not caps & RspCap.MEAS_FRESH or bool(caps & (RspCap.MEAS_NO_SIG | RspCap.MEAS_SIG)),
             "MEAS_FRESH needs MEAS_NO_SIG or MEAS_SIG")
        need(bool(caps & RspCap.CERT), "CERT is required: the device always has a "
             "certificate chain (TEE-IO, Linux CMA)")

    @property
    def spdm_capabilities_listed(self) -> bool:
        """The profile names its flags (rather than "default"/"all"): each one must be
        backed by what the device is given, or the device refuses to start."""
        return self.spdm_capabilities.strip() not in ("default", "all")

    @property
    def spdm_psk_table(self) -> dict[bytes, bytes]:
        """`spdm_psks` as hint -> PSK."""
        try:
            return psk.parse_list(self.spdm_psks, "spdm_psks") if self.spdm_psks else {}
        except PskFormatError as exc:
            raise ProfileError("spdm_psks", str(exc)) from None

    @property
    def spdm_capability_flags(self) -> int:
        """`spdm_capabilities` as the CAPABILITIES Flags value."""
        if self.spdm_capabilities.strip() == "default":
            return int(DEFAULT_SPDM_CAPABILITIES)
        if self.spdm_capabilities.strip() == "all":
            return ALL_SPDM_CAPABILITIES
        value = 0
        for name in (n.strip() for n in self.spdm_capabilities.split(",")):
            flag = RspCap.__members__.get(name.upper().removesuffix("_CAP"))
            if flag is None:
                raise ProfileError("spdm_capabilities",
                                   f"{name!r} is not a responder capability flag (one of "
                                   f"{', '.join(RspCap.__members__)}, \"default\" or "
                                   f"\"all\")")
            value |= flag
        return value

    def algorithm_priority(self, key: str) -> tuple[int, ...] | None:
        """The priority list for one of spdm_asym/hash/meas_hash/dhe/aead/pqc_asym/kem;
        None = default."""
        text = getattr(self, key).strip()
        if not text:
            return None
        cls = _ALG_KEYS[key]
        out: list[int] = []
        for name in (n.strip() for n in text.split(",")):
            member = cls.__members__.get(name.upper())
            if member is None:
                raise ProfileError(key, f"{name!r} is not one of "
                                   f"{', '.join(cls.__members__)}")
            if int(member) in out:
                raise ProfileError(key, f"{name!r} listed twice")
            if key in _IMPLEMENTED and int(member) not in _IMPLEMENTED[key]:
                raise ProfileError(key, f"{name!r} is not implemented here (`cryptography` "
                                   f"provides {', '.join(cls(v).name for v in _IMPLEMENTED[key])})")
            out.append(int(member))
        return tuple(out)

    @property
    def spdm_version_list(self) -> tuple[int, ...]:
        """`spdm_versions` as SPDMVersion bytes, ascending."""
        return tuple(sorted({SPDM_VERSION_NAMES[v.strip()]
                             for v in self.spdm_versions.split(",")}))

    @property
    def firmware_digest_bytes(self) -> bytes:
        """The firmware digest to measure (SHA-384 of the version string by default)."""
        if self.firmware_digest:
            return bytes.fromhex(self.firmware_digest)
        return hashlib.sha384(self.firmware_version.encode()).digest()

    def _check_range(self, key: str, low: int, high: int) -> None:
        value = getattr(self, key)
        if not low <= value <= high:
            raise ProfileError(key, f"{value:#x} not in {low:#x}..{high:#x}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeviceProfile:
        """Flat keys, optionally grouped in sections (`SECTIONS`); see the module doc."""
        known = {f.name for f in dataclasses.fields(cls)}
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, Mapping):
                for inner, inner_value in value.items():
                    name = f"{key}.{inner}"
                    if inner not in SECTIONS[key]:
                        where = next((s for s, keys in SECTIONS.items() if inner in keys), None)
                        raise ProfileError(name, f"belongs in [{where}]" if where
                                           else "unknown key")
                    if inner in flat:
                        raise ProfileError(name, "given twice")
                    flat[inner] = inner_value
            elif isinstance(value, Mapping) and key not in known:
                raise ProfileError(key, f"unknown section (sections: {', '.join(SECTIONS)})")
            elif key not in known:
                raise ProfileError(key, "unknown key")
            elif key in flat:
                raise ProfileError(key, "given twice")
            else:
                flat[key] = value
        return cls(**flat)

    @classmethod
    def from_toml(cls, path: str | Path) -> DeviceProfile:
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ProfileError("<file>", f"{path}: {exc}") from exc
        return cls.from_mapping(data)

    @classmethod
    def from_toml_string(cls, text: str) -> DeviceProfile:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError("<string>", str(exc)) from exc
        return cls.from_mapping(data)


def shipped_profiles() -> list[str]:
    """Names of the profiles in vdev/profiles/ (what `--profile NAME` accepts)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def resolve_profile(name_or_path: str) -> Path:
    """`--profile` argument -> file: an existing path wins, else a shipped profile name
    (``auth-only-spdm12`` or ``auth-only-spdm12.toml``).  FileNotFoundError names both."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = name_or_path.removesuffix(".toml")
    if "/" not in stem and (PROFILES_DIR / f"{stem}.toml").is_file():
        return PROFILES_DIR / f"{stem}.toml"
    raise FileNotFoundError(
        f"profile {name_or_path!r} is neither a file nor a shipped profile "
        f"({', '.join(shipped_profiles())})")


def load_profile(name_or_path: str | None) -> DeviceProfile:
    """The profile for a `--profile` argument; None = the built-in default."""
    if name_or_path is None:
        return DeviceProfile()
    return DeviceProfile.from_toml(resolve_profile(name_or_path))
