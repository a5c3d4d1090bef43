"""PCI configuration space as registers, and the capability objects that fill it.

- `register`: `Register` (reset value, RW / RW1C / sticky masks, hooks) and
  `RegisterFile` (byte-granular access at any alignment).
- `config_space`: `ConfigSpace`, the 4 KiB space laid out from a header and
  capability objects, with FLR reset and chain-walking helpers.
- `header`, `bar`: the Type 0 header and memory BARs.
- `capability`: base classes; `pcie_cap`, `pm_cap`, `msix_cap`, `doe_cap`,
  `ide_cap`: one capability per module, each owning its register layout.
"""
