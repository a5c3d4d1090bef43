"""The platform TSM's mailbox: a PCI function the guest's vtsm driver uses to
relay DOE exchanges for the TSM model (protocol.py documents the ABI)."""
