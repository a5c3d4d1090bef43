"""Reading traces back: what `--trace` writes (text lines or JSON lines) and what `--pcap`
writes (classic pcap, link type 292: one DOE object per record), as event dictionaries
with the fields of `vdev.trace.tracer.Event`.

A file that is neither (an evidence JSON document, a log) is refused with
`TraceFileError` rather than shown as an empty trace.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from vdev.doe.data_object import DOE_TYPE_CMA_SPDM, HEADER_DW, PCI_SIG_VENDOR_ID, parse_header
from vdev.trace.pcap import (
    LINKTYPE_PCI_DOE,
    PCAP_MAGICS,
    PCAPNG_MAGIC,
    PcapFormatError,
    PcapngReader,
    PcapReader,
)
from vdev.trace.tracer import (
    ARROWS,
    DECRYPTED_COMMENT,
    REQ,
    RSP,
    SecuredRecordDecrypted,
    Tracer,
)

EVENT_KEYS = frozenset({"side", "dir", "proto", "summary"})


class TraceFileError(ValueError):
    """The file is not a trace vdev can read; the message says what it is instead."""


_TEXT = re.compile(
    r"^(?P<time>\S+) (?P<side>\S+) (?P<arrow>->|<-|==) (?P<proto>\S+)\s+"
    r"(?:sess=(?P<session>\S+)|-) (?P<secured>\[secured\] )?(?P<summary>.*?)"
    r"(?: => (?P<state>.*))?$"
)
_DIRS = {v: k for k, v in ARROWS.items()}
_ERROR_WORDS = re.compile(r"\bERROR\b|TDISP_ERROR|status=(?!SUCCESS)|discarded|transport error")


def _msg_of(summary: str, proto: str) -> str:
    words = summary.split()
    if proto in ("idekm", "tdisp") and len(words) > 1:
        return words[1]  # "IDE_KM KEY_PROG ...", "TDISP LOCK_INTERFACE_REQUEST ..."
    return words[0] if words else ""


def event_from_text(line: str) -> dict[str, Any] | None:
    """One line `Event.to_text` wrote, or None.  The text form has no time stamp with a
    date, so the event has "time" (HH:MM:SS.ffffff) and no "t" (seconds since the
    epoch, which JSON traces and pcaps carry); it has no error column either: the error
    flag is recovered from the words."""
    mt = _TEXT.match(line)
    if mt is None or mt["arrow"] not in _DIRS:
        return None
    summary = mt["summary"]
    error = bool(_ERROR_WORDS.search(summary)) and not any(
        w in summary for w in ("RESPONSE_NOT_READY", "LARGE_RESPONSE"))
    return {"time": mt["time"], "side": mt["side"], "dir": _DIRS[mt["arrow"]],
            "proto": mt["proto"], "msg": _msg_of(summary, mt["proto"]), "summary": summary,
            "session": mt["session"], "secured": bool(mt["secured"]), "error": error,
            "state": mt["state"] or (summary if mt["arrow"] == "==" else None)}


class LineReader:
    """Events from a text or JSON-lines trace; counts the lines that were not events."""

    def __init__(self, f: TextIO, name: str = "trace") -> None:
        self.f, self.name = f, name
        self.events = 0
        self.skipped = 0
        self.first_skipped: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self.f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            ev = self._event(line)
            if ev is None:
                self.skipped += 1
                self.first_skipped = self.first_skipped or line
                continue
            self.events += 1
            yield ev
        if not self.events and self.skipped:
            raise TraceFileError(self._not_a_trace())

    @staticmethod
    def _event(line: str) -> dict[str, Any] | None:
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                return None
            return dict(ev) if isinstance(ev, dict) and set(ev) >= EVENT_KEYS else None
        return event_from_text(line)

    def _not_a_trace(self) -> str:
        first = (self.first_skipped or "")[:60]
        if first.lstrip().startswith(("{", "[")):
            return (f"{self.name} is not a trace: it holds JSON, but no trace events (a "
                    "--trace file has one event per line; is this the TSM's evidence? "
                    "`python -m json.tool` shows it)")
        return f"{self.name} is not a trace (its first line reads {first!r})"


# ---- pcap ---------------------------------------------------------------------------------

def pcap_events(f: BinaryIO, name: str = "pcap", *,
                pcapng: bool = False) -> Iterator[dict[str, Any]]:
    """Events from a `--pcap` file (or the pcapng of `--pcap-decrypted`), decoded as the
    tracer decodes the wire.  A record does not say its direction: an SPDM message's
    code does (requests are 80h and up), other objects alternate with the one before (a
    DOE exchange is a request, then its response).  Secured objects stay encrypted
    records, unless the capture marks them decrypted: then the message they carry is
    shown as the tracer shows a secured message."""
    try:
        reader: Any = PcapngReader(f) if pcapng else PcapReader(f)
    except PcapFormatError as exc:
        raise TraceFileError(f"{name}: {exc}") from None
    if reader.link_type != LINKTYPE_PCI_DOE:
        raise TraceFileError(
            f"{name}: pcap link type {reader.link_type}, not {LINKTYPE_PCI_DOE} (PCI DOE): "
            "`vdev trace show` decodes the DOE pcaps vdev writes; open others in Wireshark")
    sink = io.StringIO()
    tracer = Tracer("pcap", out=sink, fmt="json")
    direction = RSP
    try:
        for t, obj, *comment in reader:
            tracer.clock = _fixed(t)
            if comment and comment[0].startswith(DECRYPTED_COMMENT):
                record = SecuredRecordDecrypted.parse(obj[4 * HEADER_DW :])
                direction = REQ if record.app_data[1:2] >= b"\x80" else RSP
                tracer.secured("request" if direction == REQ else "response",
                               record.session_id, bytes(record.app_data))
            else:
                direction = _direction(obj, after=direction)
                tracer.doe(direction, obj)
            for line in sink.getvalue().splitlines():
                yield dict(json.loads(line))
            sink.seek(0)
            sink.truncate()
    except PcapFormatError as exc:
        raise TraceFileError(f"{name}: {exc}") from None


def _fixed(t: float) -> Callable[[], float]:
    return lambda: t


def _direction(obj: bytes, after: str) -> str:
    if len(obj) > 4 * HEADER_DW + 1:
        h = parse_header(obj)
        if h.protocol.vendor_id == PCI_SIG_VENDOR_ID \
                and h.protocol.data_object_type == DOE_TYPE_CMA_SPDM:
            return REQ if obj[4 * HEADER_DW + 1] >= 0x80 else RSP
    return RSP if after == REQ else REQ


# ---- any file -----------------------------------------------------------------------------

def file_kind(path: str | Path) -> str:
    """"pcap", "pcapng" or "lines" (text or JSON lines), from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_MAGIC:
        return "pcapng"
    return "lines"


class TraceReader:
    """Every event of a trace or pcap file (opened on iteration); TraceFileError when it
    is neither.  `skipped`: lines of a text trace that were not events."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        name = str(self.path)
        kind = file_kind(self.path)
        if kind in ("pcap", "pcapng"):
            with open(self.path, "rb") as bf:
                yield from pcap_events(bf, name, pcapng=kind == "pcapng")
            return
        with open(self.path, encoding="utf-8") as f:
            lines = LineReader(f, name)
            try:
                yield from lines
            except UnicodeDecodeError:
                raise TraceFileError(f"{name} is not a trace (binary data, neither text "
                                     "nor a pcap)") from None
            finally:
                self.skipped = lines.skipped
