"""What a guest run must show, as named checks shared by `make run` and the tests.

Each check compares what the guest printed (sysfs, its own view of config
space, interrupt counts, dmesg) with what the device profile says should be
there.  The config-space decoding uses `ConfigDump`, which is independent of
the device model under test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vdev.pci.ide_cap import IdeStreamState
from vdev.vm.config_dump import ConfigDump
from vdev.vm.qemu import VmResult

PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_CAP_ID_PM = 0x01
PCI_EXT_CAP_ID_DOE = 0x2E
PCI_EXT_CAP_ID_IDE = 0x30
PCI_EXP_DEVCAP_TEE = 1 << 30
PCI_EXP_DEVCAP_FLR = 1 << 28
PCI_EXP_TYPE_ENDPOINT = 0x0

# Kernel log lines that mean something went wrong in a test.
# WARN()/BUG()/oops print these words in capitals (kernel/panic.c, lib/bug.c);
# a driver's "Warning: ..." (e.g. ACPI's "Processor Platform Limit event
# detected, but not handled" on a config without the ACPI processor driver)
# is not one of them.
BAD_DMESG = re.compile(r"WARNING:|BUG:|Oops|Call Trace|general protection"
                       r"|(?i:DOE.*(fail|error|abort)|pci_doe|doe.*timed out)")


@dataclass(frozen=True)
class Expected:
    """The device as its profile describes it, for comparison with the guest's view."""

    bdf: str
    vendor_id: int
    device_id: int
    class_code: int
    revision: int
    id_off: int
    id_value: int
    scratch_off: int
    scratch_reset: int
    doorbell_off: int


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    # An observation, not a requirement (what a kernel with its own TSM did):
    # reported, never failed.
    info: bool = False


def _hex(v: str | None) -> int | None:
    try:
        return int(v, 16) if v is not None else None
    except ValueError:
        return None


def foundation_checks(res: VmResult, exp: Expected) -> list[Check]:
    out: list[Check] = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append(Check(name, bool(ok), detail))

    add("guest booted", res.value("boot") is not None,
        f"kernel {res.value('boot')}, accel {res.accel}, {res.seconds:.1f} s")
    err = res.value("error")
    add("device enumerated", err is None and res.value("vendor") is not None,
        err or f"{exp.bdf} {res.value('vendor')}:{res.value('device')}")
    add("IDs match profile",
        _hex(res.value("vendor")) == exp.vendor_id and _hex(res.value("device")) == exp.device_id,
        f"guest {res.value('vendor')}:{res.value('device')}, "
        f"profile {exp.vendor_id:#06x}:{exp.device_id:#06x}")
    add("class matches profile", _hex(res.value("class")) == exp.class_code,
        f"guest {res.value('class')}, profile {exp.class_code:#08x}")

    cfg_hex = res.value("config") or ""
    if len(cfg_hex) == 8192:
        cfg = ConfigDump(cfg_hex)
        caps, ext = cfg.capabilities(), cfg.ext_capabilities()
        exp_off = caps.get(PCI_CAP_ID_EXP)
        ptype = (cfg.u16(exp_off + 2) >> 4) & 0xF if exp_off else None
        devcap = cfg.u32(exp_off + 4) if exp_off else 0
        add("PCIe Endpoint", ptype == PCI_EXP_TYPE_ENDPOINT,
            f"PCIe cap at {exp_off:#x}, type {ptype}" if exp_off else "no PCIe capability")
        add("DEVCAP TEE-IO bit 30", bool(devcap & PCI_EXP_DEVCAP_TEE), f"DEVCAP {devcap:#010x}")
        add("FLR capable", bool(devcap & PCI_EXP_DEVCAP_FLR), f"DEVCAP {devcap:#010x}")
        add("MSI-X and PM capabilities",
            PCI_CAP_ID_MSIX in caps and PCI_CAP_ID_PM in caps,
            "standard caps " + ", ".join(f"{k:#04x}@{v:#x}" for k, v in sorted(caps.items())))
        ide = ext.get(PCI_EXT_CAP_ID_IDE)
        add("DOE and IDE extended capabilities",
            PCI_EXT_CAP_ID_DOE in ext and ide is not None and bool(cfg.u32(ide + 4) & 0x2),
            "extended caps " + ", ".join(f"{k:#06x}@{v:#x}" for k, v in sorted(ext.items())))
    else:
        add("config space read by guest", False, f"got {len(cfg_hex) // 2} bytes")

    feats = set((res.value("doe_features") or "").split())
    add("DOE protocols discovered", {"0001:01", "0001:02", "doe_discovery"} <= feats,
        "doe_features: " + " ".join(sorted(feats)))

    add("guest driver bound", res.value("bound") == "vdevtest", f"bound={res.value('bound')}")
    rc, _, rsp = (res.value("doe_get_version") or "").partition(" ")
    spdm = bytes.fromhex(rsp) if rsp and len(rsp) % 2 == 0 else b""
    add("SPDM over the kernel's DOE",
        len(spdm) >= 4 and spdm[0] == 0x10 and spdm[1] in (0x04, 0x7F),
        f"pci_doe(0001:01, GET_VERSION) -> rc {rc or '?'}, "
        + (_spdm_summary(spdm) if spdm else "no response"))
    add("device ID register", _hex(res.value("id_reg")) == exp.id_value,
        f"BAR0+{exp.id_off:#x} = {res.value('id_reg')}")
    before, after = _int(res.value("irq_before")), _int(res.value("irq_after_doorbell"))
    add("doorbell raises MSI-X", before is not None and after == before + 1,
        f"interrupt count {before} -> {after}")
    add("FLR", res.value("flr") == "ok" and res.value("reset_method_set") == "flr",
        f"reset_method {res.value('reset_method')!r}, reset {res.value('flr')}")
    add("FLR resets device state",
        _hex(res.value("scratch_before_flr")) == 0x5A5AA5A5
        and _hex(res.value("scratch_after_flr")) == exp.scratch_reset,
        f"scratch {res.value('scratch_before_flr')} -> {res.value('scratch_after_flr')}")
    after_flr = _int(res.value("irq_after_flr_doorbell"))
    add("device answers after FLR",
        _hex(res.value("id_after_flr")) == exp.id_value and after is not None
        and after_flr == after + 1,
        f"ID {res.value('id_after_flr')}, interrupts {after} -> {after_flr}")
    bad = [line for line in res.dmesg if BAD_DMESG.search(line)]
    add("clean guest kernel log", bool(res.dmesg) and not bad,
        "; ".join(bad[:3]) or ("no WARN/BUG/oops/DOE errors" if res.dmesg
                               else "the guest never printed its kernel log"))
    add("guest powered off", res.completed and not res.timed_out and res.returncode == 0,
        f"QEMU exit {res.returncode}" + (" (timeout)" if res.timed_out else ""))
    return out


def _spdm_summary(msg: bytes) -> str:
    """VERSION entries or the ERROR code of an SPDM response."""
    if len(msg) >= 6 and msg[1] == 0x04:
        count = msg[5]
        entries = [int.from_bytes(msg[6 + 2 * i:8 + 2 * i], "little") for i in range(count)]
        return "VERSION " + ", ".join(f"{e >> 12}.{(e >> 8) & 0xF}" for e in entries)
    if len(msg) >= 4 and msg[1] == 0x7F:
        return f"ERROR code {msg[2]:#04x}"
    return msg.hex()


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ConnectExpected:
    """What the full connect flow must show (make run, guest tests)."""

    ep: str
    mb: str
    id_value: int
    # The root port has an IDE capability (the patched QEMU): the kernel's pci_ide
    # runs the stream, not vtsm's direct programming.
    root_port_ide: bool = False
    ide_stream_id: int = 1


def _rc_ok(v: str | None) -> bool:
    return (v or "").startswith("0 ")


def connect_checks(
    res: VmResult, exp: ConnectExpected, evidence: dict[str, Any] | None
) -> list[Check]:
    from tdisp.interface_report import InterfaceReport, mmio_attributes

    out: list[Check] = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append(Check(name, bool(ok), detail))

    v = res.value
    ev: dict[str, Any] = evidence or {}
    add("vtsm loaded, tsm0 registered",
        v("vtsm_insmod") == "ok" and v("tsm_class") == "tsm0",
        f"/sys/class/tsm: {v('tsm_class')!r}")
    add("tsm0 parented to the mailbox", exp.mb in (v("tsm_parent") or ""),
        v("tsm_parent") or "missing")
    add("tsm/connect", _rc_ok(v("connect")) and v("tsm_connect") == "tsm0",
        f"echo tsm0 > tsm/connect: {v('connect')}; reads {v('tsm_connect')!r}")
    add("authenticated, tsm/dsm", v("authenticated") == "tsm0" and v("tsm_dsm") == exp.ep,
        f"authenticated={v('authenticated')!r} dsm={v('tsm_dsm')!r}")
    spdm = ev.get("spdm") or {}
    algs = spdm.get("algorithms") or {}
    add("SPDM negotiated", bool(spdm.get("version")) and bool(algs.get("asym")),
        f"SPDM {spdm.get('version')} {algs.get('asym')}/{algs.get('base_hash')}/"
        f"{algs.get('key_exchange')}/{algs.get('aead')}")
    certs = ev.get("certificates") or []
    add("device certificate verified", bool(certs),
        f"leaf {certs[-1].get('subject')}" if certs else "no certificates in evidence")
    verdicts = (ev.get("policy") or {}).get("verdicts")
    meas = ev.get("measurements") or []
    ok_meas = bool(meas) and all(x.get("verdict") in ("ok", "match", "pass")
                                 for x in (verdicts or []))
    add("measurements", ok_meas,
        f"{len(meas)} signed blocks; verdicts "
        + (", ".join(f"{x.get('index')}:{x.get('verdict')}" for x in verdicts)
           if verdicts else "none (no policy)"))
    add("SPDM session", spdm.get("session_id") is not None,
        f"session {spdm.get('session_id')} ({spdm.get('session_state')} after disconnect)")
    out += ide_checks(res, exp, ev)
    add("TDISP LOCK", _rc_ok(v("tdi_lock")) and v("tsm_bound") == "tsm0"
        and (v("tdi_state_locked") or "").endswith(" CONFIG_LOCKED"),
        f"lock {v('tdi_lock')}; bound={v('tsm_bound')!r}; {v('tdi_state_locked')}")
    report_ok, report_detail = False, "no report"
    try:
        rep = InterfaceReport.decode(bytes.fromhex(v("report_hex") or ""))
        bar0 = int((v("ep_bar0") or "0 0").split()[0], 16)
        ranges = rep.mmio_ranges
        report_ok = any(r.first_page == bar0 for r in ranges)
        first = f"{ranges[0].first_page:#x}" if ranges else "nowhere"
        report_detail = (
            f"{len(ranges)} MMIO ranges from {first} (guest BAR0 {bar0:#x}): "
            + ", ".join(f"{r.number_of_pages} page{'s' if r.number_of_pages != 1 else ''} "
                        f"{mmio_attributes(r.range_attributes)}" for r in ranges))
    except (ValueError, Exception) as exc:  # noqa: BLE001 - any decode failure is the finding
        report_detail = f"undecodable: {exc}"
    add("interface report matches BAR0", report_ok, report_detail)
    add("START -> RUN", _rc_ok(v("tdi_start")) and (v("tdi_state_run") or "").endswith(" RUN"),
        f"start {v('tdi_start')}; {v('tdi_state_run')}")
    irqs = (v("run_irqs") or "").split()
    add("MMIO in RUN", _hex(v("run_id_reg")) == exp.id_value
        and _hex(v("run_scratch")) == 0x600D600D
        and len(irqs) == 2 and int(irqs[1]) == int(irqs[0]) + 1
        and "RUN" in (v("tdi_status_run") or ""),
        f"ID {v('run_id_reg')}, scratch {v('run_scratch')}, MSI-X {' -> '.join(irqs)}, "
        f"status {v('tdi_status_run')}")
    add("STOP", _rc_ok(v("tdi_stop")) and v("tsm_bound_after_stop") == ""
        and "UNLOCKED" in (v("tdi_state_stopped") or ""),
        f"stop {v('tdi_stop')}; {v('tdi_state_stopped')}")
    add("disconnect", _rc_ok(v("disconnect")) and v("authenticated_after") == "",
        f"disconnect {v('disconnect')}; authenticated={v('authenticated_after')!r}")
    add("vtsm unloaded", v("vtsm_rmmod") == "ok", f"rmmod {v('vtsm_rmmod')}")
    return out


def kernel_tsm_checks(res: VmResult) -> list[Check]:
    """What a kernel did with the endpoint on its own, vtsm.ko left out
    (guest-tests/scripts/kernel-tsm.sh): observations, reported as they are."""
    out: list[Check] = []
    v = res.value

    def info(name: str, detail: str) -> None:
        out.append(Check(name, True, detail or "none", info=True))

    info("/sys/class/tsm", v("ktsm_class") or "")
    for dev in res.values("ktsm_dev"):
        name, _, path = dev.partition(" ")
        info(f"{name} registered", path)
    info("endpoint tsm/ attributes", v("ktsm_attrs") or "")
    info("authenticated (before connect)", repr(v("kauthenticated") or ""))
    for rc in res.values("kconnect"):
        info(f"connect {rc.split(' ', 1)[0]}", "echo > tsm/connect: " + rc.split(" ", 1)[-1])
    for state in res.values("kconnected"):
        info(f"after connect {state.split(' ', 1)[0]}", state.split(" ", 1)[-1])
    for rc in res.values("kdisconnect"):
        info(f"disconnect {rc.split(' ', 1)[0]}", rc.split(" ", 1)[-1])
    lines = [line.split("] ", 1)[-1] for line in res.values("kdmesg")]
    info("kernel log (TSM, IDE, DOE, SPDM)",
         " | ".join(lines[:4]) + (f" (+{len(lines) - 4} more)" if len(lines) > 4 else ""))
    return out


# QEMU's trace line (on its stderr) for a rule violation of the patched root port
# (-trace pcie_ide_*).
QEMU_IDE_VIOLATION = re.compile(r"pcie_ide_violation (.*)")


def ide_state_name(state: int | None) -> str:
    """A Selective IDE Stream State as the spec names it (PCIe 6.2 §7.9.26.5.3), or "not
    enabled" for a stream the guest did not find enabled."""
    if state is None:
        return "not enabled"
    try:
        return f"{IdeStreamState(state).name} ({state})"
    except ValueError:
        return f"reserved state {state}"


def ide_checks(res: VmResult, exp: ConnectExpected, ev: dict[str, Any]) -> list[Check]:
    """The IDE stream of the connect flow, from both ends' registers as the guest
    read them (`connect.sh`: before, while connected, after disconnect)."""
    v = res.value
    out: list[Check] = []
    sid = exp.ide_stream_id
    path = v("ide_stream") or ""
    if not exp.root_port_ide:
        secure = [line for line in res.dmesg if "IDE stream" in line and "enabled: Secure" in line]
        out.append(Check("IDE path", path == f"{exp.ep} direct",
                         f"{path!r}: vtsm programs the endpoint (root port without IDE)"))
        out.append(Check("IDE stream SECURE", bool(secure),
                         secure[0].split("] ", 1)[-1] if secure
                         else "no 'vtsm: IDE stream ... enabled: Secure' in dmesg"))
        return out

    links = v("ide_links_connected") or ""
    out.append(Check("IDE path", path.startswith(f"{exp.ep} pci_ide stream"),
                     f"{path!r}: the kernel's pci_ide set the stream up on both ends"))
    states = {}
    for end in ("ep", "rp"):
        for when in ("connected", "after"):
            dump = v(f"{end}_config_{when}")
            states[end, when] = ConfigDump(dump).ide_stream_state(sid) if dump else None
    out.append(Check(
        "IDE stream SECURE",
        states["ep", "connected"] == 2 and states["rp", "connected"] == 2,
        f"Stream ID {sid}: endpoint {ide_state_name(states['ep', 'connected'])}, root port "
        f"{ide_state_name(states['rp', 'connected'])}"))
    try:
        before, during, after = (int(v(f"ide_avail_{w}") or "")
                                 for w in ("before", "connected", "after"))
    except ValueError:
        before = during = after = -1
    out.append(Check(
        "IDE stream registered",
        bool(links) and path.endswith(links) and during == before - 1 and after == before
        and not v("ide_links_after"),
        f"{links or 'no streamH.R.E link'} under the host bridge; available_secure_streams "
        f"{before} -> {during} -> {after}"))
    torn = states["ep", "after"] is None and states["rp", "after"] is None
    out.append(Check(
        "IDE torn down", torn,
        f"after disconnect no enabled stream with Stream ID {sid} on either end" if torn
        else f"still enabled after disconnect: endpoint {ide_state_name(states['ep', 'after'])}, "
             f"root port {ide_state_name(states['rp', 'after'])}"))
    # QEMU traces every violation; the TSM's evidence has the port's own list too.
    traced = [m.group(1).strip() for line in res.stderr
              if (m := QEMU_IDE_VIOLATION.search(line))]
    platform = ((ev.get("ide") or {}).get("root_port") or {}).get("platform") or {}
    found = traced + [f"{x.get('rule')}: {x.get('message')}"
                      for x in platform.get("violations") or []
                      if not any(str(x.get("message")) in t for t in traced)]
    out.append(Check("IDE rules (root port checker)", not found,
                     "; ".join(found) if found else "no violation recorded"))
    return out
