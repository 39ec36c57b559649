"""The same-host fast path: large payloads in a shared-memory ring, handles over ZeroMQ.

A publisher on an ``ipc://`` endpoint writes each large payload (a raw camera frame) once into
a ring of slots in a file under ``/dev/shm`` that only it writes; the ZeroMQ message carries the
usual header plus a small handle (``shm``: ring name, slot, generation, size) and an empty
frame 2. The node maps the ring once and hands the slot's bytes to the decoder as a memoryview:
no copy on the way in. The handle format is specified in ``docs/wire.md``.

Reclaiming is seqlock style and never waits for readers. Every slot has a 64-bit generation:
the writer makes it odd while it writes the slot and even (a new value) when the payload is
complete, and the handle names that even value. A reader checks the generation when it
resolves a handle (``shm_overwritten`` if the writer has already come round again) and, through
the :class:`Lease` it gets, once more after it has used the bytes: a changed generation means
the data may have been overwritten while in use, and the result is discarded and counted. So a
slow reader loses frames (counted), a dead or stopped reader costs the writer nothing, and a
dead writer leaves readers with a valid mapping they drop when a new ring replaces it.

The ring holds ``2 x`` the topic's queue bound slots: a frame is lost to overwriting only once
that many newer frames were written, by which time the node's own bounded queues would have
dropped it anyway.

Ordering: the generation is stored after the payload with plain 8-byte aligned stores, and
read before and after the payload with plain loads. x86-64 keeps stores in order and loads in
order (TSO), which is what the seqlock needs; weakly ordered CPUs (ARM) would need explicit
barriers that Python does not expose, so there the after-use check is best effort.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SHM_MIN_BYTES",
    "HandleError",
    "Lease",
    "ShmRingWriter",
    "ShmReader",
    "shm_dir",
    "shm_wanted",
    "ring_name",
    "remove_stale_rings",
    "default_reader",
]

# Payloads smaller than this go as plain ZeroMQ frames: below it a copy costs less than the
# bookkeeping (a radar frame is ~6 KB, an audio chunk ~1.3 KB, a VGA frame ~900 KB).
SHM_MIN_BYTES = 64 * 1024

MAGIC = b"FZSHMRG1"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQII")  # magic, version, header_bytes, slots, pid, slot_bytes, run_id, data_offset
HEADER_BYTES = 64
SLOT_ENTRY_WORDS = 8  # per slot: generation, length, seq, write time (ns), 4 spare; one 64-byte line
PAGE = 4096
NAME_RE = re.compile(r"^fusion-[A-Za-z0-9_.\-]{1,120}$")
HANDLE_KEYS = ("ring", "slot", "gen", "size")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page at once
# Rings a reader keeps mapped per sensor (a writer restart or a larger frame makes a new ring).
MAX_RINGS_PER_SENSOR = 2


class HandleError(ValueError):
    """A handle that cannot be used; ``reason`` is the wire rejection reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def shm_dir() -> Path:
    """Where rings live: ``$FUSION_SHM_DIR``, else ``/dev/shm``, else the temp folder."""
    env = os.environ.get("FUSION_SHM_DIR")
    if env:
        return Path(env)
    dev = Path("/dev/shm")
    if dev.is_dir() and os.access(dev, os.W_OK):
        return dev
    return Path(tempfile.gettempdir())


def shm_wanted(endpoint: str) -> bool:
    """The shared-memory path is used on ``ipc://`` endpoints (same host), unless ``FUSION_SHM=0``."""
    if os.environ.get("FUSION_SHM", "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    return endpoint.startswith("ipc://")


def ring_name(sensor_id: str, run_id: int, generation: int = 0) -> str:
    """Unique per publisher run: sensor id, pid, run id and a counter for re-created rings."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", sensor_id)[:64]
    return f"fusion-{safe}-{os.getpid()}-{run_id:08x}-{generation}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_rings(directory: Path | None = None) -> int:
    """Unlink rings whose writer process is gone (a writer killed before it could clean up)."""
    directory = directory or shm_dir()
    removed = 0
    try:
        entries = list(directory.glob("fusion-*"))
    except OSError:
        return 0
    for path in entries:
        parts = path.name.rsplit("-", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        if not _pid_alive(int(parts[1])):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class ShmRingWriter:
    """A ring of ``slots`` slots of ``slot_bytes`` each, written by one publisher only."""

    def __init__(self, name: str, slots: int, slot_bytes: int, *, run_id: int = 0, directory: Path | None = None):
        if not NAME_RE.match(name):
            raise ValueError(f"ring name {name!r} must match {NAME_RE.pattern}")
        if slots < 2 or slot_bytes < 1:
            raise ValueError(f"a ring needs >= 2 slots of >= 1 byte, got {slots} x {slot_bytes}")
        self.name = name
        self.slots = int(slots)
        self.slot_bytes = int(slot_bytes)
        self.stride = _round_up(self.slot_bytes, PAGE)
        self.data_offset = _round_up(HEADER_BYTES + self.slots * SLOT_ENTRY_WORDS * 8, PAGE)
        self.path = (directory or shm_dir()) / name
        size = self.data_offset + self.slots * self.stride
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            # Populated up front: the first pass round the ring must not pay a page fault per 4 KiB.
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._table = np.frombuffer(self._mm, dtype="<u8", count=self.slots * SLOT_ENTRY_WORDS,
                                    offset=HEADER_BYTES).reshape(self.slots, SLOT_ENTRY_WORDS)
        self._data = np.frombuffer(self._mm, dtype=np.uint8, count=self.slots * self.stride, offset=self.data_offset)
        # The header is written last: a reader that sees the magic sees a complete table.
        self._mm[0:HEADER.size] = HEADER.pack(MAGIC, VERSION, HEADER_BYTES, self.slots, os.getpid(),
                                              self.slot_bytes, run_id & 0xFFFFFFFF, self.data_offset)
        self._next = 0
        self.written = 0
        self.closed = False

    def slot_view(self, slot: int, nbytes: int) -> np.ndarray:
        off = slot * self.stride
        return self._data[off:off + nbytes]

    def acquire(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Take the next slot for writing (its generation turns odd); returns it and a writable view.

        A producer that renders straight into the view saves even the one copy :meth:`write` does.
        """
        if nbytes > self.slot_bytes:
            raise ValueError(f"payload of {nbytes} bytes exceeds the ring's slot size {self.slot_bytes}")
        slot = self._next
        self._next = (self._next + 1) % self.slots
        gen = int(self._table[slot, 0])
        self._table[slot, 0] = gen + 1 if gen % 2 == 0 else gen + 2  # odd: being written
        return slot, self.slot_view(slot, nbytes)

    def commit(self, slot: int, nbytes: int, seq: int = 0) -> dict[str, Any]:
        """Publish the slot: length, seq and time first, then the new even generation; returns the handle."""
        row = self._table[slot]
        row[1] = nbytes
        row[2] = seq
        row[3] = time.monotonic_ns()
        gen = int(row[0]) + 1
        row[0] = gen
        self.written += 1
        return {"ring": self.name, "slot": slot, "gen": gen, "size": int(nbytes)}

    def write(self, payload: Any, seq: int = 0) -> dict[str, Any]:
        """Copy ``payload`` (any buffer) into the next slot and return its handle."""
        src = np.frombuffer(payload, dtype=np.uint8) if not isinstance(payload, np.ndarray) else \
            payload.reshape(-1).view(np.uint8)
        slot, view = self.acquire(src.nbytes)
        view[:] = src
        return self.commit(slot, src.nbytes, seq)

    def generation(self, slot: int) -> int:
        return int(self._table[slot, 0])

    def close(self) -> None:
        """Unlink the ring; readers that mapped it keep their mapping until they drop it."""
        if self.closed:
            return
        self.closed = True
        self.path.unlink(missing_ok=True)
        self._table = self._data = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass  # a view handed out by acquire() is still alive; the mapping goes with it

    def __enter__(self) -> "ShmRingWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Lease:
    """A resolved handle: ``valid()`` is true while the slot still holds that generation."""

    __slots__ = ("ring", "slot", "gen")

    def __init__(self, ring: "_MappedRing", slot: int, gen: int):
        self.ring = ring
        self.slot = slot
        self.gen = gen

    def valid(self) -> bool:
        return int(self.ring.table[self.slot, 0]) == self.gen

    def __repr__(self) -> str:
        return f"Lease({self.ring.name}, slot={self.slot}, gen={self.gen}, valid={self.valid()})"


class _MappedRing:
    def __init__(self, name: str, path: Path):
        self.name = name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise HandleError("bad_handle", f"ring {name!r} cannot be opened ({exc.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise HandleError("bad_handle", f"ring {name!r} is too small to be a ring")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, header_bytes, slots, _pid, slot_bytes, _run, data_offset = HEADER.unpack_from(mm, 0)
        stride = _round_up(slot_bytes, PAGE) if slot_bytes else 0
        if magic != MAGIC or version != VERSION or header_bytes != HEADER_BYTES or slots < 2 or not slot_bytes \
                or data_offset + slots * stride > size:
            raise HandleError("bad_handle", f"{name!r} is not a valid ring (magic, version or size)")
        self.mm = mm
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.stride = stride
        self.table = np.frombuffer(mm, dtype="<u8", count=slots * SLOT_ENTRY_WORDS,
                                   offset=HEADER_BYTES).reshape(slots, SLOT_ENTRY_WORDS)
        self.data = np.frombuffer(mm, dtype=np.uint8, count=slots * stride, offset=data_offset)


def _uint(handle: dict, key: str) -> int:
    v = handle.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise HandleError("bad_handle", f"handle field '{key}' must be a non-negative integer, got {v!r:.40}")
    return v


class ShmReader:
    """Maps the rings named by handles (once each) and resolves handles to payload views.

    A ring must be named for the sensor that publishes it (``fusion-<sensor_id>-...``), so one
    sensor's messages cannot point the reader at another's memory; at most
    ``MAX_RINGS_PER_SENSOR`` rings per sensor stay mapped.
    """

    def __init__(self, directory: Path | None = None):
        self.directory = directory or shm_dir()
        self._rings: dict[str, OrderedDict[str, _MappedRing]] = {}
        self.resolved = 0

    def _ring(self, sensor_id: str, name: str) -> _MappedRing:
        per = self._rings.setdefault(sensor_id, OrderedDict())
        ring = per.get(name)
        if ring is not None:
            per.move_to_end(name)
            return ring
        ring = _MappedRing(name, self.directory / name)
        per[name] = ring
        while len(per) > MAX_RINGS_PER_SENSOR:
            per.popitem(last=False)  # unmapped once the last view into it is gone
        return ring

    def resolve(self, sensor_id: str, handle: Any, nbytes: int) -> tuple[memoryview, Lease]:
        """The payload bytes a handle names (no copy) and a lease to check after use.

        Raises :class:`HandleError` (``bad_handle`` or ``shm_overwritten``).
        """
        if not isinstance(handle, dict):
            raise HandleError("bad_handle", "handle must be a msgpack map")
        unknown = set(handle) - set(HANDLE_KEYS)
        if unknown or len(handle) != len(HANDLE_KEYS):
            raise HandleError("bad_handle", f"handle keys must be {list(HANDLE_KEYS)}, got {sorted(map(str, handle))}")
        name = handle["ring"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise HandleError("bad_handle", f"ring name {str(name)[:40]!r} is not a ring name")
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", sensor_id)[:64]
        if not name.startswith(f"fusion-{safe}-"):
            raise HandleError("bad_handle", f"ring {name!r} does not belong to sensor {sensor_id!r}")
        slot, gen, size = _uint(handle, "slot"), _uint(handle, "gen"), _uint(handle, "size")
        if size != nbytes:
            raise HandleError("bad_handle", f"handle size {size} differs from payload_bytes {nbytes}")
        if gen == 0 or gen % 2:
            raise HandleError("bad_handle", f"generation {gen} is not a committed generation")
        ring = self._ring(sensor_id, name)
        if slot >= ring.slots:
            raise HandleError("bad_handle", f"slot {slot} outside ring {name!r} of {ring.slots} slots")
        if size > ring.slot_bytes:
            raise HandleError("bad_handle", f"size {size} exceeds the ring's slot size {ring.slot_bytes}")
        current = int(ring.table[slot, 0])
        if current != gen:
            if current < gen:
                raise HandleError("bad_handle", f"slot {slot} generation {current} is older than the handle's {gen}")
            raise HandleError("shm_overwritten", f"slot {slot} of {name!r} was overwritten "
                                                 f"(generation {current}, handle {gen})")
        off = slot * ring.stride
        self.resolved += 1
        return memoryview(ring.data[off:off + size]), Lease(ring, slot, gen)

    def close(self) -> None:
        self._rings.clear()


_DEFAULT_READER: ShmReader | None = None


def default_reader() -> ShmReader:
    """The process-wide reader :func:`fusion_node.wire.decode` uses when given none."""
    global _DEFAULT_READER
    if _DEFAULT_READER is None:
        _DEFAULT_READER = ShmReader()
    return _DEFAULT_READER
