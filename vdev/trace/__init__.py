"""Interop debugging: a decoded trace and a pcap of what a device or TSM exchanged.

An adapter-level observer (docs/architecture.md §2, §5): the sans-IO engines only call back
(`message_observer`, `secret_sink`, state observers); everything that writes lives here.

  pcap.py     classic pcap, link type 292 (PCI DOE), one whole DOE object per record
  decode.py   one-line summaries over the engines' own construct declarations
  tracer.py   Tracer: events (text or JSON lines), pcap records, opt-in secret lines
  attach.py   wiring to TeeDevice / the spdm-emu server / the TSM client and backend
  cli.py      --trace/--trace-format/--pcap/--log-secrets and `vdev trace show`
"""
