"""Linux drivers/pci/doe.c's register sequence over the test config accessors,
with the extra strictness the device promises: DOR on the very first poll."""

from __future__ import annotations

from tests.helpers.fakes import Cfg
from vdev.doe.requester import DoeIoError, DoeRequester
from vdev.doe.requester import DoeResponse as Response

EXT_CAP_ID_DOE = 0x2E

__all__ = ["DoeIoError", "EXT_CAP_ID_DOE", "LinuxDoe", "Response"]


class LinuxDoe(DoeRequester):
    def __init__(self, cfg: Cfg, cap: int) -> None:
        super().__init__(cfg.read, cfg.write, cap)
        self.cfg = cfg

    def wait_ready(self) -> int:
        """The device computes the response at GO, so the first poll must see DOR."""
        self.max_polls = 1
        try:
            return super().wait_ready()
        except DoeIoError as exc:
            if "polls" in str(exc):
                raise DoeIoError("no DOR on the first poll") from exc
            raise
