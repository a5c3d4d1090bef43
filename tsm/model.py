"""The platform TSM model: SPDM requester + IDE_KM/TDISP requesters + policy, sans-IO.

Like AMD's PSP or Intel's TDX module, the model never touches the device: every
operation yields DOE exchanges (type 1 SPDM, type 2 secured SPDM) for the host to carry
and consumes the responses (see `operations` for the driving loop).  One operation runs
at a time; a failed operation leaves the model usable (e.g. connect again).

    tsm = TsmModel(DeviceRef.parse("0000:01:00.0"), TsmConfig(trust_anchors=[root]))
    for op in (tsm.connect(), tsm.lock(0), tsm.report(0, expected_bars), tsm.start(0)):
        while not op.done:
            req = op.next_request
            op.feed(doe(req.doe_type, req.payload))
        if not op.result.ok:
            print(op.result.reason)

connect (PCIe 6.2 §6.31 CMA/SPDM, §6.33 IDE_KM):
    authentication  GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS, GET_DIGESTS,
                    GET_CERTIFICATE (chain validated against the trust anchors),
                    CHALLENGE and/or signed GET_MEASUREMENTS (fresh nonce) checked
                    against the reference values
    session         KEY_EXCHANGE + FINISH
    ide_km          QUERY, KEY_PROG of the six slots (RX/TX x PR/NPR/CPL) of the default
                    stream with fresh random keys, mirrored into the root-port model,
                    then K_SET_GO on both ends
TDISP (PCIe 6.2 §11.3), per TDI: lock (VERSION, CAPABILITIES once, LOCK), report
(portions, checked against the host's BARs), start (nonce from LOCK; reads and checks the
report itself when none was read since LOCK, refused after a rejected one), stop; after a
TDISP_ERROR to LOCK/START/STOP the TDI's state is read back; disconnect (STOP of locked
TDIs, K_SET_STOP, root-port teardown, END_SESSION); heartbeat, key_update (SPDM session
keys); ide_key_refresh (IDE keys into the other key set, K_SET_GO, retire the old set);
status.

Failures: a device refusal after the session exists (KP_ACK status, TDISP_ERROR, ...)
during connect is unwound (K_SET_STOP of what was programmed, END_SESSION); a lost
session (transport failure, record that does not open, INVALID_SESSION/SESSION_REQUIRED/
DECRYPT_ERROR) makes the model forget it, stop the root-port keys and record locked TDIs
as ERROR, as the device does (§11.4.5).  The next connect starts from GET_VERSION, which
resets the responder's connection (DSP0274 GET_VERSION).
"""

from __future__ import annotations

import datetime
import errno
import functools
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509

from spdm.codes import ErrorCode as SpdmErrorCode
from spdm.codes import ReqCap, RspCap
from spdm.errors import (
    ErrorResponse,
    PeerError,
)
from spdm.hooks import RequesterHooks
from spdm.psk import describe_hint
from spdm.requester import DEFAULT_REQ_CAPS, Operation, Requester, RequesterConfig
from spdm.secured_message import DOE_TRANSPORT, TransportParams
from tdisp.codes import LockFlags, TdiState
from tdisp.device_interface import InterfaceId
from tdisp.errors import TdispErrorResponse, TdispProtocolError
from tdisp.idekm_messages import IFV_SIZE, INITIAL_IFV, KEY_SIZE, KeySlot, QueryResp, SubStream
from tdisp.interface_report import InterfaceReport
from tdisp.messages import TdispCapabilities
from tdisp.requesters import IdeKmRequester, TdispRequester, stream_slots
from tdisp.vendor_defined import PCISIG_VENDOR_ID_BYTES, STANDARD_ID_PCISIG
from tsm import evidence as ev
from tsm.device_ref import DeviceRef, ExpectedBar
from tsm.errors import (
    NotConnected,
    PolicyViolation,
    ReportMismatch,
    TdiNotRunning,
    TransportFailure,
    TsmStateError,
    describe,
    errno_of,
)
from tsm.ide_query import selective_stream_ids
from tsm.mailbox_protocol import DoeRequest, Done
from tsm.operations import OpGen, Progress, TsmOperation
from tsm.reference_values import ReferenceValues
from tsm.report_check import check_report
from tsm.root_port import PlatformRootPort, RootPortIde

# SPDM errors after which the responder no longer has our session (DSP0274 §10.10):
# the record could not be attributed/decrypted, or the responder wants a new connection.
SESSION_LOST_ERRORS = frozenset(
    {
        SpdmErrorCode.INVALID_SESSION,
        SpdmErrorCode.DECRYPT_ERROR,
        SpdmErrorCode.SESSION_REQUIRED,
        SpdmErrorCode.REQUEST_RESYNCH,
    }
)

Authentication = Literal["measurements", "challenge", "both"]

# The Stream ID keyed when QUERY_RESP's IDE registers read all zeros (see _query_port).
AUTO_STREAM_ID = 0


@dataclass
class TsmConfig:
    trust_anchors: Sequence[x509.Certificate]
    reference_values: ReferenceValues | None = None
    policy_file: str | None = None  # for the evidence only
    # Injected time (seconds since the epoch): evidence timestamps and certificate
    # validity.  The model reads no other clock.
    clock: Callable[[], float] = time.time
    random: Callable[[int], bytes] = os.urandom  # keys, IFVs, SPDM nonces
    cert_slot: int = 0
    authentication: Authentication = "measurements"
    # IDE Stream ID of the default stream; None: the one the host configured in the
    # device's first selective stream (SEL_CTL, read from QUERY_RESP).
    stream_id: int | None = 1
    key_set: int = 0
    port_index: int = 0
    # PCIe 6.2 §6.33.3 lets KEY_PROG carry any initial IFV; tee-io-validator (KeyProg 2.5)
    # and our responder's default policy accept only the initial value 1, so random IFVs
    # are opt-in.
    random_ifv: bool = False
    mmio_reporting_offset: int = 0
    lock_flags: int | None = None  # None: NO_FW_UPDATE|LOCK_MSIX as far as supported
    report_chunk: int = 0x400
    # The SPDM requester's DataTransferSize / MaxSPDMmsgSize (DSP0274 GET_CAPABILITIES):
    # a response above DataTransferSize comes in CHUNK_GET exchanges of at most that
    # size, which bounds each DOE exchange the guest carries (docs/protocols.md §12.4).
    spdm_data_transfer_size: int = 4096
    spdm_max_msg_size: int = 65536
    max_log_events: int = 2000  # evidence step log keeps the most recent (long-lived TSMs)
    # SPDM transport binding of the secured messages (DSP0277): DOE, or MCTP (DSP0275).
    transport: TransportParams = field(default_factory=lambda: DOE_TRANSPORT)
    # HBEAT_CAP: the TSM keeps the session alive with HEARTBEAT within the device's
    # HeartbeatPeriod.  Off by default: behind the mailbox the TSM only speaks when the
    # guest carries a DOE exchange, so it could not keep that promise while the guest is
    # idle (with it off, DSP0274 has the device send HeartbeatPeriod 0: no timeout).
    heartbeat: bool = False
    # HANDSHAKE_IN_THE_CLEAR_CAP: KEY_EXCHANGE_RSP..FINISH_RSP in the clear when the
    # device does the same (DSP0274 KEY_EXCHANGE).
    handshake_in_the_clear: bool = False
    # Open the session with PSK_EXCHANGE (and PSK_FINISH when the device sends a context)
    # using the PSK of this hint instead of KEY_EXCHANGE; `psks` maps hints to keys.
    psk_hint: bytes | None = None
    psks: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)
    # A real root port the key operations also go to (tsm.root_port.PlatformRootPort).
    root_port: PlatformRootPort | None = None
    # SPDM 1.3: ask for a multi-key connection (every slot's key usable, DIGESTS with
    # key pair information; docs/protocols.md §3.6).
    multi_key: bool = False


def _flag_text(flags: int) -> str:
    """LOCK_INTERFACE flags as a log line says them: "NO_FW_UPDATE|LOCK_MSIX"."""
    return "|".join(ev.lock_flags(flags)) or "none"


@dataclass
class TdiRecord:
    """What the TSM knows of one TDI.  `nonce` is a secret shared with the device for
    START; it never goes into evidence."""

    interface_id: InterfaceId
    state: TdiState | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    capabilities: TdispCapabilities | None = None
    lock_flags: int | None = None
    mmio_reporting_offset: int = 0
    expected: tuple[ExpectedBar, ...] | None = None
    report: InterfaceReport | None = None
    report_check: str | None = None
    report_ok: bool = False
    # The session in which this TSM locked the TDI, until a STOP: disconnect stops such a
    # TDI whatever its last state read said (a stale or forged DEVICE_INTERFACE_STATE
    # must not leave it locked or running on the device).
    locked_by: int | None = None
    nonce: bytes | None = field(default=None, repr=False)

    def move(self, state: TdiState, t: float, reason: str) -> None:
        if state != self.state or not self.history:
            self.history.append({"t": t, "state": state.name, "reason": reason})
        self.state = state


Gen = Generator[DoeRequest, bytes, Any]


class TsmModel:
    def __init__(
        self, device: DeviceRef, config: TsmConfig, spdm_hooks: RequesterHooks | None = None
    ) -> None:
        self.device = device
        self.config = config
        # Observers of the SPDM requester (tracing); not settings.
        self.spdm_hooks = spdm_hooks or RequesterHooks()
        self.state: Literal["idle", "connected"] = "idle"
        self.last_error: str | None = None
        self.listeners: list[Callable[[str, str], None]] = []  # (phase, text) step log
        self.root_port = RootPortIde(config.clock, platform=config.root_port)
        self.tdis: dict[int, TdiRecord] = {}
        self._events: list[tuple[float, str, str]] = []
        self._active: TsmOperation | None = None
        self._reset_connection()

    # ---- public operations ---------------------------------------------------------

    def connect(self, *, ide: bool = True) -> TsmOperation:
        """Authenticate, open a session and (unless `ide` is False: provisioning, device
        information) key the IDE stream."""
        return self._operation("connect", lambda p: self._connect(p, ide), connect=True)

    def device_info(self) -> TsmOperation:
        """Inside the session, whatever of KEY_PAIR_INFO (every key pair), the
        measurement extension log and (signed, when it can be) the endpoint information
        the device offers.  Value: the evidence's "device_info"."""
        return self._operation("device_info", self._device_info)

    def get_csr(self, *, key_pair_id: int = 0, cert_model: int = 0,
                requester_info: bytes = b"") -> TsmOperation:
        """GET_CSR inside the session.  Value: the DER CSR."""
        return self._operation("get_csr", lambda p: self._get_csr(
            p, key_pair_id, cert_model, requester_info))

    def set_certificate(self, slot: int, chain_der: Sequence[bytes] = (), *,
                        key_pair_id: int = 0, cert_model: int = 0,
                        erase: bool = False) -> TsmOperation:
        """SET_CERTIFICATE inside the session: install `chain_der` (root first) in
        `slot`, or erase it; then read DIGESTS to see the slot as the device has it."""
        return self._operation("set_certificate", lambda p: self._set_certificate(
            p, slot, chain_der, key_pair_id, cert_model, erase))

    def lock(
        self,
        tdi: InterfaceId | int = 0,
        flags: int | None = None,
        expected_mmio: Sequence[ExpectedBar] | None = None,
    ) -> TsmOperation:
        rec = self._tdi(tdi)
        return self._operation("lock", lambda p: self._lock(p, rec, flags, expected_mmio),
                               tdi=rec)

    def report(
        self, tdi: InterfaceId | int = 0, expected_mmio: Sequence[ExpectedBar] | None = None,
        *, raw: bool = False,
    ) -> TsmOperation:
        """Fetch and check the interface report; value: the decoded report (dict), or with
        `raw` the DEVICE_INTERFACE_REPORT bytes (§11.3.11) as the device sent them."""
        rec = self._tdi(tdi)
        return self._operation("report", lambda p: self._report(p, rec, expected_mmio, raw),
                               tdi=rec)

    def start(self, tdi: InterfaceId | int = 0) -> TsmOperation:
        rec = self._tdi(tdi)
        return self._operation("start", lambda p: self._start(p, rec), tdi=rec)

    def stop(self, tdi: InterfaceId | int = 0) -> TsmOperation:
        rec = self._tdi(tdi)
        return self._operation("stop", lambda p: self._stop(p, rec), tdi=rec)

    def status(self, tdi: InterfaceId | int | None = None) -> TsmOperation:
        """GET_DEVICE_INTERFACE_STATE of a TDI; without one, no exchange at all."""
        rec = self._tdi(tdi) if tdi is not None else None
        return self._operation("status", lambda p: self._status(p, rec), tdi=rec)

    def heartbeat(self) -> TsmOperation:
        return self._operation("heartbeat", self._heartbeat)

    def key_update(self) -> TsmOperation:
        """SPDM KEY_UPDATE (UpdateAllKeys + VerifyNewKey) of the session."""
        return self._operation("key_update", self._key_update)

    def ide_key_refresh(self) -> TsmOperation:
        """Re-key the IDE stream: fresh keys into the other key set on both ends,
        K_SET_GO, then K_SET_STOP of the old set.  Value: the new key set."""
        return self._operation("ide_key_refresh", self._ide_key_refresh)

    def disconnect(self) -> TsmOperation:
        return self._operation("disconnect", self._disconnect)

    @property
    def session_id(self) -> int | None:
        return self._session_id

    def tdi_id(self, tdi: InterfaceId | int) -> InterfaceId:
        return tdi if isinstance(tdi, InterfaceId) else self.device.tdi(tdi)

    # ---- evidence ------------------------------------------------------------------

    def evidence(self) -> dict[str, Any]:
        req = self._req
        hsize = req.algorithms.hash_size
        sess = req.sessions.get(self._session_id) if self._session_id is not None else None
        query = self._query
        return {
            "schema": ev.SCHEMA,
            "device": {"dsm": str(self.device), "segment": self.device.segment,
                       "bus": self.device.bus, "devfn": self.device.devfn},
            "state": self.state,
            "last_error": self.last_error,
            "spdm": {
                "version": ev.spdm_version(req.version),
                "algorithms": ev.algorithms(req.algorithms) if req.version else None,
                "responder_capabilities": ev.capabilities(req.conn.rsp_caps),
                "authentication": self._auth_done or None,
                # the most recent session, and whether it is still in use
                "session_id": f"0x{self._last_session:08x}" if self._last_session is not None
                else None,
                "session_state": self._session_state,
                "heartbeat_period": sess.heartbeat_period if sess is not None else None,
            },
            "certificates": ev.certificates(self._chains, hsize) if hsize else [],
            "measurements": ev.measurements(self._blocks),
            "device_info": self._info or None,
            "policy": {"file": self.config.policy_file, "verdicts": self._verdicts},
            "ide": {
                "stream_id": self._stream_id,
                "key_set": self._key_set,
                "port_index": self.config.port_index,
                "query": None if query is None else {
                    "port_index": query.port_index, "dev_func": query.dev_func,
                    "bus": query.bus, "segment": query.segment,
                    "max_port_index": query.max_port_index,
                    "registers": [f"0x{r:08x}" for r in query.registers],
                },
                "device": {"slots": [
                    {"direction": "TX" if s.tx else "RX",
                     "sub_stream": SubStream(s.sub_stream).name,
                     "key_set": s.key_set, "state": st}
                    for s, st in sorted(self._device_slots.items(),
                                        key=lambda i: (i[0].tx, i[0].sub_stream, i[0].key_set))
                ]},
                "root_port": self.root_port.snapshot(),
            },
            "tdis": {str(r.interface_id): self._tdi_evidence(r) for r in self.tdis.values()},
            "log": [{"t": t, "phase": ph, "event": e} for t, ph, e in self._events],
        }

    @staticmethod
    def _tdi_evidence(r: TdiRecord) -> dict[str, Any]:
        return {
            "interface_id": f"0x{r.interface_id.function_id:08x}",
            "state": r.state.name if r.state is not None else None,
            "lock_flags": ev.lock_flags(r.lock_flags) if r.lock_flags is not None else None,
            "mmio_reporting_offset": f"0x{r.mmio_reporting_offset:x}",
            "history": list(r.history),
            "report": ev.report(r.report) if r.report is not None else None,
            "report_check": r.report_check,
        }

    # ---- operation plumbing ------------------------------------------------------

    def _operation(
        self, name: str, body: Callable[[Progress], OpGen], *, connect: bool = False,
        tdi: TdiRecord | None = None,
    ) -> TsmOperation:
        """`tdi`: the TDI the operation is about; its state as the TSM last saw it after
        the operation, failed or not, goes into the result (`Done.tdi_state`)."""
        p = Progress(self.config.clock, events=self._events, listeners=self.listeners)
        if self._active is not None and not self._active.done:
            busy = TsmStateError(f"operation {self._active.name!r} is still in progress")

            def refused(_p: Progress) -> OpGen:
                raise busy
                yield  # pragma: no cover  (makes this a generator)

            return TsmOperation(
                name, refused(p), p,
                lambda _e, _v: Done(-errno.EBUSY, f"{name}: {busy}",
                                    evidence=self.evidence(),
                                    tdi_state=tdi.state if tdi else None),
            )

        def finish(error: BaseException | None, value: Any) -> Done:
            excess = len(self._events) - self.config.max_log_events
            if excess > 0:
                del self._events[:excess]
            if error is None:
                p.log(f"{name}: ok")
                return Done(0, "", value, self.evidence(),
                            tdi_state=tdi.state if tdi else None)
            where = f" at {p.step}" if p.step else ""
            reason = f"{name} failed{where}: {describe(error)}"
            self.last_error = reason
            if connect:
                self._abandon(reason)
            elif self._session_lost(error):
                self._abandon(f"SPDM session lost ({describe(error)})")
            p.log(reason)
            return Done(errno_of(error), reason, evidence=self.evidence(),
                        tdi_state=tdi.state if tdi else None)

        op = TsmOperation(name, body(p), p, finish)
        self._active = op
        return op

    def _session_lost(self, error: BaseException) -> bool:
        if self._session_id is None:
            return False
        if isinstance(error, TransportFailure):
            return True  # the request may have consumed a sequence number (DSP0277)
        if isinstance(error, ErrorResponse):
            return error.code in SESSION_LOST_ERRORS
        return isinstance(error, PeerError)  # e.g. a response record failed to open

    def _reset_connection(self) -> None:
        self._req = Requester(self._requester_config(), self.spdm_hooks)
        self._session_id: int | None = None
        self._last_session: int | None = None
        self._session_state: str | None = None  # "established" | "ended" | "lost"
        self._chains: dict[int, bytes] = {}
        self._blocks: list[Any] = []
        self._verdicts: list[dict[str, Any]] = []
        self._auth_done = ""
        self._query: QueryResp | None = None
        self._device_slots: dict[KeySlot, str] = {}
        self._key_set = self.config.key_set
        self._stream_id: int | None = self.config.stream_id
        self._info: dict[str, Any] = {}

    def _requester_config(self) -> RequesterConfig:
        c = self.config
        clock = c.clock
        caps = int(DEFAULT_REQ_CAPS)
        if not c.heartbeat:
            caps &= ~ReqCap.HBEAT
        if c.handshake_in_the_clear:
            caps |= ReqCap.HANDSHAKE_IN_THE_CLEAR
        return RequesterConfig(
            capabilities=caps,
            trust_anchors=list(c.trust_anchors),
            now=lambda: datetime.datetime.fromtimestamp(clock(), datetime.UTC),
            random=c.random,
            transport=c.transport,
            data_transfer_size=c.spdm_data_transfer_size,
            max_spdm_msg_size=max(c.spdm_max_msg_size, c.spdm_data_transfer_size),
            psk=dict(c.psks),
            multi_key=c.multi_key,
        )

    def _abandon(self, reason: str) -> None:
        """Forget the session and everything keyed to it.  The device does the same on
        its side when the session ends (§11.4.5: keys invalid, locked TDIs -> ERROR)."""
        self.state = "idle"
        if self._session_id is not None:
            self._session_state = "lost"
        self._session_id = None
        self.root_port.stop_all(reason)
        for slot, st in self._device_slots.items():
            if st in ("programmed", "active"):
                self._device_slots[slot] = "lost"  # the device drops them (§11.4.5)
        now = self.config.clock()
        for rec in self.tdis.values():
            rec.nonce = None
            rec.report_ok = False
            if rec.state in (TdiState.CONFIG_LOCKED, TdiState.RUN):
                rec.move(TdiState.ERROR, now, f"assumed by the TSM: {reason} (§11.4.5)")

    def _tdi(self, tdi: InterfaceId | int) -> TdiRecord:
        iid = self.tdi_id(tdi)
        rec = self.tdis.get(iid.function_id)
        if rec is None:
            rec = self.tdis[iid.function_id] = TdiRecord(iid)
        return rec

    def _require_session(self) -> int:
        if self.state != "connected" or self._session_id is None:
            raise NotConnected("not connected (run connect first)")
        return self._session_id

    # ---- exchange helpers --------------------------------------------------------

    @staticmethod
    def _spdm(p: Progress, step: str, op_factory: Callable[[], Operation]) -> Gen:
        p.step = step
        op = op_factory()
        while not op.done:
            assert op.request is not None
            out = op.request
            op.feed((yield DoeRequest(out.doe_type, out.data, out.delay_us)))
        return op.result

    def _vdm(self, p: Progress, step: str, payload: bytes) -> Gen:
        """One PCI-SIG VENDOR_DEFINED exchange inside the session (PCIe 6.2 §6.31.4)."""
        sid = self._require_session()
        out: bytes = yield from self._spdm(
            p, step,
            lambda: self._req.vendor_defined(STANDARD_ID_PCISIG, PCISIG_VENDOR_ID_BYTES,
                                             payload, sid),
        )
        return out

    # ---- connect -----------------------------------------------------------------

    def _connect(self, p: Progress, ide: bool = True) -> Gen:
        c = self.config
        if self.state == "connected":
            # GET_VERSION resets the responder's connection and sessions (DSP0274
            # §10.3), so the old session and its stream are gone either way.
            p.log("dropping the previous connection")
            self._abandon("reconnect")
        self.last_error = None
        self.root_port.clear()
        self._reset_connection()
        req = self._req

        p.enter("authentication")
        yield from self._spdm(p, "GET_VERSION/GET_CAPABILITIES/NEGOTIATE_ALGORITHMS",
                              req.init_connection)
        algs = ev.algorithms(req.algorithms)
        p.log(f"SPDM {ev.spdm_version(req.version)}: {algs['asym']}, {algs['base_hash']},"
              f" {algs['key_exchange']}, {algs['aead']}")
        if c.psk_hint is not None:
            yield from self._psk_session(p)
        else:
            yield from self._certificate_session(p)
        if not ide:
            p.log("no IDE stream keyed (SPDM session only)")
            return f"0x{self._session_id:08x}"

        p.enter("ide_km")
        try:
            yield from self._query_port(p)
            yield from self._program_stream(p, c.key_set)
        except Exception as exc:
            if not isinstance(exc, TransportFailure) and not self._session_lost(exc):
                # Unwind what this connect set up on the device (keys, session) so a
                # refused connect leaves nothing behind; the failure keeps its step.
                step = p.step
                yield from self._unwind(p)
                p.step = step
            raise
        p.log(f"IDE stream {self._stream_id} key set {c.key_set}: both ends Secure"
              if self.root_port.secure else "IDE stream not secure")
        return f"0x{self._session_id:08x}"

    def _check_policy(self, p: Progress, what: str) -> None:
        c = self.config
        if c.reference_values is None:
            return
        p.step = "measurement policy"
        if not self._blocks:
            raise PolicyViolation(f"reference values configured but no {what}")
        self._verdicts, failure = c.reference_values.evaluate(self._blocks)
        if failure:
            raise PolicyViolation(failure)
        p.log(f"measurement policy: {len(self._verdicts)} checks passed")

    def _established(self, p: Progress, sid: int, how: str) -> None:
        self._session_id = sid
        self.state = "connected"
        self._last_session = sid
        self._session_state = "established"
        p.log(f"secured session 0x{sid:08x} established ({how})")

    def _psk_session(self, p: Progress) -> Gen:
        """PSK_EXCHANGE (+ PSK_FINISH), then the measurements inside the session: the PSK
        is the mutual credential, and DSP0274 PSK_EXCHANGE advises against mixing in
        signed responses that nothing binds to the PSK_EXCHANGE_RSP sender."""
        c = self.config
        req = self._req
        caps = req.conn.rsp_caps
        hint = c.psk_hint
        assert hint is not None
        if not caps & (RspCap.PSK | RspCap.PSK_WITH_CONTEXT):
            raise TsmStateError("device does not support PSK sessions (PSK_CAP 00b)")
        if hint not in c.psks:
            raise TsmStateError(f"no PSK for hint {describe_hint(hint)}")
        p.enter("session")
        sid = yield from self._spdm(p, "PSK_EXCHANGE/PSK_FINISH",
                                    lambda: req.psk_exchange(hint))
        self._established(p, sid, f"PSK, hint {describe_hint(hint)}")
        methods = ["psk"]
        if caps & (RspCap.MEAS_NO_SIG | RspCap.MEAS_SIG):
            p.enter("authentication")
            blocks = yield from self._spdm(
                p, "GET_MEASUREMENTS",
                lambda: req.get_measurements(0xFF, signed=False, session_id=sid))
            self._blocks = list(blocks)
            methods.append("measurements-in-session")
            p.log(f"{len(self._blocks)} measurement blocks read inside the PSK session")
        self._auth_done = "+".join(methods)
        self._check_policy(p, "measurements (the device has none)")

    def _certificate_session(self, p: Progress) -> Gen:
        c = self.config
        req = self._req
        caps = req.conn.rsp_caps
        missing = [f.name for f in (RspCap.CERT, RspCap.KEY_EX, RspCap.ENCRYPT, RspCap.MAC)
                   if not caps & f]
        if missing:
            raise TsmStateError(f"device lacks capabilities {missing} needed for TEE-IO")
        digests = yield from self._spdm(p, "GET_DIGESTS", req.get_digests)
        if c.cert_slot not in digests:
            raise TsmStateError(f"device has no certificate in slot {c.cert_slot}")
        yield from self._spdm(p, "GET_CERTIFICATE", lambda: req.get_certificate(c.cert_slot))
        self._chains = dict(req.cert_chains)
        certs = ev.certificates(self._chains, req.algorithms.hash_size)
        p.log("certificate chain trusted: " + " -> ".join(x["subject"] for x in certs))
        methods = []
        if c.authentication in ("challenge", "both") or not caps & RspCap.MEAS_SIG:
            if not caps & RspCap.CHAL:
                raise TsmStateError("device supports neither CHALLENGE nor signed measurements")
            yield from self._spdm(p, "CHALLENGE", lambda: req.challenge(c.cert_slot))
            methods.append("challenge")
            p.log(f"CHALLENGE_AUTH signature verified (slot {c.cert_slot})")
        if c.authentication in ("measurements", "both") and caps & RspCap.MEAS_SIG:
            blocks = yield from self._spdm(
                p, "GET_MEASUREMENTS",
                lambda: req.get_measurements(0xFF, signed=True, slot=c.cert_slot),
            )
            self._blocks = list(blocks)
            methods.append("signed-measurements")
            p.log(f"{len(self._blocks)} signed measurement blocks verified")
        self._auth_done = "+".join(methods)
        self._check_policy(p, "signed measurements")

        p.enter("session")
        sid = yield from self._spdm(p, "KEY_EXCHANGE/FINISH",
                                    lambda: req.key_exchange(c.cert_slot))
        self._established(p, sid, "in the clear handshake" if req.conn.handshake_in_clear
                          else "KEY_EXCHANGE")

    def _query_port(self, p: Progress) -> Gen:
        """IDE_KM QUERY (§6.33.3); settles the Stream ID when taken from the host."""
        c = self.config
        km = IdeKmRequester
        self._query = km.parse_query_resp((yield from self._vdm(p, "QUERY", km.query(
            c.port_index))), c.port_index)
        q = self._query
        p.log(f"IDE_KM QUERY_RESP: port {q.port_index}/{q.max_port_index}, "
              f"{q.bus:02x}:{q.dev_func >> 3:02x}.{q.dev_func & 7} segment {q.segment}")
        if self._stream_id is None:
            ids = selective_stream_ids(q.registers)
            if ids:
                self._stream_id = ids[0]
                p.log(f"using Stream ID {self._stream_id} configured in selective stream 0")
            elif not any(q.registers):
                # A responder without a modelled IDE capability (spdm-emu's sample device)
                # returns an all-zero register block: no host configured anything, and
                # 0 is what an unconfigured selective stream's SEL_CTL Stream ID reads.
                self._stream_id = AUTO_STREAM_ID
                p.log(f"IDE registers in QUERY_RESP read all zeros (no Stream ID "
                      f"configured): keying Stream ID {AUTO_STREAM_ID}; set stream_id "
                      f"(--stream-id) to choose another")
            else:
                raise TsmStateError("no selective IDE stream in QUERY_RESP to take the "
                                    "Stream ID from (configure stream_id)")

    def _program_stream(self, p: Progress, key_set: int) -> Gen:
        """KEY_PROG x6, K_SET_GO x6 on the device, mirrored on the root port."""
        c = self.config
        km = IdeKmRequester
        stream_id = self._stream_id
        assert stream_id is not None
        slots = stream_slots(stream_id, key_set, c.port_index)
        for slot in slots:
            # One fresh key per device slot; the root port gets it for the opposite
            # direction (device RX = root port TX), §6.33.3.
            key = c.random(KEY_SIZE)
            ifv = c.random(IFV_SIZE) if c.random_ifv else INITIAL_IFV
            self.root_port.program(slot, key, ifv)
            km.parse_kp_ack((yield from self._vdm(p, f"KEY_PROG {slot.describe()}",
                                                  km.key_prog(slot, key, ifv))), slot)
            del key
            self._device_slots[slot] = "programmed"
        p.log(f"KEY_PROG: 6 slots of stream {stream_id} key set {key_set} acknowledged")
        for slot in slots:
            km.parse_gostop_ack((yield from self._vdm(p, f"K_SET_GO {slot.describe()}",
                                                      km.k_set_go(slot))), slot)
            for other in list(self._device_slots):
                if (other.tx, other.sub_stream) == (slot.tx, slot.sub_stream) and \
                        self._device_slots[other] == "active":
                    self._device_slots[other] = "programmed"
            self._device_slots[slot] = "active"
            self.root_port.go(slot)
        self._key_set = key_set
        p.log(f"K_SET_GO: key set {key_set} active on device and root port")

    def _stop_device_keys(self, p: Progress, key_set: int | None = None) -> Gen:
        """K_SET_STOP for every slot (of one key set) the device holds a key in."""
        km = IdeKmRequester
        for slot, st in sorted(self._device_slots.items(),
                               key=lambda i: (i[0].key_set, i[0].tx, i[0].sub_stream)):
            if st in ("programmed", "active") and key_set in (None, slot.key_set):
                km.parse_gostop_ack((yield from self._vdm(
                    p, f"K_SET_STOP {slot.describe()}", km.k_set_stop(slot))), slot)
                self._device_slots[slot] = "stopped"

    def _unwind(self, p: Progress) -> Gen:
        """Best effort: stop the device's keys and end the session of a failed connect."""
        sid = self._session_id
        try:
            yield from self._stop_device_keys(p)
            if sid is not None:
                yield from self._spdm(p, "END_SESSION", lambda: self._req.end_session(sid))
                self._session_id = None
                self._session_state = "ended"
                p.log(f"unwound: session 0x{sid:08x} ended")
        except Exception as exc:  # the original failure is what gets reported
            p.log(f"unwinding stopped: {describe(exc)}")

    def _ide_key_refresh(self, p: Progress) -> Gen:
        self._require_session()
        p.enter("ide_km")
        old = self._key_set
        new = old ^ 1
        # Program and activate the other key set, then retire the old one (§6.33.3
        # K_SET_GO switches a slot between its two key sets without a gap).
        yield from self._program_stream(p, new)
        yield from self._stop_device_keys(p, old)
        self.root_port.retire_key_set(old)
        p.log(f"IDE stream {self._stream_id}: key set {old} -> {new}")
        return new

    # ---- TDISP -------------------------------------------------------------------

    def _lock(
        self, p: Progress, rec: TdiRecord, flags: int | None,
        expected: Sequence[ExpectedBar] | None,
    ) -> Gen:
        self._require_session()
        stream_id = self._stream_id
        assert stream_id is not None  # set by connect
        p.enter("tdisp")
        t = TdispRequester(rec.interface_id)
        if rec.capabilities is None:
            t.parse_version((yield from self._vdm(p, "GET_TDISP_VERSION", t.get_version())))
            rec.capabilities = t.parse_capabilities(
                (yield from self._vdm(p, "GET_TDISP_CAPABILITIES", t.get_capabilities())))
            p.log(f"TDI {rec.interface_id}: TDISP 1.0, lock flags supported "
                  f"{_flag_text(rec.capabilities.lock_interface_flags_supported)}")
        # The state before LOCK, for the evidence's history; LOCK is sent regardless so
        # a device refusing it reports its own TDISP_ERROR (§11.3.8).
        state = t.parse_state((yield from self._vdm(p, "GET_DEVICE_INTERFACE_STATE",
                                                    t.get_state())))
        rec.move(state, self.config.clock(), "GET_DEVICE_INTERFACE_STATE before LOCK")
        supported = rec.capabilities.lock_interface_flags_supported
        if flags is None:
            flags = self.config.lock_flags
        if flags is None:
            flags = int(LockFlags.NO_FW_UPDATE | LockFlags.LOCK_MSIX) & supported
        offset = self.config.mmio_reporting_offset
        nonce = yield from self._tdisp_request(
            p, rec, t, "LOCK_INTERFACE_REQUEST", t.lock(flags, stream_id, offset), t.parse_lock)
        rec.nonce = nonce
        rec.lock_flags = flags
        rec.mmio_reporting_offset = offset
        rec.report = None
        rec.report_ok = False
        rec.report_check = None
        rec.expected = tuple(expected) if expected is not None else None
        rec.move(TdiState.CONFIG_LOCKED, self.config.clock(), "LOCK_INTERFACE_RESPONSE")
        rec.locked_by = self._session_id
        p.log(f"TDI {rec.interface_id}: CONFIG_LOCKED (flags {_flag_text(flags)}, "
              f"default stream {stream_id})")
        return rec.state.name if rec.state else None

    def _tdisp_request(self, p: Progress, rec: TdiRecord, t: TdispRequester, step: str,
                       payload: bytes, parse: Callable[[bytes], Any]) -> Gen:
        """A TDISP request that moves the TDI.  When the device refuses it (TDISP_ERROR,
        §11.3.17: the request changes nothing), read the TDI's state, so that what the
        TSM reports is where the device's TDI is, not where the request meant it to be
        (a refused START of a TDI the device has put into ERROR, for instance)."""
        response = yield from self._vdm(p, step, payload)
        try:
            return parse(response)
        except TdispErrorResponse as refusal:
            try:
                state = t.parse_state((yield from self._vdm(
                    p, "GET_DEVICE_INTERFACE_STATE", t.get_state())))
            except Exception as exc:
                p.log(f"TDI {rec.interface_id}: state after the refused {step} not read: "
                      f"{describe(exc)}")
                if self._session_lost(exc):
                    raise exc from refusal
            else:
                rec.move(state, self.config.clock(), f"GET_DEVICE_INTERFACE_STATE after "
                         f"{step} was refused")
            p.step = step
            raise

    def _report(
        self, p: Progress, rec: TdiRecord, expected: Sequence[ExpectedBar] | None, raw: bool
    ) -> Gen:
        self._require_session()
        p.enter("tdisp", "GET_DEVICE_INTERFACE_REPORT")
        reader = TdispRequester(rec.interface_id).report_reader(self.config.report_chunk)
        while (r := reader.next_request()) is not None:
            reader.feed((yield from self._vdm(p, "GET_DEVICE_INTERFACE_REPORT", r)))
        report = reader.report()
        rec.report = report
        p.log(f"TDI {rec.interface_id}: interface report, {reader.portions} portion(s), "
              f"{len(report.mmio_ranges)} MMIO ranges")
        bars = tuple(expected) if expected is not None else rec.expected
        if bars is None:
            rec.report_check = "not checked: no expected MMIO ranges supplied"
            rec.report_ok = True
        else:
            p.step = "report check"
            problem = check_report(report, bars, rec.mmio_reporting_offset)
            if problem is not None:
                rec.report_check = f"mismatch: {problem}"
                rec.report_ok = False
                raise ReportMismatch(
                    f"interface report does not match the host's BARs: {problem}")
            rec.report_check = f"matches {len(bars)} expected BAR(s)"
            rec.report_ok = True
        p.log(f"report check: {rec.report_check}")
        return bytes(reader.data) if raw else ev.report(report)

    def _start(self, p: Progress, rec: TdiRecord) -> Gen:
        self._require_session()
        p.enter("tdisp", "START_INTERFACE_REQUEST")
        if rec.nonce is None:
            raise TsmStateError(f"TDI {rec.interface_id} is not locked by this TSM")
        # The TSM vouches for the TDI's configuration at START; §11.3 has it review the
        # interface report of the locked TDI first.  START reads and checks the report
        # itself when nobody has since the LOCK, so that lock-then-start works as it
        # does for a kernel's bind-then-accept; a report already rejected stays
        # rejected (the TDI is locked: the device cannot have fixed it since).
        if rec.report is None:
            yield from self._report(p, rec, None, raw=False)
            p.enter("tdisp", "START_INTERFACE_REQUEST")
        elif not rec.report_ok:
            raise ReportMismatch(f"TDI {rec.interface_id}: its interface report was "
                                 f"rejected ({rec.report_check}); STOP and LOCK again")
        t = TdispRequester(rec.interface_id)
        nonce, rec.nonce = rec.nonce, None  # single use (§11.3.8)
        yield from self._tdisp_request(p, rec, t, "START_INTERFACE_REQUEST", t.start(nonce),
                                       t.parse_start)
        state = t.parse_state((yield from self._vdm(p, "GET_DEVICE_INTERFACE_STATE",
                                                    t.get_state())))
        rec.move(state, self.config.clock(), "START_INTERFACE_RESPONSE")
        if state != TdiState.RUN:
            raise TdiNotRunning(f"TDI {rec.interface_id} in {state.name} after START", state)
        p.log(f"TDI {rec.interface_id}: RUN")
        return state.name

    def _stop(self, p: Progress, rec: TdiRecord) -> Gen:
        self._require_session()
        p.enter("tdisp", "STOP_INTERFACE_REQUEST")
        t = TdispRequester(rec.interface_id)
        yield from self._tdisp_request(p, rec, t, "STOP_INTERFACE_REQUEST", t.stop(),
                                       t.parse_stop)
        rec.locked_by = None
        rec.nonce = None
        rec.report_ok = False
        state = t.parse_state((yield from self._vdm(p, "GET_DEVICE_INTERFACE_STATE",
                                                    t.get_state())))
        rec.move(state, self.config.clock(), "STOP_INTERFACE_RESPONSE")
        p.log(f"TDI {rec.interface_id}: {state.name}")
        return state.name

    def _status(self, p: Progress, rec: TdiRecord | None) -> Gen:
        if rec is None:
            return self.state
            yield  # pragma: no cover
        self._require_session()
        p.enter("tdisp")
        t = TdispRequester(rec.interface_id)
        state = t.parse_state((yield from self._vdm(p, "GET_DEVICE_INTERFACE_STATE",
                                                    t.get_state())))
        rec.move(state, self.config.clock(), "GET_DEVICE_INTERFACE_STATE")
        return state.name

    # ---- provisioning and device information (docs/protocols.md §3.6, §3.7) ----------

    def _device_info(self, p: Progress) -> Gen:
        sid = self._require_session()
        req = self._req
        caps = req.conn.rsp_caps
        info: dict[str, Any] = {"multi_key": req.conn.multi_key}
        p.enter("device_info")
        if caps & RspCap.GET_KEY_PAIR_INFO:
            first = yield from self._spdm(p, "GET_KEY_PAIR_INFO",
                                          lambda: req.get_key_pair_info(1, sid))
            pairs = [first]
            for kp in range(2, first.total_key_pairs + 1):
                pairs.append((yield from self._spdm(
                    p, "GET_KEY_PAIR_INFO", functools.partial(req.get_key_pair_info, kp,
                                                              sid))))
            info["key_pairs"] = [ev.key_pair(x) for x in pairs]
            p.log(f"{len(pairs)} key pairs")
        if caps & RspCap.MEL and req.algorithms.mel_spec:
            log = yield from self._spdm(p, "GET_MEASUREMENT_EXTENSION_LOG",
                                        lambda: req.get_mel(sid))
            info["mel"] = ev.mel(log)
            p.log(f"measurement extension log: {len(info['mel']['entries'])} entries")
        if caps & (RspCap.EP_INFO_NO_SIG | RspCap.EP_INFO_SIG):
            signed = bool(caps & RspCap.EP_INFO_SIG) and self.config.cert_slot in req.leaf_keys
            slot = self.config.cert_slot
            data = yield from self._spdm(p, "GET_ENDPOINT_INFO", lambda: req.get_endpoint_info(
                signed=signed, slot=slot, session_id=sid))
            info["endpoint_info"] = {**ev.endpoint_info(data), "signed": signed}
            p.log("endpoint information" + (" (signature verified)" if signed else ""))
        self._info = info
        return info

    def _get_csr(self, p: Progress, key_pair_id: int, cert_model: int,
                 requester_info: bytes) -> Gen:
        sid = self._require_session()
        p.enter("provisioning")
        csr: bytes = yield from self._spdm(p, "GET_CSR", lambda: self._req.get_csr(
            requester_info, key_pair_id=key_pair_id, cert_model=cert_model, session_id=sid))
        p.log(f"CSR of {len(csr)} bytes" + (f" for key pair {key_pair_id}"
                                              if key_pair_id else ""))
        return csr

    def _set_certificate(self, p: Progress, slot: int, chain_der: Sequence[bytes],
                         key_pair_id: int, cert_model: int, erase: bool) -> Gen:
        sid = self._require_session()
        req = self._req
        p.enter("provisioning")
        yield from self._spdm(p, "SET_CERTIFICATE", lambda: req.set_certificate(
            slot, chain_der, key_pair_id=key_pair_id, cert_model=cert_model, erase=erase,
            session_id=sid))
        digests = yield from self._spdm(p, "GET_DIGESTS", lambda: req.get_digests(sid))
        if erase:
            p.log(f"slot {slot} erased; slots now {sorted(digests)}")
            return sorted(digests)
        if slot not in digests:
            raise TsmStateError(f"SET_CERTIFICATE succeeded but DIGESTS lacks slot {slot}")
        p.log(f"certificate chain installed in slot {slot}; slots now {sorted(digests)}")
        return sorted(digests)

    # ---- session maintenance and teardown ------------------------------------------

    def _heartbeat(self, p: Progress) -> Gen:
        sid = self._require_session()
        if not self.config.heartbeat:
            raise TsmStateError("heartbeat is off: this TSM did not advertise HBEAT_CAP "
                                "(TsmConfig.heartbeat)")
        p.enter("session")
        yield from self._spdm(p, "HEARTBEAT", lambda: self._req.heartbeat(sid))
        return True

    def _key_update(self, p: Progress) -> Gen:
        sid = self._require_session()
        p.enter("session")
        yield from self._spdm(p, "KEY_UPDATE", lambda: self._req.key_update(sid))
        p.log("session keys updated and verified")
        return True

    def _disconnect(self, p: Progress) -> Gen:
        sid = self._require_session()
        try:
            # Best effort up to END_SESSION: a device that refuses a STOP or a
            # K_SET_STOP (e.g. its IDE keys went with an FLR) must still get its
            # session ended, or the session would be left open on the device.
            p.enter("tdisp")
            for rec in self.tdis.values():
                if rec.state in (TdiState.CONFIG_LOCKED, TdiState.RUN, TdiState.ERROR) \
                        or rec.locked_by == sid:
                    try:
                        yield from self._stop(p, rec)
                    except _DEVICE_REFUSALS as exc:
                        p.log(f"device refused STOP, ending the session anyway: {describe(exc)}")
            p.enter("ide_km")
            try:
                yield from self._stop_device_keys(p)
                p.log("IDE keys stopped on device and root port")
            except _DEVICE_REFUSALS as exc:
                for slot, st in self._device_slots.items():
                    if st in ("programmed", "active"):
                        self._device_slots[slot] = "lost"
                p.log(f"device refused K_SET_STOP (keys lost?), ending the session anyway: "
                      f"{describe(exc)}")
            self.root_port.stop_all("disconnect")
            p.enter("session")
            yield from self._spdm(p, "END_SESSION", lambda: self._req.end_session(sid))
            p.log(f"session 0x{sid:08x} ended")
            self._session_state = "ended"
        finally:
            # Whatever happened, this TSM no longer uses the session or the stream.
            self.state = "idle"
            self._session_id = None
            if self._session_state == "established":
                self._session_state = "abandoned"
            self.root_port.stop_all("disconnect")
        return True


# Errors the device answered with (as opposed to a dead transport).
_DEVICE_REFUSALS = (ErrorResponse, TdispProtocolError)
