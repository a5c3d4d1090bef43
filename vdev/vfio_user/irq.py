"""Interrupt state for one client: eventfds, masks and pending bits.

SET_IRQS semantics follow linux/vfio.h VFIO_DEVICE_SET_IRQS as adapted by the
vfio-user spec ("VFIO_USER_DEVICE_SET_IRQS") and QEMU's use of it
(docs/vfio-user-qemu.md §3.5, §7):

* DATA_EVENTFD|TRIGGER with N fds assigns [start, start+N); with zero fds it
  de-assigns the range (QEMU sends "all valid or all invalid fds" per message,
  hw/vfio-user/device.c).  A new fd replaces the old one, which is closed.
* DATA_NONE|TRIGGER with start=count=0 disables the whole index.
* DATA_NONE|TRIGGER with count>0 fires the vectors (loopback, spec).
* MASK/UNMASK (DATA_NONE or DATA_BOOL) keep a per-vector mask; a trigger while
  masked only sets the pending bit, UNMASK delivers a pending interrupt.
* INTx is level + automask like the kernel's vfio-pci (docs/vfio-user-qemu.md §7): after
  signalling, the line is masked until UNMASK; a trigger meanwhile stays
  pending and is re-signalled by the UNMASK.
* DATA_EVENTFD|UNMASK (KVM resample fd) is refused with ENOTSUP, so QEMU
  falls back to userspace EOI, which sends DATA_NONE|UNMASK (docs/vfio-user-qemu.md §7).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vdev.pci.device_api import IrqIndex

from .errors import ProtocolError
from .wire import SET_IRQS_ACTION_BITS, SET_IRQS_DATA_BITS, SetIrqsFlags

log = logging.getLogger("vdev.vfio_user")

NUM_IRQ_INDICES = len(IrqIndex)


@dataclass
class _Vector:
    fd: int | None = None
    masked: bool = False
    pending: bool = False


class IrqTable:
    """The `IrqSink` handed to the device, plus the SET_IRQS state machine.

    `trigger` may be called from any thread (device timers, worker threads);
    a lock protects the table.  Fds received from the client are owned here
    and closed on replacement, de-assignment and `release()`.
    """

    def __init__(self, irq_count: Callable[[int], int]) -> None:
        self._irq_count = irq_count
        self._vectors: dict[tuple[int, int], _Vector] = {}
        self._lock = threading.Lock()
        self.delivered = 0  # eventfd writes done, for statistics and tests

    # --- IrqSink ----------------------------------------------------------

    def trigger(self, index: int, vector: int) -> None:
        with self._lock:
            v = self._vectors.get((index, vector))
            if v is None:
                v = self._vectors[(index, vector)] = _Vector()
            if v.masked:
                v.pending = True
                return
            self._deliver(index, vector, v)

    # --- inspection -------------------------------------------------------

    def fd(self, index: int, vector: int) -> int | None:
        with self._lock:
            v = self._vectors.get((index, vector))
            return None if v is None else v.fd

    def is_masked(self, index: int, vector: int) -> bool:
        with self._lock:
            v = self._vectors.get((index, vector))
            return v is not None and v.masked

    def is_pending(self, index: int, vector: int) -> bool:
        with self._lock:
            v = self._vectors.get((index, vector))
            return v is not None and v.pending

    # --- SET_IRQS -----------------------------------------------------------

    def set_irqs(
        self,
        flags: int,
        index: int,
        start: int,
        count: int,
        fds: Sequence[int],
        data: bytes,
    ) -> None:
        """Apply one SET_IRQS.  Takes ownership of `fds` only on success;
        on ProtocolError the caller still owns (and closes) them."""
        data_kind = flags & SET_IRQS_DATA_BITS
        action = flags & SET_IRQS_ACTION_BITS
        if flags & ~int(SET_IRQS_DATA_BITS | SET_IRQS_ACTION_BITS):
            raise ProtocolError(errno.EINVAL, f"unknown SET_IRQS flags {flags:#x}")
        if bin(data_kind).count("1") != 1 or bin(action).count("1") != 1:
            raise ProtocolError(errno.EINVAL, f"SET_IRQS needs one data and one action: {flags:#x}")
        if not 0 <= index < NUM_IRQ_INDICES:
            raise ProtocolError(errno.EINVAL, f"SET_IRQS index {index} out of range")
        if data_kind != SetIrqsFlags.DATA_EVENTFD and fds:
            raise ProtocolError(errno.EINVAL, "SET_IRQS carries fds without DATA_EVENTFD")
        nvec = self._irq_count(index)

        # Disable the whole index (linux/vfio.h: DATA_NONE|ACTION_TRIGGER, count 0).
        if (
            data_kind == SetIrqsFlags.DATA_NONE
            and action == SetIrqsFlags.TRIGGER
            and count == 0
        ):
            if start != 0:
                raise ProtocolError(errno.EINVAL, "SET_IRQS disable needs start 0")
            self._disable_index(index)
            return

        if count == 0 or start + count > nvec:
            raise ProtocolError(
                errno.EINVAL,
                f"SET_IRQS index {index} range [{start},{start + count}) beyond {nvec} vectors",
            )
        if data_kind == SetIrqsFlags.DATA_BOOL and len(data) < count:
            raise ProtocolError(errno.EINVAL, "SET_IRQS DATA_BOOL payload too short")
        if data_kind == SetIrqsFlags.DATA_EVENTFD and fds and len(fds) != count:
            raise ProtocolError(
                errno.EINVAL, f"SET_IRQS count {count} but {len(fds)} fds"
            )

        selected = [
            start + i
            for i in range(count)
            if data_kind != SetIrqsFlags.DATA_BOOL or data[i]
        ]

        if action == SetIrqsFlags.TRIGGER:
            if data_kind == SetIrqsFlags.DATA_EVENTFD:
                self._assign(index, start, count, fds)
            else:
                for vec in selected:
                    self.trigger(index, vec)
        elif data_kind == SetIrqsFlags.DATA_EVENTFD:
            # Resample / mask eventfds would need an fd watcher; refuse so QEMU
            # uses its userspace EOI path (docs/vfio-user-qemu.md §7).
            raise ProtocolError(errno.ENOTSUP, "eventfd-driven MASK/UNMASK not supported")
        elif action == SetIrqsFlags.MASK:
            with self._lock:
                for vec in selected:
                    self._vector(index, vec).masked = True
        else:  # UNMASK
            with self._lock:
                for vec in selected:
                    v = self._vector(index, vec)
                    v.masked = False
                    if v.pending:
                        self._deliver(index, vec, v)

    def release(self) -> None:
        """The client went away: close every eventfd and forget all state."""
        with self._lock:
            for v in self._vectors.values():
                _close(v.fd)
            self._vectors.clear()

    # --- internals (lock held where noted) ---------------------------------

    def _vector(self, index: int, vector: int) -> _Vector:
        v = self._vectors.get((index, vector))
        if v is None:
            v = self._vectors[(index, vector)] = _Vector()
        return v

    def _deliver(self, index: int, vector: int, v: _Vector) -> None:
        """Signal one vector (lock held)."""
        v.pending = False
        if index == IrqIndex.INTX:
            # Automask: INTx stays masked until the client unmasks it (docs/vfio-user-qemu.md §7).
            v.masked = True
        if v.fd is None:
            # No eventfd: the interrupt is lost, as with an unconnected vfio vector.
            log.debug("irq %d/%d triggered without an eventfd", index, vector)
            return
        try:
            os.eventfd_write(v.fd, 1)
            self.delivered += 1
        except OSError as exc:
            log.warning("irq %d/%d: eventfd write failed: %s", index, vector, exc)

    def _assign(self, index: int, start: int, count: int, fds: Sequence[int]) -> None:
        with self._lock:
            for i in range(count):
                v = self._vector(index, start + i)
                new_fd = fds[i] if fds else None
                if v.fd is not None and v.fd != new_fd:
                    _close(v.fd)
                v.fd = new_fd
                if new_fd is None:
                    v.pending = False
                    v.masked = False

    def _disable_index(self, index: int) -> None:
        with self._lock:
            for key in [k for k in self._vectors if k[0] == index]:
                _close(self._vectors.pop(key).fd)


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
