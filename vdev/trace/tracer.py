"""The trace: an observer outside the protocol engines.

A `Tracer` receives what the adapters see: whole DOE objects in both directions (and
writes them to the pcap as they went over the wire, secured ones encrypted), secured
SPDM messages in plaintext from the engines' `message_observer` hooks (DSP0277 records
opened by the responder / requester, marked ``secured``), and state transitions from
the device's observers (TDI state machine, IDE streams, SPDM sessions).  Each becomes
one `Event`: text (one line) or JSON lines.

Directions are named from the protocol, not from the process writing the trace:
``->`` / "req" is requester to responder, ``<-`` / "rsp" the reverse, ``==`` a state
transition.  Time is wall-clock seconds (UTC in the text format).

Secrets never go into the trace.  With `log_secrets` the engines' opt-in `secret_sink`
prints ``[DHE Secret]: <hex>`` / ``[PSK]: <hex>`` lines, the form DMTF's emulators print
for spdm_dump (docs/protocols.md §10), to a separate stream (stderr).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from construct import Bytes, Int16ul, Int32ul, Rebuild, Struct, len_, this

from spdm.hooks import RequesterHooks
from vdev.doe.data_object import (
    DOE_TYPE_CMA_SPDM,
    DOE_TYPE_SECURED_CMA_SPDM,
    HEADER_DW,
    PCI_SIG_VENDOR_ID,
    DoeProtocolId,
    build_object,
    parse_header,
)
from vdev.trace.decode import Decoder, Summary
from vdev.trace.pcap import PcapngWriter, PcapWriter

log = logging.getLogger(__name__)

REQ, RSP, STATE = "req", "rsp", "state"
ARROWS = {REQ: "->", RSP: "<-", STATE: "=="}


@dataclass(frozen=True)
class Event:
    t: float
    side: str  # "device" | "tsm": which process wrote the trace
    dir: str  # "req" | "rsp" | "state"
    proto: str  # "doe" | "spdm" | "idekm" | "tdisp" | "state"
    msg: str
    summary: str
    session: str | None = None  # "0xff000001"
    secured: bool = False
    error: bool = False
    state: str | None = None  # the transition this message caused, where known

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def to_text(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self.t, datetime.UTC).strftime("%H:%M:%S.%f")
        sess = f"sess={self.session}" if self.session else "-"
        mark = "[secured] " if self.secured else ""
        tail = f" => {self.state}" if self.state and self.dir != STATE else ""
        return (f"{stamp} {self.side} {ARROWS[self.dir]} {self.proto:<5} {sess} "
                f"{mark}{self.summary}{tail}")


def _never_raises(method: Callable[..., None]) -> Callable[..., None]:
    """Tracing is an observer: whatever a peer sends (or a decoder bug) must not reach
    the engine that called it or the device serving the guest.  A failure costs one
    event, shown as TRACE_ERROR."""

    @functools.wraps(method)
    def wrapper(self: Tracer, *args: object, **kwargs: object) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # the observed exchange goes on either way
            log.debug("trace: %s failed", method.__name__, exc_info=True)
            try:
                if self.out is not None:
                    self._write(Event(self.clock(), self.side, STATE, "state", "TRACE_ERROR",
                                      f"TRACE_ERROR {method.__name__}: {type(exc).__name__}",
                                      error=True))
            except Exception:  # a broken output file: nothing more to say
                pass

    return wrapper


def _sid(session: int | None) -> str | None:
    return None if session is None else f"{session:#010x}"


class Tracer:
    def __init__(
        self,
        side: str,
        *,
        out: TextIO | None = None,
        fmt: str = "text",
        pcap: PcapWriter | None = None,
        pcap_decrypted: PcapngWriter | None = None,
        log_secrets: bool = False,
        secrets_out: TextIO | None = None,
        infer_state: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"trace format {fmt!r}: text or json")
        self.side = side
        self.out = out
        self.fmt = fmt
        self.pcap = pcap
        # The same objects with every secured record decrypted (DecryptedCapture).
        self.decrypted = DecryptedCapture(pcap_decrypted) if pcap_decrypted else None
        self.log_secrets = log_secrets
        self.secrets_out = secrets_out
        # The TSM side has no state observers of the device: it shows the transitions a
        # response implies (FINISH_RSP: session established, LOCK_INTERFACE_RESPONSE: TDI
        # CONFIG_LOCKED, ...).  The device side reports the real ones from its observers.
        self.infer_state = infer_state
        self.clock = clock
        self.decoder = Decoder()
        self.events = 0
        # Outputs that failed (a full disk, /dev/full, a closed pipe): one line each,
        # "--trace FILE: reason"; the output is dropped, the traced exchange goes on.
        self.lost: list[str] = []

    # ---- inputs -------------------------------------------------------------------------

    @_never_raises
    def doe(self, direction: str, obj: bytes) -> None:
        """One whole DOE object as it went over the wire."""
        t = self.clock()
        if self.pcap is not None:
            try:
                self.pcap.write(obj, t)
            except OSError as exc:
                self._lose("--pcap", self.pcap.out, exc)
                self.pcap = None
        self._to_decrypted(lambda pcap: pcap.wire(direction, obj, t))
        if self.out is None:
            return
        s = self.decoder.doe(obj, request=direction == REQ)
        self._emit(t, direction, s, secured=False)
        if len(obj) >= 4 * HEADER_DW:
            h = parse_header(obj)
            if h.protocol == DoeProtocolId(PCI_SIG_VENDOR_ID, DOE_TYPE_CMA_SPDM):
                self._emit(t, direction, self.decoder.spdm(obj[4 * HEADER_DW :]), secured=False)

    @_never_raises
    def message(self, direction: str, doe_type: int, payload: bytes) -> None:
        """A message on a transport without DOE objects (spdm-emu MCTP / NONE)."""
        if self.out is None:
            return
        t = self.clock()
        if doe_type == DOE_TYPE_SECURED_CMA_SPDM:
            sid = int.from_bytes(payload[:4], "little") if len(payload) >= 4 else None
            text = f"SECURED_SPDM {len(payload)} bytes (encrypted record)"
            self._emit(t, direction, Summary("spdm", "SECURED_SPDM", text, session=sid),
                       secured=False)
        else:
            self._emit(t, direction, self.decoder.spdm(payload), secured=False)

    @_never_raises
    def secured(self, direction: str, session_id: int, plaintext: bytes) -> None:
        """The engines' `message_observer`: ("request" | "response", session, plaintext)."""
        d = REQ if direction == "request" else RSP
        self._to_decrypted(lambda pcap: pcap.plaintext(d, session_id, plaintext))
        if self.out is None:
            return
        self._emit(self.clock(), d, self.decoder.spdm(plaintext, session=session_id),
                   secured=True, session=session_id)

    @_never_raises
    def state(self, text: str, *, msg: str = "STATE", session: int | None = None,
              error: bool = False, proto: str = "state") -> None:
        if self.out is None:
            return
        self._write(Event(self.clock(), self.side, STATE, proto, msg, text, _sid(session),
                          error=error, state=text))

    def fault(self, text: str) -> None:
        """A fault vdev.faults injected (observer of FaultInjector): one event."""
        self.state(f"FAULT {text}", msg="FAULT", error=True)

    def secret_sink(self, label: str, secret: bytes) -> None:
        """The engines' opt-in `secret_sink`; prints only with `log_secrets`."""
        if not self.log_secrets:
            return
        out = self.secrets_out or sys.stderr
        print(f"[{label}]: {secret.hex()}", file=out, flush=True)

    def spdm_hooks(self) -> RequesterHooks:
        """The SPDM engine hooks of this tracer (a responder takes the same two)."""
        return RequesterHooks(message_observer=self.secured,
                              secret_sink=self.secret_sink if self.log_secrets else None)

    # ---- output -------------------------------------------------------------------------

    def _emit(self, t: float, direction: str, s: Summary, *, secured: bool,
              session: int | None = None) -> None:
        sid = s.session if s.session is not None else session
        state = s.state if self.infer_state else None
        self._write(Event(t, self.side, direction, s.protocol, s.message, s.text, _sid(sid),
                          secured, s.error, state))

    def _write(self, ev: Event) -> None:
        assert self.out is not None
        try:
            self.out.write((ev.to_json() if self.fmt == "json" else ev.to_text()) + "\n")
            self.out.flush()
        except OSError as exc:
            self._lose("--trace", self.out, exc)
            self.out = None
            return
        self.events += 1

    def _to_decrypted(self, write: Callable[[DecryptedCapture], None]) -> None:
        """`write` to the --pcap-decrypted writer, which is dropped (said once) when
        its file fails."""
        if self.decrypted is None:
            return
        try:
            write(self.decrypted)
        except OSError as exc:
            self._lose("--pcap-decrypted", self.decrypted.out.out, exc)
            self.decrypted = None

    def _lose(self, option: str, stream: Any, exc: OSError) -> None:
        text = f"{option} {getattr(stream, 'name', '?')}: {exc.strerror or exc}"
        self.lost.append(text)
        log.error("trace output failed, %s; nothing more is written there (the traced "
                  "exchanges go on)", text)

    def close(self) -> None:
        if self.decrypted is not None:
            try:
                self.decrypted.flush()
            except OSError as exc:
                self._lose("--pcap-decrypted", self.decrypted.out.out, exc)
        for option, f in (("--trace", self.out), ("--pcap", self.pcap),
                          ("--pcap-decrypted", self.decrypted.out if self.decrypted else None)):
            if f is not None:
                try:
                    f.close()
                except OSError as exc:
                    self._lose(option, getattr(f, "out", f), exc)


def secured_reply_type(request_type: int, request: bytes, reply: bytes) -> int:
    """The DOE type a reply travelled in when the transport does not say: a record of the
    request's session (its first 4 bytes, DSP0277 SessionID) is type 2; anything else,
    e.g. the plaintext ERROR a responder sends when it cannot open a record, type 1."""
    if request_type == DOE_TYPE_SECURED_CMA_SPDM and len(reply) >= 4 and reply[:4] == request[:4]:
        return DOE_TYPE_SECURED_CMA_SPDM
    return DOE_TYPE_CMA_SPDM


def doe_object_of(doe_type: int, payload: bytes) -> bytes:
    return build_object(DoeProtocolId(PCI_SIG_VENDOR_ID, doe_type), payload)


# The comment that marks a decrypted record in a --pcap-decrypted capture (the Wireshark
# dissector, contrib/wireshark/vdev-doe.lua, reads it).
DECRYPTED_COMMENT = "vdev: secured record decrypted"
SecuredRecordDecrypted = Struct(
    "session_id" / Int32ul,
    "length" / Rebuild(Int16ul, len_(this.app_data) + 2),
    "app_data_length" / Rebuild(Int16ul, len_(this.app_data)),
    "app_data" / Bytes(this.app_data_length),
)
"""A DSP0277 secured record (PCI DOE binding: no sequence number) as --pcap-decrypted
writes it: SessionID and Length as on the wire, then the plaintext application data
(ApplicationDataLength, the SPDM message); no random padding and no MAC."""


class DecryptedCapture:
    """--pcap-decrypted: every DOE object as on the wire, except that a secured record is
    written with its plaintext (`SecuredRecordDecrypted`) and the comment
    DECRYPTED_COMMENT.  The engines report a record's plaintext just before it is sealed
    or just after it is opened, so a record waits here for its plaintext (or the
    plaintext for its record) and is written encrypted when none comes (a record that did
    not open)."""

    def __init__(self, out: PcapngWriter) -> None:
        self.out = out
        self._record: dict[str, tuple[float, bytes]] = {}  # direction -> waiting record
        self._plain: dict[str, tuple[int, bytes]] = {}  # direction -> (session, message)

    def wire(self, direction: str, obj: bytes, t: float) -> None:
        self.flush()
        self._plain.pop(RSP if direction == REQ else REQ, None)  # never its record
        if not _is_secured(obj):
            self.out.write(obj, t)
            return
        plain = self._plain.pop(direction, None)
        if plain is not None and plain[0] == _session_of(obj):
            self._write(obj, plain[1], t)
        else:
            self._record[direction] = (t, obj)

    def plaintext(self, direction: str, session_id: int, message: bytes) -> None:
        waiting = self._record.get(direction)
        if waiting is not None and _session_of(waiting[1]) == session_id:
            del self._record[direction]
            self._write(waiting[1], message, waiting[0])
        else:
            self._plain[direction] = (session_id, message)

    def flush(self) -> None:
        """Write the records still waiting, as they went over the wire."""
        for t, obj in sorted(self._record.values()):
            self.out.write(obj, t)
        self._record.clear()

    def _write(self, obj: bytes, message: bytes, t: float) -> None:
        record = SecuredRecordDecrypted.build(
            {"session_id": _session_of(obj), "app_data": message})
        self.out.write(doe_object_of(DOE_TYPE_SECURED_CMA_SPDM, record), t,
                       f"{DECRYPTED_COMMENT} (session {_session_of(obj):#010x})")


def _is_secured(obj: bytes) -> bool:
    if len(obj) < 4 * HEADER_DW + 4:
        return False
    return parse_header(obj).protocol == DoeProtocolId(PCI_SIG_VENDOR_ID,
                                                      DOE_TYPE_SECURED_CMA_SPDM)


def _session_of(obj: bytes) -> int:
    return int.from_bytes(obj[4 * HEADER_DW : 4 * HEADER_DW + 4], "little")
