"""`vdev trace show --format mermaid` and `vdev run`'s sequence.md: a real connect to RUN
(tests/vdev/trace/rig.py) drawn as a Mermaid sequence diagram."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.helpers.cli import vdev
from tests.vdev.trace.rig import Run, traced_connect
from vdev.cli.trace import write_sequence
from vdev.trace.mermaid import markdown, sequence_diagram
from vdev.trace.reader import LineReader, pcap_events


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return traced_connect(tmp_path_factory.mktemp("mermaid-identity"))


def events(text: str) -> list[dict[str, object]]:
    return list(LineReader(io.StringIO(text)))


def body(diagram: str) -> list[str]:
    return [line.strip() for line in diagram.splitlines()]


def test_device_trace_as_a_sequence_diagram(run: Run) -> None:
    lines = body(sequence_diagram(events(run.device_trace)))
    assert lines[:5] == ["sequenceDiagram", "participant R as Requester (TSM)",
                         "participant D as Device (device)", "R->>D: DISCOVERY index=0 version=2",
                         "D-->>R: DISCOVERY_RSP 0001:00 (DISCOVERY) next=1"]
    assert "R->>D: GET_VERSION" in lines and "D-->>R: VERSION 1.2 1.3" in lines
    # The DOE objects that carry SPDM are drawn as the messages they carry.
    assert not [ln for ln in lines if "SPDM 3 DW" in ln or "encrypted record" in ln]
    # Secured messages sit inside one box per run of the session, opened with its id.
    opened = [i for i, ln in enumerate(lines) if ln.startswith("rect ")]
    closed = [i for i, ln in enumerate(lines) if ln == "end"]
    assert opened and len(opened) == len(closed)
    assert all(o < c for o, c in zip(opened, closed, strict=True))
    assert lines[opened[0] + 1] == "Note over R,D: secured, SPDM session 0xff000001"
    lock = lines.index(next(ln for ln in lines if ln.startswith(
        "R->>D: TDISP LOCK_INTERFACE_REQUEST tdi=01:00.0")))
    inside = [c for o, c in zip(opened, closed, strict=True) if o < lock < c]
    assert inside, "LOCK travels inside the session box"
    # State changes are notes on the device's side, in order, with their cause.
    notes = [ln for ln in lines if ln.startswith("Note over D: ")]
    tdi = [ln for ln in notes if "TDI 01:00.0" in ln]
    assert tdi[0].startswith("Note over D: TDI 01:00.0 CONFIG_UNLOCKED -LOCK→ CONFIG_LOCKED "
                             "(session 0xff000001")
    assert tdi[1] == "Note over D: TDI 01:00.0 CONFIG_LOCKED -START→ RUN"
    assert "Note over D: SPDM session 0xff000001 ESTABLISHED" in notes
    # REPORT is a step of its own, between LOCK and START.
    report = lines.index(next(ln for ln in lines if "GET_DEVICE_INTERFACE_REPORT" in ln))
    assert lines.index(tdi[0]) < report < lines.index(tdi[1])


def test_tsm_steps_and_inferred_states(run: Run) -> None:
    device = events(run.device_trace)
    # What `vdev tsm serve --trace` writes when the guest rings the mailbox
    # (vdev.trace.attach.TracedBackend), just before the first exchange it causes.
    step = {"t": None, "time": "00:00:00.000000", "side": "tsm", "dir": "state",
            "proto": "tsm", "msg": "TSM_OP", "summary": "TSM CONNECT 0000:01:00.0",
            "session": None, "secured": False, "error": False,
            "state": "TSM CONNECT 0000:01:00.0"}
    lines = body(sequence_diagram(device, tsm_steps_only=[*events(run.tsm_trace), step]))
    device_only = body(sequence_diagram(device))
    assert lines[3] == "Note over R: TSM CONNECT 0000:01:00.0"
    assert [ln for ln in lines if not ln.startswith("Note over R: ")] == device_only
    # The TSM's own trace: what it infers from responses, as notes after them.
    tsm_lines = body(sequence_diagram(events(run.tsm_trace)))
    assert "Note over D: TDI 01:00.0 CONFIG_LOCKED" in tsm_lines
    assert "Note over D: TDI 01:00.0 RUN" in tsm_lines


def test_pcap_as_a_sequence_diagram_shows_encrypted_records(run: Run) -> None:
    lines = body(sequence_diagram(list(pcap_events(io.BytesIO(run.pcap)))))
    assert "R->>D: GET_VERSION" in lines
    records = [ln for ln in lines if "encrypted record: SECURED_SPDM" in ln]
    assert records and all("session=0xff000001" in ln for ln in records)
    assert not [ln for ln in lines if ln.startswith("rect ")]  # nothing decrypted


def test_errors_end_in_a_cross_and_text_is_escaped() -> None:
    evs = [
        {"t": 1.0, "side": "device", "dir": "req", "proto": "spdm", "msg": "GET_DIGESTS",
         "summary": "GET_DIGESTS", "session": None, "secured": False, "error": False},
        {"t": 2.0, "side": "device", "dir": "rsp", "proto": "spdm", "msg": "ERROR",
         "summary": "ERROR BUSY data=0x0; #1 <x>", "session": None, "secured": False,
         "error": True},
    ]
    lines = body(sequence_diagram(evs, title="a; b"))
    assert lines[1] == "title a#59; b"
    assert lines[-1] == "D--xR: ERROR BUSY data=0x0#59; #35;1 #lt;x#gt;"


def test_trace_show_format_mermaid_and_the_run_hook(run: Run, tmp_path: Path) -> None:
    (tmp_path / "device.trace").write_text(run.device_trace)
    (tmp_path / "tsm.trace").write_text(run.tsm_trace)
    out = vdev("trace", "show", tmp_path / "device.trace", "--format", "mermaid")
    assert out.returncode == 0, out.stderr
    assert out.stdout == sequence_diagram(events(run.device_trace))
    filtered = vdev("trace", "show", tmp_path / "device.trace", "--format", "mermaid",
                    "--protocol", "tdisp").stdout
    assert "TDISP LOCK_INTERFACE_REQUEST" in filtered and "GET_VERSION" not in filtered
    written = write_sequence(tmp_path)
    assert written == tmp_path / "sequence.md"
    text = written.read_text()
    assert text.startswith("# vdev run: the guest's connect, as the device saw it\n")
    assert "```mermaid\nsequenceDiagram\n" in text and text.rstrip().endswith("```")
    assert markdown("sequenceDiagram\n", "h") == "# h\n\n```mermaid\nsequenceDiagram\n```\n"
