"""A trace as a Mermaid sequence diagram (Mermaid's sequenceDiagram syntax):
the requester (the TSM, through the host's DOE mailbox) and the device, one arrow per
message, and the state changes as notes on the side they happened.

- messages: SPDM requests and responses; IDE_KM and TDISP ones by their own names;
  secured messages (decrypted by the tracer) inside a shaded box per SPDM session run;
  an encrypted record nobody decrypted (a pcap) as "encrypted record";
- errors (SPDM ERROR, TDISP_ERROR, a failed KP_ACK) end in a cross;
- notes: the device's state changes (SPDM session, IDE stream, TDI: "CONFIG_LOCKED
  -LOCK-> RUN"), the states the TSM infers from a response, the TSM's steps (connect,
  lock, report, start, ...) and injected faults.

Mermaid treats `;` and `#` in text as syntax, so they are written as its entity codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

REQUESTER, DEVICE = "R", "D"
MAX_LABEL = 72  # an arrow's label; a note may take more
MAX_NOTE = 100
_SESSION_FILL = "rgba(120, 160, 255, 0.12)"
# The DOE object that carries an SPDM message is drawn as the message it carries.
_CARRIERS = {"SPDM", "SECURED_SPDM"}
_TRANSITION = re.compile(r"\s*--(\w+)-->\s*")
_ENTITIES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;"}
_SPECIAL = re.compile("[#;<>]")


def _text(s: str, limit: int = MAX_LABEL) -> str:
    s = _TRANSITION.sub(lambda m: f" -{m[1]}→ ", s).replace("->", "→")
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return _SPECIAL.sub(lambda m: _ENTITIES[m[0]], s)


def _key(ev: dict[str, Any]) -> Any:
    return ev.get("t") if ev.get("t") is not None else ev.get("time", "")


def merge(*traces: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of several traces (the device's and the TSM's) in time order."""
    return sorted((ev for trace in traces for ev in trace), key=_key)


def sequence_diagram(events: Sequence[dict[str, Any]], *, title: str | None = None,
                     tsm_steps_only: Sequence[dict[str, Any]] = ()) -> str:
    """The diagram for `events` (one trace; `tsm_steps_only`: a TSM trace whose steps
    are added as notes, its messages being the same ones seen from the other end)."""
    steps = [ev for ev in tsm_steps_only if ev.get("proto") == "tsm"]
    events = merge(events, steps) if steps else list(events)
    decrypted = any(ev.get("secured") for ev in events)
    sides = sorted({str(ev.get("side")) for ev in events if ev.get("side") not in ("tsm",)})
    device_name = sides[0] if len(sides) == 1 and sides[0] not in ("pcap",) else "device"
    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"    title {_text(title, 120)}")
    lines += [f"    participant {REQUESTER} as Requester (TSM)",
              f"    participant {DEVICE} as Device ({_text(device_name, 40)})"]
    in_session: str | None = None
    for ev in events:
        line, session = _line(ev, decrypted)
        if line is None:
            continue
        if ev.get("dir") == "state":
            session = in_session  # a note stays inside the session's box
        if session != in_session:
            if in_session is not None:
                lines.append("    end")
            if session is not None:
                lines.append(f"    rect {_SESSION_FILL}")
                lines.append(f"    Note over {REQUESTER},{DEVICE}: secured, SPDM session "
                             f"{_text(session)}")
            in_session = session
        lines.append(("        " if in_session else "    ") + line)
        state = ev.get("state")
        if state and ev.get("dir") != "state":  # a transition this message implies
            lines.append(("        " if in_session else "    ")
                         + f"Note over {DEVICE}: {_text(str(state), MAX_NOTE)}")
    if in_session is not None:
        lines.append("    end")
    return "\n".join(lines) + "\n"


def _line(ev: dict[str, Any], decrypted: bool) -> tuple[str | None, str | None]:
    """One diagram line for an event (None: not drawn) and the session it is inside."""
    direction, proto = ev.get("dir"), ev.get("proto")
    summary = str(ev.get("summary", ""))
    if direction == "state":
        if proto == "tsm":  # "[connect] SPDM 1.3: ..." -> "connect: SPDM 1.3: ..."
            step = summary.removeprefix("[").replace("] ", ": ", 1)
            return f"Note over {REQUESTER}: {_text(step, MAX_NOTE)}", None
        return f"Note over {DEVICE}: {_text(summary, MAX_NOTE)}", None
    secured = bool(ev.get("secured"))
    if proto == "doe":
        msg = str(ev.get("msg", ""))
        if msg == "SECURED_SPDM" and not decrypted:
            summary = summary.replace(" (encrypted record)", "")
            return _arrow(direction, f"encrypted record: {summary}", False), None
        if msg in _CARRIERS:
            return None, None
    session = ev.get("session") if secured else None
    return _arrow(direction, summary, bool(ev.get("error"))), session


def _arrow(direction: Any, label: str, error: bool) -> str:
    if direction == "req":
        return f"{REQUESTER}->>{DEVICE}: {_text(label)}"
    return f"{DEVICE}{'--x' if error else '-->>'}{REQUESTER}: {_text(label)}"


def markdown(diagram: str, heading: str, intro: str = "") -> str:
    """A Markdown file showing the diagram (code hosts render ```mermaid blocks)."""
    parts = [f"# {heading}", ""]
    if intro:
        parts += [intro, ""]
    parts += ["```mermaid", diagram.rstrip("\n"), "```", ""]
    return "\n".join(parts)
