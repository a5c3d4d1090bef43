"""Reading the IDE Extended Capability registers a QUERY_RESP carries (PCIe 6.2
§7.9.26, §6.33.3 QUERY_RESP), to learn which Stream IDs the host configured.

QUERY_RESP returns the capability's DWORDs from the IDE Capability register on:

    IDE Capability   bit 0 Link IDE supported, bit 1 Selective IDE supported,
                     bits 15:13 number of TCs for Link IDE (link blocks = N+1),
                     bits 23:16 number of Selective IDE streams (N+1)
    IDE Control
    Link IDE blocks  2 DWORDs each (control, status), when Link IDE is supported
    Selective blocks SEL_CAP (bits 3:0: address association blocks), SEL_CTL
                     (bits 31:24: Stream ID), SEL_STS, RID association 1 and 2,
                     3 DWORDs per address association block

The host writes the Stream ID into SEL_CTL before the TSM programs keys (Linux
`pci_ide_stream_setup`), so the TSM keys the stream the host set up.
"""

from __future__ import annotations

from collections.abc import Sequence

LINK_IDE = 1 << 0
SELECTIVE_IDE = 1 << 1


def selective_stream_ids(registers: Sequence[int]) -> list[int]:
    """Stream IDs of the selective streams, in block order; [] when none are readable."""
    if len(registers) < 2 or not registers[0] & SELECTIVE_IDE:
        return []
    cap = registers[0]
    pos = 2
    if cap & LINK_IDE:
        pos += 2 * (((cap >> 13) & 0x7) + 1)
    ids: list[int] = []
    for _ in range(((cap >> 16) & 0xFF) + 1):
        if pos + 5 > len(registers):
            break
        sel_cap, sel_ctl = registers[pos], registers[pos + 1]
        ids.append(sel_ctl >> 24)
        pos += 5 + 3 * (sel_cap & 0xF)
    return ids
