"""Control commands of the TEE-IO device (`vdev serve`, `vdev spdm-emu`).

Every result is built from live device state at the moment of the request.  Key
material never leaves: sessions show ids, state and algorithms (no secrets), IDE
streams show which key slots are programmed / active (no keys, no IFVs), TDIs show
their lock parameters (no START nonce), identity shows certificates (public).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from spdm.algorithms import NegotiatedAlgorithms
from vdev.control.core import Command, CommandError, ControlCore, expect_args
from vdev.endpoint.tee_device import TeeDevice
from vdev.faults import KINDS as RULE_KINDS
from vdev.faults import FaultPlanError, install
from vdev.faults.plan import DOE_DELAY, doe_delay_from_dict, rule_from_dict
from vdev.pci.ide_cap import KEY_SETS, SLOTS

StatusExtra = Callable[[], dict[str, Any]]

SPDM_VERSION_NAMES = {0x10: "1.0", 0x11: "1.1", 0x12: "1.2", 0x13: "1.3"}
FAULT_KINDS = (DOE_DELAY, *RULE_KINDS)  # the rest: vdev.faults rules


def algorithms_json(a: NegotiatedAlgorithms) -> dict[str, Any]:
    names = a.names()
    return {k: names[k] for k in ("asym", "key_exchange", "base_asym", "pqc_asym", "base_hash",
                                  "meas_hash", "dhe", "kem", "aead", "req_base_asym",
                                  "req_pqc_asym")}


def certificate_json(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "sha384": cert.fingerprint(hashes.SHA384()).hex(),
    }


class DeviceControl:
    """The commands, over one TeeDevice; `transport` says how it is served (its
    "client connected" view), `trust_anchor` where the root certificate is on disk."""

    def __init__(self, device: TeeDevice, *, trust_anchor: Path | None = None,
                 transport: StatusExtra | None = None) -> None:
        self.device = device
        self.trust_anchor = trust_anchor
        self.transport = transport or self._vfio_user

    def _vfio_user(self) -> dict[str, Any]:
        # attach()/detach() bracket a vfio-user client: its IRQ sink is set only then.
        return {"kind": "vfio-user", "client_connected": self.device.irq_sink is not None}

    def core(self) -> ControlCore:
        return ControlCore({
            "status": Command(self.status, "everything below, in one object"),
            "identity": Command(self.identity, "certificate chain subjects, fingerprints, "
                                "trust anchor path"),
            "reset": Command(self.reset, "function-level reset of the device"),
            "faults": Command(self.faults, "args {action: list|arm|clear, fault: {kind, ...}}"),
            "doe": Command(self.doe, "DOE mailbox state, protocols and access counters"),
            "sessions": Command(self.sessions, "SPDM connection and sessions"),
            "tdi": Command(self.tdi, "TDI states and transition history"),
            "ide": Command(self.ide, "IDE selective streams: state, key-slot flags and the "
                           "violations of IDE programming rules the device saw"),
        }, role="device")

    # ---- commands --------------------------------------------------------------

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        p = self.device.profile
        return {
            "device": {
                "vendor_id": f"{p.vendor_id:04x}", "device_id": f"{p.device_id:04x}",
                "class_code": f"{p.class_code:06x}", "tee_io": p.tee_io,
                "description": p.description,
            },
            "transport": self.transport(),
            "spdm": self.sessions({}),
            "ide": self.ide({}),
            "ide_rules": self.device.ide_rules.to_json(),
            "tdi": self.tdi({}),
            "doe": self.doe({}),
            "faults": self.faults({}),
        }

    def identity(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        ident = self.device.identity
        return {
            "trust_anchor": str(self.trust_anchor) if self.trust_anchor else None,
            "certificates": [certificate_json(c) for c in ident.certs],  # root first
        }

    def reset(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        self.device.function_level_reset()
        return {"reset": "function-level", "tdi": self.tdi({})}

    def faults(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, {"action", "fault"})
        action = args.get("action", "list")
        fault = args.get("fault")
        if action == "list":
            return {"armed": self._armed_faults(), "kinds": list(FAULT_KINDS)}
        if action not in ("arm", "clear"):
            raise CommandError(f"action {action!r}: expected list, arm or clear")
        if action == "clear" and fault is None:  # clear: every armed fault
            self.device.delay_doe_responses(0, 0)
            injector = getattr(self.device, "fault_injector", None)
            if injector is not None:
                injector.plan.rules.clear()
            return {"armed": self._armed_faults()}
        if not isinstance(fault, dict) or not isinstance(fault.get("kind"), str):
            raise CommandError(f"{action} needs a fault spec object with a \"kind\", "
                               f"e.g. {{\"kind\": \"doe_delay\", \"delay_ms\": 1500, "
                               f"\"count\": 1}}")
        kind = fault["kind"]
        if kind in RULE_KINDS:
            return self._rule_fault(action, fault)
        if kind != DOE_DELAY:
            raise CommandError(f"fault kind {kind!r}: unknown (kinds: {', '.join(FAULT_KINDS)})")
        if action == "clear":
            self.device.delay_doe_responses(0, 0)
            return {"armed": self._armed_faults()}
        try:
            delay = doe_delay_from_dict(fault)
            self.device.delay_doe_responses(delay.delay_ms / 1000, delay.count)
        except ValueError as exc:  # FaultPlanError, or no event loop to release it
            raise CommandError(str(exc)) from None
        return {"armed": self._armed_faults()}

    def _rule_fault(self, action: str, fault: dict[str, Any]) -> dict[str, Any]:
        # The same rule JSON as a --fault-plan [[fault]] table.  The injector is
        # installed on first arm only, so a device never armed keeps its own handlers.
        if action == "arm":
            try:
                rule = rule_from_dict(fault, "fault")
            except FaultPlanError as exc:
                raise CommandError(str(exc)) from None
            install(self.device).plan.rules.append(rule)
        else:  # clear: every rule of that kind (and that match, when given)
            injector = getattr(self.device, "fault_injector", None)
            if injector is not None:
                injector.plan.rules[:] = [
                    r for r in injector.plan.rules
                    if r.kind != fault["kind"] or fault.get("match", r.match) != r.match]
        return {"armed": self._armed_faults()}

    def _armed_faults(self) -> list[dict[str, Any]]:
        d = self.device
        injector = getattr(d, "fault_injector", None)
        rules = [r.to_json() for r in injector.plan.rules] if injector is not None else []
        left = getattr(d, "_doe_delays_left", 0)
        if not left or d.doe.response_gate is None:
            return rules
        return [{"kind": DOE_DELAY, "delay_ms": round(getattr(d, "_doe_delay", 0) * 1000),
                 "count": left}, *rules]

    def doe(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        mb = self.device.doe
        return {
            "state": mb.state.name,
            "interrupt_enabled": mb.int_en,
            "last_error": mb.last_error,
            "protocols": [f"{p.vendor_id:04x}:{p.data_object_type:02x}" for p in mb.protocols],
            "counters": self.device.activity.snapshot(),
        }

    def sessions(self, args: dict[str, Any]) -> dict[str, Any]:
        expect_args(args, set())
        r = self.device.responder
        return {
            "version": SPDM_VERSION_NAMES.get(r.conn.version) if r.conn.version else None,
            # True only once CHALLENGE completed; signed MEASUREMENTS alone leave it False.
            "challenge_completed": bool(getattr(r, "authenticated", False)),
            "algorithms": algorithms_json(r.algorithms),
            "sessions": [
                {
                    "session_id": f"{s.session_id:#010x}",
                    "state": s.state.value,
                    "version": SPDM_VERSION_NAMES.get(s.version, f"{s.version:#x}"),
                    "psk": s.psk,
                    "mac_only": s.mac_only,
                    "heartbeat_period": s.heartbeat_period,
                    "algorithms": algorithms_json(s.algorithms),
                }
                for s in r.sessions.values()
            ],
        }

    def tdi(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        expect_args(args, set())
        tdi = self.device.tdi
        lock = tdi.lock
        return [{
            "interface_id": str(tdi.interface_id),
            "function_id": f"{tdi.interface_id.function_id:#010x}",
            "state": tdi.state.name,
            "lock": None if lock is None else {
                "session_id": None if lock.session_id is None else f"{lock.session_id:#010x}",
                "flags": lock.params.flags,
                "default_stream_id": lock.params.default_stream_id,
                "mmio_reporting_offset": f"{lock.params.mmio_reporting_offset:#x}",
                "start_nonce_pending": lock.nonce is not None,  # whether, never the value
            },
            "history": [
                {"at": e.at, "old": e.old.name, "event": e.event.name, "new": e.new.name,
                 "reason": e.reason}
                for e in tdi.history
            ],
        }]

    def ide(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        expect_args(args, set())
        out = []
        for stream in self.device.ide.streams:
            key_sets = {}
            for ks in KEY_SETS:
                programmed = []
                for direction, sub in SLOTS:
                    try:
                        stream.key(ks, direction, sub)
                    except KeyError:
                        continue
                    programmed.append(f"{direction.name}/{sub.name}")
                key_sets[str(ks)] = {
                    "programmed": stream.keys_programmed(ks),
                    "programmed_slots": programmed,
                    "active_slots": [f"{d.name}/{s.name}" for d, s in SLOTS
                                     if stream.active_key_set(d, s) == ks],
                }
            out.append({
                "index": stream.index,
                "stream_id": stream.stream_id,
                "enabled": stream.enabled,
                "state": stream.state.name,
                "key_sets": key_sets,
                # The rule checker's findings on this stream (vdev.pci.ide_rules).
                "violations": [v.to_json() for v in
                               self.device.ide_rules.for_stream(stream.index)],
            })
        return out


def device_control(device: TeeDevice, *, trust_anchor: Path | None = None,
                   transport: StatusExtra | None = None) -> ControlCore:
    return DeviceControl(device, trust_anchor=trust_anchor, transport=transport).core()


def trust_anchor_path(device: TeeDevice) -> Path | None:
    """The root certificate of the device's identity on disk (None: handed in)."""
    from vdev.endpoint.identity_store import TRUST_ANCHOR

    return device.identity_dir / TRUST_ANCHOR if device.identity_dir is not None else None


def spdm_emu_transport(server: Any) -> StatusExtra:
    """The spdm-emu TCP server's view for `status` (vdev.spdm_emu.server.SpdmEmuServer)."""
    def view() -> dict[str, Any]:
        lock = getattr(server, "_one_at_a_time", None)  # held while a client is served
        return {"kind": "spdm-emu", "port": server.port, "connections": server.connections,
                "client_connected": bool(lock is not None and lock.locked())}
    return view
