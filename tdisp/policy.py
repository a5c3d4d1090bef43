"""Profile-configurable TDISP behaviour: the points where implementations disagree.

STOP_INTERFACE_REQUEST accepted in (docs/protocols.md §8.1):
  * PCIe 6.x Table 11-3: CONFIG_UNLOCKED, CONFIG_LOCKED, RUN and ERROR ("move TDI to
    CONFIG_UNLOCKED, if not already in CONFIG_UNLOCKED")
  * spdm-emu's sample device: every state but CONFIG_UNLOCKED
  * spdm-rs's example device: RUN only

REQ_MSGS_SUPPORTED bit numbering (docs/protocols.md §8.2):
  * CODE_MINUS_0x80: PCIe 6.x Table 11-9, "the bit index corresponds to the message code
    defined in Table 11-3 minus 80h": GET_TDISP_VERSION (81h) is bit 1, the seven
    required requests give byte 0 = 0xFE.  Current tee-io-validator and Caliptra agree.
  * CODE_MINUS_0x81: spdm-rs's example device and spdm-emu's sample device before
    DMTF/spdm-emu#413 (which moved it to 0xFE): byte 0 = 0x7F.

The presets: `default` and `tee-io-validator` follow the specification on both points;
`spdm-emu` and `spdm-rs` reproduce those devices, quirks included, so a requester can be
tested against them.

Other switches: whether LOCK demands IDE keys (default on, §11.3.8) and also that they
are active (K_SET_GO; default off: the spec text says "configured"), the optional
messages (BIND/UNBIND_P2P, SET_MMIO_ATTRIBUTE; default off, so UNSUPPORTED_REQUEST),
the states those accept (RUN only, as spdm-rs), and the CAPABILITIES values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from construct import BytesInteger

from tdisp.codes import LockFlags, RequestCode, TdiState

U, L, R, E = TdiState.CONFIG_UNLOCKED, TdiState.CONFIG_LOCKED, TdiState.RUN, TdiState.ERROR


class ReqMsgsConvention(enum.Enum):
    """Which request code bit n of REQ_MSGS_SUPPORTED stands for (the value is the
    code of bit 0)."""

    CODE_MINUS_0x80 = 0x80  # PCIe 6.x Table 11-9
    CODE_MINUS_0x81 = 0x81  # spdm-rs, spdm-emu before DMTF/spdm-emu#413


#: TDISP_CAPABILITIES REQ_MSGS_SUPPORTED: a 128-bit little-endian bitmap (§11.3.8).
REQ_MSGS_SUPPORTED = BytesInteger(16, swapped=True)


def req_msgs_bitmap(codes: set[int], convention: ReqMsgsConvention) -> bytes:
    """REQ_MSGS_SUPPORTED[16] for the given request codes."""
    value = 0
    for code in codes:
        value |= 1 << (code - convention.value)
    bitmap: bytes = REQ_MSGS_SUPPORTED.build(value)
    return bitmap


@dataclass(frozen=True)
class TdispPolicy:
    name: str = "default"
    stop_states: frozenset[TdiState] = frozenset({U, L, R, E})
    req_msgs_convention: ReqMsgsConvention = ReqMsgsConvention.CODE_MINUS_0x80
    lock_requires_ide_keys: bool = True
    lock_requires_key_set_go: bool = False
    bind_p2p_supported: bool = False
    set_mmio_attribute_supported: bool = False
    p2p_states: frozenset[TdiState] = frozenset({R})
    mmio_attribute_states: frozenset[TdiState] = frozenset({R})
    require_session: bool = True
    # START must come over the session that locked the TDI (the nonce was sent there).
    start_requires_lock_session: bool = True
    # §11.4.5: the default stream going Insecure (active key stopped) puts the TDI in ERROR.
    ide_insecure_is_violation: bool = True
    # CAPABILITIES (§11.3.7); tee-io-validator TdispCapabilities 2.1.5–2.1.10.
    dsm_caps: int = 0
    lock_flags_supported: int = int(
        LockFlags.NO_FW_UPDATE
        | LockFlags.SYSTEM_CACHE_LINE_SIZE
        | LockFlags.LOCK_MSIX
        | LockFlags.ALL_REQUEST_REDIRECT
    )
    dev_addr_width: int = 52
    max_report_portion: int = 0x400  # per-response cap so each REPORT fits a DOE/SPDM message

    def supported_requests(self, vdm: bool) -> set[int]:
        codes = {int(c) for c in RequestCode if c <= RequestCode.STOP_INTERFACE_REQUEST}
        if self.bind_p2p_supported:
            codes |= {RequestCode.BIND_P2P_STREAM_REQUEST, RequestCode.UNBIND_P2P_STREAM_REQUEST}
        if self.set_mmio_attribute_supported:
            codes.add(RequestCode.SET_MMIO_ATTRIBUTE_REQUEST)
        if vdm:
            codes.add(RequestCode.VDM_REQUEST)
        return codes

    @property
    def effective_lock_flags(self) -> int:
        flags = self.lock_flags_supported
        if self.bind_p2p_supported:
            flags |= LockFlags.BIND_P2P
        return flags

    @classmethod
    def profile(cls, name: str) -> TdispPolicy:
        """Named profiles: default / tee-io-validator, spdm-emu, spdm-rs."""
        base = cls(name=name)
        if name in ("default", "tee-io-validator"):
            return base
        if name == "spdm-emu":
            # library/pci_tdisp_device_lib_sample: pci_tdisp_device_stop_interface()
            # refuses CONFIG_UNLOCKED; pci_tdisp_device_context.c sets 0x7F.
            return replace(base, stop_states=frozenset({L, R, E}),
                           req_msgs_convention=ReqMsgsConvention.CODE_MINUS_0x81)
        if name == "spdm-rs":
            # test/spdm-responder-emu/src/spdm_device_tdisp_example.rs: STOP only from
            # RUN, req_msgs_supported[0] = 0x7f.
            return replace(base, stop_states=frozenset({R}),
                           req_msgs_convention=ReqMsgsConvention.CODE_MINUS_0x81)
        raise ValueError(f"unknown TDISP profile {name!r}")
