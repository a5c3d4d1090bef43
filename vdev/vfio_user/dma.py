"""Guest memory for one client: the DMA map table and the `DmaAccess` adapter.

DMA_MAP regions with an fd (guest RAM as a shared memfd) are reached through
ONE `mmap(MAP_SHARED)` of the whole file per inode (st_dev, st_ino), because
QEMU maps many ranges of the same memfd ([0, 0xa0000)@0, [1M, 2G)@1M, ...);
an address translates to base + offset + (gpa - iova) (docs/vfio-user-qemu.md §8).
Received fds are closed right after mmap.  Maps without an fd (plain `-m`
RAM, ROMs) are recorded and served by DMA_READ/DMA_WRITE messages through a
`RemoteDma` transport the server provides (docs/vfio-user-qemu.md §4).
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import threading
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import DmaError, ProtocolError
from .wire import DmaMapFlags, DmaUnmapFlags

_U64 = 1 << 64


@dataclass
class _MappedFile:
    """One shared mapping of a whole file, refcounted by the maps using it."""

    key: tuple[int, int]
    mm: mmap.mmap
    length: int
    writable: bool
    refs: int = 0


@dataclass
class Mapping:
    iova: int
    size: int
    flags: int
    offset: int
    file: _MappedFile | None = field(default=None, repr=False)

    @property
    def end(self) -> int:
        return self.iova + self.size


class DmaTable:
    """The client's DMA maps.  Map/unmap run on the server's loop thread;
    lookups may come from device threads, so a lock guards everything."""

    def __init__(self) -> None:
        self._maps: list[Mapping] = []  # sorted by iova, non-overlapping
        self._starts: list[int] = []
        self._files: dict[tuple[int, int], _MappedFile] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def mapped_files(self) -> int:
        """Number of live mmaps (one per inode), for tests and statistics."""
        with self._lock:
            return len({id(m.file) for m in self._maps if m.file is not None})

    def mappings(self) -> list[Mapping]:
        with self._lock:
            return list(self._maps)

    # --- DMA_MAP / DMA_UNMAP ----------------------------------------------

    def map(self, iova: int, size: int, offset: int, flags: int, fd: int | None) -> None:
        """Record one DMA_MAP.  Always consumes (closes) `fd`."""
        try:
            self._map(iova, size, offset, flags, fd)
        finally:
            if fd is not None:
                os.close(fd)

    def _map(self, iova: int, size: int, offset: int, flags: int, fd: int | None) -> None:
        if flags & ~int(DmaMapFlags.READ | DmaMapFlags.WRITE):  # int: IntFlag ~ drops unknown bits
            raise ProtocolError(errno.EINVAL, f"DMA_MAP unknown flags {flags:#x}")
        if size == 0 or iova + size > _U64:
            raise ProtocolError(errno.EINVAL, f"DMA_MAP bad range {iova:#x}+{size:#x}")
        with self._lock:
            pos = bisect.bisect_right(self._starts, iova)
            prev = self._maps[pos - 1] if pos > 0 else None
            nxt = self._maps[pos] if pos < len(self._maps) else None
            if (prev is not None and prev.end > iova) or (
                nxt is not None and nxt.iova < iova + size
            ):
                raise ProtocolError(
                    errno.EEXIST, f"DMA_MAP {iova:#x}+{size:#x} overlaps an existing map"
                )
            mfile = self._open_file(fd, offset, size) if fd is not None else None
            m = Mapping(iova, size, flags, offset if mfile is not None else 0, mfile)
            if mfile is not None:
                mfile.refs += 1
            self._maps.insert(pos, m)
            self._starts.insert(pos, iova)

    def _open_file(self, fd: int, offset: int, size: int) -> _MappedFile:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if offset + size > st.st_size:
            raise ProtocolError(
                errno.EINVAL,
                f"DMA_MAP offset {offset:#x}+{size:#x} beyond file size {st.st_size:#x}",
            )
        cached = self._files.get(key)
        if cached is not None and cached.length >= offset + size:
            return cached
        # First map of this inode (or it grew): map the whole file once.
        try:
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
            writable = True
        except PermissionError:
            # A read-only fd (e.g. a ROM file): read access only.
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            writable = False
        except (OSError, ValueError) as exc:
            raise ProtocolError(errno.EINVAL, f"DMA_MAP mmap failed: {exc}") from exc
        mfile = _MappedFile(key, mm, st.st_size, writable)
        self._files[key] = mfile
        return mfile

    def unmap(self, iova: int, size: int, flags: int) -> int:
        """Remove the maps inside [iova, iova+size) (all with ALL); returns how many."""
        if flags & ~int(DmaUnmapFlags.ALL):
            raise ProtocolError(errno.ENOTSUP, f"DMA_UNMAP flags {flags:#x} not supported")
        with self._lock:
            if flags & DmaUnmapFlags.ALL:
                victims = list(self._maps)
            else:
                end = iova + size
                victims = [m for m in self._maps if m.iova < end and m.end > iova]
                partial = [m for m in victims if m.iova < iova or m.end > end]
                if partial:
                    raise ProtocolError(
                        errno.EINVAL, f"DMA_UNMAP {iova:#x}+{size:#x} splits a map"
                    )
                if not victims:
                    raise ProtocolError(errno.ENOENT, f"DMA_UNMAP {iova:#x}+{size:#x}: no map")
            for m in victims:
                self._remove(m)
            return len(victims)

    def release(self) -> None:
        """The client went away: drop every map and mmap."""
        with self._lock:
            for m in list(self._maps):
                self._remove(m)

    def _remove(self, m: Mapping) -> None:
        pos = self._maps.index(m)
        del self._maps[pos]
        del self._starts[pos]
        f = m.file
        if f is not None:
            f.refs -= 1
            if f.refs == 0:
                if self._files.get(f.key) is f:
                    del self._files[f.key]
                f.mm.close()

    # --- access -------------------------------------------------------------

    def segments(self, addr: int, length: int, write: bool) -> list[tuple[Mapping, int, int]]:
        """Split [addr, addr+length) into (mapping, addr, len) pieces.

        Raises DmaError when part of the range is unmapped or lacks permission.
        """
        need = DmaMapFlags.WRITE if write else DmaMapFlags.READ
        out: list[tuple[Mapping, int, int]] = []
        with self._lock:
            cur, end = addr, addr + length
            while cur < end:
                pos = bisect.bisect_right(self._starts, cur) - 1
                m = self._maps[pos] if pos >= 0 else None
                if m is None or m.end <= cur:
                    raise DmaError(errno.EFAULT, f"DMA to unmapped address {cur:#x}")
                if not m.flags & need:
                    raise DmaError(errno.EACCES, f"DMA {'write' if write else 'read'} "
                                   f"denied at {cur:#x}")
                n = min(end, m.end) - cur
                out.append((m, cur, n))
                cur += n
        return out

    def read_local(self, m: Mapping, addr: int, n: int) -> bytes:
        with self._lock:
            f = m.file
            assert f is not None
            if f.mm.closed:
                raise DmaError(errno.EFAULT, f"DMA map at {addr:#x} went away")
            pos = m.offset + (addr - m.iova)
            return f.mm[pos : pos + n]

    def write_local(self, m: Mapping, addr: int, data: bytes) -> None:
        with self._lock:
            f = m.file
            assert f is not None
            if f.mm.closed:
                raise DmaError(errno.EFAULT, f"DMA map at {addr:#x} went away")
            if not f.writable:
                raise DmaError(errno.EACCES, f"DMA write to read-only file at {addr:#x}")
            pos = m.offset + (addr - m.iova)
            f.mm[pos : pos + len(data)] = data


class RemoteDma(Protocol):
    """DMA_READ/DMA_WRITE messages to the client, provided by the server."""

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...

    def read_async(self, addr: int, length: int) -> Awaitable[bytes]: ...

    def write_async(self, addr: int, data: bytes) -> Awaitable[None]: ...


class GuestMemory:
    """The `DmaAccess` given to the device.

    `read`/`write` are synchronous: covered by an mmap they are plain memory
    copies; for maps without an fd they go through `RemoteDma`, which blocks
    the calling code until the client answers (see server.py for how the
    server keeps serving client requests meanwhile).  `read_async` /
    `write_async` are an extension beyond device_api.DmaAccess that never
    block the event loop.
    """

    def __init__(self, table: DmaTable, remote: RemoteDma) -> None:
        self._table = table
        self._remote = remote

    def read(self, addr: int, length: int) -> bytes:
        parts = [
            self._table.read_local(m, a, n) if m.file is not None else self._remote.read(a, n)
            for m, a, n in self._table.segments(addr, length, write=False)
        ]
        return b"".join(parts)

    def write(self, addr: int, data: bytes) -> None:
        view = memoryview(bytes(data))
        for m, a, n in self._table.segments(addr, len(view), write=True):
            chunk = bytes(view[a - addr : a - addr + n])
            if m.file is not None:
                self._table.write_local(m, a, chunk)
            else:
                self._remote.write(a, chunk)

    async def read_async(self, addr: int, length: int) -> bytes:
        parts = []
        for m, a, n in self._table.segments(addr, length, write=False):
            if m.file is not None:
                parts.append(self._table.read_local(m, a, n))
            else:
                parts.append(await self._remote.read_async(a, n))
        return b"".join(parts)

    async def write_async(self, addr: int, data: bytes) -> None:
        view = memoryview(bytes(data))
        for m, a, n in self._table.segments(addr, len(view), write=True):
            chunk = bytes(view[a - addr : a - addr + n])
            if m.file is not None:
                self._table.write_local(m, a, chunk)
            else:
                await self._remote.write_async(a, chunk)

