"""The same-host fast path: large payloads in a shared-memory ring, handles over ZeroMQ.

A publisher on an ``ipc://`` endpoint writes each large payload (a raw camera frame) once into
a ring of slots in a file under ``/dev/shm`` that only it writes; the ZeroMQ message carries the
usual header plus a small handle (``shm``: ring name, slot, generation, size) and an empty
frame 2, so the frame never crosses a socket. The handle format is specified in
``docs/wire.md``.

Reclaiming is seqlock style and never waits for readers. Every slot has a 64-bit generation:
the writer makes it odd while it writes the slot and even (a new value) when the payload is
complete, and the handle names that even value. The reader checks the generation, copies the
slot out with one ``pread`` and checks the generation again: ``shm_overwritten`` if the writer
came round meanwhile. So a slow reader loses frames (counted), never sees torn data, and a
dead or stopped reader costs the writer nothing.

The reader never maps a ring. Another process that can write the file could shrink it at any
moment, and touching a mapped page past the new end of a file is a ``SIGBUS`` that no Python
code can catch; ``pread`` on a shrunk file just returns fewer bytes, which is counted. Rings are
opened with ``O_NOFOLLOW`` (no symlinks) and ``O_NONBLOCK`` (a FIFO cannot hang the open), and
must be regular files of exactly the size their header describes, owned by the reader's user
and writable by no one else. Every refusal is counted by cause in :attr:`ShmReader.refused`.

The ring holds ``2 x`` the topic's queue bound slots: a frame is lost to overwriting only once
that many newer frames were written, by which time the node's own bounded queues would have
dropped it anyway.

Ordering: the generation is stored after the payload with plain 8-byte aligned stores, and
read before and after the payload by the reader's ``pread`` calls. x86-64 keeps stores in order
(TSO), which is what the seqlock needs; weakly ordered CPUs (ARM) would need explicit barriers
that Python does not expose, so there the after-copy check is best effort.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import struct
import tempfile
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = [
    "SHM_MIN_BYTES",
    "HandleError",
    "REFUSAL_CAUSES",
    "ShmRingWriter",
    "ShmReader",
    "default_shm_dir",
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
# Rings a reader keeps open per sensor (a writer restart or a larger frame makes a new ring).
MAX_RINGS_PER_SENSOR = 2
# Sensors a reader that was given no list of sensors keeps rings open for (least recently used
# first out): what any stream of handles can make it hold stays bounded.
MAX_SENSORS = 64
# Bounds on a ring's layout a reader accepts: the largest queue bound of any topic times two
# is 512 slots; a slot is at most the largest payload of any topic (1 GiB is far above it).
MAX_RING_SLOTS = 4096
MAX_SLOT_BYTES = 1 << 30

# Why a handle or ring was refused; counted in ShmReader.refused.
REFUSAL_CAUSES = (
    "malformed",  # the handle is not a map of exactly ring, slot, gen and size, or a ring name
    "foreign_ring",  # the ring is named for another sensor
    "sensor_not_allowed",  # the reader takes no shared memory from this sensor
    "missing",  # no such ring
    "symlink",  # the ring path is a symbolic link
    "not_regular",  # a directory, FIFO, device or socket
    "wrong_owner",  # owned by another user than the reader's
    "writable_by_others",  # group or others may write it
    "open_failed",  # any other error opening it
    "not_a_ring",  # magic, version or layout are not a ring's
    "wrong_size",  # the file's size is not the size its header describes, or it is out of bounds
    "slot_range",  # slot outside the ring, or a size over the slot size
    "size_mismatch",  # handle size differs from payload_bytes or from the slot's stored length
    "generation",  # a generation the writer never committed (odd, zero, or from the future)
    "truncated",  # the file shrank after it was opened
    "overwritten",  # the writer reused the slot before or while it was read
)


class HandleError(ValueError):
    """A handle that cannot be used; ``reason`` is the wire rejection reason, ``cause`` the finer one."""

    def __init__(self, reason: str, detail: str, cause: str = "malformed"):
        super().__init__(detail)
        self.reason = reason
        self.cause = cause


def default_shm_dir() -> Path:
    """Where rings live unless the config says otherwise: ``/dev/shm``, else the temp folder."""
    dev = Path("/dev/shm")
    if dev.is_dir() and os.access(dev, os.W_OK):
        return dev
    return Path(tempfile.gettempdir())


def shm_wanted(endpoint: str) -> bool:
    """Whether a publisher uses the shared-memory path by default: on ``ipc://`` endpoints (same host)."""
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
    directory = directory or default_shm_dir()
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
        self.stride, self.data_offset, size = _expected_layout(self.slots, self.slot_bytes)
        self.path = Path(directory or default_shm_dir()) / name
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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


_ENTRY = struct.Struct("<QQ")  # a slot entry's generation and length


def _expected_layout(slots: int, slot_bytes: int) -> tuple[int, int, int]:
    """(stride, data offset, file size) of a ring of ``slots`` slots of ``slot_bytes``."""
    stride = _round_up(slot_bytes, PAGE)
    data_offset = _round_up(HEADER_BYTES + slots * SLOT_ENTRY_WORDS * 8, PAGE)
    return stride, data_offset, data_offset + slots * stride


def _refuse(cause: str, detail: str, reason: str = "bad_handle") -> HandleError:
    return HandleError(reason, detail, cause)


class _OpenRing:
    """A reader's handle on one ring: an open descriptor, read with ``pread``, never mapped."""

    def __init__(self, name: str, path: Path, owner_uid: int):
        self.name = name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            cause = {errno.ELOOP: "symlink", errno.ENOENT: "missing"}.get(exc.errno, "open_failed")
            raise _refuse(cause, f"ring {name!r} cannot be opened ({exc.strerror})") from None
        try:
            self._check(fd, owner_uid)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _check(self, fd: int, owner_uid: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse("not_regular", f"ring {self.name!r} is not a regular file")
        if st.st_uid != owner_uid:
            raise _refuse("wrong_owner", f"ring {self.name!r} is owned by uid {st.st_uid}, not {owner_uid}")
        if st.st_mode & 0o022:
            raise _refuse("writable_by_others", f"ring {self.name!r} is writable by group or others")
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size:
            raise _refuse("wrong_size", f"ring {self.name!r} is too small to be a ring")
        magic, version, header_bytes, slots, _pid, slot_bytes, _run, data_offset = HEADER.unpack(head)
        if magic != MAGIC or version != VERSION or header_bytes != HEADER_BYTES:
            raise _refuse("not_a_ring", f"{self.name!r} is not a ring (magic or version)")
        if not 2 <= slots <= MAX_RING_SLOTS or not 1 <= slot_bytes <= MAX_SLOT_BYTES:
            raise _refuse("wrong_size", f"ring {self.name!r}: {slots} slots of {slot_bytes} bytes is out of bounds")
        stride, expected_offset, size = _expected_layout(slots, slot_bytes)
        if data_offset != expected_offset:
            raise _refuse("not_a_ring", f"ring {self.name!r}: data offset {data_offset}, expected {expected_offset}")
        if st.st_size != size:
            raise _refuse("wrong_size", f"ring {self.name!r} is {st.st_size} bytes, its header describes {size}")
        self.slots, self.slot_bytes, self.stride, self.data_offset = slots, slot_bytes, stride, data_offset

    def entry(self, slot: int) -> tuple[int, int]:
        """(generation, length) of a slot."""
        raw = os.pread(self.fd, _ENTRY.size, HEADER_BYTES + slot * SLOT_ENTRY_WORDS * 8)
        if len(raw) < _ENTRY.size:
            raise _refuse("truncated", f"ring {self.name!r} shrank after it was opened")
        return _ENTRY.unpack(raw)

    def copy(self, slot: int, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.uint8)
        got = os.preadv(self.fd, [out], self.data_offset + slot * self.stride) if size else 0
        if got != size:
            raise _refuse("truncated", f"ring {self.name!r} shrank after it was opened")
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _uint(handle: dict, key: str) -> int:
    v = handle.get(key)
    if type(v) is not int or v < 0:
        raise _refuse("malformed", f"handle field '{key}' must be a non-negative integer, got {type(v).__name__}")
    return v


class ShmReader:
    """Resolves handles to payload bytes, copied out of the named ring slot.

    A ring must be named for the sensor that publishes it (``fusion-<sensor_id>-...``), so one
    sensor's messages cannot point the reader at another's memory. ``sensors`` lists the sensor
    ids the reader takes shared memory from (None: any, at most ``MAX_SENSORS`` at a time);
    ``owner_uid`` is the user rings must belong to (default: this process's). Nothing is kept
    for a handle that is refused; at most ``MAX_RINGS_PER_SENSOR`` rings per sensor stay open.
    """

    def __init__(self, directory: Path | str | None = None, *, sensors: Iterable[str] | None = None,
                 owner_uid: int | None = None):
        self.directory = Path(directory) if directory is not None else default_shm_dir()
        self.sensors = None if sensors is None else frozenset(sensors)
        self.owner_uid = os.geteuid() if owner_uid is None else int(owner_uid)
        self._rings: OrderedDict[str, OrderedDict[str, _OpenRing]] = OrderedDict()
        self.resolved = 0
        self.refused: Counter = Counter()

    def open_rings(self) -> int:
        return sum(len(per) for per in self._rings.values())

    def _ring(self, sensor_id: str, name: str) -> _OpenRing:
        per = self._rings.get(sensor_id)
        ring = per.get(name) if per is not None else None
        if ring is not None:
            per.move_to_end(name)
            self._rings.move_to_end(sensor_id)
            return ring
        ring = _OpenRing(name, self.directory / name, self.owner_uid)
        if per is None:  # state for a sensor only once one of its rings has opened
            per = self._rings[sensor_id] = OrderedDict()
            while len(self._rings) > MAX_SENSORS:
                for old in self._rings.popitem(last=False)[1].values():
                    old.close()
        per[name] = ring
        while len(per) > MAX_RINGS_PER_SENSOR:
            per.popitem(last=False)[1].close()
        return ring

    def read(self, sensor_id: str, handle: Any, nbytes: int) -> np.ndarray:
        """The payload a handle names, copied out of its slot (uint8 array of ``nbytes``).

        Raises :class:`HandleError` (``bad_handle``, ``shm_overwritten``) and counts its cause.
        """
        try:
            data = self._read(sensor_id, handle, nbytes)
        except HandleError as exc:
            self.refused[exc.cause] += 1
            raise
        self.resolved += 1
        return data

    def _read(self, sensor_id: str, handle: Any, nbytes: int) -> np.ndarray:
        if self.sensors is not None and sensor_id not in self.sensors:
            raise _refuse("sensor_not_allowed", f"no shared memory is taken from sensor {sensor_id[:64]!r}")
        if type(handle) is not dict:
            raise _refuse("malformed", "handle must be a msgpack map")
        if len(handle) != len(HANDLE_KEYS) or any(k not in handle for k in HANDLE_KEYS):
            raise _refuse("malformed", f"handle keys must be exactly {list(HANDLE_KEYS)}")
        name = handle["ring"]
        if type(name) is not str or not NAME_RE.match(name):
            raise _refuse("malformed", "ring is not a ring name")
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", sensor_id)[:64]
        if not name.startswith(f"fusion-{safe}-"):
            raise _refuse("foreign_ring", f"ring {name!r} does not belong to sensor {sensor_id[:64]!r}")
        slot, gen, size = _uint(handle, "slot"), _uint(handle, "gen"), _uint(handle, "size")
        if size != nbytes:
            raise _refuse("size_mismatch", f"handle size {size} differs from payload_bytes {nbytes}")
        if gen == 0 or gen % 2:
            raise _refuse("generation", f"generation {gen} is not a committed generation")
        ring = self._ring(sensor_id, name)
        if slot >= ring.slots or size > ring.slot_bytes:
            raise _refuse("slot_range", f"slot {slot} of {size} bytes is outside ring {name!r} "
                                        f"({ring.slots} slots of {ring.slot_bytes} bytes)")
        current, length = ring.entry(slot)
        if current != gen:
            if current < gen:
                raise _refuse("generation", f"slot {slot} generation {current} is older than the handle's {gen}")
            raise _refuse("overwritten", f"slot {slot} of {name!r} was overwritten (generation {current}, "
                                         f"handle {gen})", "shm_overwritten")
        if length != size:
            raise _refuse("size_mismatch", f"slot {slot} holds {length} bytes, the handle says {size}")
        data = ring.copy(slot, size)
        if ring.entry(slot)[0] != gen:
            raise _refuse("overwritten", f"slot {slot} of {name!r} was overwritten while it was read",
                          "shm_overwritten")
        return data

    def summary(self) -> dict:
        """For the stats topic: payloads read, rings open, refusals by cause."""
        return {"resolved": self.resolved, "rings_open": self.open_rings(), "refused": dict(self.refused)}

    def close(self) -> None:
        for per in self._rings.values():
            for ring in per.values():
                ring.close()
        self._rings.clear()


_DEFAULT_READER: ShmReader | None = None


def default_reader() -> ShmReader:
    """The process-wide reader :func:`fusion_node.wire.decode` uses when given none."""
    global _DEFAULT_READER
    if _DEFAULT_READER is None:
        _DEFAULT_READER = ShmReader()
    return _DEFAULT_READER
