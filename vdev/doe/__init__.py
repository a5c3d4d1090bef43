"""DOE (PCIe r6.0 §6.30): the data-object wire format, the mailbox register machine
and a host-side requester."""
