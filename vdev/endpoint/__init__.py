"""The TEE-IO endpoint personality: its PCI function (config space, BAR0, DOE, IDE), the
security protocols it serves (TeeDevice), its measurements and TDISP enforcement."""
