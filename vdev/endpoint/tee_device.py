"""The TEE-IO endpoint with its security protocols: what `vdev serve` runs.

`TeeDevice(profile, state_dir=...)` is a `TeeIoEndpoint` (config space, BAR0, DOE,
IDE) composed with:

  identity      spdm.identity chain root CA -> intermediate -> leaf, generated on first
                use under the state directory (default ``~/.local/state/vdev/identity``)
                in ``<vendor>-<device>-<key type>/slot0/``, e.g.
                ``1ded-7e10-ecdsa-p384/slot0/`` (vdev.endpoint.identity_store: keys
                0600, directory 0700, never overwritten; ``root.pem`` is the
                requester's trust anchor) and reused; the leaf's CMA SAN
                (2.23.147, Linux drivers/pci/cma-x509.c) carries the profile's
                vendor/device/class/revision.  Or pass `identity=` (vdev spdm-emu
                --cert-chain/--key).
  measurements  `vdev.endpoint.measurements.DeviceMeasurements` (profile values plus a
                digest of the live configuration)
  responder     spdm.responder.Responder on DOE types 0001:01 and 0001:02 (replacing
                the endpoint's placeholder), versions and DataTransferSize from the
                profile
  IDE_KM        tdisp IdeKmResponder over `EndpointIdeTarget` (the config-space IDE model)
  TDISP         TdispResponder with one TDI whose INTERFACE_ID is the profile's
                Requester ID (bus/devfn, default 01:00.0: vfio-user never tells a device
                its address) and whose `DeviceInterface` is read from the *live*
                config space at LOCK time: BAR0's programmed base, its size, the MSI-X
                table/PBA location and Message Control
  dispatcher    PciSigVdmDispatcher (PCI-SIG VENDOR_DEFINED, IDE_KM + TDISP) registered
                with the responder; the responder's `on_session_end` observer
                (END_SESSION, DecryptError, heartbeat expiry, GET_VERSION, reset)
                reports ended sessions to it with `session_ended`, which moves
                TDIs locked over them to ERROR and stops their IDE keys (§11.4.5)
  enforcement   `vdev.endpoint.tdi_enforcement.TdiEnforcement`
  FLR           besides the TDI reset (enforcement): IDE_KM forgets its key records,
                because the IDE model drops the keys; SPDM sessions end only with the
                profile's `flr_ends_spdm_sessions`

Transport-independent entry points, used by the DOE mailbox and by `vdev.spdm_emu`:

  spdm_message(doe_type, payload) -> (doe_type, payload)   one SPDM / secured message
  doe_object(obj) -> obj | None                            one whole DOE object,
                                                           discovery included

Known limitation: a DOE mailbox answers with the request's object type, so the rare
plaintext ERROR the responder sends for an undecryptable type-2 request goes out
in a type-2 object through the mailbox (`doe_object` and spdm-emu use type 1, as
libspdm does; docs/protocols.md §8.4).

Over MCTP (`vdev spdm-emu --transport mctp`) the device is built with
`spdm.secured_message.MCTP_TRANSPORT`: sealed application data starts with the MCTP
message type 0x05, as libspdm's MCTP binding has it (docs/protocols.md §4).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spdm import algorithms as alg
from spdm.capabilities import NEVER, missing
from spdm.hooks import ResponderHooks
from spdm.identity import CertSlots, DeviceIdentity
from spdm.mel import pci_class_identifier
from spdm.provisioning import KeyPair
from spdm.psk import describe_hint, hints
from spdm.responder import (
    AlgorithmPriorities,
    Responder,
    ResponderConfig,
    VendorRequestContext,
)
from spdm.secured_message import DOE_TRANSPORT, TransportParams
from tdisp.device_interface import DeviceInterface, InterfaceId, MmioBar
from tdisp.dispatcher import PciSigVdmDispatcher
from tdisp.idekm_responder import IdeKmResponder
from tdisp.policy import TdispPolicy
from tdisp.responder import Tdi, TdispResponder
from tdisp.vendor_defined import PCISIG_VENDOR_ID_BYTES, STANDARD_ID_PCISIG, ProtocolId
from vdev.doe import data_object as doe_object
from vdev.doe.data_object import (
    DISCOVERY,
    DOE_TYPE_CMA_SPDM,
    DOE_TYPE_SECURED_CMA_SPDM,
    HEADER_DW,
    PCI_SIG_VENDOR_ID,
    DoeProtocolId,
)
from vdev.endpoint.function import DeferLater, TeeIoEndpoint
from vdev.endpoint.ide_registers import EndpointIdeTarget
from vdev.endpoint.identity_store import (
    FileCertificateStore,
    load_device_slots,
    load_or_generate,
)
from vdev.endpoint.measurements import DeviceMeasurements
from vdev.endpoint.tdi_enforcement import TdiEnforcement
from vdev.pci.device_api import RegionIndex
from vdev.pci.ide_rules import IdeRuleChecker
from vdev.pci.msix_cap import MSIX_ENTRY_SIZE
from vdev.profiles import DeviceProfile, ProfileError

log = logging.getLogger(__name__)

_BAR0 = int(RegionIndex.BAR0)  # compared on every access: a plain int
BAR_TYPE_BITS = 0xF  # memory BAR bits 3:0 are type bits, not address (§7.5.1.2.1)


def interface_id(profile: DeviceProfile) -> InterfaceId:
    """The TDI's INTERFACE_ID: Requester ID from the profile; segment-valid only when the
    segment is not 0 (a single-segment system leaves the bit clear, as spdm-emu does)."""
    return InterfaceId.of(
        bus=profile.bus,
        device=profile.devfn >> 3,
        function=profile.devfn & 7,
        segment=profile.segment or None,
    )


class TeeDevice(TeeIoEndpoint):
    """A TEE-IO endpoint that speaks SPDM, IDE_KM and TDISP over its DOE mailbox."""

    def __init__(
        self,
        profile: DeviceProfile | None = None,
        *,
        state_dir: Path | str | None = None,
        identity: DeviceIdentity | None = None,
        spdm_transport: TransportParams = DOE_TRANSPORT,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        defer_later: DeferLater | None = None,
        psks: Mapping[bytes, bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(profile, defer_later=defer_later)
        p = self.profile
        # Where slot 0's chain lives (its root.pem is the trust anchor); None when the
        # identity was handed in.
        self.identity_dir: Path | None = None
        slots: dict[int, DeviceIdentity] = {}
        slot_models: dict[int, int] = {}
        key_pairs: list[KeyPair] = []
        store: FileCertificateStore | None = None
        if identity is None:
            loaded = load_or_generate(p, state_dir)
            identity, self.identity_dir = loaded.identity, loaded.slot_dir
            log.info("device identity %s in %s (trust anchor %s)",
                     "generated" if loaded.created else "loaded", loaded.slot_dir,
                     loaded.trust_anchor)
            if p.identity_slots > 1 or p.identity_writable:
                found = load_device_slots(p, state_dir, loaded, key_pairs=True)
                slots, slot_models = found.slots, found.models
                key_pairs = [KeyPair(i + 1, k) for i, k in enumerate(found.key_pairs)]
                if p.identity_writable:
                    store = FileCertificateStore(p, state_dir)
                log.info("certificate slots %s (%s generated now), %d key pairs%s",
                         ",".join(map(str, sorted(slots))),
                         ",".join(map(str, found.generated)) or "none", len(key_pairs),
                         ", writable by SET_CERTIFICATE" if store else "")
        elif p.identity_slots > 1 or p.identity_writable:
            raise ProfileError("identity_slots", "further slots and SET_CERTIFICATE need the "
                               "identity in the state directory, not one handed in")
        self.identity = identity
        slots = slots or {0: identity}
        # Seconds the spdm-emu server waits before its next reply (a delay fault on the
        # socket path, which has no DOE mailbox to hold a response in).
        self.socket_reply_delay = 0.0
        # Told about every injected fault (vdev.faults): the tracer, tests.  Kept on the
        # device so an injector installed later (vdev ctl faults arm) reaches a tracer
        # attached at start.
        self.fault_observers: list[Callable[[str], None]] = []
        self.measurements = DeviceMeasurements(p, self.config)
        self._watchdog_armed = False

        self.ide_rules = IdeRuleChecker(self.ide)
        self.ide_target = EndpointIdeTarget(
            self.ide, self.config, bus=p.bus, dev_func=p.devfn, segment=p.segment,
            rules=self.ide_rules,
        )
        self.idekm = IdeKmResponder(self.ide_target)
        self.interface = DeviceInterface(interface_id(p), bars=self.live_bars)
        self.tdisp = TdispResponder(
            [self.interface],
            policy=TdispPolicy.profile(p.tdisp_policy),
            ide=self.idekm,
            random_bytes=random_bytes,
        )
        self.vdm = PciSigVdmDispatcher(self.idekm, self.tdisp)
        self._vdm_handler = self.vdm.spdm_handler()

        # PSKs: the profile's, then those handed in (--psk-file); a hint in both is an
        # error rather than one silently winning.
        table = dict(p.spdm_psk_table)
        for hint, key in (psks or {}).items():
            if hint in table:
                raise ProfileError("spdm_psks", f"hint {describe_hint(hint)} is also in the "
                                   "PSK file")
            table[hint] = key
        # Capabilities and algorithm priorities from the profile; an algorithm list the
        # profile leaves empty keeps the responder's default (everything we implement).
        self.responder = Responder(
            ResponderConfig(
                versions=p.spdm_version_list,
                capabilities=p.spdm_capability_flags,
                heartbeat_period=p.spdm_heartbeat_period,
                psks=table,
                monotonic=clock,
                algorithms=AlgorithmPriorities(
                    asym=p.algorithm_priority("spdm_asym") or alg.SUPPORTED_ASYM,
                    hash=p.algorithm_priority("spdm_hash") or alg.SUPPORTED_HASH,
                    meas_hash=(p.algorithm_priority("spdm_meas_hash")
                               or alg.SUPPORTED_MEAS_HASH),
                    dhe=p.algorithm_priority("spdm_dhe") or alg.SUPPORTED_DHE,
                    aead=p.algorithm_priority("spdm_aead") or alg.SUPPORTED_AEAD,
                    pqc_asym=p.algorithm_priority("spdm_pqc_asym") or alg.SUPPORTED_PQC_ASYM,
                    kem=p.algorithm_priority("spdm_kem") or alg.SUPPORTED_KEM,
                    pqc_first=p.spdm_pqc_first,
                ),
                data_transfer_size=p.spdm_data_transfer_size,
                slots=CertSlots(slots),
                slot_models=slot_models,
                key_pairs=key_pairs,
                certificate_store=store,
                measurements=self.measurements,
                mel=self.measurements.log if p.measurement_log else None,
                endpoint_info=pci_class_identifier(
                    p.vendor_id, p.device_id, p.subsystem_vendor_id, p.subsystem_id,
                    p.class_code, p.revision) if p.endpoint_info else None,
                transport=spdm_transport,
                random=random_bytes,
            ),
            ResponderHooks(on_session_end=self._session_ended,
                           on_session_established=self._session_established),
        )
        self._check_capabilities()
        self.responder.register_vendor_handler(
            STANDARD_ID_PCISIG, PCISIG_VENDOR_ID_BYTES, self._vendor_defined
        )
        self.register_doe_protocol(PCI_SIG_VENDOR_ID, DOE_TYPE_CMA_SPDM, self._doe_spdm)
        self.register_doe_protocol(
            PCI_SIG_VENDOR_ID, DOE_TYPE_SECURED_CMA_SPDM, self._doe_secured_spdm
        )
        self.enforcement = TdiEnforcement(self, self.tdi)
        log.info("TDI %s (INTERFACE_ID function id %#010x), TDISP policy %s",
                 self.interface.interface_id, self.interface.interface_id.function_id,
                 self.tdisp.policy.name)
        self.add_reset_observer(self._flr_security_state)
        # Device-side events at INFO, so `vdev serve`'s log narrates a connect.
        self.ide.observers.append(self._log_ide_state)
        self.tdi.machine.observers.append(self._log_tdi_state)

    def _check_capabilities(self) -> None:
        """A profile that names its CAPABILITIES flags gets exactly those, or a clear
        refusal: a flag the provisioning cannot back is never sent (spdm.capabilities)."""
        p = self.profile
        rsp = self.responder
        if p.spdm_capabilities_listed:
            gaps = missing(rsp.provisioning(), p.spdm_capability_flags)
            if gaps:
                raise ProfileError("spdm_capabilities", "; ".join(
                    f"{flag}: {why}" for flag, why in gaps.items()))
        dropped = p.spdm_capability_flags & ~rsp.capabilities & ~NEVER
        if dropped:
            log.info("SPDM capabilities not sent, nothing backs them: %s", ", ".join(
                f"{flag} ({why})" for flag, why in missing(rsp.provisioning(), dropped).items()))
        if rsp.config.psks:
            log.info("PSK hints provisioned: %s", ", ".join(hints(rsp.config.psks)))

    # ---- the TDI -----------------------------------------------------------------

    @property
    def tdi(self) -> Tdi:
        return self.tdisp.tdi(self.interface.interface_id)

    def live_bars(self) -> Sequence[MmioBar]:
        """BAR0 as the host programmed it now, with the MSI-X table and PBA in it."""
        base = self.header.bar_value(0) & ~BAR_TYPE_BITS
        msix = self.msix
        return [
            MmioBar(
                0,
                base,
                self.profile.bar0_size,
                msix_table=(msix.table_offset, msix.state.vectors * MSIX_ENTRY_SIZE),
                msix_pba=(msix.pba_offset, msix.state.pba_size),
            )
        ]

    def _refresh_interface(self) -> None:
        # Message Control is reported in the interface report (§11.3.11); read it live.
        control = self.msix.control
        self.interface.msix_message_control = 0 if control is None else control.value

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == _BAR0 and self.enforcement.msix_locked:
            before = self.regs.read(offset, len(data))
            TeeIoEndpoint.region_write(self, index, offset, data)
            self.enforcement.bar0_written(offset, data, before)
            return
        TeeIoEndpoint.region_write(self, index, offset, data)  # no super(): every access

    # ---- SPDM ------------------------------------------------------------------------

    def _vendor_defined(self, payload: bytes, ctx: VendorRequestContext) -> bytes:
        if payload[:1] == bytes([ProtocolId.TDISP]):
            self._refresh_interface()
        return self._vdm_handler(payload, ctx)

    def spdm_message(self, doe_type: int, payload: bytes) -> tuple[int, bytes]:
        """One SPDM (type 1) or secured SPDM (type 2) message -> (reply type, reply)."""
        return self.responder.handle_doe(doe_type, payload)

    def _session_established(self, session_id: int) -> None:
        names = self.responder.algorithms.names()
        session = self.responder.sessions.get(session_id)
        period = session.heartbeat_period if session is not None else 0
        log.info("SPDM session %#010x established (%s)%s", session_id,
                 "/".join(str(names[k]) for k in ("asym", "base_hash", "key_exchange", "aead")),
                 f", HeartbeatPeriod {period} s" if period else "")
        if period:
            self._arm_heartbeat_watchdog()

    def _arm_heartbeat_watchdog(self) -> None:
        """End sessions whose requester fell silent for twice the HeartbeatPeriod even
        while nothing else arrives (DSP0274 HEARTBEAT); the TDIs locked over them go to
        ERROR through on_session_end.  Needs the server's timer (defer_later)."""
        if self._watchdog_armed or self.defer_later is None:
            return
        wait = self.responder.next_heartbeat_deadline()
        if wait is None:
            return
        self._watchdog_armed = True
        self.defer_later(wait + 0.05, self._heartbeat_watchdog)

    def _heartbeat_watchdog(self) -> None:
        self._watchdog_armed = False
        for session in self.responder.idle_sessions():
            log.warning("SPDM session %#010x: no message for twice its HeartbeatPeriod "
                        "(%d s): ending it", session.session_id, 2 * session.heartbeat_period)
        self.responder.expire_idle_sessions()
        self._arm_heartbeat_watchdog()

    @staticmethod
    def _log_ide_state(stream: Any, old: Any, new: Any) -> None:
        log.info("IDE selective stream %d (id %d): %s -> %s", stream.index,
                 stream.stream_id, getattr(old, "name", old), getattr(new, "name", new))

    def _log_tdi_state(self, entry: Any) -> None:
        log.info("TDI %s: %s --%s--> %s%s", self.interface.interface_id,
                 entry.old.name, entry.event.name, entry.new.name,
                 f" ({entry.reason})" if entry.reason else "")

    def _session_ended(self, session_id: int) -> None:
        log.info("SPDM session %#010x ended", session_id)
        self.vdm.session_ended(session_id)

    def _doe_spdm(self, payload: bytes) -> bytes:
        return self.spdm_message(DOE_TYPE_CMA_SPDM, payload)[1]

    def _doe_secured_spdm(self, payload: bytes) -> bytes:
        return self.spdm_message(DOE_TYPE_SECURED_CMA_SPDM, payload)[1]

    def _flr_security_state(self) -> None:
        # The IDE model resets its streams on FLR (vdev.pci.ide_cap: keys dropped,
        # SEL_CTL back to 0).  IDE_KM's record of which session programmed which key must
        # follow, or a LOCK after the reset would find "keys ready" that the hardware no
        # longer holds (§11.3.8 requires them programmed) and lock a TDI without IDE.
        self.idekm.records.clear()
        if self.profile.flr_ends_spdm_sessions:
            self.responder.reset()  # ends every session through on_session_end

    # ---- whole DOE objects (spdm-emu PCI_DOE transport) -----------------------------

    def doe_object(self, obj: bytes) -> bytes | None:
        """Answer one DOE object as the mailbox would; None when it must be discarded
        (§6.30.1: length mismatch, unknown protocol).  Discovery lists the same
        protocols in the same order as the mailbox (index 0 discovery, 1 SPDM, 2 secured
        SPDM), ignoring the requested discovery version as pci_doe_dispatch.c does."""
        if len(obj) < 4 * HEADER_DW or len(obj) % 4:
            return None
        header = doe_object.parse_header(obj[: 4 * HEADER_DW])
        if header.length_dw * 4 != len(obj):
            return None
        payload = obj[4 * HEADER_DW :]
        protocol = header.protocol
        if protocol == DISCOVERY:
            protocols = self.doe.protocols
            if len(payload) < 4:
                return None
            index, _version = doe_object.parse_discovery_request(payload[:4])
            if index >= len(protocols):
                return None
            next_index = index + 1 if index + 1 < len(protocols) else 0
            reply = doe_object.build_discovery_response(protocols[index], next_index)
            return doe_object.build_object(DISCOVERY, reply)
        if protocol.vendor_id != PCI_SIG_VENDOR_ID or protocol.data_object_type not in (
            DOE_TYPE_CMA_SPDM,
            DOE_TYPE_SECURED_CMA_SPDM,
        ):
            return None
        kind, reply = self.spdm_message(protocol.data_object_type, payload)
        return doe_object.build_object(DoeProtocolId(PCI_SIG_VENDOR_ID, kind), reply)
