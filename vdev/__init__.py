"""vdev: a pure-Python vfio-user PCIe endpoint with DOE, SPDM, IDE_KM and TDISP."""

__version__ = "0.1.0"
