"""The endpoint's SPDM measurements (DSP0274 1.2 §10.11, DMTF measurement blocks).

`DeviceMeasurements(profile, config)` is a `spdm.measurements.MeasurementProvider`: the
responder calls it on every GET_MEASUREMENTS / CHALLENGE / KEY_EXCHANGE summary, so the
values are always those of the device *now*.

  index 1  MUTABLE_FIRMWARE  the profile's firmware digest (`firmware_digest`, default
                             SHA-384 of `firmware_version`), sent as a raw bit stream:
                             it already is a digest, re-hashing it would hide the value a
                             verifier compares against its reference manifest
  index 2  HARDWARE_CONFIG   the live configuration image (below); sent as its digest
                             under MeasurementHashAlgo, or raw when the requester asks
  index 3  FIRMWARE_CONFIG   the profile (every knob but the PSKs, whose hints stand in
                             for them; canonical JSON): what the "firmware" was
                             built/configured with
  index 4  VERSION           `firmware_version`, raw (DSP0274: version strings are raw)

With `measurement_record = "extended"` (the `full` profile) also:

  index 5  IMMUTABLE_ROM     the boot ROM image (names the vendor and device), as digest
  index 6  SECURE_VERSION    `firmware_svn`, u64 little-endian, raw
  index 7  HASH_EXTEND       with `measurement_log`: the extend of the boot log's entries
                             (spdm.mel.extend), raw; GET_MEASUREMENT_EXTENSION_LOG
                             returns the log
  0xFD     MANIFEST          a JSON manifest naming every block above, as digest
  0xFE     DEVICE_MODE       OperationalMode/DeviceMode capabilities and state (normal
                             operation, no debug), raw (DSP0274 'Device mode field')

The boot log (DMTF MEL): one entry per boot stage -- ROM, firmware, firmware
configuration -- each the SHA-384 of that stage, extending measurement 7.

Configuration image: for every config-space register software can write (RW mask not
zero) and whose value is plain storage (no model read hook: DOE mailbox data and IDE
stream status are live state, not configuration), the record
``offset u16 | size u8 | value & RW mask`` (little-endian), in offset order.  It
covers Command (Memory Space / Bus Master Enable), the BARs as programmed, Device
Control, MSI-X Message Control and the IDE stream control and association registers,
so a BAR or Command change, or an IDE stream being set up, changes measurement 2:
a verifier must see the configuration the device is actually in.  RW1C
status bits are events, not configuration, and are left out; so is anything the host
cannot change (identity registers are covered by the certificate's CMA SAN).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from construct import Int8ul, Int16ul, Int64ul, Struct

from spdm import mel
from spdm.measurements import (
    INDEX_DEVICE_MODE,
    INDEX_MANIFEST,
    DeviceMode,
    Measurement,
    MeasurementType,
)
from vdev.pci.config_space import ConfigSpace
from vdev.profiles import DeviceProfile

INDEX_FIRMWARE = 1
INDEX_HARDWARE_CONFIG = 2
INDEX_FIRMWARE_CONFIG = 3
INDEX_VERSION = 4
INDEX_ROM = 5
INDEX_SVN = 6
INDEX_LOG = 7

#: One record of the configuration image: a software-writable register's offset, size
#: and writable bits.
ConfigRecord = Struct("offset" / Int16ul, "size" / Int8ul, "value" / Int64ul)


def configuration_image(config: ConfigSpace) -> bytes:
    """Canonical bytes of the software-programmed configuration (see module docstring)."""
    out = bytearray()
    for reg in sorted(config.file.registers, key=lambda r: r.offset):
        if not reg.rw or reg.on_read is not None:
            continue
        out += ConfigRecord.build({"offset": reg.offset, "size": reg.size,
                                   "value": reg.value & reg.rw})
    return bytes(out)


#: Profile keys that hold secrets: never part of a measurement, which a requester may
#: read as a raw bit stream.  The PSK hints are measured instead of the PSKs.
SECRET_KEYS = frozenset({"spdm_psks"})


def profile_image(profile: DeviceProfile) -> bytes:
    fields = {k: v for k, v in dataclasses.asdict(profile).items() if k not in SECRET_KEYS}
    fields["spdm_psk_hints"] = sorted(h.hex() for h in profile.spdm_psk_table)
    return json.dumps(fields, sort_keys=True).encode()


class DeviceMeasurements:
    """MeasurementProvider over a profile and a live config space."""

    def __init__(self, profile: DeviceProfile, config: ConfigSpace) -> None:
        self.profile = profile
        self.config = config

    def rom_image(self) -> bytes:
        p = self.profile
        return f"vdev boot rom {p.vendor_id:04x}:{p.device_id:04x}".encode()

    def log_entries(self) -> list[mel.MelEntry]:
        """The boot log: each stage's SHA-384, extending measurement 7."""
        p = self.profile
        stages = [(MeasurementType.IMMUTABLE_ROM, self.rom_image()),
                  (MeasurementType.MUTABLE_FIRMWARE, p.firmware_digest_bytes),
                  (MeasurementType.FIRMWARE_CONFIG, profile_image(p))]
        return [mel.MelEntry(i, INDEX_LOG, int(t), hashlib.sha384(v).digest())
                for i, (t, v) in enumerate(stages)]

    def log(self) -> bytes:
        """GET_MEASUREMENT_EXTENSION_LOG's DMTF measurement extension log."""
        return mel.build_mel(self.log_entries())

    def __call__(self) -> list[Measurement]:
        blocks = self.standard()
        if self.profile.measurement_record == "extended":
            blocks += self.extended()
        return blocks

    def extended(self) -> list[Measurement]:
        p = self.profile
        out = [
            Measurement(INDEX_ROM, MeasurementType.IMMUTABLE_ROM, self.rom_image()),
            Measurement(INDEX_SVN, MeasurementType.SECURE_VERSION,
                        p.firmware_svn.to_bytes(8, "little"), raw_only=True),
        ]
        if p.measurement_log:
            out.append(Measurement(INDEX_LOG, MeasurementType.HASH_EXTEND,
                                   mel.extend(self.log_entries(), INDEX_LOG), raw_only=True))
        names = {b.index: b.type.name for b in [*self.standard(), *out]}
        manifest = json.dumps({"device": f"{p.vendor_id:04x}:{p.device_id:04x}",
                               "blocks": {str(k): v for k, v in sorted(names.items())}},
                              sort_keys=True).encode()
        out.append(Measurement(INDEX_MANIFEST, MeasurementType.MANIFEST, manifest,
                               tcb=False))
        # Normal operational mode (capable of normal and recovery), no debug ever.
        out.append(Measurement(INDEX_DEVICE_MODE, MeasurementType.DEVICE_MODE,
                               DeviceMode.build({"operational_mode_capabilities": 0x0C,
                                                 "operational_mode_state": 0x04,
                                                 "device_mode_capabilities": 0,
                                                 "device_mode_state": 0}),
                               raw_only=True))
        return out

    def standard(self) -> list[Measurement]:
        p = self.profile
        return [
            Measurement(INDEX_FIRMWARE, MeasurementType.MUTABLE_FIRMWARE,
                        p.firmware_digest_bytes, raw_only=True),
            Measurement(INDEX_HARDWARE_CONFIG, MeasurementType.HARDWARE_CONFIG,
                        configuration_image(self.config)),
            Measurement(INDEX_FIRMWARE_CONFIG, MeasurementType.FIRMWARE_CONFIG,
                        profile_image(p)),
            Measurement(INDEX_VERSION, MeasurementType.VERSION,
                        p.firmware_version.encode(), raw_only=True, tcb=False),
        ]
